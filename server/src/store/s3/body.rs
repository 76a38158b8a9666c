//! A part's body read from the spool file as the store takes it, so a part in flight holds
//! [`READ`] bytes of memory, not its whole chunk.

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use aws_sdk_s3::primitives::{ByteStream, SdkBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

/// Bytes read from the spool per blocking call.
const READ: u64 = 1 << 20;

/// `len` bytes of the spool file from `offset`: a chunk already written and synced there.
#[derive(Clone)]
pub struct SpoolPart {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
}

impl SpoolPart {
    /// A body the SDK can start again from its first byte (each attempt reads the file anew).
    pub fn stream(&self) -> ByteStream {
        let part = self.clone();
        ByteStream::new(SdkBody::retryable(move || {
            SdkBody::from_body_1_x(Reading {
                part: part.clone(),
                done: 0,
                pending: None,
            })
        }))
    }
}

struct Reading {
    part: SpoolPart,
    /// Bytes handed out so far.
    done: u64,
    /// The blocking read of the next piece, while it runs.
    pending: Option<JoinHandle<std::io::Result<Bytes>>>,
}

impl Body for Reading {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.done == this.part.len {
            return Poll::Ready(None);
        }
        let pending = this.pending.get_or_insert_with(|| {
            let (file, at) = (this.part.file.clone(), this.part.offset + this.done);
            let n = (this.part.len - this.done).min(READ) as usize;
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
            })
        });
        let read = ready!(Pin::new(pending).poll(cx));
        this.pending = None;
        match read.map_err(std::io::Error::other).and_then(|r| r) {
            Ok(bytes) => {
                this.done += bytes.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Err(e) => {
                // Nothing more after an error.
                this.done = this.part.len;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done == self.part.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.part.len - self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_part_streams_its_span_of_the_spool_and_can_start_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let data: Vec<u8> = (0..5 * READ as usize / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let part = SpoolPart {
            file: Arc::new(File::open(&path).unwrap()),
            offset: 1000,
            len: 2 * READ + 7,
        };
        let want = &data[1000..1000 + (2 * READ + 7) as usize];
        let stream = part.stream();
        assert_eq!(stream.size_hint(), (2 * READ + 7, Some(2 * READ + 7)));
        let again = stream.into_inner().try_clone().expect("retryable");
        for body in [part.stream().into_inner(), again] {
            let got = body.collect().await.unwrap().to_bytes();
            assert_eq!(&got[..], want);
        }
    }

    #[tokio::test]
    async fn a_spool_shorter_than_the_part_is_an_error_not_short_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        std::fs::write(&path, [7u8; 100]).unwrap();
        let part = SpoolPart {
            file: Arc::new(File::open(&path).unwrap()),
            offset: 50,
            len: 100,
        };
        let err = part.stream().into_inner().collect().await.unwrap_err();
        assert!(err.to_string().contains("fill whole buffer"), "{err}");
    }
}

//! An HTTP body read from a file a piece at a time, each piece on the blocking pool when the
//! receiver has taken the one before: a slow receiver holds no thread, and the body at most one
//! piece. Serves `GET` of an upload's bytes (`http/read.rs`) and the parts sent to an S3 store
//! (`store/s3/body.rs`).

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

pub struct FileBody {
    file: Arc<File>,
    /// The next byte to read, and the end of the range.
    at: u64,
    end: u64,
    piece: usize,
    /// The read of the next piece while it runs, and its length.
    reading: Option<(JoinHandle<std::io::Result<Bytes>>, u64)>,
}

impl FileBody {
    /// `len` bytes of `file` from `offset`, read `piece` bytes at a time. A file shorter than
    /// that ends the body with an error, never with fewer bytes.
    pub fn new(file: Arc<File>, offset: u64, len: u64, piece: usize) -> Self {
        Self {
            file,
            at: offset,
            end: offset + len,
            piece: piece.max(1),
            reading: None,
        }
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.reading.is_none() {
            if self.at >= self.end {
                return Poll::Ready(None);
            }
            let (file, at) = (self.file.clone(), self.at);
            let len = (self.end - at).min(self.piece as u64) as usize;
            self.at += len as u64;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0; len];
                file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
            });
            self.reading = Some((read, len as u64));
        }
        let (reading, _) = self.reading.as_mut().expect("set above");
        match Pin::new(reading).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(joined) => {
                self.reading = None;
                let piece = joined
                    .map_err(std::io::Error::other)
                    .and_then(|read| read)
                    .map(Frame::data);
                if piece.is_err() {
                    // Nothing more after an error.
                    self.at = self.end;
                }
                Poll::Ready(Some(piece))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.at >= self.end && self.reading.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Bytes not yet handed out: the range left, and the piece being read.
        let reading = self.reading.as_ref().map_or(0, |(_, len)| *len);
        SizeHint::with_exact(self.end - self.at + reading)
    }
}

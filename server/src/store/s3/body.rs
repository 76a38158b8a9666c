//! A part's body read from the spool file as the store takes it, so a part in flight holds
//! at most [`READ`] bytes of memory, not its whole chunk.

use std::fs::File;
use std::sync::Arc;

use aws_sdk_s3::primitives::{ByteStream, SdkBody};

use crate::filebody::FileBody;

/// Bytes read from the spool per blocking call.
const READ: usize = 1 << 20;

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
            SdkBody::from_body_1_x(FileBody::new(
                part.file.clone(),
                part.offset,
                part.len,
                READ,
            ))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Two whole reads and a short one.
    const LEN: u64 = 2 * READ as u64 + 7;

    #[tokio::test]
    async fn a_part_streams_its_span_of_the_spool_and_can_start_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let data: Vec<u8> = (0..5 * READ / 2).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let part = SpoolPart {
            file: Arc::new(File::open(&path).unwrap()),
            offset: 1000,
            len: LEN,
        };
        let want = &data[1000..1000 + LEN as usize];
        let stream = part.stream();
        assert_eq!(stream.size_hint(), (LEN, Some(LEN)));
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

//! `read`: an upload's acknowledged bytes, read back (`ferry cat`).

use std::time::Duration;

use bytes::Bytes;
use ferry_proto::Frame;

use crate::{Client, ClientError};

use super::unexpected;

impl Client {
    /// `read`: up to `max` acknowledged bytes of an upload from `offset`; with the upload's
    /// durable length and whether it is complete.
    pub async fn read_upload(
        &mut self,
        upload_id: &str,
        offset: u64,
        max: u64,
    ) -> Result<ReadBack, ClientError> {
        let conn = self.connection().await?;
        let id = upload_id.to_owned();
        let reply = conn
            .request(|req| Frame::Read {
                req,
                upload_id: id,
                offset,
                max,
            })
            .await?;
        let Frame::ReadData {
            req,
            size,
            durable,
            complete,
            ..
        } = reply
        else {
            return Err(unexpected("read_data", &reply));
        };
        let mut data = Vec::new();
        if size > 0 {
            let quic = conn.quic().clone();
            let read = async {
                let mut stream = quic
                    .accept_uni()
                    .await
                    .map_err(|e| ClientError::Connection(e.to_string()))?;
                let header = crate::wire::read_frame(&mut stream)
                    .await
                    .map_err(|_| ClientError::Protocol("read stream without its header".into()))?;
                match header {
                    Some(Frame::ReadData {
                        req: r, size: s, ..
                    }) if r == req && s == size => {}
                    _ => {
                        return Err(ClientError::Protocol(
                            "read stream for another request".into(),
                        ))
                    }
                }
                let mut buf = vec![0; size as usize];
                stream
                    .read_exact(&mut buf)
                    .await
                    .map_err(|e| ClientError::Connection(format!("read stream: {e}")))?;
                Ok(buf)
            };
            data = tokio::time::timeout(Duration::from_secs(60), read)
                .await
                .map_err(|_| ClientError::Connection("no read stream within 60 s".into()))??;
        }
        Ok(ReadBack {
            data: Bytes::from(data),
            durable,
            complete,
        })
    }
}

/// What `read_upload` got.
pub struct ReadBack {
    pub data: Bytes,
    /// The upload's contiguous durable prefix now.
    pub durable: u64,
    pub complete: bool,
}

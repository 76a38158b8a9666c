//! Chunk streams: the header, the driver's verdict, then the payload streamed to disk while it
//! is hashed, off the runtime threads, with memory bounded by the read buffer.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use ferry_proto::{ChunkHeader, Digest, ErrorCode, Frame};
use quinn::{RecvStream, VarInt};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::driver::{Msg, Verdict, WireError};
use crate::wire::{read_frame, ReadError};

use super::{internal, Conn};

/// Bytes read from a chunk stream before they are hashed and written in one blocking call.
const READ_BUF: usize = 256 * 1024;

pub(super) async fn accept_chunk_streams(conn: Arc<Conn>) {
    while let Ok(recv) = conn.connection.accept_uni().await {
        tokio::spawn(chunk_stream(conn.clone(), recv));
    }
}

/// One chunk: header, validation by the driver, then the payload streamed to disk.
async fn chunk_stream(conn: Arc<Conn>, mut recv: RecvStream) {
    let stall = conn.shared.config.stream_timeout;
    let (upload_id, index, size, sha256) = match read_frame(&mut recv, stall, false).await {
        Ok(Some(Frame::Chunk {
            upload_id,
            index,
            size,
            sha256,
        })) => (upload_id, index, size, sha256),
        Ok(None) | Err(ReadError::Gone) => return,
        Ok(Some(other)) => {
            let message = format!(
                "a chunk stream must start with a chunk frame, not {}",
                other.kind()
            );
            conn.events.push(Frame::Error {
                req: None,
                code: ErrorCode::UnexpectedFrame,
                message,
            });
            let _ = recv.stop(VarInt::from_u32(ErrorCode::UnexpectedFrame.quic_code()));
            return;
        }
        Err(e) => {
            if let Some((code, message)) = e.code() {
                conn.events.push(Frame::Error {
                    req: None,
                    code,
                    message,
                });
                let _ = recv.stop(VarInt::from_u32(code.quic_code()));
            }
            return;
        }
    };
    let verdict = match header_verdict(&conn, &upload_id, index, size, &sha256).await {
        Ok(v) => v,
        Err(error) => {
            let _ = recv.stop(VarInt::from_u32(error.code.quic_code()));
            return conn.reject(&upload_id, index, error);
        }
    };
    let (driver, index, span, file, mut takeover) = match verdict {
        (_, Verdict::Skip) => {
            let _ = recv.stop(VarInt::from_u32(0));
            return;
        }
        (
            driver,
            Verdict::Receive {
                index,
                span,
                file,
                takeover,
            },
        ) => (driver, index, span, file, takeover),
    };

    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUF.min(span.len as usize)];
    let mut done = 0u64;
    while done < span.len {
        let want = (span.len - done).min(buf.len() as u64) as usize;
        let mut filled = 0;
        while filled < want {
            let read = tokio::select! {
                read = tokio::time::timeout(stall, recv.read(&mut buf[filled..want])) => match read {
                    Ok(read) => read,
                    Err(_) => {
                        let _ = recv.stop(VarInt::from_u32(ErrorCode::StreamTimeout.quic_code()));
                        let message = format!("chunk {index} sent nothing for {} s", stall.as_secs());
                        let _ = driver.send(Msg::Failed { index, error: WireError::new(ErrorCode::StreamTimeout, message) });
                        return;
                    }
                },
                _ = takeover.changed() => {
                    let _ = recv.stop(VarInt::from_u32(ErrorCode::TakenOver.quic_code()));
                    let _ = driver.send(Msg::Abandoned { index });
                    return;
                }
            };
            match read {
                Ok(Some(n)) => filled += n,
                Ok(None) => {
                    let message = format!(
                        "chunk {index} ended after {} of {} bytes",
                        done + filled as u64,
                        span.len
                    );
                    let _ = driver.send(Msg::Failed {
                        index,
                        error: WireError::new(ErrorCode::ShortPayload, message),
                    });
                    return;
                }
                Err(_) => {
                    let _ = driver.send(Msg::Abandoned { index });
                    return;
                }
            }
        }
        let file = file.clone();
        let offset = span.offset + done;
        // Hashing and writing run in the blocking pool: on runtime threads they would stall
        // every other connection's I/O.
        let result = tokio::task::spawn_blocking(move || {
            hasher.update(&buf[..want]);
            let written = file.write_all_at(&buf[..want], offset);
            (hasher, buf, written)
        })
        .await;
        let written;
        (hasher, buf, written) = match result {
            Ok(parts) => parts,
            Err(e) => {
                let _ = driver.send(Msg::Failed {
                    index,
                    error: internal(e.to_string()),
                });
                return;
            }
        };
        if let Err(e) = written {
            let _ = recv.stop(VarInt::from_u32(ErrorCode::StorageError.quic_code()));
            let _ = driver.send(Msg::Failed {
                index,
                error: WireError::storage(&e, "failed to write the chunk"),
            });
            return;
        }
        done += want as u64;
    }
    // The payload must end exactly here.
    match recv.read(&mut [0u8; 1]).await {
        Ok(None) => {
            crate::metrics::metrics().bytes_received.inc_by(span.len);
            let _ = driver.send(Msg::Payload {
                index,
                digest: hasher.into(),
            });
        }
        Ok(Some(_)) => {
            let _ = recv.stop(VarInt::from_u32(ErrorCode::LongPayload.quic_code()));
            let message = format!("chunk {index} carried more than its {} bytes", span.len);
            let _ = driver.send(Msg::Failed {
                index,
                error: WireError::new(ErrorCode::LongPayload, message),
            });
        }
        Err(_) => {
            let _ = driver.send(Msg::Abandoned { index });
        }
    }
}

/// Parses the header's fields and asks the upload's driver whether to read the payload.
async fn header_verdict(
    conn: &Conn,
    upload_id: &str,
    index: u64,
    size: u64,
    sha256: &str,
) -> Result<(mpsc::UnboundedSender<Msg>, Verdict), WireError> {
    let sha256 =
        Digest::parse(sha256).map_err(|e| WireError::new(ErrorCode::BadDigest, e.to_string()))?;
    // Someone else's upload is reported exactly like a missing one.
    let (id, _) = conn.owned(upload_id)?;
    let attached = conn
        .attached
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&id);
    let driver = conn.shared.registry.get(id).filter(|_| attached);
    let Some(driver) = driver else {
        return Err(WireError::new(
            ErrorCode::NotAttached,
            "send create or resume for this upload first",
        ));
    };
    let (reply, rx) = oneshot::channel();
    let header = ChunkHeader {
        index,
        size,
        sha256,
    };
    let _ = driver.send(Msg::Header {
        conn: conn.id,
        header,
        reply,
    });
    let verdict = rx
        .await
        .map_err(|_| WireError::new(ErrorCode::BadState, "the upload finished or was aborted"))??;
    Ok((driver, verdict))
}

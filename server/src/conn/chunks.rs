//! Chunk streams: the header, the driver's verdict, the payload streamed to disk while it is
//! hashed (off the runtime threads, memory bounded by the read buffer), then the client's
//! digest in `chunk_end`.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use std::time::Duration;

use ferry_proto::{ChunkHeader, ChunkIndex, Digest, ErrorCode, Frame, Span};
use quinn::{RecvStream, VarInt};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

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
    let (upload_id, index, size) = match read_frame(&mut recv, stall, false).await {
        Ok(Some(Frame::Chunk {
            upload_id,
            index,
            size,
        })) => (upload_id, index, size),
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
    let verdict = match header_verdict(&conn, &upload_id, index, size).await {
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

    let received = receive(&mut recv, &file, span, stall, &mut takeover).await;
    let outcome = match received {
        Ok(digest) => match trailer(&mut recv, index, stall).await {
            Ok(claimed) => {
                crate::metrics::metrics().bytes_received.inc_by(span.len);
                Msg::Payload {
                    index,
                    digest,
                    claimed,
                }
            }
            Err(Fail::Abandoned) => Msg::Abandoned { index },
            Err(Fail::Stop(error)) => {
                let _ = recv.stop(VarInt::from_u32(error.code.quic_code()));
                Msg::Failed { index, error }
            }
        },
        Err(Fail::Abandoned) => Msg::Abandoned { index },
        Err(Fail::Stop(error)) => {
            let _ = recv.stop(VarInt::from_u32(error.code.quic_code()));
            Msg::Failed { index, error }
        }
    };
    let _ = driver.send(outcome);
}

/// Why a chunk stream ended without a verified payload.
enum Fail {
    /// The stream was reset, the connection dropped, or another connection took the upload
    /// over: nobody to tell (the driver forgets the chunk).
    Abandoned,
    /// Stop the stream with the error's code and reject the chunk.
    Stop(WireError),
}

/// Reads `span.len` payload bytes, writing them at `span.offset` and hashing them in the
/// blocking pool (on runtime threads they would stall every other connection's I/O). Memory:
/// one read buffer.
async fn receive(
    recv: &mut RecvStream,
    file: &Arc<std::fs::File>,
    span: Span,
    stall: Duration,
    takeover: &mut watch::Receiver<u64>,
) -> Result<Digest, Fail> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUF.min(span.len as usize)];
    let mut done = 0u64;
    while done < span.len {
        let want = (span.len - done).min(buf.len() as u64) as usize;
        let mut filled = 0;
        while filled < want {
            let read = tokio::select! {
                read = tokio::time::timeout(stall, recv.read(&mut buf[filled..want])) => read,
                _ = takeover.changed() => {
                    let _ = recv.stop(VarInt::from_u32(ErrorCode::TakenOver.quic_code()));
                    return Err(Fail::Abandoned);
                }
            };
            match read {
                Ok(Ok(Some(n))) => filled += n,
                Ok(Ok(None)) => {
                    let message = format!(
                        "the stream ended after {} of {} payload bytes",
                        done + filled as u64,
                        span.len
                    );
                    return Err(Fail::Stop(WireError::new(ErrorCode::ShortPayload, message)));
                }
                Ok(Err(_)) => return Err(Fail::Abandoned),
                Err(_) => {
                    let message = format!("no payload byte for {} s", stall.as_secs());
                    return Err(Fail::Stop(WireError::new(
                        ErrorCode::StreamTimeout,
                        message,
                    )));
                }
            }
        }
        let file = file.clone();
        let offset = span.offset + done;
        let result = tokio::task::spawn_blocking(move || {
            hasher.update(&buf[..want]);
            let written = file.write_all_at(&buf[..want], offset);
            (hasher, buf, written)
        })
        .await;
        let written;
        (hasher, buf, written) = result.map_err(|e| Fail::Stop(internal(e.to_string())))?;
        if let Err(e) = written {
            return Err(Fail::Stop(WireError::storage(
                &e,
                "failed to write the chunk",
            )));
        }
        done += want as u64;
    }
    Ok(hasher.into())
}

/// After the payload: the `chunk_end` frame with the client's digest, then the end of the
/// stream.
async fn trailer(
    recv: &mut RecvStream,
    index: ChunkIndex,
    stall: Duration,
) -> Result<Digest, Fail> {
    let stop = |code, message: String| Err(Fail::Stop(WireError::new(code, message)));
    let claimed = match read_frame(recv, stall, false).await {
        Ok(Some(Frame::ChunkEnd { sha256 })) => match Digest::parse(&sha256) {
            Ok(digest) => digest,
            Err(e) => return stop(ErrorCode::BadDigest, e.to_string()),
        },
        Ok(None) | Err(ReadError::Truncated) => {
            return stop(
                ErrorCode::ShortPayload,
                format!("chunk {index} ended after its payload without a whole chunk_end frame"),
            )
        }
        Ok(Some(other)) => {
            return stop(
                ErrorCode::UnexpectedFrame,
                format!(
                    "chunk {index}'s payload must be followed by chunk_end, not {}",
                    other.kind()
                ),
            )
        }
        Err(ReadError::Gone) => return Err(Fail::Abandoned),
        Err(e) => {
            let (code, message) = e.code().unwrap_or((ErrorCode::Internal, String::new()));
            return stop(code, format!("chunk {index}'s chunk_end: {message}"));
        }
    };
    // The stream must end here.
    match recv.read(&mut [0u8; 1]).await {
        Ok(None) => Ok(claimed),
        Ok(Some(_)) => stop(
            ErrorCode::LongPayload,
            format!("chunk {index} carried bytes after its chunk_end frame"),
        ),
        Err(_) => Err(Fail::Abandoned),
    }
}

/// Parses the header's fields and asks the upload's driver whether to read the payload.
async fn header_verdict(
    conn: &Conn,
    upload_id: &str,
    index: u64,
    size: u64,
) -> Result<(mpsc::UnboundedSender<Msg>, Verdict), WireError> {
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
    let header = ChunkHeader { index, size };
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

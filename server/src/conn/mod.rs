//! One client connection: the `hello` exchange and login (`mod.rs`), the control stream's
//! requests and replies (`requests.rs`), and one task per chunk stream that streams the
//! payload to disk while hashing it (`chunks.rs`).

mod chunks;
mod requests;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::{ErrorCode, Frame, PROTOCOL_VERSION};
use quinn::VarInt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::driver::WireError;
use crate::guard::ConnSlot;
use crate::store::UploadId;
use crate::wire::{read_frame, write_frame};
use crate::Shared;

/// State of one authenticated connection.
struct Conn {
    shared: Arc<Shared>,
    connection: quinn::Connection,
    id: u64,
    owner: String,
    /// Frames for the control stream, written in order by one writer task.
    events: mpsc::UnboundedSender<Frame>,
    /// Uploads this connection created or resumed; detached when it closes.
    attached: Mutex<HashSet<UploadId>>,
}

/// Serves one connection. `slot` is its place under the connection limits, or why it has
/// none (then the client is told, once it has said hello, and the connection closes).
pub async fn serve(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    id: u64,
    slot: Result<ConnSlot, String>,
) {
    let handshake = tokio::time::timeout(shared.config.handshake_timeout, incoming);
    let connection = match handshake.await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return debug!(error = %e, "handshake failed"),
        Err(_) => return debug!("handshake timed out"),
    };
    let remote = connection.remote_address();
    let accepted =
        tokio::time::timeout(shared.config.handshake_timeout, connection.accept_bi()).await;
    let Ok(Ok((mut send, mut recv))) = accepted else {
        connection.close(
            VarInt::from_u32(ErrorCode::NotAuthenticated.quic_code()),
            b"no control stream",
        );
        return;
    };
    let _slot = match slot {
        Ok(slot) => slot,
        Err(message) => {
            info!(%remote, message, "refused: too many connections");
            return refuse(&connection, send, ErrorCode::TooManyConnections, &message).await;
        }
    };
    let limit = shared.config.handshake_timeout;
    let hello = tokio::time::timeout(limit, read_frame(&mut recv, limit, false)).await;
    let owner = match hello {
        Ok(Ok(Some(Frame::Hello { version, token }))) => {
            if version != PROTOCOL_VERSION {
                let msg = format!("protocol version {version} is not supported, this server speaks {PROTOCOL_VERSION}; upgrade the client");
                return refuse(&connection, send, ErrorCode::UnsupportedVersion, &msg).await;
            }
            match shared.tokens.verify(&token) {
                Ok(Some(owner)) => (owner, crate::tokens::hash(&token)),
                Ok(None) => {
                    // Each failure from the same address waits longer before its answer.
                    let delay = shared.throttle.fail(remote.ip(), std::time::Instant::now());
                    info!(%remote, delay_ms = delay.as_millis() as u64, "refused an unknown token");
                    tokio::time::sleep(delay).await;
                    return refuse(&connection, send, ErrorCode::Unauthorized, "unknown token")
                        .await;
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cannot read tokens");
                    return refuse(
                        &connection,
                        send,
                        ErrorCode::Internal,
                        "server cannot check tokens",
                    )
                    .await;
                }
            }
        }
        Ok(Ok(Some(other))) => {
            let msg = format!("expected hello, got {}", other.kind());
            return refuse(&connection, send, ErrorCode::NotAuthenticated, &msg).await;
        }
        Ok(Err(e)) => match e.code() {
            Some((code, msg)) => return refuse(&connection, send, code, &msg).await,
            None => return,
        },
        Ok(Ok(None)) | Err(_) => {
            return refuse(&connection, send, ErrorCode::NotAuthenticated, "no hello").await;
        }
    };
    let (owner, token_hash) = owner;
    let welcome = Frame::Welcome {
        version: PROTOCOL_VERSION,
        owner: owner.clone(),
        limits: shared.config.limits(),
    };
    if write_frame(&mut send, &welcome).await.is_err() {
        return;
    }
    info!(%remote, owner, conn = id, "connected");
    let _live = Live::register(&shared, id, token_hash, &connection);

    let (events, mut events_rx) = mpsc::unbounded_channel::<Frame>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = events_rx.recv().await {
            if write_frame(&mut send, &frame).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
        // Give the peer a moment to read the last frames (an error) before the close.
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    });
    let conn = Arc::new(Conn {
        shared,
        connection: connection.clone(),
        id,
        owner,
        events,
        attached: Default::default(),
    });
    let chunk_streams = tokio::spawn(chunks::accept_chunk_streams(conn.clone()));

    let close = loop {
        match read_frame(&mut recv, conn.shared.config.stream_timeout, true).await {
            Ok(Some(frame)) => conn.request(frame).await,
            Ok(None) => break None,
            Err(e) => break e.code(),
        }
    };
    chunk_streams.abort();
    conn.detach_all();
    if let Some((code, message)) = close {
        let _ = conn.events.send(Frame::Error {
            req: None,
            code,
            message: message.clone(),
        });
        drop(conn);
        let _ = writer.await;
        connection.close(VarInt::from_u32(code.quic_code()), message.as_bytes());
    } else {
        drop(conn);
        let _ = writer.await;
    }
    debug!(conn = id, "connection done");
}

/// A logged-in connection's entry in `Shared::live`, removed on drop.
struct Live {
    shared: Arc<Shared>,
    id: u64,
}

impl Live {
    fn register(
        shared: &Arc<Shared>,
        id: u64,
        token: [u8; 32],
        connection: &quinn::Connection,
    ) -> Self {
        let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(id, (token, connection.clone()));
        Self {
            shared: shared.clone(),
            id,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut live = self.shared.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&self.id);
    }
}

/// Sends an error frame on the control stream, then closes the connection with its code.
async fn refuse(
    connection: &quinn::Connection,
    mut send: quinn::SendStream,
    code: ErrorCode,
    message: &str,
) {
    let frame = Frame::Error {
        req: None,
        code,
        message: message.to_owned(),
    };
    if write_frame(&mut send, &frame).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
    connection.close(VarInt::from_u32(code.quic_code()), message.as_bytes());
}

pub(super) fn internal(e: impl ToString) -> WireError {
    WireError::new(ErrorCode::Internal, e.to_string())
}

pub(super) fn storage(e: &anyhow::Error, what: &str) -> WireError {
    WireError::from_error(e, what)
}

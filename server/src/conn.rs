//! One client connection: the `hello` exchange, the control stream's requests, and one task
//! per chunk stream that streams the payload to disk while hashing it, off the runtime
//! threads, with memory bounded by the read buffer.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::name;
use ferry_proto::{
    ChunkHeader, ChunkSet, Digest, ErrorCode, Frame, UploadInfo, UploadSummary, MAX_FRAME,
    PROTOCOL_VERSION,
};
use quinn::{RecvStream, VarInt};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::driver::{Msg, Verdict, WireError};
use crate::guard::ConnSlot;
use crate::store::{unix_now, RecordState, UploadId, UploadRecord};
use crate::wire::{read_frame, write_frame, ReadError};
use crate::Shared;

/// Bytes read from a chunk stream before they are hashed and written in one blocking call.
const READ_BUF: usize = 256 * 1024;
/// Longest description accepted at create.
const MAX_DESC: usize = 4096;
/// Room for summaries in one `listing`: the frame limit less the envelope (`type`, `req`,
/// `next`), which takes under 200 bytes.
const LISTING_BUDGET: usize = MAX_FRAME - 512;

/// A `listing` cursor: the creation time and id of the last upload of the previous page.
fn cursor_of((created_at, id): (u64, UploadId)) -> String {
    format!("{created_at}-{id}")
}

fn parse_cursor(text: &str) -> Option<(u64, UploadId)> {
    let (created_at, id) = text.split_once('-')?;
    Some((created_at.parse().ok()?, UploadId::parse(id)?))
}

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
    let chunk_streams = tokio::spawn(accept_chunk_streams(conn.clone()));

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

impl Conn {
    async fn request(&self, frame: Frame) {
        let (req, result) = match frame {
            Frame::Create {
                req,
                file_name,
                size,
                chunk_size,
                desc,
            } => (
                req,
                self.create(file_name, size, chunk_size, desc)
                    .await
                    .map(|upload| Frame::Created { req, upload }),
            ),
            Frame::Resume {
                req,
                upload_id,
                from,
            } => (
                req,
                self.resume(&upload_id, from)
                    .await
                    .map(|upload| Frame::Resumed { req, upload }),
            ),
            Frame::Finish {
                req,
                upload_id,
                sha256,
            } => (req, self.finish(req, &upload_id, &sha256).await),
            Frame::Abort { req, upload_id } => (
                req,
                self.abort(&upload_id)
                    .await
                    .map(|()| Frame::Aborted { req, upload_id }),
            ),
            Frame::List { req, cursor } => (
                req,
                self.list(cursor.as_deref())
                    .map(|(uploads, next)| Frame::Listing { req, uploads, next }),
            ),
            other => {
                let message = format!("{} is not a request", other.kind());
                let _ = self.events.send(Frame::Error {
                    req: None,
                    code: ErrorCode::UnexpectedFrame,
                    message,
                });
                return;
            }
        };
        let reply = result.unwrap_or_else(|e| Frame::Error {
            req: Some(req),
            code: e.code,
            message: e.message,
        });
        let _ = self.events.send(reply);
    }

    async fn create(
        &self,
        file_name: String,
        size: u64,
        chunk_size: u64,
        desc: String,
    ) -> Result<UploadInfo, WireError> {
        let config = &self.shared.config;
        let file_name = name::sanitize(&file_name)
            .map_err(|e| WireError::new(ErrorCode::InvalidName, e.to_string()))?;
        if size > config.max_file_size {
            return Err(WireError::new(
                ErrorCode::FileTooLarge,
                format!(
                    "file of {size} bytes exceeds the server's limit of {} bytes",
                    config.max_file_size
                ),
            ));
        }
        if chunk_size < config.min_chunk_size || chunk_size > config.max_chunk_size {
            return Err(WireError::new(
                ErrorCode::BadChunkSize,
                format!(
                    "chunk size {chunk_size} is outside [{}, {}]",
                    config.min_chunk_size, config.max_chunk_size
                ),
            ));
        }
        if desc.len() > MAX_DESC {
            return Err(WireError::new(
                ErrorCode::BadField,
                format!(
                    "description is {} bytes, the limit is {MAX_DESC}",
                    desc.len()
                ),
            ));
        }
        self.check_owner_limits(size)?;
        let now = unix_now();
        let record = UploadRecord {
            owner: self.owner.clone(),
            file_name,
            desc,
            size,
            chunk_size,
            state: RecordState::Receiving,
            created_at: now,
            updated_at: now,
            final_name: None,
            sha256: None,
        };
        let store = self.shared.store.clone();
        let stored = record.clone();
        let id = tokio::task::spawn_blocking(move || store.create(&stored))
            .await
            .map_err(internal)?
            .map_err(|e| match e.downcast_ref::<crate::store::NoSpace>() {
                Some(no_space) => {
                    WireError::new(ErrorCode::InsufficientStorage, no_space.to_string())
                }
                None => storage(&e, "failed to create the upload"),
            })?;
        info!(upload = %id, name = record.file_name, size, chunk_size, "created");
        self.attach(id, record, 0).await
    }

    async fn resume(&self, raw_id: &str, from: u64) -> Result<UploadInfo, WireError> {
        let (id, record) = self.owned(raw_id)?;
        if record.state == RecordState::Complete {
            // Complete already (the finish reply may have been lost): everything is durable,
            // and a finish with the same digest is answered again.
            let layout = record.layout().map_err(|e| internal(e.to_string()))?;
            // It does not attach: there is nothing left to send (chunks get `not_attached`).
            let all = ChunkSet::full(layout.count());
            let (durable, durable_next) = all.to_wire_page(from, ferry_proto::MAX_RANGES_PER_FRAME);
            return Ok(UploadInfo {
                upload_id: id.to_string(),
                file_name: record.file_name,
                size: layout.size(),
                chunk_size: layout.chunk_size(),
                chunk_count: layout.count(),
                durable,
                durable_offset: layout.size(),
                durable_next,
            });
        }
        self.attach(id, record, from).await
    }

    async fn attach(
        &self,
        id: UploadId,
        record: UploadRecord,
        from: u64,
    ) -> Result<UploadInfo, WireError> {
        let driver = self.driver(id, record)?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Attach {
            conn: self.id,
            events: self.events.clone(),
            from,
            reply,
        });
        let info = rx.await.map_err(|_| {
            WireError::new(
                ErrorCode::BadState,
                "the upload finished or was aborted meanwhile",
            )
        })?;
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ok(info)
    }

    async fn finish(&self, req: u64, raw_id: &str, sha256: &str) -> Result<Frame, WireError> {
        let digest = Digest::parse(sha256)
            .map_err(|e| WireError::new(ErrorCode::BadDigest, e.to_string()))?;
        let (id, record) = self.owned(raw_id)?;
        if record.state == RecordState::Complete {
            let stored = record.sha256.clone().unwrap_or_default();
            if stored != digest.to_hex() {
                return Err(WireError::new(
                    ErrorCode::FileDigestMismatch,
                    format!("the upload completed with digest {stored}, finish said {digest}"),
                ));
            }
            return Ok(Frame::Finished {
                req,
                upload_id: id.to_string(),
                file_name: record.final_name.unwrap_or(record.file_name),
                size: record.size,
                sha256: stored,
            });
        }
        let driver = self.driver(id, record)?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Finish { digest, reply });
        let published = rx.await.map_err(|_| {
            WireError::new(ErrorCode::BadState, "the upload was aborted meanwhile")
        })??;
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        Ok(Frame::Finished {
            req,
            upload_id: id.to_string(),
            file_name: published.file_name,
            size: published.size,
            sha256: published.sha256.to_hex(),
        })
    }

    async fn abort(&self, raw_id: &str) -> Result<(), WireError> {
        let (id, record) = self.owned(raw_id)?;
        if record.state == RecordState::Complete {
            return Err(WireError::new(
                ErrorCode::BadState,
                "the upload is complete; it cannot be aborted",
            ));
        }
        let driver = self.driver(id, record)?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Abort { reply });
        rx.await
            .map_err(|_| WireError::new(ErrorCode::BadState, "the upload finished meanwhile"))?
    }

    /// One page of the owner's uploads, oldest first, from after `cursor`; with the cursor of
    /// the next page when the rest did not fit one frame.
    fn list(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<UploadSummary>, Option<String>), WireError> {
        let after = match cursor {
            None => None,
            Some(text) => Some(parse_cursor(text).ok_or_else(|| {
                WireError::new(
                    ErrorCode::BadField,
                    format!("list cursor {text:.80?} is not one this server gave"),
                )
            })?),
        };
        let uploads = self
            .shared
            .store
            .list(&self.owner)
            .map_err(|e| storage(&e, "failed to list uploads"))?;
        let mut page = Vec::new();
        let mut used = 0;
        let mut last = None;
        for (id, record) in uploads {
            let key = (record.created_at, id);
            if after.is_some_and(|after| key <= after) {
                continue;
            }
            let summary = self.summary(id, record)?;
            // Each summary is measured as it will be sent; one always fits (a description is
            // at most 4 KiB, 24 KiB as escaped JSON).
            let len = serde_json::to_vec(&summary).map_or(MAX_FRAME, |v| v.len()) + 1;
            if used + len > LISTING_BUDGET && !page.is_empty() {
                return Ok((page, last.map(cursor_of)));
            }
            used += len;
            page.push(summary);
            last = Some(key);
        }
        Ok((page, None))
    }

    fn summary(&self, id: UploadId, record: UploadRecord) -> Result<UploadSummary, WireError> {
        let durable_bytes = match (record.state, record.layout()) {
            // Publishing: every chunk is durable, the link is being made.
            (RecordState::Complete | RecordState::Publishing, _) => record.size,
            (RecordState::Receiving, Ok(layout)) => {
                let set = self
                    .shared
                    .store
                    .durable_chunks(id, &layout)
                    .map_err(|e| storage(&e, "failed to read chunks"))?;
                layout.bytes_in(&set)
            }
            (RecordState::Receiving, Err(_)) => 0,
        };
        Ok(UploadSummary {
            upload_id: id.to_string(),
            file_name: record
                .final_name
                .clone()
                .unwrap_or(record.file_name.clone()),
            desc: record.desc,
            size: record.size,
            chunk_size: record.chunk_size,
            durable_bytes,
            state: match record.state {
                RecordState::Receiving | RecordState::Publishing => "receiving".into(),
                RecordState::Complete => "complete".into(),
            },
            created_at: record.created_at,
            updated_at: record.updated_at,
            expires_at: match (record.state, self.shared.config.expire_after.as_secs()) {
                (RecordState::Receiving, secs) if secs > 0 => record.updated_at + secs,
                _ => 0,
            },
        })
    }

    /// The record of `raw_id` if it exists and belongs to this connection's owner. Another
    /// owner's upload is reported exactly like a missing one.
    fn owned(&self, raw_id: &str) -> Result<(UploadId, UploadRecord), WireError> {
        let not_found = || WireError::new(ErrorCode::NotFound, format!("no upload {raw_id:.40}"));
        let id = UploadId::parse(raw_id).ok_or_else(not_found)?;
        match self.shared.store.record(id) {
            Ok(Some(record)) if record.owner == self.owner => Ok((id, record)),
            Ok(Some(_)) => Err(not_found()),
            Ok(None) => match self.shared.store.tombstone(id) {
                Ok(Some(t)) if t.owner == self.owner => Err(WireError::new(
                    ErrorCode::Expired,
                    format!("upload {id} expired at {} (Unix time) after making no progress; start it afresh", t.expired_at),
                )),
                Ok(_) => Err(not_found()),
                Err(e) => Err(storage(&e, "failed to read the upload")),
            },
            Err(e) => Err(storage(&e, "failed to read the upload")),
        }
    }

    /// Uploads in progress and the quota, checked before a new upload is created.
    fn check_owner_limits(&self, size: u64) -> Result<(), WireError> {
        let config = &self.shared.config;
        let uploads = self
            .shared
            .store
            .list(&self.owner)
            .map_err(|e| storage(&e, "failed to list uploads"))?;
        let receiving = uploads
            .iter()
            .filter(|(_, r)| r.state != RecordState::Complete)
            .count() as u64;
        if config.max_uploads_per_owner > 0 && receiving >= config.max_uploads_per_owner {
            return Err(WireError::new(
                ErrorCode::TooManyUploads,
                format!(
                    "{} has {receiving} uploads in progress, the limit is {}",
                    self.owner, config.max_uploads_per_owner
                ),
            ));
        }
        let used: u64 = uploads.iter().map(|(_, r)| r.size).sum();
        if config.quota_per_owner > 0 && used.saturating_add(size) > config.quota_per_owner {
            return Err(WireError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "{} uses {used} bytes; {size} more would exceed the quota of {} bytes",
                    self.owner, config.quota_per_owner
                ),
            ));
        }
        Ok(())
    }

    fn driver(
        &self,
        id: UploadId,
        record: UploadRecord,
    ) -> Result<mpsc::UnboundedSender<Msg>, WireError> {
        let shared = &self.shared;
        shared
            .registry
            .get_or_start(&shared.store, shared.config.commit, id, record)
            .map_err(|e| storage(&e, "failed to open the upload"))
    }

    fn detach_all(&self) {
        let attached =
            std::mem::take(&mut *self.attached.lock().unwrap_or_else(|p| p.into_inner()));
        for id in attached {
            if let Some(driver) = self.shared.registry.get(id) {
                let _ = driver.send(Msg::Detach { conn: self.id });
            }
        }
    }

    fn reject(&self, upload_id: &str, index: u64, error: WireError) {
        let _ = self.events.send(Frame::Reject {
            upload_id: upload_id.chars().take(64).collect(),
            index,
            code: error.code,
            message: error.message,
        });
    }
}

async fn accept_chunk_streams(conn: Arc<Conn>) {
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
            let _ = conn.events.send(Frame::Error {
                req: None,
                code: ErrorCode::UnexpectedFrame,
                message,
            });
            let _ = recv.stop(VarInt::from_u32(ErrorCode::UnexpectedFrame.quic_code()));
            return;
        }
        Err(e) => {
            if let Some((code, message)) = e.code() {
                let _ = conn.events.send(Frame::Error {
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

fn internal(e: impl ToString) -> WireError {
    WireError::new(ErrorCode::Internal, e.to_string())
}

fn storage(e: &anyhow::Error, what: &str) -> WireError {
    WireError::from_error(e, what)
}

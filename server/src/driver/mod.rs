//! One task per active upload owns its `UploadSession`. Connections talk to it through
//! messages: attach (create/resume), chunk headers, finished payloads, finish, abort. The
//! driver runs group commits (fdatasync the staging file → record the chunks in sled → flush)
//! and only then lets the session emit acks, which it forwards to the attached connection.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::{
    Accept, ChunkHeader, ChunkIndex, ChunkLayout, CommitPolicy, Digest, ErrorCode, Frame, Output,
    Span, UploadInfo, UploadSession,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::metrics::metrics;
use crate::store::{Backend, CommitError, UploadId, UploadRecord};

mod commit;
use commit::Commits;
mod finish;
mod registry;

pub use registry::Registry;

/// Frames pushed to a connection's control stream.
pub type Events = crate::outbox::Outbox;

/// An error for the peer: a stable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Maps a failure with an I/O error somewhere in its chain (the disk, the database) to the
    /// code a client can act on: a full disk is `storage_full`.
    pub fn from_error(e: &anyhow::Error, what: &str) -> Self {
        let io = e
            .chain()
            .find_map(|cause| match cause.downcast_ref::<sled::Error>() {
                Some(sled::Error::Io(io)) => Some(io),
                _ => cause.downcast_ref::<std::io::Error>(),
            });
        let code = match io {
            Some(io) if is_disk_full(io) => ErrorCode::StorageFull,
            _ => ErrorCode::StorageError,
        };
        Self::new(code, format!("{what}: {e:#}"))
    }

    /// Maps an I/O failure on the server's disk to the code a client can act on.
    pub fn storage(err: &std::io::Error, what: &str) -> Self {
        let code = if is_disk_full(err) {
            ErrorCode::StorageFull
        } else {
            ErrorCode::StorageError
        };
        Self::new(code, format!("{what}: {err}"))
    }
}

fn is_disk_full(err: &std::io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOSPC) || err.kind() == std::io::ErrorKind::StorageFull
}

/// What a connection should do with a chunk stream.
pub enum Verdict {
    /// Read the payload into `file` at `span`, then report `Payload` (or `Failed`/`Abandoned`).
    /// Stop reading and report `Abandoned` as soon as `takeover` changes: another connection
    /// now drives the upload and may re-send this very chunk.
    Receive {
        index: ChunkIndex,
        span: Span,
        file: Arc<File>,
        takeover: watch::Receiver<u64>,
    },
    /// Drop the stream: the chunk is durable or received already.
    Skip,
}

/// The reply to a successful `finish`.
pub struct Published {
    pub file_name: String,
    pub size: u64,
    pub content_hash: Digest,
}

pub enum Msg {
    Attach {
        conn: u64,
        events: Events,
        /// The first chunk index the reply's `durable` page covers.
        from: u64,
        reply: oneshot::Sender<UploadInfo>,
    },
    Detach {
        conn: u64,
    },
    Header {
        conn: u64,
        header: ChunkHeader,
        reply: oneshot::Sender<Result<Verdict, WireError>>,
    },
    /// The payload arrived and hashed to `digest`; the client's `chunk_end` said `claimed`.
    Payload {
        index: ChunkIndex,
        digest: Digest,
        claimed: Digest,
    },
    Abandoned {
        index: ChunkIndex,
    },
    Failed {
        index: ChunkIndex,
        error: WireError,
    },
    Finish {
        digest: Digest,
        reply: oneshot::Sender<Result<Published, WireError>>,
    },
    /// Deletes the upload; `reason` is what metrics count it as (`aborted`, or `concatenated`
    /// for a tus partial upload a final one took in).
    Abort {
        reason: &'static str,
        reply: oneshot::Sender<Result<(), WireError>>,
    },
    /// Commit what waits now instead of after the commit policy's delay: the sender has no
    /// more to add (an HTTP request's body ended) and waits for the acks.
    Flush,
    /// The upload as `resume` would describe it, without attaching anyone.
    Info {
        reply: oneshot::Sender<UploadInfo>,
    },
    /// Declares the length of an upload created without one (`UploadRecord::deferred`): the
    /// layout is cut again for `size`. Refused while chunks are in flight, and for a length
    /// shorter than what is durable. Replies with the updated record.
    SetLength {
        size: u64,
        reply: oneshot::Sender<Result<UploadRecord, WireError>>,
    },
    /// Forgets durable chunks so the client can send them again (`rewrite`): refused while
    /// one of them is in flight. Replies once the change is durable.
    Rewrite {
        chunks: Vec<u64>,
        reply: oneshot::Sender<Result<Vec<u64>, WireError>>,
    },
    /// Remove the upload for lack of progress, unless a connection drives it; replies whether
    /// it was removed.
    Expire {
        now: u64,
        reply: oneshot::Sender<bool>,
    },
    Shutdown,
}

struct Driver {
    id: UploadId,
    record: UploadRecord,
    /// Where commits make chunks durable and `finish` publishes.
    backend: Arc<Backend>,
    session: UploadSession,
    /// When to cut group commits (kept for a session cut again by `SetLength`).
    policy: CommitPolicy,
    file: Arc<File>,
    /// The connection that drives the upload: set by `Attach`, replaced by a later `Attach`
    /// (takeover), cleared by `Detach` from that same connection.
    attached: Option<(u64, Events)>,
    /// Counts takeovers; chunk streams of the previous connection watch it and stop, so a
    /// re-send from the new connection never races an old stream writing the same span.
    takeovers: watch::Sender<u64>,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// Set by `Flush`: the next commit starts as soon as one may (fewer than the policy's
    /// `max_in_flight` are running).
    flush: bool,
}

enum Step {
    Continue,
    Stop,
}

impl Driver {
    async fn run(mut self) {
        // The commits running (at most the policy's `max_in_flight`), each naming its batch.
        let mut commits = Commits::new();
        loop {
            // Flushing: as if the policy's delay had passed.
            let now = match self.flush {
                true => Instant::now() + Duration::from_secs(3600),
                false => Instant::now(),
            };
            // Bounded by `max_in_flight`: the session hands out no batch beyond it.
            while let Some(batch) = self.session.poll_commit(now) {
                self.flush = false;
                commits.spawn(batch.id, self.persist(batch));
            }
            self.forward_outputs();
            let deadline = self.session.poll_timeout();
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { break };
                    if let Msg::Shutdown = msg {
                        self.drain(commits).await;
                        break;
                    }
                    if let Step::Stop = self.handle(msg).await {
                        break;
                    }
                }
                Some(done) = commits.join_next() => {
                    if let Some(why) = self.committed(done) {
                        // The other commits running stop with `commits`.
                        self.finished_elsewhere(&why).await;
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {}
            }
        }
        debug!("driver stopped");
    }

    /// Takes a commit's outcome. `Some(why)` when the upload is gone from the shared store
    /// (finished or aborted through another node): the driver must stop.
    fn committed(&mut self, (batch, result): (u64, Result<(), CommitError>)) -> Option<String> {
        match result {
            Ok(()) => self.session.handle_persisted(batch),
            Err(CommitError::Gone(why)) => return Some(why),
            Err(CommitError::Rejected(e)) => {
                warn!(code = %e.code, error = %e.message, "commit failed");
                self.session
                    .handle_persist_failed(batch, e.code, &e.message);
            }
        }
        None
    }

    /// The upload was finished or aborted through another node while this one drove it: this
    /// node's record is brought up to date from the bucket, and the connection attached is told
    /// (`detached`) what happened, so its client stops, and the same command run again is
    /// answered from the record (a finished upload: `complete`).
    async fn finished_elsewhere(&mut self, why: &str) {
        warn!(error = why, "the upload is gone from the store");
        if let Err(e) = self.backend.refresh(self.id, &self.record.owner).await {
            warn!(error = %format!("{e:#}"), "cannot read the upload's manifest");
        }
        let record = self.backend.store().record(self.id).ok().flatten();
        let message = match record {
            Some(r) if r.state == crate::store::RecordState::Complete => format!(
                "upload {} was finished through another node (published as {:?}); run the same command again to confirm",
                self.id,
                r.final_name.unwrap_or_default()
            ),
            _ => format!(
                "upload {} was aborted or expired through another node",
                self.id
            ),
        };
        if let Some((_, events)) = self.attached.take() {
            events.push(Frame::Detached {
                upload_id: self.id.to_string(),
                code: ErrorCode::TakenOver,
                message,
            });
        }
    }

    async fn handle(&mut self, msg: Msg) -> Step {
        match msg {
            Msg::Attach {
                conn,
                events,
                from,
                reply,
            } => {
                if let Some((old, old_events)) = self.attached.take() {
                    if old != conn {
                        info!(old, new = conn, "upload taken over by a new connection");
                        self.takeovers.send_modify(|n| *n += 1);
                        old_events.push(Frame::Detached {
                            upload_id: self.id.to_string(),
                            code: ErrorCode::TakenOver,
                            message: "another connection resumed this upload".into(),
                        });
                    }
                }
                self.attached = Some((conn, events));
                let _ = reply.send(self.info(from));
            }
            Msg::Detach { conn } => {
                if self.attached.as_ref().is_some_and(|(c, _)| *c == conn) {
                    self.attached = None;
                }
            }
            Msg::Header {
                conn,
                header,
                reply,
            } => {
                let verdict = if self.attached.as_ref().is_some_and(|(c, _)| *c == conn) {
                    match self.session.handle_header(&header) {
                        Ok(Accept::Receive { index, span }) => {
                            let takeover = self.takeovers.subscribe();
                            Ok(Verdict::Receive {
                                index,
                                span,
                                file: self.file.clone(),
                                takeover,
                            })
                        }
                        Ok(Accept::AlreadyDurable | Accept::AlreadyReceived) => Ok(Verdict::Skip),
                        Err(e) => Err(WireError::new(e.code(), e.to_string())),
                    }
                } else {
                    Err(WireError::new(
                        ErrorCode::TakenOver,
                        "this connection no longer drives the upload",
                    ))
                };
                let _ = reply.send(verdict);
            }
            Msg::Payload {
                index,
                digest,
                claimed,
            } => self
                .session
                .handle_payload(index, digest, claimed, Instant::now()),
            Msg::Abandoned { index } => self.session.handle_abandoned(index),
            Msg::Failed { index, error } => {
                self.session.handle_abandoned(index);
                self.send(Frame::Reject {
                    upload_id: self.id.to_string(),
                    index: index.get(),
                    code: error.code,
                    message: error.message,
                });
            }
            Msg::Finish { digest, reply } => return self.finish(digest, reply).await,
            Msg::Flush => self.flush = true,
            Msg::Info { reply } => {
                let _ = reply.send(self.info(0));
            }
            Msg::SetLength { size, reply } => {
                let _ = reply.send(self.set_length(size).await);
            }
            Msg::Rewrite { chunks, reply } => {
                let _ = reply.send(self.rewrite(chunks).await);
            }
            Msg::Abort { reason, reply } => match self.backend.abort(self.id, &self.record).await {
                Ok(()) => {
                    info!(reason, "removed");
                    if reason == "aborted" {
                        metrics().failed(reason);
                    }
                    let _ = reply.send(Ok(()));
                    return Step::Stop;
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    let _ = reply.send(Err(WireError::new(ErrorCode::StorageError, message)));
                }
            },
            Msg::Expire { now, reply } => {
                if self.attached.is_some() {
                    let _ = reply.send(false);
                    return Step::Continue;
                }
                let removed = match self.backend.expire(self.id, &self.record, now).await {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "failed to remove the expired upload");
                        false
                    }
                };
                let _ = reply.send(removed);
                if removed {
                    info!("expired");
                    // With a shared store the sweep counts it (it also expires uploads no
                    // driver holds).
                    if !self.backend.is_shared() {
                        metrics().failed("expired");
                    }
                    return Step::Stop;
                }
            }
            Msg::Shutdown => {}
        }
        Step::Continue
    }

    /// Commits everything received, then returns: the shutdown path.
    async fn drain(&mut self, mut running: Commits) {
        // Bounded by the commits running.
        while let Some(done) = running.join_next().await {
            let _ = self.committed(done);
        }
        // Far in the future, so every waiting chunk is due; everything waiting is one batch.
        let later = Instant::now() + Duration::from_secs(3600);
        if let Some(batch) = self.session.poll_commit(later) {
            let id = batch.id;
            let result = self.persist(batch).await;
            let _ = self.committed((id, result));
        }
        self.forward_outputs();
    }

    fn forward_outputs(&mut self) {
        while let Some(output) = self.session.poll_output() {
            let frame = match output {
                Output::Ack(set) => Frame::Ack {
                    upload_id: self.id.to_string(),
                    chunks: set.to_wire(),
                },
                Output::Reject {
                    index,
                    code,
                    message,
                } => {
                    warn!(index, code = %code, "rejected chunk");
                    Frame::Reject {
                        upload_id: self.id.to_string(),
                        index,
                        code,
                        message,
                    }
                }
            };
            self.send(frame);
        }
    }

    fn send(&self, frame: Frame) {
        if let Frame::Reject { code, .. } = &frame {
            metrics().rejected(*code);
        }
        if let Some((_, events)) = &self.attached {
            events.push(frame);
        }
    }

    /// Cuts the layout again for the declared length `size` (see `Msg::SetLength`).
    async fn set_length(&mut self, size: u64) -> Result<UploadRecord, WireError> {
        if !self.record.deferred {
            return Err(WireError::new(
                ErrorCode::BadState,
                format!("the upload's length is {} already", self.record.size),
            ));
        }
        if !self.session.is_idle() {
            return Err(WireError::new(
                ErrorCode::BadState,
                "chunks of the upload are still in flight; retry once they are acknowledged",
            ));
        }
        let durable = self.session.durable().clone();
        let old = *self.session.layout();
        // Every durable chunk is a whole chunk of the provisional layout: each must lie within
        // the declared length.
        let durable_end = durable
            .ranges()
            .last()
            .map_or(0, |(_, end)| (end * old.chunk_size()).min(old.size()));
        if size < durable_end || size > self.record.size {
            return Err(WireError::new(
                ErrorCode::BadField,
                format!(
                    "length {size} is outside what the upload allows: at least the {durable_end} bytes received, at most {}",
                    self.record.size
                ),
            ));
        }
        let layout = ChunkLayout::new(size, old.chunk_size())
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
        let mut record = self.record.clone();
        record.size = size;
        record.deferred = false;
        let store = self.backend.store().clone();
        let (id, stored) = (self.id, record.clone());
        tokio::task::spawn_blocking(move || store.set_length(id, &stored))
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| {
                if let Some(no_space) = e.downcast_ref::<crate::store::NoSpace>() {
                    WireError::new(ErrorCode::InsufficientStorage, no_space.to_string())
                } else {
                    WireError::from_error(&e, "failed to record the upload's length")
                }
            })?;
        info!(size, "length declared");
        self.record = record.clone();
        self.session = UploadSession::new(layout, durable, self.policy);
        Ok(record)
    }

    /// Forgets the durable chunks `chunks` (see `Msg::Rewrite`): every index is checked first,
    /// so a refused request changes nothing.
    async fn rewrite(&mut self, mut chunks: Vec<u64>) -> Result<Vec<u64>, WireError> {
        let layout = *self.session.layout();
        chunks.sort_unstable();
        chunks.dedup();
        let mut forget = Vec::new();
        for &raw in &chunks {
            let index = layout
                .index(raw)
                .map_err(|e| WireError::new(ErrorCode::IndexOutOfRange, e.to_string()))?;
            if self.session.received().contains(raw) && !self.session.durable().contains(raw) {
                return Err(WireError::new(
                    ErrorCode::ChunkInProgress,
                    format!("chunk {raw} is being committed; retry once it is acknowledged"),
                ));
            }
            if self.session.durable().contains(raw) {
                forget.push(index);
            }
        }
        for &index in &forget {
            if !self.session.rewrite(index) {
                return Err(WireError::new(
                    ErrorCode::ChunkInProgress,
                    format!(
                        "chunk {} is arriving; retry once it is acknowledged",
                        index.get()
                    ),
                ));
            }
        }
        if forget.is_empty() {
            // Nothing durable among them: nothing to write (and no sync a client could ask
            // for in a loop).
            return Ok(chunks);
        }
        let store = self.backend.store().clone();
        let (id, raw): (_, Vec<u64>) = (self.id, forget.iter().map(|i| i.get()).collect());
        tokio::task::spawn_blocking(move || store.forget_chunks(id, &raw))
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| WireError::from_error(&e, "failed to forget the chunks"))?;
        info!(chunks = forget.len(), "chunks to be sent again");
        Ok(chunks)
    }

    /// The upload as `created`/`resumed` describe it, its durable ranges paged from `from`.
    fn info(&self, from: u64) -> UploadInfo {
        let layout = self.session.layout();
        let (durable, durable_next) = self
            .session
            .durable()
            .to_wire_page(from, ferry_proto::MAX_RANGES_PER_FRAME);
        UploadInfo {
            upload_id: self.id.to_string(),
            file_name: self.record.file_name.clone(),
            size: layout.size(),
            chunk_size: layout.chunk_size(),
            chunk_count: layout.count(),
            durable,
            durable_offset: layout.prefix_bytes(self.session.durable()),
            durable_next,
            deferred: self.record.deferred,
        }
    }
}

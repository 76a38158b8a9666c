//! The upload pipeline: open or resume the upload, keep `parallel` chunk streams busy while
//! the server's acks come back, re-send what it rejects, ride through lost connections by
//! reconnecting and resuming, then finish with the whole-file SHA-256.
//!
//! The client never reads the file ahead of sending: each chunk is read, hashed and sent when
//! the window has room, and the whole-file digest is computed by one sequential pass in the
//! blocking pool while the upload runs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::units::human;
use ferry_proto::{
    ChunkLayout, ChunkSet, Digest, ErrorCode, Frame, OnExists, UploadInfo, UploadSender,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use crate::journal::{Completed, Entry, FileKey, Journal};
use crate::progress::FileProgress;
use crate::rate::RateLimiter;
pub use crate::stream::send_chunk;
use crate::stream::ChunkJob;
use crate::{connected, Client, ClientError};

/// With chunks in flight and no ack for this long, the connection is treated as lost (or
/// `--reconnect-for`, if shorter).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What `ferry upload --json` prints, one line per file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `complete`, `skipped` (already on the server: confirmed from the journal, or the name
    /// is taken and `--on-exists skip`) or `deduplicated` (published by link, nothing sent).
    pub status: &'static str,
    pub upload_id: String,
    /// The name the server published the file under (relative to the owner's folder).
    pub file_name: String,
    pub size: u64,
    pub sha256: String,
    /// Payload bytes written to chunk streams in this run, re-sends included.
    pub bytes_sent: u64,
    /// Bytes the server held already when this run started.
    pub bytes_skipped: u64,
    pub elapsed_ms: u64,
    /// True when this run continued an upload begun earlier.
    pub resumed: bool,
    /// Connections re-established during this run.
    pub reconnects: u32,
    /// Why a file was skipped when it is not the journal's confirmation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The upload being driven, kept across reconnects.
struct Active {
    info: UploadInfo,
    sender: UploadSender,
}

/// Marks a file's progress finished however its upload ends.
struct Finished(Arc<FileProgress>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finish();
    }
}

impl Client {
    /// Uploads one file, resuming a previous run of the same file to the same server.
    pub async fn upload(&mut self, path: &Path, desc: &str) -> Result<Report, ClientError> {
        self.upload_in(path, &[], desc).await
    }

    /// Like `upload`, published in the folders `dir` under the owner's folder (outermost
    /// first): how a folder's files keep their place.
    pub async fn upload_in(
        &mut self,
        path: &Path,
        dir: &[String],
        desc: &str,
    ) -> Result<Report, ClientError> {
        let started = Instant::now();
        let key = FileKey::of(&self.opts.target.server, path)
            .map_err(|e| ClientError::local(format!("cannot read {}", path.display()), e))?;
        let file = Arc::new(
            File::open(&key.path)
                .map_err(|e| ClientError::local(format!("cannot open {}", path.display()), e))?,
        );
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let shown: String = dir.iter().map(|d| format!("{d}/")).collect::<String>() + &name;
        let progress = self.shared.tracker.file(&shown, key.size);
        let _finished = Finished(progress.clone());
        let mut reconnects = 0;
        if let Some(report) = self.already_there(&key, started, &mut reconnects).await? {
            return Ok(report);
        }
        // With --dedup, a file the server never saw from here is hashed first (one read) and
        // offered by content; the digest then serves the finish too.
        let mut known_digest = None;
        if self.opts.dedup && self.journal.get(&key).is_none() {
            let digest = {
                let file = file.clone();
                let size = key.size;
                tokio::task::spawn_blocking(move || hash_file(&file, size))
                    .await
                    .map_err(|e| ClientError::Local(e.to_string()))?
                    .map_err(|e| ClientError::local(format!("cannot read {}", path.display()), e))?
            };
            let ask = (name.as_str(), dir, desc);
            match self
                .dedup(&key, ask, digest, started, &mut reconnects)
                .await
            {
                Ok(Some(report)) => return Ok(report),
                Ok(None) => known_digest = Some(digest),
                Err(e) => return self.name_taken(e, &shown, &key, started),
            }
        }
        let hashing = {
            let file = file.clone();
            let size = key.size;
            tokio::task::spawn_blocking(move || match known_digest {
                Some(digest) => Ok(digest),
                None => hash_file(&file, size),
            })
        };
        let sent = progress.sent.clone();
        let mut active: Option<Active> = None;
        let mut skipped = None;
        let mut resumed = false;
        let mut last_progress = Instant::now();
        let mut backoff = Duration::from_millis(250);
        let finished = loop {
            let attempt = async {
                let conn = connected(&mut self.conn, &self.endpoint, &self.opts.target).await?;
                let durable = match &mut active {
                    None => {
                        let (info, was_resumed) =
                            open(conn, &self.journal, &key, (&name, dir, desc), &self.opts).await?;
                        resumed = was_resumed;
                        let layout = layout_of(&info)?;
                        let durable = ChunkSet::from_wire(&info.durable, layout.count())
                            .map_err(|e| ClientError::Protocol(e.to_string()))?;
                        let held = *skipped.get_or_insert(layout.bytes_in(&durable));
                        progress.set_held(held);
                        active = Some(Active {
                            sender: UploadSender::new(layout, durable.clone(), self.opts.parallel),
                            info,
                        });
                        durable
                    }
                    Some(a) => {
                        let info = conn.resume(&a.info.upload_id).await?;
                        let durable = ChunkSet::from_wire(&info.durable, a.sender.layout().count())
                            .map_err(|e| ClientError::Protocol(e.to_string()))?;
                        a.sender.handle_resumed(&durable);
                        durable
                    }
                };
                let a = active.as_mut().expect("set above");
                progress.set_safe(a.sender.layout().bytes_in(&durable));
                let io = Io {
                    file: &file,
                    sent: &sent,
                    limiter: self.limiter.as_ref(),
                    window: self.shared.window.as_ref(),
                    progress: &progress,
                    stall: STALL_TIMEOUT.min(self.opts.reconnect_for),
                };
                pump(conn, a, &io, &mut last_progress).await?;
                Ok::<_, ClientError>(())
            }
            .await;
            match attempt {
                Ok(()) => break active.take().expect("an upload was opened"),
                // A server never reached in this run is not waited for: fail fast, say why.
                Err(e @ ClientError::Unreachable(_)) if !self.endpoint.reached() => return Err(e),
                Err(e) if e.is_retryable() && last_progress.elapsed() < self.opts.reconnect_for => {
                    self.drop_connection();
                    reconnects += 1;
                    self.shared.tracker.note(&format!(
                        "ferry: {e}; reconnecting in {} ms",
                        backoff.as_millis()
                    ));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) if e.is_retryable() => {
                    return Err(ClientError::Connection(format!(
                        "gave up after {} s without progress: {e}",
                        self.opts.reconnect_for.as_secs()
                    )))
                }
                Err(e) => return self.name_taken(e, &shown, &key, started),
            }
        };
        let digest = hashing
            .await
            .map_err(|e| ClientError::Local(e.to_string()))?
            .map_err(|e| ClientError::local(format!("cannot read {}", path.display()), e))?;
        // A file written to during the upload must not be published: what the server holds may
        // mix old and new bytes. Size and modification time tell.
        let now = FileKey::of(&self.opts.target.server, path).ok();
        if now
            .as_ref()
            .is_none_or(|k| k.size != key.size || k.mtime_ns != key.mtime_ns)
        {
            self.discard(&finished.info.upload_id, &key).await;
            return Err(ClientError::Local(format!(
                "{} changed while it was being uploaded; the upload was discarded, nothing was published",
                path.display()
            )));
        }
        let upload_id = finished.info.upload_id.clone();
        let reply = self.finish(&upload_id, digest, &mut reconnects).await;
        let (file_name, size) = match reply {
            Ok(done) => done,
            Err(ClientError::Server {
                code: ErrorCode::FileDigestMismatch,
                message,
            }) => {
                // The bytes the server holds are not this file any more (it changed while being
                // uploaded): drop the upload so the next run starts afresh.
                self.discard(&upload_id, &key).await;
                return Err(ClientError::Local(format!(
                    "{} changed during the upload ({message}); the upload was discarded, run again to upload it afresh",
                    path.display()
                )));
            }
            Err(
                e @ ClientError::Server {
                    code: ErrorCode::AlreadyExists,
                    ..
                },
            ) => {
                // The name was taken while the file was being sent: nothing is published, and
                // the upload would only hold space.
                self.discard(&upload_id, &key).await;
                return self.name_taken(e, &shown, &key, started);
            }
            Err(e) => return Err(e),
        };
        self.remember_complete(&key, &file_name, digest);
        Ok(Report {
            status: "complete",
            upload_id,
            file_name,
            size,
            sha256: digest.to_hex(),
            bytes_sent: sent.load(Ordering::Relaxed),
            bytes_skipped: skipped.unwrap_or(0),
            elapsed_ms: started.elapsed().as_millis() as u64,
            resumed,
            reconnects,
            reason: None,
        })
    }

    /// `already_exists` with `--on-exists skip` is a skipped file; any other error stays one.
    fn name_taken(
        &self,
        e: ClientError,
        shown: &str,
        key: &FileKey,
        started: Instant,
    ) -> Result<Report, ClientError> {
        match e {
            ClientError::Server {
                code: ErrorCode::AlreadyExists,
                ..
            } if self.opts.on_exists == OnExists::Skip => Ok(Report {
                status: "skipped",
                upload_id: String::new(),
                file_name: shown.to_owned(),
                size: key.size,
                sha256: String::new(),
                bytes_sent: 0,
                bytes_skipped: 0,
                elapsed_ms: started.elapsed().as_millis() as u64,
                resumed: false,
                reconnects: 0,
                reason: Some("a file of that name exists on the server (--on-exists skip)".into()),
            }),
            e => Err(e),
        }
    }

    /// Aborts an upload that must not be published and forgets it locally.
    async fn discard(&mut self, upload_id: &str, key: &FileKey) {
        if let Ok(conn) = connected(&mut self.conn, &self.endpoint, &self.opts.target).await {
            let id = upload_id.to_owned();
            let _ = conn
                .request(|req| Frame::Abort { req, upload_id: id })
                .await;
        }
        self.journal.remove(key);
    }

    /// Records the file as complete in the journal: a re-run confirms it with the server and
    /// sends nothing.
    fn remember_complete(&self, key: &FileKey, file_name: &str, digest: Digest) {
        let mut entry = self.journal.get(key).unwrap_or_else(|| Entry {
            upload_id: String::new(),
            server: key.server.clone(),
            path: key.path.clone(),
            size: key.size,
            chunk_size: 0,
            complete: None,
        });
        entry.complete = Some(Completed {
            file_name: file_name.to_owned(),
            sha256: digest.to_hex(),
        });
        if let Err(e) = self.journal.put(key, &entry) {
            self.shared.tracker.error(&format!(
                "ferry: cannot record {} as complete in the journal: {e}",
                key.path.display()
            ));
        }
    }

    /// Offers the file's content to the server (`dedup`): a report if it was published by
    /// link (or is there already under this name), `None` if it must be sent.
    async fn dedup(
        &mut self,
        key: &FileKey,
        (name, dir, desc): (&str, &[String], &str),
        digest: Digest,
        started: Instant,
        reconnects: &mut u32,
    ) -> Result<Option<Report>, ClientError> {
        let deadline = Instant::now() + self.opts.reconnect_for;
        let mut backoff = Duration::from_millis(250);
        let reply = loop {
            let attempt = async {
                let conn = connected(&mut self.conn, &self.endpoint, &self.opts.target).await?;
                conn.request(|req| Frame::Dedup {
                    req,
                    file_name: name.to_owned(),
                    size: key.size,
                    sha256: digest.to_hex(),
                    desc: desc.to_owned(),
                    dir: dir.to_vec(),
                    on_exists: self.opts.on_exists,
                })
                .await
            }
            .await;
            match attempt {
                Err(e @ ClientError::Unreachable(_)) if !self.endpoint.reached() => return Err(e),
                Err(e) if e.is_retryable() && Instant::now() + backoff < deadline => {
                    self.drop_connection();
                    *reconnects += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                other => break other?,
            }
        };
        match reply {
            Frame::NoMatch { .. } => Ok(None),
            Frame::Deduped {
                upload_id,
                file_name,
                size,
                existing,
                ..
            } => {
                self.journal
                    .put(
                        key,
                        &Entry {
                            upload_id: upload_id.clone(),
                            server: key.server.clone(),
                            path: key.path.clone(),
                            size: key.size,
                            chunk_size: 0,
                            complete: None,
                        },
                    )
                    .map_err(|e| ClientError::local("cannot write the resume journal", e))?;
                self.remember_complete(key, &file_name, digest);
                Ok(Some(Report {
                    status: if existing { "skipped" } else { "deduplicated" },
                    upload_id,
                    file_name,
                    size,
                    sha256: digest.to_hex(),
                    bytes_sent: 0,
                    bytes_skipped: size,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    resumed: false,
                    reconnects: *reconnects,
                    reason: existing
                        .then(|| "the same content is on the server under this name".into()),
                }))
            }
            other => Err(ClientError::Protocol(format!(
                "expected deduped or no_match, got {}",
                other.kind()
            ))),
        }
    }

    /// If the journal says this very file (same server, path, size, mtime) was completed, asks
    /// the server to confirm it (`finish` again with the recorded digest: answered with the
    /// same `finished` while the server still has it) and returns a `skipped` report; nothing
    /// is read from the file or sent. If the server no longer knows it (expired history, a
    /// wiped server), the journal entry goes and the file is uploaded afresh.
    async fn already_there(
        &mut self,
        key: &FileKey,
        started: Instant,
        reconnects: &mut u32,
    ) -> Result<Option<Report>, ClientError> {
        let Some(entry) = self.journal.get(key) else {
            return Ok(None);
        };
        let Some(done) = entry.complete else {
            return Ok(None);
        };
        let Ok(digest) = Digest::parse(&done.sha256) else {
            self.journal.remove(key);
            return Ok(None);
        };
        match self.finish(&entry.upload_id, digest, reconnects).await {
            Ok((file_name, size)) => Ok(Some(Report {
                status: "skipped",
                upload_id: entry.upload_id,
                file_name,
                size,
                sha256: done.sha256,
                bytes_sent: 0,
                bytes_skipped: size,
                elapsed_ms: started.elapsed().as_millis() as u64,
                resumed: false,
                reconnects: *reconnects,
                reason: None,
            })),
            Err(ClientError::Server {
                code: ErrorCode::NotFound | ErrorCode::Expired | ErrorCode::FileDigestMismatch,
                ..
            }) => {
                self.journal.remove(key);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `finish`, reconnecting (and re-sending it) if the connection drops meanwhile; the
    /// server answers a repeated finish of a completed upload with the same reply.
    async fn finish(
        &mut self,
        upload_id: &str,
        digest: Digest,
        reconnects: &mut u32,
    ) -> Result<(String, u64), ClientError> {
        let deadline = Instant::now() + self.opts.reconnect_for;
        let mut backoff = Duration::from_millis(250);
        loop {
            let attempt = async {
                let conn = connected(&mut self.conn, &self.endpoint, &self.opts.target).await?;
                let id = upload_id.to_owned();
                match conn
                    .request(|req| Frame::Finish {
                        req,
                        upload_id: id,
                        sha256: digest.to_hex(),
                    })
                    .await?
                {
                    Frame::Finished {
                        file_name, size, ..
                    } => Ok((file_name, size)),
                    other => Err(ClientError::Protocol(format!(
                        "expected finished, got {}",
                        other.kind()
                    ))),
                }
            }
            .await;
            match attempt {
                Err(e @ ClientError::Unreachable(_)) if !self.endpoint.reached() => return Err(e),
                Err(e) if e.is_retryable() && Instant::now() + backoff < deadline => {
                    self.drop_connection();
                    *reconnects += 1;
                    self.shared.tracker.note(&format!(
                        "ferry: {e}; reconnecting in {} ms",
                        backoff.as_millis()
                    ));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }
}

/// Resumes the journal's upload of this file, or creates a new one (to be published in the
/// folders `dir` under the owner's folder).
async fn open(
    conn: &crate::Connection,
    journal: &Journal,
    key: &FileKey,
    (name, dir, desc): (&str, &[String], &str),
    opts: &crate::Options,
) -> Result<(UploadInfo, bool), ClientError> {
    if let Some(entry) = journal.get(key) {
        match conn.resume(&entry.upload_id).await {
            Ok(upload) if upload.size == key.size => return Ok((upload, true)),
            Ok(_)
            | Err(ClientError::Server {
                code: ErrorCode::NotFound,
                ..
            }) => journal.remove(key),
            Err(ClientError::Server {
                code: ErrorCode::Expired,
                ..
            }) => {
                tracing::warn!(
                    "the earlier upload of {name} expired on the server; starting afresh"
                );
                journal.remove(key);
            }
            Err(e) => return Err(e),
        }
    }
    let limits = conn.limits;
    let chunk_size = opts.chunk_size;
    if chunk_size < limits.min_chunk_size || chunk_size > limits.max_chunk_size {
        return Err(ClientError::Usage(format!(
            "--chunk-size {} is outside this server's limits ({} to {})",
            human(chunk_size),
            human(limits.min_chunk_size),
            human(limits.max_chunk_size)
        )));
    }
    let create = |req| Frame::Create {
        req,
        file_name: name.to_owned(),
        size: key.size,
        chunk_size,
        desc: desc.to_owned(),
        dir: dir.to_vec(),
        on_exists: opts.on_exists,
    };
    let info = match conn.request(create).await? {
        Frame::Created { upload, .. } => upload,
        other => {
            return Err(ClientError::Protocol(format!(
                "expected created, got {}",
                other.kind()
            )))
        }
    };
    let entry = Entry {
        upload_id: info.upload_id.clone(),
        server: key.server.clone(),
        path: key.path.clone(),
        size: key.size,
        chunk_size: info.chunk_size,
        complete: None,
    };
    journal
        .put(key, &entry)
        .map_err(|e| ClientError::local("cannot write the resume journal", e))?;
    Ok((info, false))
}

fn layout_of(info: &UploadInfo) -> Result<ChunkLayout, ClientError> {
    ChunkLayout::new(info.size, info.chunk_size).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// What the pump reads from and reports to, the same across reconnects.
struct Io<'a> {
    file: &'a Arc<File>,
    /// Payload bytes written to streams, this run.
    sent: &'a Arc<AtomicU64>,
    limiter: Option<&'a Arc<RateLimiter>>,
    /// Chunk streams sending at once across the command's files.
    window: Option<&'a Arc<tokio::sync::Semaphore>>,
    progress: &'a FileProgress,
    /// No ack for this long while chunks are outstanding ends the pump with an error.
    stall: Duration,
}

/// Sends chunks until every one is acknowledged.
async fn pump(
    conn: &mut crate::Connection,
    active: &mut Active,
    io: &Io<'_>,
    last_progress: &mut Instant,
) -> Result<(), ClientError> {
    let Io {
        file,
        sent,
        limiter,
        window,
        progress,
        stall,
    } = *io;
    // This upload's streams that hold a place in the window (the others wait for one).
    let sending = Arc::new(AtomicUsize::new(0));
    let quic = conn.quic().clone();
    let layout = *active.sender.layout();
    let upload_id = active.info.upload_id.clone();
    let mut tasks = JoinSet::new();
    let mut last_ack = Instant::now();
    // The latest rejection, to say why acks stopped if they do (a full disk, say).
    let mut last_reject: Option<(ErrorCode, String)> = None;
    loop {
        let now = Instant::now();
        while let Some(index) = active.sender.poll_send(now) {
            let job = ChunkJob {
                quic: quic.clone(),
                file: file.clone(),
                upload_id: upload_id.clone(),
                index: index.get(),
                span: layout.span(index),
                limiter: limiter.cloned(),
                sent: sent.clone(),
                window: window.cloned(),
                sending: sending.clone(),
            };
            tasks.spawn(async move { (job.index, job.send().await) });
        }
        if active.sender.is_complete() {
            return Ok(());
        }
        let retry = active.sender.poll_timeout();
        tokio::select! {
            Some(joined) = tasks.join_next() => {
                if let Ok((index, Err(e))) = joined {
                    active.sender.handle_send_failed(index);
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    if quic.close_reason().is_some() {
                        return Err(conn.lost());
                    }
                }
            }
            event = conn.events.recv() => match event {
                Some(Frame::Ack { upload_id: id, chunks }) if id == upload_id => {
                    if active.sender.handle_ack(&chunks)? > 0 {
                        last_ack = Instant::now();
                        *last_progress = last_ack;
                        progress.set_safe(active.sender.acked_bytes());
                    }
                }
                Some(Frame::Reject { upload_id: id, index, code, message }) if id == upload_id => {
                    tracing::debug!(index, %code, message, "chunk rejected");
                    active.sender.handle_reject(index, code, &message, Instant::now())?;
                    last_reject = Some((code, message));
                }
                Some(Frame::Detached { message, .. }) => return Err(ClientError::TakenOver(message)),
                Some(Frame::Error { code, message, .. }) => return Err(ClientError::Server { code, message }),
                Some(_) => {}
                None => return Err(conn.lost()),
            },
            _ = tokio::time::sleep_until(retry.unwrap_or(now).into()), if retry.is_some() => {}
            _ = tokio::time::sleep_until((last_ack + stall).into()), if active.sender.in_flight() > 0 || retry.is_some() => {
                // Chunks still queued for a place in the window shared with other files are
                // not a silent server.
                if sending.load(Ordering::Relaxed) == 0 && active.sender.in_flight() > 0 {
                    last_ack = Instant::now();
                    continue;
                }
                let silence = format!("no acknowledgement for {} s", stall.as_secs());
                return Err(match last_reject {
                    Some((code, message)) => ClientError::Server { code, message: format!("{message} ({silence})") },
                    None => ClientError::Connection(silence),
                });
            }
        }
    }
}

/// SHA-256 of the first `size` bytes of `file`, read sequentially.
fn hash_file(file: &File, size: u64) -> std::io::Result<Digest> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hasher.into())
}

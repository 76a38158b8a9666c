//! The upload pipeline: open or resume the upload, keep `parallel` chunk streams busy while
//! the server's acks come back, re-send what it rejects, ride through lost connections by
//! reconnecting and resuming, then finish with the content hash.
//!
//! The client reads each byte once: each chunk is read, hashed and sent piece by piece when
//! the window has room, and its digest follows its payload. The content hash sent in `finish`
//! is SHA-256 over those digests (kept beside the journal entry), so finishing reads nothing
//! again. `--sha256` adds today's plain whole-file digest, at the cost of a second,
//! sequential read and hash of the file in the blocking pool while the upload runs.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::units::human;
use ferry_proto::{
    ChunkLayout, ChunkSet, Digest, ErrorCode, Frame, OnExists, UploadInfo, UploadSender,
};
use serde::Serialize;

use crate::digests::{hash_file, ChunkDigests};
use crate::journal::{Entry, FileKey, Journal};
use crate::progress::FileProgress;
pub use crate::stream::send_chunk;
use crate::{connected, Backoff, Client, ClientError};

mod done;
mod lookup;
mod pump;

use lookup::{Hashes, Held};

use pump::{pump, Io};

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
    /// The content hash: SHA-256 over the chunk digests (see `docs/protocol.md`); `ferry hash`
    /// computes it for any file.
    pub content_hash: String,
    /// The plain SHA-256 of the whole file (`sha256sum`'s), with `--sha256` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Payload bytes written to chunk streams in this run, re-sends included.
    pub bytes_sent: u64,
    /// Bytes the server held already when this run started.
    pub bytes_skipped: u64,
    /// Bytes read a second time for the content hash: chunks the server held whose digests
    /// this machine had not kept (its journal was lost or is from an older `ferry`); 0
    /// normally.
    pub bytes_rehashed: u64,
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
    /// The digests of the chunks as sent, for the content hash; chunk streams record them.
    digests: Arc<std::sync::Mutex<ChunkDigests>>,
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

    /// What `lookup` found, acted on: the same content published is a `skipped` file; an
    /// unfinished upload of this very file goes into the journal, to be resumed; a different
    /// file under the name follows `--on-exists`.
    fn settle(
        &self,
        held: Held,
        key: &FileKey,
        shown: &str,
        started: Instant,
        hashes: &lookup::Hashes,
    ) -> Result<Option<Report>, ClientError> {
        match held {
            Held::Same(found) => {
                let digest = Digest::parse(&found.content_hash)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                let entry = Entry {
                    upload_id: found.upload_id.clone(),
                    server: key.server.clone(),
                    path: key.path.clone(),
                    size: key.size,
                    chunk_size: found.chunk_size,
                    complete: None,
                };
                self.journal
                    .put(key, &entry)
                    .map_err(|e| ClientError::local("cannot write the resume journal", e))?;
                self.remember_complete(key, &found.file_name, digest);
                let plain = hashes
                    .get(&found.chunk_size)
                    .map(|(_, plain)| plain.to_hex());
                Ok(Some(Report {
                    sha256: self.opts.sha256.then_some(plain).flatten(),
                    reason: Some(format!(
                        "already on the server as {} (the same content)",
                        found.file_name
                    )),
                    ..Report::held(
                        "skipped",
                        (found.upload_id, found.file_name, key.size),
                        found.content_hash,
                        started,
                        0,
                    )
                }))
            }
            Held::Resume {
                upload_id,
                chunk_size,
                digests,
            } => {
                let entry = Entry {
                    upload_id,
                    server: key.server.clone(),
                    path: key.path.clone(),
                    size: key.size,
                    chunk_size,
                    complete: None,
                };
                self.journal
                    .put(key, &entry)
                    .map_err(|e| ClientError::local("cannot write the resume journal", e))?;
                let count = ferry_proto::ChunkLayout::new(key.size, chunk_size)
                    .map(|l| l.count())
                    .unwrap_or(0);
                let mut kept = self.journal.digests(key, count);
                for (index, digest) in digests {
                    kept.record(index, digest);
                }
                self.shared.tracker.note(&format!(
                    "ferry: {shown}: the server holds part of this file from an earlier upload; resuming it"
                ));
                Ok(None)
            }
            Held::Different(published) => match self.opts.on_exists {
                OnExists::Skip => Ok(Some(Report {
                    reason: Some(format!(
                        "a different file is on the server as {published} (--on-exists skip)"
                    )),
                    ..Report::held(
                        "skipped",
                        (String::new(), shown.to_owned(), key.size),
                        String::new(),
                        started,
                        0,
                    )
                })),
                OnExists::Fail => Err(ClientError::Server {
                    code: ErrorCode::AlreadyExists,
                    message: format!(
                        "a different file is on the server as {published} (--on-exists fail)"
                    ),
                }),
                OnExists::Rename => {
                    self.shared.tracker.note(&format!(
                        "ferry: {shown}: a different file is on the server as {published}; this one is published under a new name (--on-exists rename)"
                    ));
                    Ok(None)
                }
            },
            Held::Nothing => Ok(None),
        }
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
        let scope = self.scope().await?;
        let key = FileKey::of(&scope, path)
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
        // A file this machine has no record of: the server says what it holds of it.
        let mut hashes = Hashes::new();
        if self.journal.get(&key).is_none() {
            let held = self
                .ask_server(&key, &file, (&name, dir), &mut hashes, &mut reconnects)
                .await?;
            if let Some(report) = self.settle(held, &key, &shown, started, &hashes)? {
                return Ok(report);
            }
        }
        // With --dedup, a file the server never saw from here is hashed first (one read, both
        // digests) and offered by content.
        let mut known_plain = None;
        if self.opts.dedup && self.journal.get(&key).is_none() {
            let (content, plain) = self
                .hashes(&key, &file, self.opts.chunk_size, &mut hashes)
                .await?;
            let ask = (name.as_str(), dir, desc);
            match self
                .dedup(&key, ask, (content, plain), started, &mut reconnects)
                .await
            {
                Ok(Some(report)) => return Ok(report),
                Ok(None) => known_plain = Some(plain),
                Err(e) => return self.name_taken(e, &shown, &key, started),
            }
        }
        // The plain digest only when asked for: a second read and hash of every byte.
        let plain = self.opts.sha256.then(|| {
            let (file, size) = (file.clone(), key.size);
            tokio::task::spawn_blocking(move || match known_plain {
                Some(digest) => Ok(digest),
                None => hash_file(&file, size, u64::MAX).map(|(_, plain)| plain),
            })
        });
        let sent = progress.sent.clone();
        let mut active: Option<Active> = None;
        let mut skipped = None;
        let mut resumed = false;
        let mut last_progress = Instant::now();
        let mut backoff = Backoff::new();
        let finished = loop {
            let attempt = async {
                let conn = connected(&mut self.conn, &self.endpoint, &self.opts.target).await?;
                backoff.welcomed();
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
                            digests: Arc::new(std::sync::Mutex::new(
                                self.journal.digests(&key, layout.count()),
                            )),
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
                    max_parallel: self.opts.max_parallel.max(self.opts.parallel),
                    progress: &progress,
                    tracker: &self.shared.tracker,
                    stall: STALL_TIMEOUT.min(self.opts.reconnect_for),
                    paths: self.endpoint.paths(),
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
                    let wait = backoff.next();
                    self.shared.tracker.note(&format!(
                        "ferry: {e}; reconnecting in {} ms",
                        wait.as_millis()
                    ));
                    tokio::time::sleep(wait).await;
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
        let upload_id = finished.info.upload_id.clone();
        let unreadable = |e| ClientError::local(format!("cannot read {}", path.display()), e);
        let (digest, reread) = {
            let (digests, file) = (finished.digests.clone(), file.clone());
            let layout = *finished.sender.layout();
            tokio::task::spawn_blocking(move || {
                let mut digests = digests.lock().unwrap_or_else(|p| p.into_inner());
                digests.content_hash(&file, &layout)
            })
            .await
            .map_err(|e| ClientError::Local(e.to_string()))?
            .map_err(unreadable)?
        };
        if reread > 0 {
            self.shared.tracker.note(&format!(
                "ferry: {}: read {} again for the content hash (chunks the server held whose digests this machine had not kept)",
                path.display(),
                human(reread)
            ));
        }
        let plain = match plain {
            Some(task) => Some(
                task.await
                    .map_err(|e| ClientError::Local(e.to_string()))?
                    .map_err(unreadable)?,
            ),
            None => None,
        };
        // A file written to during the upload must not be published: what the server holds may
        // mix old and new bytes. Size and modification time tell.
        let now = FileKey::of(&key.server, path).ok();
        if now
            .as_ref()
            .is_none_or(|k| k.size != key.size || k.mtime_ns != key.mtime_ns)
        {
            self.discard(&upload_id, &key).await;
            return Err(ClientError::Local(format!(
                "{} changed while it was being uploaded; the upload was discarded, nothing was published",
                path.display()
            )));
        }
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
            content_hash: digest.to_hex(),
            sha256: plain.map(|d| d.to_hex()),
            bytes_sent: sent.load(Ordering::Relaxed),
            bytes_skipped: skipped.unwrap_or(0),
            bytes_rehashed: reread,
            elapsed_ms: started.elapsed().as_millis() as u64,
            resumed,
            reconnects,
            reason: None,
        })
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
        deferred: false,
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

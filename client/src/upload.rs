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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::{ChunkLayout, ChunkSet, Digest, ErrorCode, Frame, UploadInfo, UploadSender};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use crate::journal::{Completed, Entry, FileKey, Journal};
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
    pub status: &'static str,
    pub upload_id: String,
    /// The name the server published the file under.
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
}

/// The upload being driven, kept across reconnects.
struct Active {
    info: UploadInfo,
    sender: UploadSender,
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
        let mut reconnects = 0;
        if let Some(report) = self.already_there(&key, started, &mut reconnects).await? {
            return Ok(report);
        }
        let hashing = {
            let file = file.clone();
            let size = key.size;
            tokio::task::spawn_blocking(move || hash_file(&file, size))
        };
        let sent = Arc::new(AtomicU64::new(0));
        let progress = crate::progress::bar(self.opts.progress, key.size, &name);
        // Aborted on drop, so the lines stop with the upload, whichever way it ends.
        let _lines = (self.opts.progress && crate::progress::plain()).then(|| {
            AbortOnDrop(crate::progress::lines(
                self.opts.progress_interval,
                name.clone(),
                key.size,
                sent.clone(),
                progress.clone(),
            ))
        });
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
                        let (info, was_resumed) = open(
                            conn,
                            &self.journal,
                            &key,
                            (&name, dir),
                            desc,
                            self.opts.chunk_size,
                        )
                        .await?;
                        resumed = was_resumed;
                        let layout = layout_of(&info)?;
                        let durable = ChunkSet::from_wire(&info.durable, layout.count())
                            .map_err(|e| ClientError::Protocol(e.to_string()))?;
                        let held = *skipped.get_or_insert(layout.bytes_in(&durable));
                        if held > 0 {
                            progress.set_message(format!(
                                "{name} (resumed, {} on the server)",
                                indicatif::HumanBytes(held)
                            ));
                        }
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
                progress.set_position(a.sender.layout().bytes_in(&durable));
                // The jump to what the server holds is not transfer: rate and ETA start here.
                progress.reset_eta();
                let io = Io {
                    file: &file,
                    sent: &sent,
                    limiter: self.limiter.as_ref(),
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
                    progress.suspend(|| {
                        eprintln!("ferry: {e}; reconnecting in {} ms", backoff.as_millis())
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) if e.is_retryable() => {
                    return Err(ClientError::Connection(format!(
                        "gave up after {} s without progress: {e}",
                        self.opts.reconnect_for.as_secs()
                    )))
                }
                Err(e) => return Err(e),
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
            let id = finished.info.upload_id.clone();
            if let Ok(conn) = connected(&mut self.conn, &self.endpoint, &self.opts.target).await {
                let _ = conn
                    .request(|req| Frame::Abort { req, upload_id: id })
                    .await;
            }
            self.journal.remove(&key);
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
                if let Ok(conn) = connected(&mut self.conn, &self.endpoint, &self.opts.target).await
                {
                    let id = upload_id.clone();
                    let _ = conn
                        .request(|req| Frame::Abort { req, upload_id: id })
                        .await;
                }
                self.journal.remove(&key);
                return Err(ClientError::Local(format!(
                    "{} changed during the upload ({message}); the upload was discarded, run again to upload it afresh",
                    path.display()
                )));
            }
            Err(e) => return Err(e),
        };
        // Remembered as complete: a re-run confirms it with the server and sends nothing.
        if let Some(mut entry) = self.journal.get(&key) {
            entry.complete = Some(Completed {
                file_name: file_name.clone(),
                sha256: digest.to_hex(),
            });
            if let Err(e) = self.journal.put(&key, &entry) {
                eprintln!(
                    "ferry: cannot record {} as complete in the journal: {e}",
                    path.display()
                );
            }
        }
        progress.finish_and_clear();
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
        })
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
                    eprintln!("ferry: {e}; reconnecting in {} ms", backoff.as_millis());
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
    (name, dir): (&str, &[String]),
    desc: &str,
    chunk_size: u64,
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
                eprintln!(
                    "ferry: the earlier upload of {name} expired on the server; starting afresh"
                );
                journal.remove(key);
            }
            Err(e) => return Err(e),
        }
    }
    let create = |req| Frame::Create {
        req,
        file_name: name.to_owned(),
        size: key.size,
        chunk_size,
        desc: desc.to_owned(),
        dir: dir.to_vec(),
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

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the pump reads from and reports to, the same across reconnects.
struct Io<'a> {
    file: &'a Arc<File>,
    /// Payload bytes written to streams, this run.
    sent: &'a Arc<AtomicU64>,
    limiter: Option<&'a Arc<RateLimiter>>,
    progress: &'a indicatif::ProgressBar,
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
        progress,
        stall,
    } = *io;
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
                        progress.set_position(active.sender.acked_bytes());
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

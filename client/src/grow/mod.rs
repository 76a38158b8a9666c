//! Uploads whose length is not known when they start (protocol 9): a file still being written
//! (`ferry upload --follow FILE`) and standard input (`ferry upload - --name NAME`).
//!
//! The upload is created `deferred`; each whole chunk is sent as soon as the source holds it,
//! and the server acknowledges it once it is durable. When the source ends, every chunk still
//! in flight is acknowledged, then `set_length` declares the length, the last (short) chunk
//! follows, and `finish` carries the content hash and the length.
//!
//! - **A followed file** may be rewritten behind the writer's position (an MP4's `moov`, a WAV
//!   header's sizes, an MXF footer). At the end the whole file is hashed once more, chunk by
//!   chunk, against the digests sent; a chunk that changed is forgotten on the server
//!   (`rewrite`) and sent again, so the published file equals the final source byte for byte.
//!   The source has ended when the writer closed it (inotify `IN_CLOSE_WRITE`) and it has not
//!   grown since, or when it has not grown for `--idle`. Interrupted, the same command resumes:
//!   the server's digests of what it holds are checked against the file.
//! - **Standard input** cannot be read twice. Each chunk read is kept in a spool file until the
//!   server acknowledges it (at most the window's chunks: `parallel` × chunk size), so a lost
//!   connection or a restarted server costs nothing: the client reconnects and re-sends from
//!   the spool. A client that dies cannot re-read the pipe: the next run with the same name sends
//!   what the spool kept, says how much of the stream the server holds and that the rest is lost,
//!   and exits with [`EXIT_STREAM_LOST`].
//!
//! Here: the upload from start to end and its end game (the length declared, changed chunks
//! sent again, `finish`); `begin.rs` how it is created or found again, `send.rs` the sending
//! loop, `feed.rs` the sources and the spool, `rescue.rs` a stream whose client died,
//! `read.rs` reading an upload back, `record.rs` the resume record.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proto::{ChunkSet, ContentHasher, Digest, ErrorCode, Frame, UploadInfo};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use crate::{Client, ClientError, Report};

mod begin;
mod feed;
mod read;
mod record;
mod rescue;
mod send;

use feed::{changed_chunks, Feed, Spool};
pub use read::ReadBack;
use record::{JournalFile, Record};

/// Exit status of `ferry upload -` when an earlier run of the same stream died: what it had
/// not sent is gone with its pipe.
pub const EXIT_STREAM_LOST: u8 = 3;

/// How often the source is looked at for growth (and inotify's events read).
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// With chunks in flight and no ack for this long, the connection is treated as lost.
const STALL: Duration = Duration::from_secs(60);
/// Rejected chunks sent again in one run before giving up, and the pause before sending again.
const MAX_REJECTS: u32 = 1000;
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Chunks named in one `rewrite` (the protocol's bound).
const REWRITE_BATCH: usize = ferry_proto::MAX_REWRITE_PER_FRAME;

/// Where the bytes come from.
pub enum Source {
    /// A file that may still be growing; ends after `idle` without growth, or once its writer
    /// closed it and it has not grown since.
    Follow {
        path: PathBuf,
        idle: Duration,
        /// Only `idle` ends it (a writer that closes and reopens the file to append).
        ignore_close: bool,
    },
    /// Standard input; unacknowledged chunks are kept in `spool` (a folder).
    Stdin { spool: PathBuf },
}

/// A growing upload to make.
pub struct Growing {
    pub source: Source,
    /// The name to publish under and its folders, outermost first.
    pub name: String,
    pub dir: Vec<String>,
    pub desc: String,
    /// A progress line on stderr this often (`--progress-interval`).
    pub progress_every: Duration,
}

/// How the run ended, when it did not publish.
#[derive(Debug)]
pub enum Outcome {
    Published(Report),
    /// An earlier `ferry upload -` of this name died: `held` bytes of its stream are on the
    /// server (`prefix` of them contiguous from the start), in upload `upload_id`, unfinished.
    StreamLost {
        upload_id: String,
        held: u64,
        prefix: u64,
    },
}

/// Sending state that survives reconnects.
struct State {
    id: String,
    cs: u64,
    /// Chunks the server acknowledged (durable there).
    acked: ChunkSet,
    /// Chunks sent on the current connection and not yet acknowledged.
    unacked: BTreeSet<u64>,
    /// Chunks to send (again): new, rejected, rewritten, or lost with a connection.
    todo: BTreeSet<u64>,
    /// The digest of each chunk as last sent (or, resumed, as the server recorded it).
    digests: Arc<Mutex<BTreeMap<u64, Digest>>>,
    /// Payload bytes written to streams in this run.
    sent: Arc<AtomicU64>,
    /// The source's final length, once it ended.
    end: Option<u64>,
    /// The length is declared on the server (`set_length` answered).
    declared: bool,
    resumed: bool,
    reconnects: u32,
    /// Chunks the server rejected in this run.
    rejects: u32,
    /// The connection (quinn's stable id) the upload was created or last resumed on.
    attached_on: Option<usize>,
    /// Progress lines: how often, and when the last was printed.
    progress_every: Duration,
    reported: Instant,
    /// Bytes the server held when this run started.
    skipped: u64,
}

impl State {
    /// Bytes of chunk `index`: whole, or the rest of a known end.
    fn len_of(&self, index: u64) -> u64 {
        match self.end {
            Some(end) => end.saturating_sub(index * self.cs).min(self.cs),
            None => self.cs,
        }
    }
}

impl Client {
    /// Uploads a growing source (see the module's notes).
    pub async fn upload_growing(&mut self, job: Growing) -> Result<Outcome, ClientError> {
        let started = Instant::now();
        let scope = self.scope().await?;
        let key = match &job.source {
            Source::Follow { path, .. } => {
                let path = std::fs::canonicalize(path).map_err(|e| {
                    ClientError::local(format!("cannot read {}", path.display()), e)
                })?;
                format!("follow\0{}", path.display())
            }
            Source::Stdin { .. } => format!("stdin\0{}\0{}", job.dir.join("/"), job.name),
        };
        let journal = JournalFile::new(&self.opts.state_dir, &scope, &key);
        let earlier = journal.read();
        let mut state = match &earlier {
            Some(record) => self.reopen(record).await?,
            None => None,
        };
        if let (Source::Stdin { spool }, Some(state)) = (&job.source, state.as_mut()) {
            // The stream this upload was fed from is gone with the process that read it.
            let spool = Spool::open(spool, &journal.stem)?;
            return self.rescue(state, spool, &journal).await;
        }
        if state.is_none() && earlier.is_some() {
            journal.remove();
        }
        // A followed file is opened (and checked to be one) before anything is created.
        let followed = match &job.source {
            Source::Follow {
                path,
                idle,
                ignore_close,
            } => Some(Feed::follow(path, *idle, *ignore_close)?),
            Source::Stdin { .. } => None,
        };
        let mut state = match state {
            Some(state) => state,
            None => {
                let state = self.create_growing(&job).await?;
                journal.write(&Record {
                    upload_id: state.id.clone(),
                })?;
                state
            }
        };
        let mut feed = match (followed, &job.source) {
            (Some(feed), _) => feed,
            // Standard input is cut in the upload's chunk size (the server's answer is the
            // authority); a new stream starts with an empty spool: whatever an older one left
            // there is not its (a crash between its record's removal and its spool's).
            (None, Source::Stdin { spool }) => {
                Feed::stdin(Spool::fresh(spool, &journal.stem)?, state.cs)
            }
            (None, Source::Follow { .. }) => unreachable!("a followed file has its feed"),
        };
        if state.resumed {
            self.check_held(&mut state, &feed).await?;
        }
        state.progress_every = job.progress_every;
        let what = match &job.source {
            Source::Follow { path, .. } => path.display().to_string(),
            Source::Stdin { .. } => "standard input".to_owned(),
        };
        self.shared.tracker.note(&format!(
            "ferry: {what}: {} upload {} as {:?}{}",
            if state.resumed {
                "resuming"
            } else {
                "sending to"
            },
            state.id,
            job.name,
            match &feed {
                Feed::File { .. } => ", following the file as it grows",
                Feed::Stdin { .. } => "",
            }
        ));
        let published = self.drive(&mut state, &mut feed).await?;
        journal.remove();
        if let Feed::Stdin { spool, .. } = &feed {
            spool.remove_all();
        }
        Ok(Outcome::Published(Report {
            status: "complete",
            upload_id: state.id.clone(),
            file_name: published.0,
            size: published.1,
            content_hash: published.2,
            sha256: None,
            bytes_sent: state.sent.load(Ordering::Relaxed),
            bytes_skipped: state.skipped,
            bytes_rehashed: 0,
            elapsed_ms: started.elapsed().as_millis() as u64,
            resumed: state.resumed,
            reconnects: state.reconnects,
            reason: None,
        }))
    }

    /// Tells the server to forget `chunks` and queues them to be sent again (those the source
    /// still holds whole; a chunk past the end is sent as the tail).
    async fn rewrite(&mut self, state: &mut State, chunks: Vec<u64>) -> Result<(), ClientError> {
        for batch in chunks.chunks(REWRITE_BATCH) {
            let (upload_id, chunks) = (state.id.clone(), batch.to_vec());
            match self
                .connection()
                .await?
                .request(|req| Frame::Rewrite {
                    req,
                    upload_id,
                    chunks,
                })
                .await?
            {
                Frame::Rewritten { .. } => {}
                other => return Err(unexpected("rewritten", &other)),
            }
            for &index in batch {
                state.acked.remove(index);
                state
                    .digests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&index);
                state.todo.insert(index);
            }
        }
        if !chunks.is_empty() {
            self.shared.tracker.note(&format!(
                "ferry: {} chunk(s) changed after they were sent; sending them again",
                chunks.len()
            ));
        }
        Ok(())
    }

    /// The source ended and every chunk sent is acknowledged. A followed file is checked once
    /// more for rewritten chunks (then `None`: send them first); else the length is declared,
    /// the tail sent, and the upload finished.
    async fn end_game(
        &mut self,
        state: &mut State,
        feed: &Feed,
    ) -> Result<Option<(String, u64, String)>, ClientError> {
        let end = state.end.expect("the end is known");
        let whole = end / state.cs;
        let tail = end % state.cs;
        if let (Feed::File { file, .. }, false) = (feed, state.declared) {
            let held: Vec<u64> = state.acked.iter().collect();
            let started = Instant::now();
            let changed = changed_chunks(file, state, &held, whole).await?;
            tracing::info!(
                chunks = held.len(),
                changed = changed.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "checked the file against the chunks sent"
            );
            if !changed.is_empty() {
                self.rewrite(state, changed).await?;
                return Ok(None);
            }
        }
        let missing = (0..whole).find(|i| !state.acked.contains(*i));
        if let Some(index) = missing {
            state.todo.insert(index);
            return Ok(None);
        }
        let upload_id = state.id.clone();
        let info = match self
            .connection()
            .await?
            .request(|req| Frame::SetLength {
                req,
                upload_id,
                size: end,
            })
            .await?
        {
            Frame::LengthSet { upload, .. } => upload,
            other => return Err(unexpected("length_set", &other)),
        };
        // The file was checked whole before this: the length stands, and so does what is held.
        state.declared = true;
        if tail > 0 && !state.acked.contains(whole) {
            // The last, short chunk: now that the layout has it.
            if info.chunk_count != whole + 1 {
                return Err(ClientError::Protocol(format!(
                    "length_set says {} chunks for {end} bytes",
                    info.chunk_count
                )));
            }
            state.todo.insert(whole);
            return Ok(None);
        }
        let count = whole + u64::from(tail > 0);
        let content_hash = {
            let digests = state.digests.lock().unwrap_or_else(|p| p.into_inner());
            let mut hasher = ContentHasher::new();
            for index in 0..count {
                let digest = digests
                    .get(&index)
                    .ok_or_else(|| ClientError::Protocol(format!("no digest of chunk {index}")))?;
                hasher.push(digest);
            }
            hasher.finish()
        };
        let upload_id = state.id.clone();
        let hex = content_hash.to_hex();
        let ask = |req| Frame::Finish {
            req,
            upload_id,
            content_hash: hex,
            size: Some(end),
        };
        match self.connection().await?.request(ask).await? {
            Frame::Finished {
                file_name,
                size,
                content_hash,
                ..
            } => Ok(Some((file_name, size, content_hash))),
            other => Err(unexpected("finished", &other)),
        }
    }
}

fn unexpected(wanted: &str, got: &Frame) -> ClientError {
    ClientError::Protocol(format!("expected {wanted}, got {}", got.kind()))
}

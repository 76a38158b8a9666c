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

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proto::{ChunkSet, ContentHasher, Digest, ErrorCode, Frame, UploadInfo};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use crate::{Client, ClientError, Report};

mod feed;
mod read;
mod record;
mod rescue;

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

    /// `create` of unknown length.
    async fn create_growing(&mut self, job: &Growing) -> Result<State, ClientError> {
        let (name, dir, desc) = (job.name.clone(), job.dir.clone(), job.desc.clone());
        let (chunk_size, on_exists) = (self.opts.chunk_size, self.opts.on_exists);
        let create = |req| Frame::Create {
            req,
            file_name: name,
            size: 0,
            chunk_size,
            desc,
            dir,
            on_exists,
            deferred: true,
        };
        let conn = self.connection().await?;
        let info = match conn.request(create).await? {
            Frame::Created { upload, .. } => upload,
            other => return Err(unexpected("created", &other)),
        };
        let mut state = State::new(&info, false);
        state.attached_on = Some(conn.quic().stable_id());
        Ok(state)
    }

    /// The upload of an earlier run, if the server still has it unfinished.
    async fn reopen(&mut self, record: &Record) -> Result<Option<State>, ClientError> {
        let conn = self.connection().await?;
        let attached_on = conn.quic().stable_id();
        let info = match conn.resume(&record.upload_id).await {
            Ok(info) => info,
            Err(ClientError::Server {
                code: ErrorCode::NotFound | ErrorCode::Expired,
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !info.deferred {
            // Published already, or its length declared by a run that died just before
            // finishing: this run starts afresh (the other expires unless resumed otherwise).
            return Ok(None);
        }
        let mut state = State::new(&info, true);
        state.attached_on = Some(attached_on);
        // What the server holds, with its digests: the content hash needs them, and a followed
        // file is checked against them.
        let mut from = 0;
        for _ in 0..1_000_000 {
            let upload_id = state.id.clone();
            let page = self
                .connection()
                .await?
                .request(|req| Frame::Digests {
                    req,
                    upload_id,
                    from,
                })
                .await?;
            let Frame::DigestPage { chunks, next, .. } = page else {
                return Err(unexpected("digest_page", &page));
            };
            let mut digests = state.digests.lock().unwrap_or_else(|p| p.into_inner());
            for (index, hex) in chunks {
                let digest =
                    Digest::parse(&hex).map_err(|e| ClientError::Protocol(e.to_string()))?;
                digests.insert(index, digest);
            }
            match next {
                Some(next) if next > from => from = next,
                _ => break,
            }
        }
        state.skipped = state.acked.len() * state.cs;
        Ok(Some(state))
    }

    /// A resumed followed file: the chunks the server holds are compared with the file's, and
    /// those that differ (rewritten since) are forgotten there to be sent again.
    async fn check_held(&mut self, state: &mut State, feed: &Feed) -> Result<(), ClientError> {
        let Feed::File { file, path, .. } = feed else {
            return Ok(());
        };
        let len = file
            .metadata()
            .map_err(|e| ClientError::local(format!("cannot read {}", path.display()), e))?
            .len();
        let whole = len / state.cs;
        let held: Vec<u64> = state.acked.iter().collect();
        let changed = changed_chunks(file, state, &held, whole).await?;
        self.rewrite(state, changed).await
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

    /// Sends until the source ends and the upload is published; reconnects and resumes on a
    /// lost connection for up to `--reconnect-for` without progress. Returns the published
    /// name, size and content hash.
    async fn drive(
        &mut self,
        state: &mut State,
        feed: &mut Feed,
    ) -> Result<(String, u64, String), ClientError> {
        let mut progress_at = Instant::now();
        let mut wait = Duration::from_millis(250);
        // Set once a connection was lost: every later round starts by resuming the upload on a
        // new connection (chunks are sent only on a connection that has it attached).
        let mut lost = false;
        loop {
            if lost {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                self.conn = None;
                let info = match self.connection().await {
                    Ok(conn) => {
                        state.attached_on = Some(conn.quic().stable_id());
                        conn.resume(&state.id).await
                    }
                    Err(e) => Err(e),
                };
                match info {
                    Ok(info) => {
                        state.reconnects += 1;
                        state.rebuild(&info, feed);
                    }
                    Err(e)
                        if e.is_retryable() && progress_at.elapsed() < self.opts.reconnect_for =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let acked_before = state.acked.len();
            let result = self.drive_once(state, feed).await;
            if state.acked.len() > acked_before {
                progress_at = Instant::now();
                wait = Duration::from_millis(250);
            }
            match result {
                Ok(done) => return Ok(done),
                Err(e) if e.is_retryable() && progress_at.elapsed() < self.opts.reconnect_for => {
                    self.shared
                        .tracker
                        .event(&format!("ferry: {e}; reconnecting"));
                    lost = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One connection's worth of `drive`.
    async fn drive_once(
        &mut self,
        state: &mut State,
        feed: &mut Feed,
    ) -> Result<(String, u64, String), ClientError> {
        let window = self.opts.parallel.max(1);
        let limiter = self.limiter.clone();
        let mut streams: JoinSet<(u64, Result<(), ClientError>)> = JoinSet::new();
        let mut tick = tokio::time::interval(LOOK_EVERY);
        let mut last_ack = Instant::now();
        // After a rejection, sending waits a moment (a chunk still arriving, a store recovering).
        let mut pause_until = Instant::now();
        loop {
            feed.look(state).await?;
            // The source ended and everything of it is acknowledged: the end game.
            if state.end.is_some()
                && state.unacked.is_empty()
                && state.todo.is_empty()
                && streams.is_empty()
            {
                if let Some(done) = self.end_game(state, feed).await? {
                    return Ok(done);
                }
                continue;
            }
            // Chunks go only on the connection the upload was created or resumed on: one made
            // since (a request's silent reconnect) has not attached it.
            let conn = match self.conn.as_mut() {
                Some(conn)
                    if conn.quic().close_reason().is_none()
                        && Some(conn.quic().stable_id()) == state.attached_on =>
                {
                    conn
                }
                Some(conn) if conn.quic().close_reason().is_some() => return Err(conn.lost()),
                _ => {
                    return Err(ClientError::Connection(
                        "the upload is not attached to this connection".into(),
                    ))
                }
            };
            while state.unacked.len() < window && Instant::now() >= pause_until {
                let Some(index) = state.todo.pop_first() else {
                    break;
                };
                let data = match feed
                    .chunk(index, index * state.cs, state.len_of(index))
                    .await
                {
                    Ok(data) => data,
                    Err(e) => {
                        state.todo.insert(index);
                        return Err(e);
                    }
                };
                state.unacked.insert(index);
                let (quic, id, digests, sent) = (
                    conn.quic().clone(),
                    state.id.clone(),
                    state.digests.clone(),
                    state.sent.clone(),
                );
                let limiter = limiter.clone();
                streams.spawn(async move {
                    let digest = match tokio::task::spawn_blocking({
                        let data = data.clone();
                        move || Digest::from(Sha256::new_with_prefix(&data))
                    })
                    .await
                    {
                        Ok(digest) => digest,
                        Err(e) => return (index, Err(ClientError::Local(e.to_string()))),
                    };
                    // Recorded before the stream ends, so before the server can acknowledge it.
                    digests
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(index, digest);
                    let result = crate::stream::send_chunk(
                        &quic,
                        &id,
                        index,
                        data,
                        digest,
                        limiter.as_deref(),
                        &sent,
                    )
                    .await;
                    (index, result)
                });
            }
            let mut acked_now = Vec::new();
            let mut read = None;
            let stdin = feed.wants(window);
            let reading = stdin.is_some();
            tokio::select! {
                next = async { stdin.expect("guarded").recv().await }, if reading => read = Some(next),
                Some(joined) = streams.join_next() => {
                    if let Ok((index, Err(e))) = joined {
                        state.unacked.remove(&index);
                        if !state.acked.contains(index) {
                            state.todo.insert(index);
                        }
                        if !e.is_retryable() {
                            return Err(e);
                        }
                        if conn.quic().close_reason().is_some() {
                            return Err(conn.lost());
                        }
                    }
                }
                event = conn.events.recv() => match event {
                    Some(Frame::Ack { upload_id, chunks }) if upload_id == state.id => {
                        for [start, end] in chunks {
                            for index in start..end.min(start.saturating_add(1 << 20)) {
                                state.acked.insert(index);
                                state.unacked.remove(&index);
                                state.todo.remove(&index);
                                acked_now.push(index);
                            }
                        }
                        last_ack = Instant::now();
                    }
                    Some(Frame::Reject { upload_id, index, code, message }) if upload_id == state.id => {
                        // What sending again can mend: a chunk that changed while read, one
                        // still arriving from a lost connection, a store that may recover.
                        let again = matches!(
                            code,
                            ErrorCode::DigestMismatch
                                | ErrorCode::ShortPayload
                                | ErrorCode::ChunkInProgress
                                | ErrorCode::StreamTimeout
                                | ErrorCode::StorageError
                                | ErrorCode::StorageFull
                                | ErrorCode::ShuttingDown
                                | ErrorCode::Internal
                        );
                        if code == ErrorCode::NotAttached {
                            return Err(ClientError::Connection(message));
                        }
                        state.rejects += 1;
                        if !again || state.rejects > MAX_REJECTS {
                            return Err(ClientError::Server { code, message });
                        }
                        tracing::debug!(index, %code, message, "chunk rejected; sending it again");
                        state.unacked.remove(&index);
                        state.todo.insert(index);
                        pause_until = Instant::now() + RETRY_PAUSE;
                    }
                    Some(Frame::Detached { upload_id, code, message }) if upload_id == state.id => {
                        return Err(if code == ErrorCode::TakenOver {
                            ClientError::TakenOver(message)
                        } else {
                            ClientError::Server { code, message }
                        });
                    }
                    Some(_) => {}
                    None => return Err(conn.lost()),
                },
                _ = tick.tick() => {
                    if state.reported.elapsed() >= state.progress_every {
                        state.reported = Instant::now();
                        let (read, what) = feed.read_so_far();
                        self.shared.tracker.note(&format!(
                            "ferry: {what}: {} read, {} safe on the server{}",
                            ferry_proto::units::human(read),
                            ferry_proto::units::human((state.acked.len() * state.cs).min(read)),
                            if state.end.is_none() { ", waiting for more" } else { "" }
                        ));
                    }
                    if !state.unacked.is_empty() && last_ack.elapsed() > STALL {
                        return Err(ClientError::Connection(format!(
                            "no acknowledgement for {} s with chunks in flight",
                            STALL.as_secs()
                        )));
                    }
                }
            }
            for index in acked_now {
                feed.acked(index);
            }
            if let Some(next) = read {
                feed.take(next, state)?;
            }
        }
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

impl State {
    fn new(info: &UploadInfo, resumed: bool) -> Self {
        let acked = ChunkSet::from_wire(&info.durable, info.chunk_count).unwrap_or_default();
        Self {
            id: info.upload_id.clone(),
            cs: info.chunk_size,
            acked,
            unacked: BTreeSet::new(),
            todo: BTreeSet::new(),
            digests: Default::default(),
            sent: Default::default(),
            end: None,
            declared: false,
            resumed,
            reconnects: 0,
            rejects: 0,
            attached_on: None,
            progress_every: Duration::from_secs(10),
            reported: Instant::now(),
            skipped: 0,
        }
    }

    /// After a reconnect: the server's durable set is the truth; what was in flight is sent
    /// again.
    fn rebuild(&mut self, info: &UploadInfo, feed: &Feed) {
        if let Ok(durable) = ChunkSet::from_wire(&info.durable, info.chunk_count) {
            self.acked = durable;
        }
        let lost: Vec<u64> = std::mem::take(&mut self.unacked).into_iter().collect();
        for index in lost {
            if !self.acked.contains(index) {
                self.todo.insert(index);
            }
        }
        if let Feed::Stdin { held, .. } = feed {
            for (&index, data) in held {
                // The short last chunk waits for the length to be declared.
                let whole = data.len() as u64 == self.cs;
                if !self.acked.contains(index) && (whole || self.declared) {
                    self.todo.insert(index);
                }
            }
        }
    }
}

fn unexpected(wanted: &str, got: &Frame) -> ClientError {
    ClientError::Protocol(format!("expected {wanted}, got {}", got.kind()))
}

//! `UploadSession`, the server side of one upload: it validates chunk headers before any
//! payload is read, tracks what is being received, received and durable, batches received
//! chunks into group commits and emits acks only for chunks the I/O layer reported persisted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::{ChunkIndex, ChunkLayout, ChunkSet, Digest, ErrorCode, Span};

/// A chunk header after the frame was decoded. The chunk's digest comes after its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub index: u64,
    pub size: u64,
}

/// What to do with a chunk stream whose header was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Accept {
    /// Read exactly `span.len` bytes, write them at `span.offset`, hash them, read the
    /// digest the client claims for them (`chunk_end`), then call
    /// [`UploadSession::handle_payload`] (or `handle_abandoned` if the stream fails).
    Receive { index: ChunkIndex, span: Span },
    /// The chunk is durable already: drop the stream; a fresh ack is queued.
    AlreadyDurable,
    /// The chunk arrived and verified already and waits for its commit: drop the stream
    /// without touching the file; its ack comes with the commit.
    AlreadyReceived,
}

/// A chunk header refused before its payload was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The upload is finishing, complete or aborted.
    #[error("upload is {state}, it takes no more chunks")]
    BadState { state: &'static str },
    /// Index at or past the chunk count.
    #[error("chunk index {index} is out of range, the upload has {count} chunks")]
    IndexOutOfRange { index: u64, count: u64 },
    /// Header size differs from the layout.
    #[error("chunk {index} is {got} bytes, expected {expected}")]
    WrongSize { index: u64, got: u64, expected: u64 },
    /// Another stream delivers this chunk now.
    #[error("chunk {index} is being received on another stream")]
    InProgress { index: u64 },
}

impl ChunkError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadState { .. } => ErrorCode::BadState,
            Self::IndexOutOfRange { .. } => ErrorCode::IndexOutOfRange,
            Self::WrongSize { .. } => ErrorCode::WrongChunkSize,
            Self::InProgress { .. } => ErrorCode::ChunkInProgress,
        }
    }
}

/// Why `finish` cannot proceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FinishError {
    /// Not every chunk is durable yet.
    #[error("{missing} of {count} chunks are not durable yet")]
    Incomplete { missing: u64, count: u64 },
    /// The upload is already finishing, or aborted.
    #[error("upload is {state}")]
    BadState { state: &'static str },
}

impl FinishError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Incomplete { .. } => ErrorCode::Incomplete,
            Self::BadState { .. } => ErrorCode::BadState,
        }
    }
}

/// A frame-level output for the attached client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// These chunks are durable.
    Ack(ChunkSet),
    /// This chunk was refused after its payload arrived; the client should act on `code`.
    Reject {
        index: u64,
        code: ErrorCode,
        message: String,
    },
}

/// Received chunks to make durable together: sync the data file, record each chunk with its
/// digest, flush the record, then call [`UploadSession::handle_persisted`] with its `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct CommitBatch {
    /// Names the batch when its outcome is reported; unique within the session.
    pub id: u64,
    pub chunks: Vec<(ChunkIndex, Digest)>,
}

/// When to cut a group commit.
#[derive(Debug, Clone, Copy)]
pub struct CommitPolicy {
    /// Commit as soon as this many received bytes wait.
    pub max_bytes: u64,
    /// Or when the oldest waiting chunk has waited this long.
    pub max_delay: Duration,
    /// How many batches may be committing at once (at least 1). One for a store where a commit
    /// is a sync of one file (a second would only queue behind it); more where each commit
    /// waits on round trips to a distant store, so they overlap.
    pub max_in_flight: usize,
}

impl Default for CommitPolicy {
    fn default() -> Self {
        Self {
            max_bytes: 32 << 20,
            max_delay: Duration::from_millis(5),
            max_in_flight: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Receiving,
    Finishing,
    Complete,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Receiving => "receiving",
            State::Finishing => "finishing",
            State::Complete => "complete",
        }
    }
}

/// The server's view of one upload.
#[derive(Debug)]
pub struct UploadSession {
    layout: ChunkLayout,
    policy: CommitPolicy,
    state: State,
    /// Chunks whose header was accepted and whose payload is still arriving. An entry leaves
    /// on `handle_payload` or `handle_abandoned`.
    receiving: BTreeSet<u64>,
    /// Verified chunks waiting for the next commit, and when the first of them arrived.
    waiting: Vec<(ChunkIndex, Digest)>,
    waiting_since: Option<Instant>,
    /// The batches handed to the I/O layer and not yet reported back, by id: at most
    /// `policy.max_in_flight`.
    committing: BTreeMap<u64, Vec<(ChunkIndex, Digest)>>,
    /// The id of the next batch.
    next_batch: u64,
    /// Chunks recorded durable. Only grows, except through `forget` after a failed
    /// re-verification.
    durable: ChunkSet,
    outputs: VecDeque<Output>,
}

impl UploadSession {
    /// A session for an upload whose durable chunks are `durable` (empty for a new upload,
    /// the recorded set after a restart).
    pub fn new(layout: ChunkLayout, durable: ChunkSet, policy: CommitPolicy) -> Self {
        Self {
            layout,
            policy,
            state: State::Receiving,
            receiving: BTreeSet::new(),
            waiting: Vec::new(),
            waiting_since: None,
            committing: BTreeMap::new(),
            next_batch: 0,
            durable,
            outputs: VecDeque::new(),
        }
    }

    pub fn layout(&self) -> &ChunkLayout {
        &self.layout
    }

    pub fn durable(&self) -> &ChunkSet {
        &self.durable
    }

    /// Chunks whose payload arrived and verified: durable, committing or waiting.
    pub fn received(&self) -> ChunkSet {
        let mut set = self.durable.clone();
        for (i, _) in self
            .waiting
            .iter()
            .chain(self.committing.values().flatten())
        {
            set.insert(i.get());
        }
        set
    }

    /// True when no chunk is arriving, waiting for its commit or being committed.
    pub fn is_idle(&self) -> bool {
        self.receiving.is_empty() && self.waiting.is_empty() && self.committing.is_empty()
    }

    /// True when every chunk is durable.
    pub fn is_complete(&self) -> bool {
        self.durable.len() == self.layout.count()
    }

    /// Checks a chunk header before any of its payload is read.
    pub fn handle_header(&mut self, header: &ChunkHeader) -> Result<Accept, ChunkError> {
        if self.state != State::Receiving {
            return Err(ChunkError::BadState {
                state: self.state.name(),
            });
        }
        let index = self
            .layout
            .index(header.index)
            .map_err(|_| ChunkError::IndexOutOfRange {
                index: header.index,
                count: self.layout.count(),
            })?;
        let span = self.layout.span(index);
        if header.size != span.len {
            return Err(ChunkError::WrongSize {
                index: header.index,
                got: header.size,
                expected: span.len,
            });
        }
        if self.durable.contains(header.index) {
            self.outputs
                .push_back(Output::Ack(std::iter::once(header.index).collect()));
            return Ok(Accept::AlreadyDurable);
        }
        // Verified bytes on disk are never written again: a re-send after a reconnect could
        // carry different (corrupted) bytes and overwrite them before its own check fails.
        if self.is_waiting_or_committing(index) {
            return Ok(Accept::AlreadyReceived);
        }
        // Two streams writing one span at once could interleave, so one stream per chunk.
        if self.receiving.contains(&header.index) {
            return Err(ChunkError::InProgress {
                index: header.index,
            });
        }
        self.receiving.insert(header.index);
        Ok(Accept::Receive { index, span })
    }

    /// The whole payload of `index` arrived and hashed to `actual`; the client's `chunk_end`
    /// said `claimed`.
    pub fn handle_payload(
        &mut self,
        index: ChunkIndex,
        actual: Digest,
        claimed: Digest,
        now: Instant,
    ) {
        if !self.receiving.remove(&index.get()) {
            return;
        }
        if actual != claimed {
            self.outputs.push_back(Output::Reject {
                index: index.get(),
                code: ErrorCode::DigestMismatch,
                message: format!("chunk {index} hashed to {actual}, its chunk_end said {claimed}"),
            });
            return;
        }
        if self.is_waiting_or_committing(index) || self.durable.contains(index.get()) {
            return;
        }
        self.waiting.push((index, actual));
        self.waiting_since.get_or_insert(now);
    }

    /// The stream carrying `index` failed before its payload was complete.
    pub fn handle_abandoned(&mut self, index: ChunkIndex) {
        self.receiving.remove(&index.get());
    }

    /// The next group commit, if one is due and fewer than `max_in_flight` are running.
    pub fn poll_commit(&mut self, now: Instant) -> Option<CommitBatch> {
        if self.is_committing_all_it_may() || self.waiting.is_empty() {
            return None;
        }
        let bytes: u64 = self
            .waiting
            .iter()
            .map(|(i, _)| self.layout.span(*i).len)
            .sum();
        let due = self
            .waiting_since
            .is_some_and(|t| now >= t + self.policy.max_delay);
        // Finishing the last chunks should not wait for the timer.
        let committing: usize = self.committing.values().map(Vec::len).sum();
        let last =
            self.durable.len() + (self.waiting.len() + committing) as u64 == self.layout.count();
        if bytes < self.policy.max_bytes && !due && !last {
            return None;
        }
        let chunks = std::mem::take(&mut self.waiting);
        self.waiting_since = None;
        let id = self.next_batch;
        self.next_batch += 1;
        self.committing.insert(id, chunks.clone());
        Some(CommitBatch { id, chunks })
    }

    /// When `poll_commit` should be called again, if anything waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_committing_all_it_may() {
            return None;
        }
        self.waiting_since.map(|t| t + self.policy.max_delay)
    }

    /// Commit `batch` reached the disk and the record store: its chunks are durable. An id not
    /// committing is ignored.
    pub fn handle_persisted(&mut self, batch: u64) {
        let Some(batch) = self.committing.remove(&batch) else {
            return;
        };
        let mut acked = ChunkSet::new();
        for (index, _) in batch {
            self.durable.insert(index.get());
            acked.insert(index.get());
        }
        self.outputs.push_back(Output::Ack(acked));
    }

    /// Commit `batch` failed: its chunks are not durable and must be sent again. An id not
    /// committing is ignored.
    pub fn handle_persist_failed(&mut self, batch: u64, code: ErrorCode, message: &str) {
        let Some(batch) = self.committing.remove(&batch) else {
            return;
        };
        for (index, _) in batch {
            self.outputs.push_back(Output::Reject {
                index: index.get(),
                code,
                message: message.to_owned(),
            });
        }
    }

    /// A durable chunk failed re-verification (its bytes on disk no longer match): forget it so
    /// the client sends it again.
    pub fn forget(&mut self, index: ChunkIndex) {
        self.durable.remove(index.get());
    }

    /// The client will send durable chunk `index` again with new content (`rewrite`): it is
    /// no longer durable. Refused (false) while the chunk is arriving or being committed.
    pub fn rewrite(&mut self, index: ChunkIndex) -> bool {
        if self.receiving.contains(&index.get()) || self.is_waiting_or_committing(index) {
            return false;
        }
        self.durable.remove(index.get());
        true
    }

    /// The client asked to finish. On success, the I/O layer hashes the file, publishes it and
    /// then calls `handle_finalized`.
    pub fn handle_finish(&mut self) -> Result<(), FinishError> {
        match self.state {
            State::Receiving if self.is_complete() => {
                self.state = State::Finishing;
                Ok(())
            }
            State::Receiving => Err(FinishError::Incomplete {
                missing: self.layout.count() - self.durable.len(),
                count: self.layout.count(),
            }),
            other => Err(FinishError::BadState {
                state: other.name(),
            }),
        }
    }

    /// The file was published (`ok`) or its whole-file digest did not match (`!ok`, the upload
    /// stays open so the client can decide).
    pub fn handle_finalized(&mut self, ok: bool) {
        if self.state == State::Finishing {
            self.state = if ok {
                State::Complete
            } else {
                State::Receiving
            };
        }
    }

    /// The next frame for the client.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn is_waiting_or_committing(&self, index: ChunkIndex) -> bool {
        self.waiting
            .iter()
            .chain(self.committing.values().flatten())
            .any(|(i, _)| *i == index)
    }

    fn is_committing_all_it_may(&self) -> bool {
        self.committing.len() >= self.policy.max_in_flight.max(1)
    }
}

#[cfg(test)]
mod tests;

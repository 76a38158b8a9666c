//! Bytes at an offset: the service call under front ends whose clients send a byte stream
//! (tus and the IETF draft over HTTP) rather than chunks.
//!
//! A request's body is cut at the upload's chunk boundaries. Each whole chunk takes the same
//! path as a chunk stream of `ferry/1`: the driver's verdict, the bytes written and hashed off
//! the runtime threads (a worker per request, fed through a bounded channel), the digest handed
//! to the driver, which acknowledges it once durable. The request is answered only after every
//! chunk it completed is acknowledged, so the offset it reports is the durable offset.
//!
//! A request that ends (or breaks off) inside a chunk keeps those bytes: they are synced and
//! recorded as the upload's [`Tail`] with their SHA-256, and the upload's offset includes them.
//! The next request re-reads them, checks the digest and continues the chunk's hash; a `ferry`
//! client resuming the upload sends that chunk whole (the tail counts only while every chunk
//! before it is durable and it is not).
//!
//! With a checksum (tus `Upload-Checksum`) nothing of the body is handed to the driver or
//! recorded as a tail until the whole body matched it: on a mismatch the bytes are not kept.
//!
//! A second request for the same upload takes it over (like a second `resume`): the first
//! stops where it is and its partial chunk is not recorded.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::{ChunkHeader, ChunkIndex, ChunkSet, Digest, ErrorCode, Frame, Span};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::driver::{Msg, Verdict, WireError};
use crate::outbox::{Drain, Outbox};
use crate::store::{RecordState, Tail, UploadId, UploadRecord};

use super::{internal, storage, Finished, Principal, Uploads};

/// Bytes gathered before one write to the staging file.
const WRITE_BUF: usize = 1 << 20;
/// Body pieces queued for the worker: with hyper's reads of at most a few hundred KiB, a few
/// MiB per request at most.
const QUEUED_PIECES: usize = 16;
/// How long a request waits for the acknowledgements of the chunks it completed.
const ACK_WAIT: Duration = Duration::from_secs(120);
/// How long a request that takes an upload over waits for the previous one to let go of the
/// chunk it was writing.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// The next piece of a request body; `None` at its end.
pub trait ByteSource: Send {
    fn next(&mut self) -> impl std::future::Future<Output = Option<Result<Bytes, String>>> + Send;
}

/// Where an upload stands for a byte-stream client.
#[derive(Debug, Clone)]
pub struct Offset {
    pub id: UploadId,
    pub record: UploadRecord,
    /// The durable offset: the contiguous durable chunks and the tail after them.
    pub offset: u64,
}

impl Offset {
    /// The length, unless it is still to be declared.
    pub fn length(&self) -> Option<u64> {
        (!self.record.deferred).then_some(self.record.size)
    }

    pub fn complete(&self) -> bool {
        self.record.state != RecordState::Receiving
            || (!self.record.deferred && self.offset == self.record.size)
    }
}

/// One request's bytes.
pub struct Append<S> {
    /// Where the client says its bytes start: must be the durable offset.
    pub at: u64,
    pub body: S,
    /// The length, declared with these bytes (tus `Upload-Length` on a deferred upload).
    pub length: Option<u64>,
    /// The body ends the upload: its end is the length (the IETF draft's `Upload-Complete`).
    pub last: bool,
    /// The body's checksum, checked before any of it is kept.
    pub checksum: Option<Checksum>,
}

/// What an append achieved.
pub struct Appended {
    /// The durable offset now.
    pub offset: u64,
    pub length: Option<u64>,
    /// Published: the last byte arrived (and the upload is not a tus partial one).
    pub finished: Option<Finished>,
    /// The body broke off (the client went away, or stalled); what arrived before is kept.
    pub broken: Option<String>,
}

/// Why an append kept nothing of its body.
#[derive(Debug)]
pub enum AppendError {
    /// The offset asked is not the durable offset.
    Conflict {
        offset: u64,
    },
    /// The body does not match its checksum.
    ChecksumMismatch {
        algorithm: &'static str,
    },
    /// The body goes past the upload's length (or the largest file, or the owner's quota).
    TooLarge {
        limit: u64,
    },
    /// Another request took the upload over meanwhile.
    TakenOver,
    Wire(WireError),
}

impl From<WireError> for AppendError {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

/// A body checksum: the algorithm's running hash and the value the client sent.
pub struct Checksum {
    hash: Hash,
    expected: Vec<u8>,
}

enum Hash {
    Sha1(sha1::Sha1),
    Sha256(Sha256),
    Sha512(sha2::Sha512),
    Md5(md5::Md5),
}

/// The checksum algorithms taken (tus `Tus-Checksum-Algorithm`).
pub const CHECKSUM_ALGORITHMS: &[&str] = &["sha256", "sha1", "sha512", "md5"];

impl Checksum {
    /// A checksum of `algorithm` (one of [`CHECKSUM_ALGORITHMS`]) expecting `expected`;
    /// `None` for another algorithm.
    pub fn new(algorithm: &str, expected: Vec<u8>) -> Option<Self> {
        let hash = match algorithm {
            "sha1" => Hash::Sha1(Default::default()),
            "sha256" => Hash::Sha256(Default::default()),
            "sha512" => Hash::Sha512(Default::default()),
            "md5" => Hash::Md5(Default::default()),
            _ => return None,
        };
        Some(Self { hash, expected })
    }

    fn update(&mut self, data: &[u8]) {
        match &mut self.hash {
            Hash::Sha1(h) => h.update(data),
            Hash::Sha256(h) => h.update(data),
            Hash::Sha512(h) => h.update(data),
            Hash::Md5(h) => h.update(data),
        }
    }

    fn algorithm(&self) -> &'static str {
        match self.hash {
            Hash::Sha1(_) => "sha1",
            Hash::Sha256(_) => "sha256",
            Hash::Sha512(_) => "sha512",
            Hash::Md5(_) => "md5",
        }
    }

    fn matches(self) -> bool {
        let got: Vec<u8> = match self.hash {
            Hash::Sha1(h) => h.finalize().to_vec(),
            Hash::Sha256(h) => h.finalize().to_vec(),
            Hash::Sha512(h) => h.finalize().to_vec(),
            Hash::Md5(h) => h.finalize().to_vec(),
        };
        got == self.expected
    }
}

impl Uploads {
    /// The durable offset of an upload the caller may see.
    pub async fn offset(&self, who: &Principal, raw_id: &str) -> Result<Offset, WireError> {
        let (id, record) = self.owned_fresh(who, raw_id).await?;
        if record.state != RecordState::Receiving {
            let offset = record.size;
            return Ok(Offset { id, record, offset });
        }
        self.verified(id).await?;
        let prefix = self.durable_prefix(id, &record).await?;
        let tail = self.tail_after(id, &record, prefix)?;
        if tail.is_some() {
            // A tail is visible in the database a moment before its record is synced (its bytes
            // are synced before it is written): the offset given out must be durable.
            self.store()
                .flush()
                .await
                .map_err(|e| storage(&e, "failed to sync the database"))?;
        }
        let offset = prefix + tail.map_or(0, |t| t.len);
        Ok(Offset { id, record, offset })
    }

    /// Declares the length of an upload created without one; under the owner's lock, counted
    /// against the quota and the upload link's bounds like a create.
    pub async fn set_length(
        &self,
        who: &Principal,
        id: UploadId,
        record: UploadRecord,
        size: u64,
    ) -> Result<UploadRecord, WireError> {
        if size > self.config.max_file_size {
            return Err(WireError::new(
                ErrorCode::FileTooLarge,
                format!(
                    "the file ({}) is larger than the server's limit of {}",
                    ferry_proto::units::human(size),
                    ferry_proto::units::human(self.config.max_file_size)
                ),
            ));
        }
        let _counting = self.owner_lock(&who.owner).await;
        self.check_owner_limits(who, size, false, &[])?;
        if let Some(link) = &record.link {
            self.add_to_link(link, size)?;
        }
        let driver = self.driver(id, record.clone()).await?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::SetLength { size, reply });
        let declared = rx
            .await
            .map_err(|_| WireError::new(ErrorCode::BadState, "the upload was aborted meanwhile"))
            .and_then(|r| r);
        if declared.is_err() {
            if let Some(link) = &record.link {
                let _ = self
                    .store()
                    .add_link_usage(link, 0, -i64::try_from(size).unwrap_or(0));
            }
        }
        declared
    }

    /// Appends a request's body at `append.at` (see the module's notes). The body is read to
    /// its end, or until it breaks off, goes past the length, or the upload is taken over.
    pub async fn append<S: ByteSource>(
        &self,
        who: &Principal,
        raw_id: &str,
        append: Append<S>,
    ) -> Result<Appended, AppendError> {
        let (id, mut record) = self.owned_fresh(who, raw_id).await?;
        if record.state != RecordState::Receiving {
            // Complete already: nothing to add; the client learns the offset.
            if append.at != record.size {
                return Err(AppendError::Conflict {
                    offset: record.size,
                });
            }
            return Ok(Appended {
                offset: record.size,
                length: Some(record.size),
                finished: None,
                broken: None,
            });
        }
        self.verified(id).await?;
        let (events, drain) = Outbox::new();
        let info = self.attach(who, (id, record.clone()), 0, events).await?;
        let attached = Attached {
            uploads: self,
            who,
            id,
        };
        if let Some(length) = append.length {
            if record.deferred {
                record = self.set_length(who, id, record, length).await?;
            } else if length != record.size {
                return Err(WireError::new(
                    ErrorCode::BadField,
                    format!("the upload's length is {}, not {length}", record.size),
                )
                .into());
            }
        }
        let prefix = info.durable_offset;
        let tail = self.tail_after(id, &record, prefix)?;
        let offset = prefix + tail.map_or(0, |t| t.len);
        if append.at != offset {
            return Err(AppendError::Conflict { offset });
        }
        let room = self.room(who, &record, offset)?;
        let mut run = Run::new(self, who, id, &record, drain)?;
        let outcome = run
            .receive(append.body, offset, room, tail, append.checksum)
            .await;
        let (held, open, broken) = match outcome {
            Ok(received) => received,
            Err(e) => {
                run.abandon_all().await;
                return Err(e);
            }
        };
        run.report(held);
        // Nothing more comes from this request: what it handed over is committed now.
        let _ = run.driver.send(Msg::Flush);
        let mut kept_tail = None;
        if let Some((index, len, hasher)) = open {
            // The chunk the body ended in: its bytes are kept as the tail, unless the body
            // ends the upload, whose length is then declared and the chunk is whole.
            let _ = run.driver.send(Msg::Abandoned { index });
            if append.last && record.deferred {
                run.wait_for_acks().await?;
                let end = index.get() * record.chunk_size + len;
                record = self.set_length(who, id, record, end).await?;
                run.layout = record.layout().map_err(internal)?;
                run.deliver_whole(index, len, hasher).await?;
            } else if len > 0 {
                kept_tail = Some(run.keep_tail(index, len, hasher).await?);
            }
        } else if append.last && record.deferred && broken.is_none() {
            run.wait_for_acks().await?;
            record = self.set_length(who, id, record, run.end).await?;
            run.layout = record.layout().map_err(internal)?;
        }
        run.wait_for_acks().await?;
        let prefix = self.durable_prefix(id, &record).await?;
        let tail_len = kept_tail
            .filter(|t| t.index * record.chunk_size == prefix)
            .map_or(0, |t| t.len);
        let offset = prefix + tail_len;
        drop(attached);
        let length = (!record.deferred).then_some(record.size);
        let mut finished = None;
        if length == Some(offset) && !record.partial {
            finished = Some(self.finish_here(who, id, &record).await?);
        }
        Ok(Appended {
            offset,
            length,
            finished,
            broken,
        })
    }

    /// Publishes an upload of length 0 (nothing to send: complete at its creation).
    pub async fn finish_empty(
        &self,
        who: &Principal,
        id: UploadId,
        record: &UploadRecord,
    ) -> Result<Finished, WireError> {
        self.finish_here(who, id, record).await
    }

    /// Publishes an upload whose every byte is durable, with the content hash of its chunk
    /// digests on record (the client of a byte stream computes none).
    pub(super) async fn finish_here(
        &self,
        who: &Principal,
        id: UploadId,
        record: &UploadRecord,
    ) -> Result<Finished, WireError> {
        let layout = record.layout().map_err(internal)?;
        let digest = self
            .backend
            .content_hash(id, layout)
            .await
            .map_err(|e| storage(&e, "failed to read the chunk digests"))?;
        self.finish(who, &id.to_string(), digest).await
    }

    /// The durable contiguous prefix of an upload, in bytes: from its driver if one runs,
    /// else from the backend.
    async fn durable_prefix(&self, id: UploadId, record: &UploadRecord) -> Result<u64, WireError> {
        if let Some(driver) = self.registry.get(id) {
            let (reply, rx) = oneshot::channel();
            let _ = driver.send(Msg::Info { reply });
            if let Ok(info) = rx.await {
                return Ok(info.durable_offset);
            }
        }
        let layout = record.layout().map_err(internal)?;
        let durable = self
            .backend
            .durable_at_start(id, &layout)
            .await
            .map_err(|e| storage(&e, "failed to list the stored chunks"))?;
        Ok(layout.prefix_bytes(&durable))
    }

    /// The upload's tail, if it continues the durable prefix `prefix`.
    fn tail_after(
        &self,
        id: UploadId,
        record: &UploadRecord,
        prefix: u64,
    ) -> Result<Option<Tail>, WireError> {
        let tail = self
            .store()
            .tail(id)
            .map_err(|e| storage(&e, "failed to read the upload's partial chunk"))?;
        let layout = record.layout().map_err(internal)?;
        Ok(tail.filter(|t| {
            t.index * record.chunk_size == prefix
                && layout
                    .index(t.index)
                    .is_ok_and(|index| t.len < layout.span(index).len)
        }))
    }

    /// How many bytes past `offset` this upload may take: to its length, or for one of
    /// unknown length to the largest file and the owner's free quota.
    pub(super) fn room(
        &self,
        who: &Principal,
        record: &UploadRecord,
        offset: u64,
    ) -> Result<u64, WireError> {
        if !record.deferred {
            return Ok(record.size - offset);
        }
        let mut room = self.config.max_file_size.saturating_sub(offset);
        let quota = self.tunable().quota_per_owner;
        if quota > 0 {
            let published = self
                .store()
                .published_bytes(&who.owner)
                .map_err(|e| storage(&e, "failed to read the owner's usage"))?;
            let staged: u64 = self
                .store()
                .list(&who.owner)
                .map_err(|e| storage(&e, "failed to list uploads"))?
                .iter()
                .filter(|(_, r)| r.state != RecordState::Complete && !r.deferred)
                .map(|(_, r)| r.size)
                .sum();
            let free = quota.saturating_sub(published.saturating_add(staged));
            room = room.min(free.saturating_sub(offset));
        }
        Ok(room)
    }

    /// Counts `size` more bytes against an upload link's bound (a declared length).
    fn add_to_link(&self, link_id: &str, size: u64) -> Result<(), WireError> {
        let link = self
            .links
            .get(link_id)
            .map_err(|e| storage(&e, "failed to read the upload links"))?;
        let Some(link) = link else {
            return Err(WireError::new(
                ErrorCode::Unauthorized,
                "this upload link was revoked or has expired",
            ));
        };
        let (_, bytes) = self
            .store()
            .link_usage(&link.id)
            .map_err(|e| storage(&e, "failed to read the link's usage"))?;
        if link.max_size > 0 && bytes.saturating_add(size) > link.max_size {
            return Err(WireError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "this upload link allows {} in all; {} were created through it and this file has {}",
                    ferry_proto::units::human(link.max_size),
                    ferry_proto::units::human(bytes),
                    ferry_proto::units::human(size)
                ),
            ));
        }
        self.store()
            .add_link_usage(&link.id, 0, i64::try_from(size).unwrap_or(i64::MAX))
            .map_err(|e| storage(&e, "failed to count the link's usage"))
    }
}

/// Detaches the request from its upload when it ends, however it ends.
struct Attached<'a> {
    uploads: &'a Uploads,
    who: &'a Principal,
    id: UploadId,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.uploads.detach(self.who, [self.id]);
    }
}

/// What the worker is told.
enum Piece {
    /// Bytes of chunk `index` from `at` on follow; `hasher` has its bytes before `at`. With
    /// `write` false the chunk is durable or received already: the bytes only feed the
    /// checksum.
    Start {
        index: ChunkIndex,
        chunk_start: u64,
        at: u64,
        hasher: Box<Sha256>,
        write: bool,
    },
    Data(Bytes),
    /// The chunk is whole: its digest is reported.
    End,
}

/// What the worker hands back at the end: the open chunk (index, bytes in it, hash so far),
/// the checksum.
type WorkerEnd = (Option<(ChunkIndex, u64, Box<Sha256>)>, Option<Checksum>);

/// One request's append in progress.
struct Run<'a> {
    uploads: &'a Uploads,
    who: &'a Principal,
    id: UploadId,
    layout: ferry_proto::ChunkLayout,
    driver: mpsc::UnboundedSender<Msg>,
    file: Option<Arc<std::fs::File>>,
    drain: Drain,
    /// Chunks handed to the driver, not yet acknowledged.
    unacked: ChunkSet,
    /// Chunks the driver let this request write and that are not yet reported or abandoned.
    open: ChunkSet,
    /// The absolute offset the next body byte goes to.
    end: u64,
    /// The offset past which the body may not go.
    limit: u64,
    taken_over: bool,
}

impl<'a> Run<'a> {
    fn new(
        uploads: &'a Uploads,
        who: &'a Principal,
        id: UploadId,
        record: &UploadRecord,
        drain: Drain,
    ) -> Result<Self, WireError> {
        let driver = uploads.registry.get(id).ok_or_else(|| {
            WireError::new(ErrorCode::BadState, "the upload finished or was aborted")
        })?;
        Ok(Self {
            uploads,
            who,
            id,
            layout: record.layout().map_err(internal)?,
            driver,
            file: None,
            drain,
            unacked: ChunkSet::new(),
            open: ChunkSet::new(),
            end: 0,
            limit: 0,
            taken_over: false,
        })
    }

    /// Reads the body into the staging file. Returns the whole chunks not yet handed to the
    /// driver (with a checksum), the open chunk, and why the body broke off, if it did.
    #[allow(clippy::type_complexity)]
    async fn receive<S: ByteSource>(
        &mut self,
        mut body: S,
        at: u64,
        room: u64,
        tail: Option<Tail>,
        checksum: Option<Checksum>,
    ) -> Result<
        (
            Vec<(ChunkIndex, Digest)>,
            Option<(ChunkIndex, u64, Box<Sha256>)>,
            Option<String>,
        ),
        AppendError,
    > {
        let hold = checksum.is_some();
        self.end = at;
        self.limit = at.saturating_add(room);
        let (pieces, queue) = mpsc::channel::<Piece>(QUEUED_PIECES);
        let (done_tx, mut done) = mpsc::unbounded_channel::<(ChunkIndex, Digest)>();
        let file = self.file().await?;
        let worker = tokio::task::spawn_blocking({
            let file = file.clone();
            move || work(file, queue, done_tx, checksum)
        });
        let mut held = Vec::new();
        let mut broken = None;
        let mut failure = None;
        // The chunk being written: its end offset.
        let mut chunk_end: Option<u64> = None;
        if let Some(tail) = tail {
            match self.continue_tail(tail, &pieces).await {
                Ok(end) => chunk_end = Some(end),
                Err(e) => failure = Some(e),
            }
        }
        // Bounded by the body: each turn consumes one piece of it, or ends the loop.
        while failure.is_none() {
            tokio::select! {
                biased;
                frame = self.drain.frames.recv() => {
                    if let Err(e) = self.on_frame(frame) {
                        failure = Some(e);
                    }
                }
                Some((index, digest)) = done.recv() => self.on_whole(index, digest, hold, &mut held),
                piece = body.next() => match piece {
                    None => break,
                    Some(Err(e)) => {
                        broken = Some(e);
                        break;
                    }
                    Some(Ok(data)) => {
                        if let Err(e) = self.feed(data, &pieces, &mut chunk_end).await {
                            failure = Some(e);
                        }
                    }
                },
            }
        }
        drop(pieces);
        let ended = worker.await.map_err(internal)?;
        // Every whole chunk the worker finished is reported before its end.
        while let Ok((index, digest)) = done.try_recv() {
            self.on_whole(index, digest, hold, &mut held);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let (open, checksum) =
            ended.map_err(|e| WireError::storage(&e, "failed to write the upload"))?;
        if let Some(checksum) = checksum {
            let algorithm = checksum.algorithm();
            // A body that broke off cannot match; it is not kept either.
            if broken.is_some() || !checksum.matches() {
                for (index, _) in &held {
                    self.open.insert(index.get());
                }
                if let Some((index, ..)) = &open {
                    self.open.insert(index.get());
                }
                return Err(AppendError::ChecksumMismatch { algorithm });
            }
        }
        if let Some((index, ..)) = &open {
            self.open.remove(index.get());
        }
        Ok((held, open, broken))
    }

    async fn file(&mut self) -> Result<Arc<std::fs::File>, AppendError> {
        if let Some(file) = &self.file {
            return Ok(file.clone());
        }
        let path = self.uploads.backend.staging_path(self.id);
        let file = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
        })
        .await
        .map_err(internal)?
        .map_err(|e| WireError::storage(&e, "failed to open the staging file"))?;
        let file = Arc::new(file);
        self.file = Some(file.clone());
        Ok(file)
    }

    /// Opens the tail's chunk again: its bytes re-read and checked against the recorded
    /// digest, then handed to the worker as the start of the chunk's hash.
    async fn continue_tail(
        &mut self,
        tail: Tail,
        pieces: &mpsc::Sender<Piece>,
    ) -> Result<u64, AppendError> {
        let index = self.layout.index(tail.index).map_err(internal)?;
        let span = self.layout.span(index);
        let write = self.open_chunk(index, span).await?;
        if !write {
            // Whole already (another client sent it meanwhile): the offset moved.
            let _ = self.uploads.store().clear_tail(self.id);
            return Err(AppendError::Conflict {
                offset: span.offset,
            });
        }
        let file = self.file().await?;
        let reread = tokio::task::spawn_blocking(move || {
            // In pieces of WRITE_BUF: memory per request stays bounded whatever the chunk size.
            let mut buf = vec![0u8; WRITE_BUF.min(tail.len as usize)];
            let mut hasher = Sha256::new();
            let mut at = 0;
            // Bounded by the tail's length.
            while at < tail.len {
                let n = (tail.len - at).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], span.offset + at)?;
                hasher.update(&buf[..n]);
                at += n as u64;
            }
            Ok::<_, std::io::Error>(hasher)
        })
        .await
        .map_err(internal)?
        .map_err(|e| WireError::storage(&e, "failed to read the upload's partial chunk"))?;
        if reread.clone().finalize().as_slice() != tail.digest {
            warn!(upload = %self.id, index = tail.index, "partial chunk changed on disk; dropped");
            let _ = self.uploads.store().clear_tail(self.id);
            return Err(AppendError::Conflict {
                offset: span.offset,
            });
        }
        self.send(
            pieces,
            Piece::Start {
                index,
                chunk_start: span.offset,
                at: span.offset + tail.len,
                hasher: Box::new(reread),
                write: true,
            },
        )
        .await?;
        Ok(span.offset + span.len)
    }

    /// Asks the driver for chunk `index`: whether to write it (`true`) or only read past it
    /// (durable or received already). A chunk another request still holds is waited for, a
    /// little: a takeover makes the previous request let go.
    async fn open_chunk(&mut self, index: ChunkIndex, span: Span) -> Result<bool, AppendError> {
        let header = ChunkHeader {
            index: index.get(),
            size: span.len,
        };
        let started = tokio::time::Instant::now();
        // Bounded by TAKEOVER_WAIT.
        loop {
            match self.uploads.verdict(self.who, self.id, header).await {
                Ok((_, Verdict::Receive { .. })) => {
                    self.open.insert(index.get());
                    return Ok(true);
                }
                Ok((_, Verdict::Skip)) => return Ok(false),
                Err(e)
                    if e.code == ErrorCode::ChunkInProgress
                        && started.elapsed() < TAKEOVER_WAIT =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) if e.code == ErrorCode::TakenOver => return Err(AppendError::TakenOver),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Cuts `data` at chunk boundaries and hands it to the worker.
    async fn feed(
        &mut self,
        mut data: Bytes,
        pieces: &mpsc::Sender<Piece>,
        chunk_end: &mut Option<u64>,
    ) -> Result<(), AppendError> {
        // Every body byte counts as it arrives: a byte sent again counts again.
        crate::metrics::metrics().received(self.who.frontend, data.len() as u64);
        // Bounded by the piece: each turn takes at least one byte of it.
        while !data.is_empty() {
            if self.end + data.len() as u64 > self.limit {
                return Err(AppendError::TooLarge { limit: self.limit });
            }
            let end = match *chunk_end {
                Some(end) => end,
                None => {
                    let index = self
                        .layout
                        .index(self.end / self.layout.chunk_size())
                        .map_err(|_| AppendError::TooLarge { limit: self.end })?;
                    let span = self.layout.span(index);
                    let write = self.open_chunk(index, span).await?;
                    self.send(
                        pieces,
                        Piece::Start {
                            index,
                            chunk_start: span.offset,
                            at: span.offset,
                            hasher: Box::default(),
                            write,
                        },
                    )
                    .await?;
                    *chunk_end = Some(span.offset + span.len);
                    span.offset + span.len
                }
            };
            let take = (end - self.end).min(data.len() as u64) as usize;
            let piece = data.split_to(take);
            self.end += take as u64;
            self.send(pieces, Piece::Data(piece)).await?;
            if self.end == end {
                self.send(pieces, Piece::End).await?;
                *chunk_end = None;
            }
        }
        Ok(())
    }

    async fn send(&self, pieces: &mpsc::Sender<Piece>, piece: Piece) -> Result<(), AppendError> {
        pieces.send(piece).await.map_err(|_| {
            AppendError::Wire(WireError::new(
                ErrorCode::StorageError,
                "failed to write the upload",
            ))
        })
    }

    /// A whole chunk from the worker: to the driver now, or held until the checksum matched.
    fn on_whole(
        &mut self,
        index: ChunkIndex,
        digest: Digest,
        hold: bool,
        held: &mut Vec<(ChunkIndex, Digest)>,
    ) {
        if !self.open.contains(index.get()) {
            // Read past only (durable or received already).
            return;
        }
        if hold {
            held.push((index, digest));
        } else {
            self.report(vec![(index, digest)]);
        }
    }

    /// Hands whole chunks to the driver.
    fn report(&mut self, chunks: Vec<(ChunkIndex, Digest)>) {
        for (index, digest) in chunks {
            self.open.remove(index.get());
            self.unacked.insert(index.get());
            let _ = self.driver.send(Msg::Payload {
                index,
                digest,
                claimed: digest,
            });
        }
    }

    /// A frame the driver pushed: acks clear chunks, a rejection or a takeover ends the
    /// request.
    fn on_frame(&mut self, frame: Option<Frame>) -> Result<(), AppendError> {
        match frame {
            Some(Frame::Ack { chunks, .. }) => {
                for [start, end] in chunks {
                    // Bounded by what this request handed over.
                    let acked: Vec<u64> = self
                        .unacked
                        .iter()
                        .filter(|i| (start..end).contains(i))
                        .collect();
                    for index in acked {
                        self.unacked.remove(index);
                    }
                }
                Ok(())
            }
            Some(Frame::Reject {
                index,
                code,
                message,
                ..
            }) => {
                self.unacked.remove(index);
                Err(AppendError::Wire(WireError::new(code, message)))
            }
            Some(Frame::Detached { .. }) | None => {
                self.taken_over = true;
                Err(AppendError::TakenOver)
            }
            Some(_) => Ok(()),
        }
    }

    /// Waits until every chunk handed to the driver is acknowledged (or one is rejected).
    async fn wait_for_acks(&mut self) -> Result<(), AppendError> {
        let deadline = tokio::time::Instant::now() + ACK_WAIT;
        // Bounded by ACK_WAIT.
        while !self.unacked.is_empty() {
            match tokio::time::timeout_at(deadline, self.drain.frames.recv()).await {
                Ok(frame) => self.on_frame(frame)?,
                Err(_) => {
                    return Err(AppendError::Wire(WireError::new(
                        ErrorCode::StorageError,
                        "the chunks were not made durable in time",
                    )))
                }
            }
        }
        Ok(())
    }

    /// Keeps the bytes of the chunk the body ended in: synced, then recorded with their digest.
    async fn keep_tail(
        &mut self,
        index: ChunkIndex,
        len: u64,
        hasher: Box<Sha256>,
    ) -> Result<Tail, AppendError> {
        let tail = Tail {
            index: index.get(),
            len,
            digest: hasher.finalize().into(),
        };
        let file = self.file().await?;
        let store = self.uploads.store().clone();
        let id = self.id;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            file.sync_data()?;
            store.set_tail(id, &tail)
        })
        .await
        .map_err(internal)?
        .map_err(|e| storage(&e, "failed to keep the partial chunk"))?;
        debug!(upload = %id, index = tail.index, len, "partial chunk kept");
        Ok(tail)
    }

    /// Hands over the last chunk of an upload whose length was just declared: its bytes are
    /// on disk and hashed; under the new layout it is whole.
    async fn deliver_whole(
        &mut self,
        index: ChunkIndex,
        len: u64,
        hasher: Box<Sha256>,
    ) -> Result<(), AppendError> {
        let span = self.layout.span(index);
        debug_assert_eq!(span.len, len);
        if !self.open_chunk(index, span).await? {
            return Ok(());
        }
        let digest = Digest::from(*hasher);
        self.report(vec![(index, digest)]);
        Ok(())
    }

    /// Gives back every chunk this request still holds (the request failed).
    async fn abandon_all(&mut self) {
        let open: Vec<u64> = self.open.iter().collect();
        for index in open {
            if let Ok(index) = self.layout.index(index) {
                let _ = self.driver.send(Msg::Abandoned { index });
            }
        }
        self.open = ChunkSet::new();
        if !self.taken_over {
            // What was handed over is durable or rejected soon; not waited for.
            info!(upload = %self.id, "append ended early");
        }
    }
}

/// The worker: writes and hashes the pieces in order, off the runtime threads, and reports each
/// whole chunk's digest.
fn work(
    file: Arc<std::fs::File>,
    mut queue: mpsc::Receiver<Piece>,
    done: mpsc::UnboundedSender<(ChunkIndex, Digest)>,
    mut checksum: Option<Checksum>,
) -> std::io::Result<WorkerEnd> {
    let mut open: Option<Open> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BUF);
    // Bounded by the request's body: the queue closes when it ends.
    while let Some(piece) = queue.blocking_recv() {
        match piece {
            Piece::Start {
                index,
                chunk_start,
                at,
                hasher,
                write,
            } => {
                open = Some(Open {
                    index,
                    chunk_start,
                    next: at,
                    written: at,
                    hasher,
                    write,
                });
            }
            Piece::Data(data) => {
                if let Some(c) = &mut checksum {
                    c.update(&data);
                }
                let Some(chunk) = &mut open else {
                    continue;
                };
                chunk.next += data.len() as u64;
                if chunk.write {
                    chunk.hasher.update(&data);
                    buf.extend_from_slice(&data);
                    if buf.len() >= WRITE_BUF {
                        chunk.flush(&file, &mut buf)?;
                    }
                }
            }
            Piece::End => {
                if let Some(mut chunk) = open.take() {
                    if chunk.write {
                        chunk.flush(&file, &mut buf)?;
                        let _ = done.send((chunk.index, Digest::from(*chunk.hasher)));
                    }
                }
            }
        }
    }
    let open = match open {
        Some(mut chunk) if chunk.write => {
            chunk.flush(&file, &mut buf)?;
            Some((chunk.index, chunk.next - chunk.chunk_start, chunk.hasher))
        }
        _ => None,
    };
    Ok((open, checksum))
}

/// The chunk the worker is writing.
struct Open {
    index: ChunkIndex,
    chunk_start: u64,
    /// The offset of the next byte to arrive.
    next: u64,
    /// The offset up to which its bytes are written.
    written: u64,
    hasher: Box<Sha256>,
    write: bool,
}

impl Open {
    fn flush(&mut self, file: &std::fs::File, buf: &mut Vec<u8>) -> std::io::Result<()> {
        if !buf.is_empty() {
            file.write_all_at(buf, self.written)?;
            start_writeback(file, self.written, buf.len() as u64);
            self.written += buf.len() as u64;
            buf.clear();
        }
        Ok(())
    }
}

/// Starts writing `len` bytes at `offset` back to the disk now, without waiting for it, so the
/// commit's `fdatasync` at the end of the request has little left to do: an HTTP client waits
/// for that sync before it sends its next request. Durability still comes from the commit's
/// sync; this only moves work earlier (an error here is left to that sync to report).
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: a plain syscall on a descriptor open for the duration of the call.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

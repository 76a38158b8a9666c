//! One request's append: its body cut at chunk boundaries, the driver's verdicts, the tail.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::{ChunkHeader, ChunkIndex, ChunkSet, Digest, ErrorCode, Frame, Span};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::driver::{Msg, Verdict, WireError};
use crate::outbox::Drain;
use crate::store::{Tail, UploadId, UploadRecord};

use super::worker::{work, Piece, WRITE_BUF};
use super::{AppendError, ByteSource, Checksum};
use crate::uploads::{internal, storage, Principal, Uploads};

/// Body pieces queued for the worker: with hyper's reads of at most a few hundred KiB, a few
/// MiB per request at most.
const QUEUED_PIECES: usize = 16;
/// How long a request waits for the acknowledgements of the chunks it completed.
const ACK_WAIT: Duration = Duration::from_secs(120);
/// How long a request that takes an upload over waits for the previous one to let go of the
/// chunk it was writing.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// One request's append in progress.
pub(super) struct Run<'a> {
    uploads: &'a Uploads,
    who: &'a Principal,
    id: UploadId,
    pub(super) layout: ferry_proto::ChunkLayout,
    pub(super) driver: mpsc::UnboundedSender<Msg>,
    file: Option<Arc<std::fs::File>>,
    drain: Drain,
    /// Chunks handed to the driver, not yet acknowledged.
    unacked: ChunkSet,
    /// Chunks the driver let this request write and that are not yet reported or abandoned.
    open: ChunkSet,
    /// The absolute offset the next body byte goes to.
    pub(super) end: u64,
    /// The offset past which the body may not go.
    limit: u64,
    taken_over: bool,
}

impl<'a> Run<'a> {
    pub(super) fn new(
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
    pub(super) async fn receive<S: ByteSource>(
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
    pub(super) fn report(&mut self, chunks: Vec<(ChunkIndex, Digest)>) {
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
    pub(super) async fn wait_for_acks(&mut self) -> Result<(), AppendError> {
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
    pub(super) async fn keep_tail(
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
    pub(super) async fn deliver_whole(
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
    pub(super) async fn abandon_all(&mut self) {
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

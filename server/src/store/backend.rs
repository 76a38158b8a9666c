//! The storage seam. Where an upload's bytes and its state live — the data directory (sled and
//! staging files, published files under `files/`), or an S3 bucket shared by the service's nodes
//! (parts, markers and manifests; sled and a spool file as this node's cache) — behind one type.
//! The upload service (`crate::uploads`) and its drivers call it; no front end names a backend.
//!
//! Every operation keeps the durability rule of its backend: a commit returns only when the
//! chunks are durable (synced and recorded here, or stored and marked in the bucket), a publish
//! only when the file is in place and recorded complete.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use ferry_proto::{ChunkLayout, ChunkSet, CommitBatch, CommitPolicy, Digest, ErrorCode};
use tracing::{debug, warn};

use super::s3::{self, PublishError, S3};
use super::{DigestPage, RecordState, Store, UploadId, UploadRecord};
use crate::driver::WireError;
use crate::metrics::metrics;

/// Why a commit did not make its chunks durable.
#[derive(Debug)]
pub enum CommitError {
    /// Its chunks are rejected with this code and message; the client sends them again.
    Rejected(WireError),
    /// The upload is no longer in the shared store (finished or aborted through another node):
    /// its driver stops (`Driver::finished_elsewhere`).
    Gone(String),
}

impl From<WireError> for CommitError {
    fn from(e: WireError) -> Self {
        Self::Rejected(e)
    }
}

/// How long a commit waits for an object store that does not answer before its chunks are
/// rejected (`storage_error`) and must be sent again.
pub const STORE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);

/// The store behind the upload service: the local data directory, and with `--store s3` the
/// bucket every node shares (the local store then being this node's cache).
pub struct Backend {
    store: Arc<Store>,
    bucket: Option<Arc<S3>>,
}

/// A file too large for the backend's layout (the bucket's parts); `file_too_large`.
#[derive(Debug, thiserror::Error)]
#[error(
    "file of {size} bytes exceeds what the s3 store takes: {} parts of at most {max_chunk} bytes",
    s3::MAX_PARTS
)]
pub struct TooLargeForStore {
    pub size: u64,
    pub max_chunk: u64,
}

/// A publish that happened: the final path under the owner's folder.
pub struct Published {
    pub file_name: String,
}

impl Backend {
    pub fn new(store: Arc<Store>, bucket: Option<Arc<S3>>) -> Self {
        Self { store, bucket }
    }

    /// The local store: records (the index, or with the bucket the cache), staging files.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The bucket, with `--store s3`.
    pub fn bucket(&self) -> Option<&Arc<S3>> {
        self.bucket.as_ref()
    }

    /// Whether several nodes share this store (the bucket): what one node knows may be stale.
    pub fn is_shared(&self) -> bool {
        self.bucket.is_some()
    }

    /// Whether published files are files here: each costs an inode (counted against
    /// `--max-entries`), and `dedup` can link to them. Not in the bucket, whose objects are not
    /// files of this node and which keeps no index of content.
    pub fn files_are_local(&self) -> bool {
        self.bucket.is_none()
    }

    /// How this backend's commits are cut from `base` (the server's policy): with the bucket,
    /// up to [`s3::COMMITS_IN_FLIGHT`] per upload run at once, so the store's round trips
    /// overlap instead of adding up; here one, a sync of the staging file.
    pub fn commit_policy(&self, base: CommitPolicy) -> CommitPolicy {
        let max_in_flight = match self.bucket {
            Some(_) => s3::COMMITS_IN_FLIGHT,
            None => 1,
        };
        CommitPolicy {
            max_in_flight,
            ..base
        }
    }

    /// Where an upload's bytes wait: its staging file (here, the durable copy; with the bucket
    /// a spool of the chunks in flight).
    pub fn staging_path(&self, id: UploadId) -> PathBuf {
        self.store.staging_path(id)
    }

    /// Creates an upload: its record and staging file (the whole size reserved on disk); with
    /// the bucket, its size counted against the owner's `limits` across the service, then its
    /// multipart upload, name reservation and manifest, with the chunk size the bucket's parts
    /// need (at least 8 MiB, at most 10 000 parts). Fails with [`NoSpace`],
    /// [`TooLargeForStore`], `NameTaken`, `NameExhausted` or [`s3::OverLimit`] (downcast) where
    /// those apply.
    ///
    /// [`NoSpace`]: super::NoSpace
    pub async fn create(
        &self,
        mut record: UploadRecord,
        max_chunk: u64,
        limits: s3::Limits,
    ) -> Result<(UploadId, UploadRecord)> {
        let Some(bucket) = &self.bucket else {
            let store = self.store.clone();
            let stored = record.clone();
            let id = tokio::task::spawn_blocking(move || store.create(&stored)).await??;
            return Ok((id, record));
        };
        record.chunk_size = s3::chunk_size_for(record.size);
        if record.chunk_size > max_chunk {
            return Err(TooLargeForStore {
                size: record.size,
                max_chunk,
            }
            .into());
        }
        let id = UploadId::random()?;
        // Counted against the owner's limits across the service first ([`s3::OverLimit`]).
        bucket
            .reserve(&record.owner, id, record.size, &limits)
            .await?;
        let taken = match &limits.link {
            Some(link) => bucket.take_link(link, record.size).await,
            None => Ok(()),
        };
        let created = match taken {
            Ok(()) => bucket.create(id, &record).await,
            Err(e) => Err(e),
        };
        let record = match created {
            Ok(record) => record,
            Err(e) => {
                // Given back: the owner's reservation, and the link's count if it was taken.
                if let Err(e) = bucket.release(&record.owner, id, None).await {
                    warn!(error = %format!("{e:#}"), "cannot give back the owner's usage");
                }
                let over = e.downcast_ref::<s3::OverLimit>().is_some();
                if let (Some(link), false) = (&limits.link, over) {
                    if let Err(e) = bucket.give_back_link(&link.id, record.size).await {
                        warn!(error = %format!("{e:#}"), "cannot give back the link's usage");
                    }
                }
                return Err(e);
            }
        };
        let store = self.store.clone();
        let stored = record.clone();
        let adopted = tokio::task::spawn_blocking(move || store.adopt(id, &stored)).await?;
        if let Err(e) = adopted {
            let _ = bucket.abort(id, &record).await;
            return Err(e);
        }
        Ok((id, record))
    }

    /// Brings this node's record of `id` up to date before it is read, unless a driver here
    /// holds the upload (its record is then the current one): with the bucket, another node may
    /// have begun, finished or aborted it. Another owner's upload is not cached here.
    pub async fn refresh(&self, id: UploadId, owner: &str) -> Result<()> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        let manifest = bucket
            .manifest(id)
            .await?
            .filter(|m| m.record.owner == owner);
        let store = self.store.clone();
        let owner = owner.to_owned();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let local = store.record(id)?;
            match (manifest, local) {
                (Some(m), Some(local)) if m.record == local => Ok(()),
                (Some(m), _) => store.adopt(id, &m.record),
                // Gone from the bucket (aborted or expired elsewhere): gone here too, but a
                // complete record stays as the answer to a repeated `finish`.
                (None, Some(local))
                    if local.state != RecordState::Complete && local.owner == owner =>
                {
                    store.remove(id)
                }
                (None, _) => Ok(()),
            }
        })
        .await?
    }

    /// The durable chunks a new driver of `id` starts from: with the bucket, what every node
    /// made durable (its markers), not this node's cache; here, the chunks on record.
    pub async fn durable_at_start(&self, id: UploadId, layout: &ChunkLayout) -> Result<ChunkSet> {
        match &self.bucket {
            Some(bucket) => {
                let markers = bucket.markers(id).await?;
                let mut set = ChunkSet::new();
                for index in s3::durable_digests(&markers, layout.count()).keys() {
                    set.insert(*index);
                }
                Ok(set)
            }
            None => self.store.durable_chunks(id, layout),
        }
    }

    /// The digests of `id`'s durable chunks from `from` on, at most `max`, and where the next
    /// page starts.
    pub async fn digests(
        &self,
        id: UploadId,
        layout: ChunkLayout,
        from: u64,
        max: usize,
    ) -> Result<DigestPage> {
        match &self.bucket {
            Some(bucket) => {
                let markers = bucket.markers(id).await?;
                let all = s3::durable_digests(&markers, layout.count());
                let mut page: Vec<(u64, Digest)> = all
                    .range(from..)
                    .take(max + 1)
                    .map(|(i, d)| (*i, *d))
                    .collect();
                let next = (page.len() > max)
                    .then(|| page.pop().map(|(i, _)| i))
                    .flatten();
                Ok((page, next))
            }
            None => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.chunk_digests(id, &layout, from, max))
                    .await?
            }
        }
    }

    /// The content hash of a complete upload: SHA-256 over its chunk digests on record (here)
    /// or in the markers (the bucket). For front ends whose clients do not compute it (tus,
    /// the IETF draft): each digest was computed from the bytes as they arrived.
    pub async fn content_hash(&self, id: UploadId, layout: ChunkLayout) -> Result<Digest> {
        let mut hasher = ferry_proto::ContentHasher::new();
        let mut next = 0;
        // Bounded by the chunk count: each page moves `next` forward or ends the loop.
        loop {
            let (page, more) = self.digests(id, layout, next, 4096).await?;
            for (index, digest) in page {
                anyhow::ensure!(index == next, "chunk {next} of upload {id} is not durable");
                hasher.push(&digest);
                next += 1;
            }
            match more {
                Some(from) if from == next => continue,
                Some(_) => anyhow::bail!("chunk {next} of upload {id} is not durable"),
                None => break,
            }
        }
        anyhow::ensure!(
            next == layout.count(),
            "chunk {next} of upload {id} is not durable"
        );
        Ok(hasher.finish())
    }

    /// Creates a folder (and its parents) under the owner's folder.
    pub async fn mkdir(&self, owner: &str, dir: Vec<String>) -> Result<()> {
        if let Some(bucket) = &self.bucket {
            return bucket.make_dir(owner, &dir).await;
        }
        let store = self.store.clone();
        let owner = owner.to_owned();
        tokio::task::spawn_blocking(move || store.make_dir(&owner, &dir)).await?
    }

    /// Makes `batch` durable: here the staging file synced, then the chunks recorded and the
    /// database synced; with the bucket, every chunk stored as a part (its SHA-256 checked by the
    /// store) and its marker written, at most `PARTS_IN_FLIGHT_MIB` MiB of parts in flight
    /// server-wide, each stored chunk's bytes freed from the spool. Only after `Ok` may the
    /// chunks be acknowledged.
    pub fn commit(
        self: &Arc<Self>,
        id: UploadId,
        record: &UploadRecord,
        file: Arc<File>,
        layout: ChunkLayout,
        batch: CommitBatch,
    ) -> impl std::future::Future<Output = Result<(), CommitError>> + Send + 'static {
        let remote = self.bucket.clone().zip(record.remote.clone());
        let store = self.store.clone();
        async move {
            match remote {
                Some((bucket, remote)) => {
                    commit_remote(bucket, remote, store, file, id, layout, batch).await
                }
                None => Ok(commit_local(store, file, id, batch).await?),
            }
        }
    }

    /// Publishes a complete upload whose content hash is `digest`: checked against the chunk
    /// digests on record (here) or the markers and parts (the bucket), then the file published
    /// (hard link here; the multipart upload completed there) and recorded complete.
    pub async fn publish(
        &self,
        id: UploadId,
        record: &UploadRecord,
        layout: ChunkLayout,
        digest: Digest,
    ) -> Result<Published, WireError> {
        let Some(bucket) = &self.bucket else {
            let (store, record) = (self.store.clone(), record.clone());
            // No data is read again: the content hash comes from the digests on record, each
            // checked against the bytes when they arrived (and after an unclean stop).
            let result = tokio::task::spawn_blocking(move || -> Result<Result<String, Digest>> {
                let actual = store.content_hash(id, &layout)?;
                if actual != digest {
                    return Ok(Err(actual));
                }
                Ok(Ok(store.publish(id, &record, digest)?))
            })
            .await;
            return match result {
                Ok(Ok(Ok(file_name))) => Ok(Published { file_name }),
                Ok(Ok(Err(actual))) => Err(WireError::new(
                    ErrorCode::FileDigestMismatch,
                    format!("the chunks on the server give the content hash {actual}, finish said {digest}"),
                )),
                Ok(Err(e)) if e.downcast_ref::<super::NameTaken>().is_some() => {
                    Err(WireError::new(ErrorCode::AlreadyExists, format!("{e:#}")))
                }
                Ok(Err(e)) if e.downcast_ref::<super::NameExhausted>().is_some() => {
                    Err(WireError::new(ErrorCode::NameExhausted, format!("{e:#}")))
                }
                Ok(Err(e)) => Err(WireError::new(ErrorCode::StorageError, format!("{e:#}"))),
                Err(e) => Err(WireError::new(ErrorCode::Internal, e.to_string())),
            };
        };
        match bucket.publish(id, record, layout.count(), digest).await {
            Ok(done) => {
                let url = done
                    .remote
                    .as_ref()
                    .map_or(String::new(), |r| bucket.url(&r.key));
                let name = done.final_name.clone().unwrap_or_default();
                let store = self.store.clone();
                let recorded =
                    tokio::task::spawn_blocking(move || store.complete_remote(id, &done, &url))
                        .await;
                match recorded {
                    Ok(Ok(())) => {}
                    // The object is complete in the bucket whatever this node failed to note.
                    Ok(Err(e)) => {
                        warn!(error = %format!("{e:#}"), "published, but not recorded here")
                    }
                    Err(e) => return Err(WireError::new(ErrorCode::Internal, e.to_string())),
                }
                Ok(Published { file_name: name })
            }
            Err(e @ PublishError::Mismatch { .. }) => {
                Err(WireError::new(ErrorCode::FileDigestMismatch, e.to_string()))
            }
            Err(e @ PublishError::Missing(_)) => {
                Err(WireError::new(ErrorCode::Incomplete, e.to_string()))
            }
            Err(e @ PublishError::Gone(_)) => {
                Err(WireError::new(ErrorCode::NotFound, e.to_string()))
            }
            Err(e @ PublishError::Taken(_)) => {
                Err(WireError::new(ErrorCode::AlreadyExists, e.to_string()))
            }
            Err(PublishError::Store(e)) => {
                Err(WireError::new(ErrorCode::StorageError, format!("{e:#}")))
            }
        }
    }

    /// Deletes an unfinished upload: its multipart upload in the bucket first, then its records
    /// and staging file here.
    pub async fn abort(&self, id: UploadId, record: &UploadRecord) -> Result<()> {
        if let Some(bucket) = &self.bucket {
            bucket.abort(id, record).await?;
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.remove(id)).await?
    }

    /// Removes an upload that made no progress, leaving a tombstone so its owner learns why.
    pub async fn expire(&self, id: UploadId, record: &UploadRecord, now: u64) -> Result<()> {
        if let Some(bucket) = &self.bucket {
            bucket.abort(id, record).await?;
        }
        let (store, owner) = (self.store.clone(), record.owner.clone());
        tokio::task::spawn_blocking(move || store.expire(id, &owner, now)).await?
    }
}

/// The durability rule here: data synced, then the records, then the database synced.
async fn commit_local(
    store: Arc<Store>,
    file: Arc<File>,
    id: UploadId,
    batch: CommitBatch,
) -> Result<(), WireError> {
    let started = Instant::now();
    tokio::task::spawn_blocking(move || file.sync_data())
        .await
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| WireError::storage(&e, "failed to sync the staging file"))?;
    // Writing the database on a full disk would break it (see `Store::close_after_failure`):
    // stop before, and tell the client to come back.
    store.check_space().map_err(|e| {
        WireError::new(
            ErrorCode::StorageFull,
            format!("the server's disk is full ({e}); retry later"),
        )
    })?;
    let recorded = match store.record_chunks(id, &batch.chunks) {
        Ok(()) => store
            .flush()
            .await
            .map_err(|e| WireError::from_error(&e, "failed to flush the database")),
        Err(e) => Err(WireError::from_error(&e, "failed to record chunks")),
    };
    if recorded.is_err() {
        store.close_after_failure();
    }
    recorded?;
    metrics()
        .commit_duration
        .observe(started.elapsed().as_secs_f64());
    debug!(chunks = batch.chunks.len(), "committed");
    Ok(())
}

/// The durability rule with the bucket: every chunk stored as a part and its marker written,
/// then the chunks noted in this node's cache.
async fn commit_remote(
    bucket: Arc<S3>,
    remote: s3::Remote,
    store: Arc<Store>,
    file: Arc<File>,
    id: UploadId,
    layout: ChunkLayout,
    batch: CommitBatch,
) -> Result<(), CommitError> {
    let started = Instant::now();
    let mut parts = tokio::task::JoinSet::new();
    for &(index, digest) in &batch.chunks {
        let span = layout.span(index);
        let (bucket, remote, file) = (bucket.clone(), remote.clone(), file.clone());
        parts.spawn(async move {
            let slot = bucket.part_slot(span.len).await?;
            let body = s3::SpoolPart {
                file: file.clone(),
                offset: span.offset,
                len: span.len,
            };
            let since = Instant::now();
            let stored = patiently(&bucket, since, || {
                bucket.put_part(id, &remote, index.get(), &body, &digest)
            })
            .await?;
            // The bytes are the store's: the slot goes to the next part while this one is marked.
            drop(slot);
            patiently(&bucket, since, || bucket.mark_part(id, &stored)).await?;
            crate::fsutil::punch_hole(&file, span.offset, span.len);
            anyhow::Ok(())
        });
    }
    let mut failure = None;
    // Bounded by the batch: one result per chunk.
    while let Some(done) = parts.join_next().await {
        let result = done.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
    }
    if let Some(e) = failure {
        let message = format!("failed to store chunks in the bucket: {e:#}");
        return Err(match e.downcast_ref::<s3::Gone>() {
            Some(_) => CommitError::Gone(message),
            None => WireError::new(ErrorCode::StorageError, message).into(),
        });
    }
    // A cache only (listings, the admin view): a loss costs nothing, so no flush.
    if let Err(e) = store.record_chunks(id, &batch.chunks) {
        warn!(error = %format!("{e:#}"), "failed to note stored chunks");
    }
    metrics()
        .commit_duration
        .observe(started.elapsed().as_secs_f64());
    debug!(chunks = batch.chunks.len(), "stored");
    Ok(())
}

/// Runs `request` until the store answers, for up to [`STORE_PATIENCE`] since `since`: while the
/// store does not answer, the chunk stays on the spool and its request is sent again once it
/// does. No ack meanwhile, so the client's window fills and it stops sending: nothing is
/// rejected and sent again. A refusal from the store is returned at once.
async fn patiently<T, F, Fut>(bucket: &S3, since: Instant, mut request: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    // Bounded by STORE_PATIENCE: each turn waits for the store to answer again.
    loop {
        match request().await {
            Ok(answer) => {
                bucket.note_answer();
                return Ok(answer);
            }
            Err(e) if bucket.note_failure(&e) && since.elapsed() < STORE_PATIENCE => {
                bucket
                    .wait_for_answer(STORE_PATIENCE.saturating_sub(since.elapsed()))
                    .await;
            }
            Err(e) => return Err(e),
        }
    }
}

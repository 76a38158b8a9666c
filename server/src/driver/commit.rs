//! The commits: what makes a batch of received chunks durable before they are acknowledged —
//! on the local disk and in sled, or with the s3 store as parts and markers in the bucket.

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use ferry_proto::{ChunkLayout, CommitBatch, ErrorCode};
use tracing::{debug, warn};

use super::{Driver, WireError};
use crate::metrics::metrics;
use crate::store::s3::S3;
use crate::store::{Store, UploadId};

impl Driver {
    /// The commit of `batch`, to run as its own task: the local durability rule, or with the
    /// s3 store the parts stored in the bucket.
    pub(super) fn persist(
        &self,
        batch: CommitBatch,
    ) -> impl std::future::Future<Output = Result<(), WireError>> + Send + 'static {
        let (store, file, id) = (self.store.clone(), self.file.clone(), self.id);
        let remote = self.s3.clone().zip(self.record.remote.clone());
        let layout = *self.session.layout();
        async move {
            match remote {
                Some((s3, remote)) => {
                    persist_remote(s3, remote, store, file, id, layout, batch).await
                }
                None => persist(store, file, id, batch).await,
            }
        }
    }
}

/// The durability rule with the s3 store: every chunk of the batch is stored as a part (the
/// store checks its SHA-256) and its marker written, with at most
/// [`crate::store::s3::PARTS_IN_FLIGHT_MIB`] MiB of parts in flight server-wide; then the
/// chunks are noted in this node's cache. Each stored chunk's bytes are freed from the spool.
async fn persist_remote(
    s3: Arc<S3>,
    remote: crate::store::s3::Remote,
    store: Arc<Store>,
    file: Arc<File>,
    id: UploadId,
    layout: ChunkLayout,
    batch: CommitBatch,
) -> Result<(), WireError> {
    let started = Instant::now();
    let mut parts = tokio::task::JoinSet::new();
    for &(index, digest) in &batch.chunks {
        let span = layout.span(index);
        let (s3, remote, file) = (s3.clone(), remote.clone(), file.clone());
        parts.spawn(async move {
            let _slot = s3.part_slot(span.len).await?;
            let spool = file.clone();
            let body = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut body = vec![0u8; span.len as usize];
                spool.read_exact_at(&mut body, span.offset).map(|()| body)
            })
            .await??;
            s3.put_part(id, &remote, index.get(), body.into(), &digest)
                .await?;
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
        return Err(WireError::new(
            ErrorCode::StorageError,
            format!("failed to store chunks in the bucket: {e:#}"),
        ));
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

/// The durability rule: data synced, then the records, then the flush. Only after this
/// returns `Ok` may the chunks be acknowledged.
async fn persist(
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

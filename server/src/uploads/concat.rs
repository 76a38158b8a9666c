//! tus concatenation: a final upload made of partial ones (tus-js-client's `parallelUploads`
//! sends one file as several partial uploads at once, then asks for the final one).
//!
//! The final upload is an ordinary upload of the partial ones' total length. Its bytes are
//! copied from the partial uploads' staging files, each of their chunks checked against its
//! digest on record as it is read, and cut into the final upload's own chunks, hashed as they
//! are written; those chunks are recorded durable (after a sync) and the upload is published
//! like any other. The partial uploads are then removed. Local store only: with the s3 store a
//! partial upload's bytes are parts in the bucket, not files here.

use std::os::unix::fs::FileExt;

use ferry_proto::{ChunkIndex, Digest, ErrorCode};
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use crate::driver::WireError;
use crate::store::{RecordState, UploadId, UploadRecord};

use super::{internal, storage, Finished, NewUpload, Principal, Uploads};

/// Partial uploads one final upload may name.
pub const MAX_PARTS: usize = 256;

impl Uploads {
    /// Whether this server can concatenate (its store is local).
    pub fn can_concatenate(&self) -> bool {
        self.backend.files_are_local()
    }

    /// Makes and publishes the final upload of `parts` (tus `Upload-Concat: final;…`), each a
    /// complete partial upload of the caller's, in order; then removes them.
    pub async fn concat(
        &self,
        who: &Principal,
        parts: &[String],
        mut new: NewUpload,
    ) -> Result<Finished, WireError> {
        if !self.can_concatenate() {
            return Err(WireError::new(
                ErrorCode::BadState,
                "concatenation is not available with the s3 store",
            ));
        }
        if parts.is_empty() || parts.len() > MAX_PARTS {
            return Err(WireError::new(
                ErrorCode::BadField,
                format!(
                    "a final upload names 1 to {MAX_PARTS} partial uploads, not {}",
                    parts.len()
                ),
            ));
        }
        let mut found: Vec<(UploadId, UploadRecord)> = Vec::with_capacity(parts.len());
        for raw in parts {
            let at = self.offset(who, raw).await?;
            if found.iter().any(|(id, _)| *id == at.id) {
                return Err(WireError::new(
                    ErrorCode::BadField,
                    format!("partial upload {raw:.40} is named twice"),
                ));
            }
            if !at.record.partial || at.record.state != RecordState::Receiving {
                return Err(WireError::new(
                    ErrorCode::BadState,
                    format!("upload {raw:.40} is not a partial upload"),
                ));
            }
            if at.length() != Some(at.offset) {
                return Err(WireError::new(
                    ErrorCode::Incomplete,
                    format!(
                        "partial upload {raw:.40} has {} of its {} bytes",
                        at.offset,
                        at.length()
                            .map_or_else(|| "unknown".to_owned(), |l| l.to_string())
                    ),
                ));
            }
            found.push((at.id, at.record));
        }
        new.size = found.iter().map(|(_, r)| r.size).sum();
        new.extra = Default::default();
        let (id, record) = self.create(who, new).await?;
        let store = self.store().clone();
        let sources = found.clone();
        let final_layout = record.layout().map_err(internal)?;
        let copied = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let out = std::fs::OpenOptions::new()
                .write(true)
                .open(store.staging_path(id))?;
            let mut chunks = Vec::with_capacity(final_layout.count() as usize);
            let mut cut = Cutter::new(final_layout);
            for (part, record) in &sources {
                copy_part(&store, *part, record, &out, &mut cut, &mut chunks)?;
            }
            anyhow::ensure!(
                chunks.len() as u64 == final_layout.count(),
                "the partial uploads gave {} of {} chunks",
                chunks.len(),
                final_layout.count()
            );
            out.sync_data()?;
            store.record_chunks(id, &chunks)?;
            store.sync()
        })
        .await
        .map_err(internal)?;
        if let Err(e) = copied {
            let _ = self.abort(who, &id.to_string()).await;
            return Err(storage(&e, "failed to concatenate the partial uploads"));
        }
        let finished = self.finish_here(who, id, &record).await?;
        for (part, _) in &found {
            if let Err(e) = self.remove(who, &part.to_string(), "concatenated").await {
                warn!(upload = %part, error = %e.message, "failed to remove a concatenated partial upload");
            }
        }
        info!(upload = %id, parts = found.len(), size = record.size, "concatenated");
        Ok(finished)
    }
}

/// Copies one partial upload's bytes to the final upload's staging file, each chunk checked
/// against its digest on record.
fn copy_part(
    store: &crate::store::Store,
    part: UploadId,
    record: &UploadRecord,
    out: &std::fs::File,
    cut: &mut Cutter,
    chunks: &mut Vec<(ChunkIndex, Digest)>,
) -> anyhow::Result<()> {
    let layout = record.layout()?;
    let file = std::fs::File::open(store.staging_path(part))?;
    let mut from = 0;
    let mut buf = Vec::new();
    // Bounded by the part's chunk count: each page moves `from` on or ends the loop.
    loop {
        let (page, next) = store.chunk_digests(part, &layout, from, 1024)?;
        for (index, digest) in page {
            anyhow::ensure!(
                index == from,
                "chunk {from} of upload {part} is not durable"
            );
            let span = layout.span(layout.index(index)?);
            buf.resize(span.len as usize, 0);
            file.read_exact_at(&mut buf, span.offset)?;
            anyhow::ensure!(
                Digest::of(&buf) == digest,
                "chunk {index} of upload {part} no longer matches its digest"
            );
            cut.write(out, &buf, chunks)?;
            from += 1;
        }
        match next {
            Some(n) if n == from => continue,
            _ => break,
        }
    }
    anyhow::ensure!(
        from == layout.count(),
        "chunk {from} of upload {part} is not durable"
    );
    Ok(())
}

/// Writes bytes at the final upload's running offset, cutting and hashing its chunks.
struct Cutter {
    layout: ferry_proto::ChunkLayout,
    at: u64,
    hasher: Sha256,
}

impl Cutter {
    fn new(layout: ferry_proto::ChunkLayout) -> Self {
        Self {
            layout,
            at: 0,
            hasher: Sha256::new(),
        }
    }

    fn write(
        &mut self,
        out: &std::fs::File,
        mut data: &[u8],
        chunks: &mut Vec<(ChunkIndex, Digest)>,
    ) -> anyhow::Result<()> {
        out.write_all_at(data, self.at)?;
        // Bounded by `data`: each turn takes at least one byte of it.
        while !data.is_empty() {
            let index = self.layout.index(self.at / self.layout.chunk_size())?;
            let span = self.layout.span(index);
            let take = ((span.offset + span.len - self.at) as usize).min(data.len());
            self.hasher.update(&data[..take]);
            self.at += take as u64;
            data = &data[take..];
            if self.at == span.offset + span.len {
                let hasher = std::mem::take(&mut self.hasher);
                chunks.push((index, Digest::from(hasher)));
            }
        }
        Ok(())
    }
}

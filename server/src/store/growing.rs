//! Sources that grow (`docs/protocol.md` §3.2.1): the durable tail of an unfinished chunk, chunks
//! forgotten for a rewrite, and the length declared late.

use std::fs::OpenOptions;

use anyhow::{Context, Result};

use super::space::reserve;
use super::{free_space, NoSpace, Store, Tail, UploadId, UploadRecord};

impl Store {
    /// The durable bytes of `id`'s unfinished chunk, if a byte-stream request left some.
    pub fn tail(&self, id: UploadId) -> Result<Option<Tail>> {
        let raw = self.db()?.meta.get(tail_key(id))?;
        Ok(raw.and_then(|raw| serde_json::from_slice(&raw).ok()))
    }

    /// Records `tail` durably (the caller synced its bytes first).
    pub fn set_tail(&self, id: UploadId, tail: &Tail) -> Result<()> {
        self.db()?
            .meta
            .insert(tail_key(id), serde_json::to_vec(tail)?)?;
        self.sync()
    }

    /// Forgets `id`'s tail (no sync: a tail that comes back after a crash is checked against
    /// its bytes before it is used).
    pub fn clear_tail(&self, id: UploadId) -> Result<()> {
        self.db()?.meta.remove(tail_key(id))?;
        Ok(())
    }

    /// Forgets durable chunks (`rewrite`): their digests are removed and the database synced,
    /// so they are not durable after a crash either; their bytes are written again when the
    /// client re-sends them.
    pub fn forget_chunks(&self, id: UploadId, chunks: &[u64]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for index in chunks {
            batch.remove(&id.chunk_key(*index)[..]);
        }
        self.db()?.chunks.apply_batch(batch)?;
        self.sync()
    }

    /// Declares the length of an upload created without one: the staging file reserved to
    /// `size` and the record updated, durably.
    pub fn set_length(&self, id: UploadId, record: &UploadRecord) -> Result<()> {
        let path = self.staging_path(id);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        let staging_dir = path.parent().unwrap_or(&self.data_dir);
        let have = file.metadata()?.len();
        let free = free_space(staging_dir).unwrap_or(u64::MAX);
        let more = record.size.saturating_sub(have);
        if free < more.saturating_add(self.min_free) {
            return Err(NoSpace {
                needed: more,
                free,
                reserve: self.min_free,
            }
            .into());
        }
        reserve(&file, record.size, staging_dir)?;
        // Bytes written past the length by a request that never became durable are cut off:
        // the published file is exactly `size` bytes.
        if have > record.size {
            file.set_len(record.size)
                .context("failed to size the staging file")?;
        }
        file.sync_all().context("failed to sync the staging file")?;
        self.put_record(id, record)?;
        self.sync()
    }
}

/// The key of an upload's [`Tail`] in the `meta` tree.
pub(super) fn tail_key(id: UploadId) -> Vec<u8> {
    let mut key = b"tail/".to_vec();
    key.extend_from_slice(&id.0);
    key
}

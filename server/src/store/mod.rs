//! The data directory: sled records of uploads and durable chunks, staging files, published
//! files. Storage is dumb on purpose: it records and reads back; every protocol decision is
//! made by the `UploadSession` in the driver.
//!
//! Layout: `db/` (sled), `staging/<upload_id>.part`, `files/<owner>/<name>`, `tls/`, `tokens`.
//!
//! Beside this file: `growing.rs` (tails, rewrites, a length declared late), `links.rs` (what
//! each upload link created), `hooks.rs` (the `--on-complete` queue), `publish.rs`,
//! `recovery.rs`, `space.rs`, and `backend.rs` (the seam over this store and the bucket).

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ferry_migrations as migrations;
use ferry_proto::{ChunkIndex, ChunkLayout, ChunkSet, ContentHasher, Digest};
use tracing::warn;

use crate::fsutil::{create_dir_durable, remove_file_durable, sync_dir};

mod backend;
mod db;
mod growing;
mod hooks;
mod links;
mod publish;
mod record;
mod recovery;
pub mod s3;
mod space;
#[cfg(test)]
mod tests;

pub use backend::{Backend, CommitError, TooLargeForStore};
use db::Db;
use growing::tail_key;
pub use publish::{Content, NameExhausted, NameTaken, MAX_HISTORY, MAX_NUMBERED};
pub use record::{HookJob, RecordState, Tail, Tombstone, UploadId, UploadRecord};
pub use recovery::{Reconciled, Verified};
use space::reserve;
pub use space::{free_inodes, free_space, NoInodes, NoSpace};

/// Key of the clean-shutdown marker in the `meta` tree: `1` after a clean stop, `0` while
/// running.
const CLEAN: &[u8] = b"clean_shutdown";
/// Key of the service id in the `meta` tree (local store; the s3 store keeps it in the bucket).
const SERVICE: &[u8] = b"service_id";

/// What opening the store found.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub schema_before: u32,
    pub clean: bool,
    /// After an unclean stop: the uploads whose chunks are to be re-verified, most recently
    /// active first, with their recorded durable bytes. Empty after a clean stop.
    pub to_verify: Vec<(UploadId, u64)>,
    /// What start-up found half done and settled.
    pub reconciled: Reconciled,
}

pub struct Store {
    data_dir: PathBuf,
    /// Free space kept for the database: commits and creates that would eat into it are
    /// refused, because sled 0.34 stays failed after one write hits a full disk.
    min_free: u64,
    /// The open database; `None` after a write failed, until it is reopened. sled 0.34 keeps
    /// the first I/O error and fails every later call, so after a failure (a full disk, say)
    /// the only way on is to drop it and open it again once the cause is gone.
    db: RwLock<Option<Arc<Db>>>,
    /// Completed uploads kept on record per owner: [`MAX_HISTORY`], lowered in tests.
    max_history: usize,
    /// Queue an `--on-complete` hook job with every completion.
    queue_hooks: std::sync::atomic::AtomicBool,
    /// Free inodes kept for the server's own files (`--min-free-inodes`): creates and folders
    /// that would eat into them are refused.
    min_free_inodes: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Opens (creating if needed) the data directory, migrates the schema and settles what a
    /// crash left half done. After an unclean stop it lists the uploads whose chunks are to be
    /// re-verified (`OpenReport::to_verify`); it does not read them: that is `crate::verify`'s
    /// job, in the background. Cost: one pass over the records and one over `staging/`.
    pub fn open(data_dir: &Path, min_free: u64) -> Result<(Self, OpenReport)> {
        Self::open_with(data_dir, min_free, false)
    }

    /// Like `open`; with `queue_hooks`, every completion (also those settled at start) queues
    /// an `--on-complete` hook job in the same transaction as its complete record.
    pub fn open_with(
        data_dir: &Path,
        min_free: u64,
        queue_hooks: bool,
    ) -> Result<(Self, OpenReport)> {
        for sub in ["staging", "files"] {
            let dir = data_dir.join(sub);
            create_dir_durable(&dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let db_path = data_dir.join("db");
        let db = Db::open(&db_path)?;
        let schema_before =
            migrations::migrate(&db.db).context("failed to prepare the database")?;
        let clean = schema_before == 0 || db.meta.get(CLEAN)?.is_some_and(|v| v.as_ref() == [1]);
        db.meta.insert(CLEAN, &[0])?;
        let store = Self {
            data_dir: data_dir.to_owned(),
            min_free,
            db: RwLock::new(Some(Arc::new(db))),
            max_history: MAX_HISTORY,
            queue_hooks: queue_hooks.into(),
            min_free_inodes: 0.into(),
        };
        let mut report = OpenReport {
            schema_before,
            clean,
            ..Default::default()
        };
        // The unclean marker must be durable before anything is accepted.
        store.sync()?;
        report.reconciled = store.reconcile()?;
        // After an unclean stop the durable chunks are re-verified, but not here: the server
        // listens first and `crate::verify` works through them in the background.
        // (Read only: `reconcile` ended with a sync, nothing is left to make durable.)
        if !clean {
            report.to_verify = store.to_verify()?;
        }
        Ok((store, report))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn staging_path(&self, id: UploadId) -> PathBuf {
        self.data_dir.join("staging").join(format!("{id}.part"))
    }

    /// The service id announced in `welcome`: made once, at the first start, and kept.
    pub fn service_id(&self) -> Result<String> {
        let db = self.db()?;
        if let Some(id) = db.meta.get(SERVICE)? {
            return Ok(String::from_utf8_lossy(&id).into_owned());
        }
        let id = UploadId::random()?.to_string();
        db.meta.insert(SERVICE, id.as_bytes())?;
        db.sync()?;
        Ok(id)
    }

    /// Records an upload of the s3 store on this node (a new one, or one another node began):
    /// a sparse spool file for its chunks in flight, and its record. Nothing here is the only
    /// copy: the bucket has the manifest and the stored parts, so nothing is synced (a record
    /// lost in a crash is read from the manifest again at the next `resume`).
    pub fn adopt(&self, id: UploadId, record: &UploadRecord) -> Result<()> {
        self.check_space()?;
        if record.state == RecordState::Complete {
            let _ = fs::remove_file(self.staging_path(id));
            return self.put_record(id, record);
        }
        let path = self.staging_path(id);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        file.set_len(record.size)
            .with_context(|| format!("failed to size {}", path.display()))?;
        self.put_record(id, record)
    }

    /// Records an upload of the s3 store complete (queuing its hook), drops its chunk records
    /// and its spool. `record` is the manifest's, already complete.
    pub fn complete_remote(&self, id: UploadId, record: &UploadRecord, url: &str) -> Result<()> {
        let name = record.final_name.clone().unwrap_or_default();
        self.record_complete(id, record, PathBuf::from(url), &name)?;
        let _ = fs::remove_file(self.staging_path(id));
        Ok(())
    }

    /// Records the clean stop. Called last, after every driver has stopped.
    pub fn mark_clean(&self) -> Result<()> {
        let db = self.db()?;
        db.meta.insert(CLEAN, &[1])?;
        db.sync()
    }

    /// Makes every record written so far durable (see `Db::sync`).
    pub fn sync(&self) -> Result<()> {
        self.db()?.sync()
    }

    /// The open database, reopening it first if a failure closed it.
    fn db(&self) -> Result<Arc<Db>> {
        if let Some(db) = self.db.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(db.clone());
        }
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        self.check_space()
            .map_err(|e| anyhow::anyhow!("database paused: {e}"))?;
        let db =
            Arc::new(Db::open(&self.data_dir.join("db")).context("failed to reopen the database")?);
        // The records written since the failure may be lost; none of them was acknowledged.
        // The clean-shutdown marker stays 0, so a restart re-verifies as after a crash.
        warn!("database reopened after a failure");
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Whether the database is open (not closed after a write failure).
    pub fn is_open(&self) -> bool {
        self.db.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Every unfinished upload of every owner, with its durable bytes (the admin listener's
    /// `/uploads`).
    pub fn in_progress(&self) -> Result<Vec<(UploadId, UploadRecord, u64)>> {
        let mut out = Vec::new();
        for (id, record) in self.all_records()? {
            if record.state == RecordState::Complete {
                continue;
            }
            let durable = match record.layout() {
                Ok(layout) => layout.bytes_in(&self.durable_chunks(id, &layout)?),
                Err(_) => 0,
            };
            out.push((id, record, durable));
        }
        Ok(out)
    }

    /// Closes the database after a write failed; the next call reopens it.
    pub fn close_after_failure(&self) {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if slot.take().is_some() {
            warn!("database write failed; closed until it can be reopened");
        }
    }

    /// Creates the staging file and the record of a new upload.
    pub fn create(&self, record: &UploadRecord) -> Result<UploadId> {
        let id = UploadId::random()?;
        let path = self.staging_path(id);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        let staging_dir = path.parent().unwrap_or(&self.data_dir);
        let free = free_space(staging_dir).unwrap_or(u64::MAX);
        // An upload of unknown length reserves nothing until its length is declared.
        let reserved = if record.deferred { 0 } else { record.size };
        let needed = reserved.saturating_add(self.min_free);
        let result = if free < needed {
            Err(NoSpace {
                needed: reserved,
                free,
                reserve: self.min_free,
            }
            .into())
        } else {
            // The reserved size is durable with the file's entry, before the record exists.
            reserve(&file, reserved, staging_dir)
                .and_then(|()| file.sync_all().context("failed to sync the staging file"))
        };
        if let Err(e) = result {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        sync_dir(staging_dir)?;
        // A crash before this record is durable leaves an orphan staging file, which the next
        // start removes.
        self.put_record(id, record)?;
        self.sync()?;
        Ok(id)
    }

    pub fn record(&self, id: UploadId) -> Result<Option<UploadRecord>> {
        let Some(raw) = self.db()?.uploads.get(id.0)? else {
            return Ok(None);
        };
        match serde_json::from_slice(&raw) {
            Ok(record) => Ok(Some(record)),
            Err(e) => {
                warn!(%id, error = %e, "unreadable upload record, treating as absent");
                Ok(None)
            }
        }
    }

    /// The recorded durable chunks of `id`. Entries that are malformed or outside the layout
    /// are ignored (and so re-sent), never trusted.
    pub fn durable_chunks(&self, id: UploadId, layout: &ChunkLayout) -> Result<ChunkSet> {
        let mut set = ChunkSet::new();
        for entry in self.db()?.chunks.scan_prefix(id.0) {
            let (key, value) = entry?;
            let Some(index) = key
                .get(16..24)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            if index < layout.count() && value.len() == 32 {
                set.insert(index);
            }
        }
        Ok(set)
    }

    /// The recorded digests of `id`'s durable chunks from index `from` on, at most `max`, and
    /// the index to continue from when more follow.
    pub fn chunk_digests(
        &self,
        id: UploadId,
        layout: &ChunkLayout,
        from: u64,
        max: usize,
    ) -> Result<DigestPage> {
        let mut out = Vec::new();
        let start = id.chunk_key(from);
        let db = self.db()?;
        for entry in db.chunks.range(start.as_slice()..) {
            let (key, value) = entry?;
            if !key.starts_with(&id.0) {
                break;
            }
            let index = key
                .get(16..24)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            let digest = <[u8; 32]>::try_from(value.as_ref()).ok();
            let (Some(index), Some(digest)) = (index, digest) else {
                continue;
            };
            if index >= layout.count() {
                break;
            }
            if out.len() == max {
                return Ok((out, Some(index)));
            }
            out.push((index, Digest::from_bytes(digest)));
        }
        Ok((out, None))
    }

    /// The content hash of `id`: SHA-256 over the recorded chunk digests in index order
    /// (sled keeps the keys sorted, and the index is big-endian). Fails if a chunk of the
    /// layout has no digest on record.
    pub fn content_hash(&self, id: UploadId, layout: &ChunkLayout) -> Result<Digest> {
        let mut hasher = ContentHasher::new();
        let mut next = 0u64;
        for entry in self.db()?.chunks.scan_prefix(id.0) {
            let (key, value) = entry?;
            let index = key
                .get(16..24)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            let digest = <[u8; 32]>::try_from(value.as_ref()).ok();
            match (index, digest) {
                (Some(index), Some(digest)) if index == next && index < layout.count() => {
                    hasher.push(&Digest::from_bytes(digest));
                    next += 1;
                }
                _ => continue,
            }
        }
        if next != layout.count() {
            anyhow::bail!("chunk {next} of upload {id} has no digest on record");
        }
        Ok(hasher.finish())
    }

    /// Sets the inode reserve (`--min-free-inodes`).
    pub fn set_min_free_inodes(&self, reserve: u64) {
        self.min_free_inodes
            .store(reserve, std::sync::atomic::Ordering::Relaxed);
    }

    /// Refuses new files and folders when the file system is down to the inode reserve.
    pub fn check_inodes(&self) -> Result<(), NoInodes> {
        let reserve = self
            .min_free_inodes
            .load(std::sync::atomic::Ordering::Relaxed);
        match free_inodes(&self.data_dir) {
            Ok(Some(free)) if free < reserve.saturating_add(1) => Err(NoInodes { free, reserve }),
            _ => Ok(()),
        }
    }

    /// Files and folders `owner` has made under `files/`: published files and created folders,
    /// counted as they are made (like the published bytes, never decreased by hand deletions).
    pub fn entries(&self, owner: &str) -> Result<u64> {
        let raw = self.db()?.owners.get(entries_key(owner))?;
        Ok(raw.map_or(0, |v| publish::be_u64(v.as_ref())))
    }

    /// Counts `n` more files or folders for `owner`.
    fn add_entries(&self, owner: &str, n: u64) -> Result<()> {
        if n > 0 {
            self.db()?
                .owners
                .update_and_fetch(entries_key(owner), |old| {
                    let before = old.map_or(0, publish::be_u64);
                    Some(before.saturating_add(n).to_be_bytes().to_vec())
                })?;
        }
        Ok(())
    }

    /// The folders of `dir` (below `owner`'s folder, the owner's folder included) that do not
    /// exist yet: what a `mkdir` or a publish into it will create.
    pub fn missing_dirs(&self, owner: &str, dir: &[String]) -> u64 {
        let mut path = self.owner_dir(owner);
        let mut missing = u64::from(!path.is_dir());
        for part in dir {
            path.push(part);
            missing += u64::from(missing > 0 || !path.is_dir());
        }
        missing
    }

    /// Refuses to write when the disk is down to the database's reserve.
    pub fn check_space(&self) -> Result<(), NoSpace> {
        match free_space(&self.data_dir) {
            Ok(free) if free < self.min_free => Err(NoSpace {
                needed: 0,
                free,
                reserve: self.min_free,
            }),
            _ => Ok(()),
        }
    }

    /// Records chunks as durable (in memory until [`Store::flush`]) and touches the upload.
    pub fn record_chunks(&self, id: UploadId, chunks: &[(ChunkIndex, Digest)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (index, digest) in chunks {
            batch.insert(&id.chunk_key(index.get())[..], &digest.as_bytes()[..]);
        }
        self.db()?.chunks.apply_batch(batch)?;
        if let Some(mut record) = self.record(id)? {
            record.updated_at = unix_now();
            self.put_record(id, &record)?;
        }
        Ok(())
    }

    /// [`Store::sync`] on the blocking pool: what a group commit waits for.
    pub async fn flush(self: &Arc<Self>) -> Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.sync()).await?
    }

    /// Every upload of `owner`, oldest first (by creation time, then id: a total order, so a
    /// listing can be paged).
    pub fn list(&self, owner: &str) -> Result<Vec<(UploadId, UploadRecord)>> {
        let mut out = self.all_records()?;
        out.retain(|(_, r)| r.owner == owner);
        out.sort_by_key(|(id, r)| (r.created_at, *id));
        Ok(out)
    }

    /// Every readable upload record.
    fn all_records(&self) -> Result<Vec<(UploadId, UploadRecord)>> {
        let mut out = Vec::new();
        for entry in self.db()?.uploads.iter() {
            let (key, _) = entry?;
            let Ok(bytes) = <[u8; 16]>::try_from(key.as_ref()) else {
                continue;
            };
            let id = UploadId(bytes);
            if let Some(record) = self.record(id)? {
                out.push((id, record));
            }
        }
        Ok(out)
    }

    pub fn owner_dir(&self, owner: &str) -> PathBuf {
        self.data_dir.join("files").join(owner)
    }

    /// The folder a record publishes into: the owner's, or one below it.
    fn publish_dir(&self, record: &UploadRecord) -> PathBuf {
        let mut dir = self.owner_dir(&record.owner);
        dir.extend(&record.dir);
        dir
    }

    /// Creates `files/<owner>/<dir…>` (every folder of the path synced), for an empty folder of
    /// an uploaded tree, and counts the folders it made for the owner. `dir` is sanitised: no
    /// component can leave the owner's folder.
    pub fn make_dir(&self, owner: &str, dir: &[String]) -> Result<()> {
        let parts: Vec<&str> = std::iter::once(owner)
            .chain(dir.iter().map(String::as_str))
            .collect();
        let files = self.data_dir.join("files");
        let made = crate::fsutil::create_path_synced(&files, &parts)
            .with_context(|| format!("failed to create {}", parts.join("/")))?;
        // The last folder's own entry is in its parent, synced above.
        self.add_entries(owner, made)?;
        self.sync()
    }

    /// Deletes an upload: records, chunk records and staging file. A crash between the two
    /// leaves an orphan staging file, which the next start removes.
    pub fn remove(&self, id: UploadId) -> Result<()> {
        self.remove_chunk_records(id)?;
        let db = self.db()?;
        db.uploads.remove(id.0)?;
        db.sync()?;
        remove_file_durable(&self.staging_path(id)).context("failed to remove the staging file")
    }

    /// Removes an upload that made no progress and leaves a tombstone, so its owner learns
    /// that it expired.
    pub fn expire(&self, id: UploadId, owner: &str, now: u64) -> Result<()> {
        let tombstone = serde_json::to_vec(&Tombstone {
            owner: owner.to_owned(),
            expired_at: now,
        })?;
        self.db()?.expired.insert(id.0, tombstone)?;
        self.remove(id)
    }

    /// The tombstone of an expired upload.
    pub fn tombstone(&self, id: UploadId) -> Result<Option<Tombstone>> {
        let raw = self.db()?.expired.get(id.0)?;
        Ok(raw.and_then(|raw| serde_json::from_slice(&raw).ok()))
    }

    /// Receiving uploads whose last progress is before `cutoff` (Unix seconds).
    pub fn stale(&self, cutoff: u64) -> Result<Vec<(UploadId, UploadRecord)>> {
        let mut out = self.all_records()?;
        out.retain(|(_, r)| r.state == RecordState::Receiving && r.updated_at < cutoff);
        Ok(out)
    }

    /// Forgets tombstones older than `cutoff`; they only serve a better error message.
    pub fn prune_tombstones(&self, cutoff: u64) -> Result<usize> {
        let db = self.db()?;
        let mut old = Vec::new();
        for entry in db.expired.iter() {
            let (key, raw) = entry?;
            let keep =
                serde_json::from_slice::<Tombstone>(&raw).is_ok_and(|t| t.expired_at >= cutoff);
            if !keep {
                old.push(key);
            }
        }
        for key in &old {
            db.expired.remove(key)?;
        }
        Ok(old.len())
    }

    fn put_record(&self, id: UploadId, record: &UploadRecord) -> Result<()> {
        self.db()?
            .uploads
            .insert(id.0, serde_json::to_vec(record)?)?;
        Ok(())
    }

    fn remove_chunk_records(&self, id: UploadId) -> Result<()> {
        let db = self.db()?;
        db.meta.remove(tail_key(id))?;
        let mut batch = sled::Batch::default();
        for key in db.chunks.scan_prefix(id.0).keys() {
            batch.remove(key?);
        }
        db.chunks.apply_batch(batch)?;
        Ok(())
    }
}

/// Durable chunks and their digests, and where the next page starts.
pub type DigestPage = (Vec<(u64, Digest)>, Option<u64>);

/// The key of an owner's count of files and folders in the `owners` tree (beside its published
/// bytes under its plain name; a `/` cannot be in a name).
fn entries_key(owner: &str) -> Vec<u8> {
    format!("{owner}/entries").into_bytes()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

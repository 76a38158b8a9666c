//! The data directory: sled records of uploads and durable chunks, staging files, published
//! files. Storage is dumb on purpose: it records and reads back; every protocol decision is
//! made by the `UploadSession` in the driver.
//!
//! Layout: `db/` (sled), `staging/<upload_id>.part`, `files/<owner>/<name>`, `tls/`, `tokens`.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ferry_migrations as migrations;
use ferry_proto::{ChunkIndex, ChunkLayout, ChunkSet, Digest};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use tracing::{info, warn};

use crate::fsutil::{create_dir_durable, remove_file_durable, sync_dir};

/// Key of the clean-shutdown marker in the `meta` tree: `1` after a clean stop, `0` while
/// running.
const CLEAN: &[u8] = b"clean_shutdown";

/// 16 random bytes, 32 lowercase hex characters on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId([u8; 16]);

impl UploadId {
    pub fn random() -> Result<Self> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(Self(bytes))
    }

    /// Parses the wire form; `None` for anything but 32 lowercase hex characters.
    pub fn parse(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 16];
        let lower = text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (text.len() == 32 && lower && hex::decode_to_slice(text, &mut bytes).is_ok())
            .then_some(Self(bytes))
    }

    fn chunk_key(self, index: u64) -> [u8; 24] {
        let mut key = [0u8; 24];
        key[..16].copy_from_slice(&self.0);
        key[16..].copy_from_slice(&index.to_be_bytes());
        key
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    Receiving,
    /// Between the two durable steps of publishing: `final_name` and `sha256` name the link
    /// about to be made. A crash here is settled at the next start: completed if the link
    /// exists, back to `Receiving` if not (see `Store::reconcile`).
    Publishing,
    Complete,
}

/// One upload as sled keeps it (JSON in the `uploads` tree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Name of the token that created it; only that token can see it.
    pub owner: String,
    /// Sanitised name asked for at create.
    pub file_name: String,
    #[serde(default)]
    pub desc: String,
    pub size: u64,
    pub chunk_size: u64,
    pub state: RecordState,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last commit.
    pub updated_at: u64,
    /// Set when publishing starts: the name under `files/<owner>/`, which may carry ` (n)`.
    #[serde(default)]
    pub final_name: Option<String>,
    /// Set when publishing starts: the whole file's SHA-256.
    #[serde(default)]
    pub sha256: Option<String>,
}

impl UploadRecord {
    pub fn layout(&self) -> Result<ChunkLayout> {
        ChunkLayout::new(self.size, self.chunk_size).context("record has a zero chunk size")
    }
}

/// What remains of an expired upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub owner: String,
    /// Unix seconds.
    pub expired_at: u64,
}

/// What opening the store found.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub schema_before: u32,
    pub clean: bool,
    /// Chunks re-hashed after an unclean stop, and how many of them no longer matched.
    pub verified: u64,
    pub forgotten: u64,
    /// What start-up found half done and settled.
    pub reconciled: Reconciled,
}

/// Work a crash left half done, settled by `Store::reconcile` at every start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Publishing interrupted after the link was made: recorded complete.
    pub published: u64,
    /// Publishing interrupted before the link was made: back to receiving.
    pub rolled_back: u64,
    /// Staging files without a record (a crash during create or abort): removed.
    pub orphans: u64,
    /// Staging names left by complete uploads (a crash after publishing): removed.
    pub leftovers: u64,
    /// Unfinished uploads whose staging file is gone: removed, so a client starts again.
    pub lost: u64,
}

impl Reconciled {
    pub fn any(&self) -> bool {
        *self != Self::default()
    }
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
}

/// The database and its trees.
struct Db {
    db: sled::Db,
    /// sled's log file (`db/db` in sled 0.34), opened a second time for [`Db::sync`].
    log: File,
    /// sled's directory, where it renames new snapshots into place.
    dir: PathBuf,
    uploads: sled::Tree,
    chunks: sled::Tree,
    meta: sled::Tree,
    expired: sled::Tree,
    owners: sled::Tree,
}

impl Db {
    fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .with_context(|| format!("failed to open the database {}", path.display()))?;
        // sled writes `conf` once and never syncs it, nor the directories it creates: after a
        // power cut it would find an empty configuration file.
        let synced = File::open(path.join("conf"))
            .and_then(|f| f.sync_all())
            .and_then(|()| sync_dir(&path.join("blobs")))
            .and_then(|()| sync_dir(path))
            .and_then(|()| sync_dir(path.parent().unwrap_or(Path::new("."))));
        synced.with_context(|| format!("failed to sync the database {}", path.display()))?;
        let log = File::open(path.join("db"))
            .with_context(|| format!("failed to open the database log in {}", path.display()))?;
        Ok(Self {
            log,
            dir: path.to_owned(),
            uploads: db.open_tree(migrations::UPLOADS)?,
            chunks: db.open_tree(migrations::CHUNKS)?,
            meta: db.open_tree(migrations::META)?,
            expired: db.open_tree(migrations::EXPIRED)?,
            owners: db.open_tree(migrations::OWNERS)?,
            db,
        })
    }

    /// Makes every record written so far durable. sled 0.34's `flush` writes its buffers with
    /// `pwrite` and waits on `sync_file_range`, which commits no metadata (the log grew), does
    /// not flush the disk's write cache, and on some file systems (FUSE) does nothing; its real
    /// fsync runs in a background thread every 500 ms. So after sled's flush this fdatasyncs
    /// sled's log file through our own descriptor (fsync acts on the file, not the
    /// descriptor) and fsyncs sled's directory, where snapshots are renamed into place. An
    /// extra sync never puts the files in a state sled's own recovery must not already handle:
    /// the kernel may write back dirty pages at any moment.
    fn sync(&self) -> Result<()> {
        self.db.flush().context("failed to flush the database")?;
        self.log
            .sync_data()
            .context("failed to sync the database log")?;
        self.sync_blobs()
            .context("failed to sync the database's blob files")?;
        sync_dir(&self.dir).context("failed to sync the database directory")?;
        Ok(())
    }

    /// sled writes a value too large for its log (over about 128 KiB serialised: a tree node of
    /// records with long descriptions can get there) to a file in `blobs/`, and never syncs
    /// it. The directory is almost always empty, so this usually costs one `readdir`.
    fn sync_blobs(&self) -> std::io::Result<()> {
        let blobs = self.dir.join("blobs");
        let mut any = false;
        for entry in fs::read_dir(&blobs)? {
            match File::open(entry?.path()).and_then(|f| f.sync_all()) {
                // Removed by sled's blob collector meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                result => result?,
            }
            any = true;
        }
        if any {
            sync_dir(&blobs)?;
        }
        Ok(())
    }
}

impl Store {
    /// Opens (creating if needed) the data directory, migrates the schema, and after an
    /// unclean stop re-hashes every chunk recorded durable, forgetting those that no longer
    /// match: sled 0.34's flush is weaker than fsync, so its records are trusted only as far as
    /// the bytes they describe.
    pub fn open(data_dir: &Path, min_free: u64) -> Result<(Self, OpenReport)> {
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
        };
        let mut report = OpenReport {
            schema_before,
            clean,
            ..Default::default()
        };
        // The unclean marker must be durable before anything is accepted.
        store.sync()?;
        report.reconciled = store.reconcile()?;
        if !clean {
            let (verified, forgotten) = store.verify_all()?;
            report.verified = verified;
            report.forgotten = forgotten;
        }
        store.sync()?;
        Ok((store, report))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn staging_path(&self, id: UploadId) -> PathBuf {
        self.data_dir.join("staging").join(format!("{id}.part"))
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
        let needed = record.size.saturating_add(self.min_free);
        let result = if free < needed {
            Err(NoSpace {
                needed: record.size,
                free,
                reserve: self.min_free,
            }
            .into())
        } else {
            // The reserved size is durable with the file's entry, before the record exists.
            reserve(&file, record.size, staging_dir)
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

    fn owner_dir(&self, owner: &str) -> PathBuf {
        self.data_dir.join("files").join(owner)
    }

    /// Publishes a complete upload as `files/<owner>/<name>`, never overwriting, and records
    /// it complete. Returns the final name. Two durable steps, so a crash anywhere leaves
    /// something `reconcile` settles without publishing twice or forgetting the upload: the
    /// intended name is recorded (`Publishing`) before the link is made, and the upload is
    /// recorded complete only after the link is durable.
    pub fn publish(&self, id: UploadId, record: &UploadRecord, digest: Digest) -> Result<String> {
        let staging = self.staging_path(id);
        File::open(&staging)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("failed to sync {}", staging.display()))?;
        let dir = self.owner_dir(&record.owner);
        create_dir_durable(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        for n in 0..MAX_NUMBERED {
            let name = if n == 0 {
                record.file_name.clone()
            } else {
                ferry_proto::name::numbered(&record.file_name, n)
            };
            if dir.join(&name).symlink_metadata().is_ok() {
                continue;
            }
            let mut intent = record.clone();
            intent.state = RecordState::Publishing;
            intent.final_name = Some(name.clone());
            intent.sha256 = Some(digest.to_hex());
            self.put_record(id, &intent)?;
            self.sync()?;
            // A hard link fails instead of replacing an existing file, unlike rename.
            match fs::hard_link(&staging, dir.join(&name)) {
                Ok(()) => return self.complete_publish(id, intent),
                // Taken since the check: by another upload finishing at the same moment.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    self.put_record(id, record)?;
                    self.sync()?;
                    return Err(e)
                        .with_context(|| format!("failed to publish into {}", dir.display()));
                }
            }
        }
        self.put_record(id, record)?;
        self.sync()?;
        Err(NameExhausted {
            name: record.file_name.clone(),
        }
        .into())
    }

    /// The second half of publishing, also run by `reconcile` after a crash: makes the link
    /// durable, records the upload complete (and drops its chunk records), then removes the
    /// staging name.
    fn complete_publish(&self, id: UploadId, mut record: UploadRecord) -> Result<String> {
        let final_name = record
            .final_name
            .clone()
            .context("publishing without a final name")?;
        let dir = self.owner_dir(&record.owner);
        sync_dir(&dir).with_context(|| format!("failed to sync {}", dir.display()))?;
        record.state = RecordState::Complete;
        record.updated_at = unix_now();
        // The record and the owner's published bytes change in one sled transaction: a crash
        // keeps both or neither.
        let db = self.db()?;
        let encoded = serde_json::to_vec(&record)?;
        let owner = record.owner.as_bytes();
        (&db.uploads, &db.owners)
            .transaction(|(uploads, owners)| {
                uploads.insert(&id.0, encoded.as_slice())?;
                let before = owners.get(owner)?.map_or(0, |v| be_u64(v.as_ref()));
                let after = before.saturating_add(record.size);
                owners.insert(owner, &after.to_be_bytes())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| anyhow::anyhow!("failed to record the upload complete: {e:?}"))?;
        self.remove_chunk_records(id)?;
        self.prune_history(&record.owner)?;
        self.sync()?;
        let staging = self.staging_path(id);
        remove_file_durable(&staging)
            .with_context(|| format!("failed to remove {}", staging.display()))?;
        Ok(final_name)
    }

    /// Bytes of the uploads `owner` completed, pruned records included.
    pub fn published_bytes(&self, owner: &str) -> Result<u64> {
        let raw = self.db()?.owners.get(owner.as_bytes())?;
        Ok(raw.map_or(0, |v| be_u64(v.as_ref())))
    }

    /// Forgets the oldest completed records of `owner` beyond [`MAX_HISTORY`]: the files stay,
    /// the quota still counts them (`published_bytes`), and no owner's history grows without
    /// end.
    fn prune_history(&self, owner: &str) -> Result<()> {
        let mut complete: Vec<(UploadId, UploadRecord)> = self
            .list(owner)?
            .into_iter()
            .filter(|(_, r)| r.state == RecordState::Complete)
            .collect();
        if complete.len() <= self.max_history {
            return Ok(());
        }
        complete.sort_by_key(|(id, r)| (r.updated_at, *id));
        let db = self.db()?;
        for (id, _) in &complete[..complete.len() - self.max_history] {
            db.uploads.remove(id.0)?;
        }
        Ok(())
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

    /// Settles what a crash left half done, at every start (cheap: one pass over the records
    /// and one over the staging directory). See [`Reconciled`].
    fn reconcile(&self) -> Result<Reconciled> {
        let mut done = Reconciled::default();
        let mut known = std::collections::HashSet::new();
        for (id, record) in self.all_records()? {
            known.insert(id);
            let staging = self.staging_path(id);
            match record.state {
                RecordState::Publishing => {
                    let linked = record
                        .final_name
                        .as_ref()
                        .map(|name| self.owner_dir(&record.owner).join(name))
                        .is_some_and(|published| same_file(&staging, &published));
                    if linked {
                        let name = self.complete_publish(id, record)?;
                        info!(upload = %id, name, "publish completed after an unclean stop");
                        done.published += 1;
                    } else {
                        let mut back = record;
                        back.state = RecordState::Receiving;
                        back.final_name = None;
                        back.sha256 = None;
                        self.put_record(id, &back)?;
                        info!(upload = %id, "publish rolled back after an unclean stop");
                        done.rolled_back += 1;
                    }
                }
                RecordState::Complete if staging.exists() => {
                    remove_file_durable(&staging)?;
                    done.leftovers += 1;
                }
                RecordState::Receiving if !staging.exists() => {
                    warn!(upload = %id, "staging file missing; the upload is removed");
                    self.remove(id)?;
                    done.lost += 1;
                }
                _ => {}
            }
        }
        let staging_dir = self.data_dir.join("staging");
        for entry in fs::read_dir(&staging_dir)
            .with_context(|| format!("failed to read {}", staging_dir.display()))?
        {
            let path = entry?.path();
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".part"))
                .and_then(UploadId::parse);
            if id.is_some_and(|id| !known.contains(&id)) {
                remove_file_durable(&path)
                    .with_context(|| format!("failed to remove {}", path.display()))?;
                info!(path = %path.display(), "removed a staging file without a record");
                done.orphans += 1;
            }
        }
        self.sync()?;
        Ok(done)
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
        let mut batch = sled::Batch::default();
        for key in db.chunks.scan_prefix(id.0).keys() {
            batch.remove(key?);
        }
        db.chunks.apply_batch(batch)?;
        Ok(())
    }

    /// Re-hashes every recorded chunk of every receiving upload; forgets mismatches.
    fn verify_all(&self) -> Result<(u64, u64)> {
        let (mut verified, mut forgotten) = (0, 0);
        let db = self.db()?;
        let ids: Vec<UploadId> = db
            .uploads
            .iter()
            .keys()
            .filter_map(|k| {
                k.ok()
                    .and_then(|k| <[u8; 16]>::try_from(k.as_ref()).ok())
                    .map(UploadId)
            })
            .collect();
        for id in ids {
            let Some(record) = self.record(id)? else {
                self.remove_chunk_records(id)?;
                continue;
            };
            if record.state != RecordState::Receiving {
                continue;
            }
            let layout = record.layout()?;
            let file = File::open(self.staging_path(id)).ok();
            let mut bad = Vec::new();
            let mut buf = Vec::new();
            for entry in db.chunks.scan_prefix(id.0) {
                let (key, value) = entry?;
                verified += 1;
                let good = key
                    .get(16..24)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .and_then(|raw| layout.index(raw).ok())
                    .zip(file.as_ref())
                    .is_some_and(|(index, file)| {
                        let span = layout.span(index);
                        buf.resize(span.len as usize, 0);
                        file.read_exact_at(&mut buf, span.offset).is_ok()
                            && Digest::of(&buf).as_bytes()[..] == value[..]
                    });
                if !good {
                    bad.push(key);
                }
            }
            for key in bad {
                forgotten += 1;
                warn!(%id, "chunk failed re-verification after an unclean stop; it will be re-sent");
                db.chunks.remove(key)?;
            }
        }
        db.sync()?;
        info!(
            verified,
            forgotten, "re-verified durable chunks after an unclean stop"
        );
        Ok((verified, forgotten))
    }
}

/// Completed uploads kept on record per owner (for `list`, and `resume`/`finish` of a completed
/// upload); older ones are forgotten, oldest first. Their files stay.
pub const MAX_HISTORY: usize = 1000;

fn be_u64(raw: &[u8]) -> u64 {
    raw.try_into().map_or(0, u64::from_be_bytes)
}

/// Names tried for one published file: the name itself, then `name (1)` to `name (9999)`.
pub const MAX_NUMBERED: u32 = 10_000;

/// Publishing found every name like the upload's taken; permanent (`name_exhausted`).
#[derive(Debug, thiserror::Error)]
#[error("no free name like {name:?} in the owner's folder: it and {} numbered names exist", MAX_NUMBERED - 1)]
pub struct NameExhausted {
    pub name: String,
}

/// Not enough disk space: for a file of `needed` bytes (at create), or for the database
/// (`needed` 0, before a commit). `free` is what the file system has; `reserve` is the part of
/// it kept for the database (`--min-free-space`).
#[derive(Debug)]
pub struct NoSpace {
    pub needed: u64,
    pub free: u64,
    pub reserve: u64,
}

impl std::fmt::Display for NoSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ferry_proto::units::human;
        if self.needed > 0 {
            write!(f, "the file needs {}; ", human(self.needed))?;
        }
        write!(f, "the server has {} free", human(self.free))?;
        if self.reserve > 0 {
            let reserve = human(self.reserve);
            write!(f, " and keeps {reserve} in reserve (--min-free-space)")?;
        }
        Ok(())
    }
}

impl std::error::Error for NoSpace {}

/// Whether `a` and `b` are names of one file (a hard link made by publishing).
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Bytes available to unprivileged writers on the file system holding `path`.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Allocates every block of the staging file now, so a full disk shows at create and never
/// in the middle of an upload.
fn reserve(file: &File, size: u64, dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    if size == 0 {
        return Ok(());
    }
    let len = libc::off_t::try_from(size).context("file size does not fit off_t")?;
    // SAFETY: the descriptor is open for writing for the duration of the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        libc::ENOSPC => Err(NoSpace {
            needed: size,
            free: free_space(dir).unwrap_or(0),
            reserve: 0,
        }
        .into()),
        // File systems without fallocate: fall back to a sparse file of the right size.
        libc::EOPNOTSUPP => file
            .set_len(size)
            .context("failed to size the staging file"),
        errno => Err(std::io::Error::from_raw_os_error(errno))
            .context("failed to reserve space for the staging file"),
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, size: u64) -> UploadRecord {
        UploadRecord {
            owner: "alice".into(),
            file_name: name.into(),
            desc: String::new(),
            size,
            chunk_size: 4096,
            state: RecordState::Receiving,
            created_at: 1,
            updated_at: 1,
            final_name: None,
            sha256: None,
        }
    }

    /// An upload caught by a crash between recording its publish and finishing it; the link
    /// made or not.
    fn interrupted_publish(linked: bool) -> (tempfile::TempDir, UploadId) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 0).unwrap();
        let id = store.create(&record("a.mov", 10)).unwrap();
        let mut intent = record("a.mov", 10);
        intent.state = RecordState::Publishing;
        intent.final_name = Some("a.mov".into());
        intent.sha256 = Some("00".repeat(32));
        store.put_record(id, &intent).unwrap();
        if linked {
            let owner = store.owner_dir("alice");
            fs::create_dir_all(&owner).unwrap();
            fs::hard_link(store.staging_path(id), owner.join("a.mov")).unwrap();
        }
        store.sync().unwrap();
        (dir, id)
    }

    #[test]
    fn publish_interrupted_after_the_link_is_completed_at_start() {
        let (dir, id) = interrupted_publish(true);
        let (store, report) = Store::open(dir.path(), 0).unwrap();
        assert_eq!(report.reconciled.published, 1);
        let record = store.record(id).unwrap().unwrap();
        assert_eq!(record.state, RecordState::Complete);
        assert_eq!(record.final_name.as_deref(), Some("a.mov"));
        assert!(!store.staging_path(id).exists(), "staging name removed");
        assert!(dir.path().join("files/alice/a.mov").exists());
    }

    #[test]
    fn publish_interrupted_before_the_link_is_rolled_back_and_can_finish_again() {
        let (dir, id) = interrupted_publish(false);
        let (store, report) = Store::open(dir.path(), 0).unwrap();
        assert_eq!(report.reconciled.rolled_back, 1);
        let record = store.record(id).unwrap().unwrap();
        assert_eq!(record.state, RecordState::Receiving);
        assert_eq!(record.final_name, None);
        let name = store.publish(id, &record, Digest::of(&[0; 10])).unwrap();
        assert_eq!(name, "a.mov", "published once, under its own name");
    }

    /// Regression (issue 8): "the server has 0 bytes free" when 48 MiB were free and 64 MiB
    /// kept in reserve; both figures are said now, in human units.
    #[test]
    fn no_space_says_both_figures() {
        let e = NoSpace {
            needed: 100 << 20,
            free: 48 << 20,
            reserve: 64 << 20,
        };
        assert_eq!(
            e.to_string(),
            "the file needs 100.0 MiB; the server has 48.0 MiB free and keeps 64.0 MiB in reserve (--min-free-space)"
        );
    }

    /// Regression (issue 8): when every numbered name was taken, publishing failed with
    /// `storage_error` and the client retried forever; it is a permanent error now, and the
    /// upload stays open, all chunks durable.
    #[test]
    fn publish_with_every_name_taken_is_name_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 0).unwrap();
        let id = store.create(&record("x.bin", 10)).unwrap();
        let owner = store.owner_dir("alice");
        fs::create_dir_all(&owner).unwrap();
        for n in 0..MAX_NUMBERED {
            let name = match n {
                0 => "x.bin".to_owned(),
                n => ferry_proto::name::numbered("x.bin", n),
            };
            File::create(owner.join(name)).unwrap();
        }
        let err = store
            .publish(id, &record("x.bin", 10), Digest::of(&[0; 10]))
            .unwrap_err();
        assert!(err.downcast_ref::<NameExhausted>().is_some(), "{err:#}");
        let back = store.record(id).unwrap().unwrap();
        assert_eq!(back.state, RecordState::Receiving);
    }

    /// Regression (issue 8): completed uploads were kept on record without bound. The oldest
    /// beyond the history bound are forgotten now; the quota still counts their bytes.
    #[test]
    fn history_is_bounded_and_the_quota_still_counts_what_was_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path(), 0).unwrap();
        store.max_history = 3;
        for n in 0..5 {
            let mut rec = record("same.bin", 10);
            rec.updated_at = n;
            let id = store.create(&rec).unwrap();
            store.publish(id, &rec, Digest::of(&[0; 10])).unwrap();
        }
        let complete = store.list("alice").unwrap();
        assert_eq!(complete.len(), 3, "the newest three stay on record");
        assert_eq!(store.published_bytes("alice").unwrap(), 50);
        let files = fs::read_dir(store.owner_dir("alice")).unwrap().count();
        assert_eq!(files, 5, "pruning forgets records, never files");
    }

    #[test]
    fn orphans_leftovers_and_lost_uploads_are_settled_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 0).unwrap();
        let lost = store.create(&record("lost.mov", 10)).unwrap();
        fs::remove_file(store.staging_path(lost)).unwrap();
        let done = store.create(&record("done.mov", 10)).unwrap();
        let published = store
            .publish(done, &record("done.mov", 10), Digest::of(&[0; 10]))
            .unwrap();
        fs::hard_link(
            store.owner_dir("alice").join(&published),
            store.staging_path(done),
        )
        .unwrap();
        let orphan = store.staging_path(UploadId::random().unwrap());
        fs::write(&orphan, b"no record").unwrap();
        let unrelated = dir.path().join("staging").join("notes.txt");
        fs::write(&unrelated, b"not ours").unwrap();
        drop(store);

        let (store, report) = Store::open(dir.path(), 0).unwrap();
        let expected = Reconciled {
            orphans: 1,
            leftovers: 1,
            lost: 1,
            ..Default::default()
        };
        assert_eq!(report.reconciled, expected);
        assert!(!orphan.exists() && !store.staging_path(done).exists());
        assert!(
            unrelated.exists(),
            "files not named like staging files are left alone"
        );
        assert!(store.record(lost).unwrap().is_none());
        assert!(store.owner_dir("alice").join(&published).exists());
        drop(store);
        let (_, again) = Store::open(dir.path(), 0).unwrap();
        assert!(!again.reconciled.any(), "nothing left to settle");
    }
}

//! Publishing a complete upload: two durable steps (the intended name recorded, then the link
//! and the complete record), the owner's published bytes, and the bounded history.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferry_proto::{Digest, OnExists};
use sled::Transactional;

use super::{unix_now, HookJob, RecordState, Store, UploadId, UploadRecord};
use crate::fsutil::{create_path_synced, remove_file_durable, sync_dir};

/// Completed uploads kept on record per owner (for `list`, and `resume`/`finish` of a completed
/// upload); older ones are forgotten, oldest first. Their files stay.
pub const MAX_HISTORY: usize = 1000;

pub(super) fn be_u64(raw: &[u8]) -> u64 {
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

/// The upload's name is taken in its folder and it asked not to be renamed (`already_exists`).
#[derive(Debug, thiserror::Error)]
#[error("{name:?} already exists in the owner's folder (on_exists: {on_exists:?})")]
pub struct NameTaken {
    pub name: String,
    pub on_exists: OnExists,
}

/// A completed upload whose published file `dedup` can link to.
#[derive(Debug, Clone)]
pub struct Content {
    pub id: UploadId,
    pub record: UploadRecord,
    pub path: PathBuf,
}

impl Store {
    /// Whether the name `record` asks for is taken in its folder.
    pub fn name_taken(&self, record: &UploadRecord) -> bool {
        self.publish_dir(record)
            .join(&record.file_name)
            .symlink_metadata()
            .is_ok()
    }

    /// A completed upload of `owner` (of anyone, with `any_owner`) with this size, chunk size
    /// and content hash whose published file is still the one published (same inode and modification time), or
    /// `None`. Preferred: the owner's copy at the path `asked` (relative to the owner's
    /// folder), then any copy of the owner's, then another owner's. One pass over the records:
    /// the owners' histories are bounded by `MAX_HISTORY`.
    pub fn find_content(
        &self,
        owner: &str,
        (size, chunk_size): (u64, u64),
        digest: Digest,
        any_owner: bool,
        asked: &str,
    ) -> Result<Option<Content>> {
        let hex = digest.to_hex();
        let records = if any_owner {
            self.all_records()?
        } else {
            self.list(owner)?
        };
        // The owner's copy at the asked path first, then one published from that path under a
        // numbered name (its asked path was the same), then any of the owner's, then others'.
        let asked_from = |r: &UploadRecord| {
            let mut path: String = r.dir.iter().map(|c| format!("{c}/")).collect();
            path.push_str(&r.file_name);
            path == asked
        };
        let rank = |r: &UploadRecord| match (
            r.owner == owner,
            r.final_name.as_deref() == Some(asked),
            asked_from(r),
        ) {
            (true, true, _) => 0,
            (true, false, true) => 1,
            (true, false, false) => 2,
            _ => 3,
        };
        let mut found: Option<Content> = None;
        for (id, record) in records {
            if record.state != RecordState::Complete
                || record.size != size
                || record.chunk_size != chunk_size
                || record.content_hash.as_deref() != Some(hex.as_str())
            {
                continue;
            }
            let Some(path) = self.published_intact(&record) else {
                continue;
            };
            if found
                .as_ref()
                .is_none_or(|f| rank(&record) < rank(&f.record))
            {
                found = Some(Content { id, record, path });
            }
        }
        Ok(found)
    }

    /// The published file of a complete `record` (local store) if it is still the one published:
    /// same inode, size and modification time. A file rewritten or replaced since is never
    /// offered as the upload's content.
    pub fn published_intact(&self, record: &UploadRecord) -> Option<PathBuf> {
        let (Some(stamp), Some(name)) = (record.stamp, record.final_name.as_ref()) else {
            return None;
        };
        let path = self.owner_dir(&record.owner).join(name);
        let unchanged = fs::symlink_metadata(&path).is_ok_and(|m| {
            m.is_file() && m.len() == record.size && (m.ino(), mtime_ns(&m)) == stamp
        });
        unchanged.then_some(path)
    }

    /// Publishes `source` (a published file found by `find_content`) for `record` as a new
    /// completed upload, by hard link: the same two durable steps as `publish`, through a
    /// staging name that is a second link to it. Returns the new id and the final name.
    pub fn publish_dedup(
        &self,
        source: &Path,
        record: &UploadRecord,
        digest: Digest,
    ) -> Result<(UploadId, String)> {
        let id = UploadId::random()?;
        let staging = self.staging_path(id);
        fs::hard_link(source, &staging)
            .with_context(|| format!("failed to link {}", source.display()))?;
        if let Some(dir) = staging.parent() {
            sync_dir(dir)?;
        }
        let mut record = record.clone();
        record.dedup = true;
        let name = self.publish(id, &record, digest)?;
        Ok((id, name))
    }

    /// Undoes a publish that did not happen: a normal upload goes back to `record` (receiving),
    /// a `dedup` one is removed with its staging name (nothing of it was ever visible).
    pub(super) fn unpublish(&self, id: UploadId, record: &UploadRecord) -> Result<()> {
        if record.dedup {
            self.db()?.uploads.remove(id.0)?;
            self.sync()?;
            let staging = self.staging_path(id);
            if staging.exists() {
                remove_file_durable(&staging)?;
            }
            return Ok(());
        }
        self.put_record(id, record)?;
        self.sync()
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
        let dir = self.publish_dir(record);
        // Every folder of the path synced, existing or new: in a folder job several uploads
        // publish into one new folder at once, and the one that created it may not have synced
        // its entry yet when another's file is linked and reported `finished`.
        let parts: Vec<&str> = std::iter::once(record.owner.as_str())
            .chain(record.dir.iter().map(String::as_str))
            .collect();
        let made = create_path_synced(&self.data_dir.join("files"), &parts)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        self.add_entries(&record.owner, made)?;
        // Names are recorded relative to the owner's folder: `dir/…/name`.
        let prefix: String = record.dir.iter().map(|c| format!("{c}/")).collect();
        for n in 0..MAX_NUMBERED {
            let name = if n == 0 {
                record.file_name.clone()
            } else {
                ferry_proto::name::numbered(&record.file_name, n)
            };
            let mut intent = record.clone();
            intent.state = RecordState::Publishing;
            intent.final_name = Some(format!("{prefix}{name}"));
            intent.content_hash = Some(digest.to_hex());
            let linked = if dir.join(&name).symlink_metadata().is_ok() {
                Err(std::io::ErrorKind::AlreadyExists.into())
            } else {
                self.put_record(id, &intent)?;
                self.sync()?;
                // A hard link fails instead of replacing an existing file, unlike rename.
                fs::hard_link(&staging, dir.join(&name))
            };
            match linked {
                Ok(()) => return self.complete_publish(id, intent),
                // Taken (before, or since the check by another upload finishing at the same
                // moment): the next number, unless the upload asked not to be renamed.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if record.on_exists != OnExists::Rename {
                        self.unpublish(id, record)?;
                        return Err(NameTaken {
                            name: format!("{prefix}{name}"),
                            on_exists: record.on_exists,
                        }
                        .into());
                    }
                    continue;
                }
                Err(e) => {
                    self.unpublish(id, record)?;
                    return Err(e)
                        .with_context(|| format!("failed to publish into {}", dir.display()));
                }
            }
        }
        self.unpublish(id, record)?;
        Err(NameExhausted {
            name: record.file_name.clone(),
        }
        .into())
    }

    /// The second half of publishing, also run by `reconcile` after a crash: makes the link
    /// durable, records the upload complete (and drops its chunk records), then removes the
    /// staging name.
    pub(super) fn complete_publish(
        &self,
        id: UploadId,
        mut record: UploadRecord,
    ) -> Result<String> {
        let final_name = record
            .final_name
            .clone()
            .context("publishing without a final name")?;
        let dir = self.publish_dir(&record);
        sync_dir(&dir).with_context(|| format!("failed to sync {}", dir.display()))?;
        let published = self.owner_dir(&record.owner).join(&final_name);
        record.stamp = fs::symlink_metadata(&published)
            .ok()
            .map(|m| (m.ino(), mtime_ns(&m)));
        record.state = RecordState::Complete;
        record.updated_at = unix_now();
        self.record_complete(id, &record, published, &final_name)?;
        let staging = self.staging_path(id);
        remove_file_durable(&staging)
            .with_context(|| format!("failed to remove {}", staging.display()))?;
        Ok(final_name)
    }

    /// Records `record` (complete) and the owner's published bytes in one transaction, with
    /// the `--on-complete` job for `published` if hooks are on; drops the chunk records.
    pub(super) fn record_complete(
        &self,
        id: UploadId,
        record: &UploadRecord,
        published: std::path::PathBuf,
        final_name: &str,
    ) -> Result<()> {
        // The record and the owner's published bytes change in one sled transaction: a crash
        // keeps both or neither.
        let is_remote = record.remote.is_some();
        let db = self.db()?;
        let encoded = serde_json::to_vec(&record)?;
        let owner = record.owner.as_bytes();
        // The hook job, if hooks are on, is queued in the same transaction: a crash after it
        // cannot lose the hook, a crash before it cannot run it for an unpublished file.
        let hook = if self.queue_hooks.load(std::sync::atomic::Ordering::Relaxed) {
            let job = HookJob {
                upload_id: id.to_string(),
                owner: record.owner.clone(),
                path: published,
                name: final_name.to_owned(),
                size: record.size,
                content_hash: record.content_hash.clone().unwrap_or_default(),
                chunk_size: record.chunk_size,
                desc: record.desc.clone(),
            };
            Some((
                db.db.generate_id()?.to_be_bytes(),
                serde_json::to_vec(&job)?,
            ))
        } else {
            None
        };
        (&db.uploads, &db.owners, &db.hooks)
            .transaction(|(uploads, owners, hooks)| {
                uploads.insert(&id.0, encoded.as_slice())?;
                let before = owners.get(owner)?.map_or(0, |v| be_u64(v.as_ref()));
                let after = before.saturating_add(record.size);
                owners.insert(owner, &after.to_be_bytes())?;
                // The published file is one more entry of the owner's (the s3 store's objects
                // are not counted: they cost no inode here).
                if !is_remote {
                    let key = super::entries_key(&record.owner);
                    let before = owners.get(&key)?.map_or(0, |v| be_u64(v.as_ref()));
                    owners.insert(key, &before.saturating_add(1).to_be_bytes())?;
                }
                if let Some((seq, job)) = &hook {
                    hooks.insert(seq, job.as_slice())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| anyhow::anyhow!("failed to record the upload complete: {e:?}"))?;
        self.remove_chunk_records(id)?;
        self.prune_history(&record.owner)?;
        self.sync()?;
        Ok(())
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
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

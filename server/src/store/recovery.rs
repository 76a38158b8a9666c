//! What a start finds after a crash: half-done work settled (`reconcile`, at every start) and,
//! after an unclean stop, every durable chunk re-hashed (`verify_upload`, driven by `crate::verify`).

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result};
use ferry_proto::Digest;
use tracing::{info, warn};

use super::{RecordState, Store, UploadId};
use crate::fsutil::remove_file_durable;

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
    /// Complete uploads whose published file is gone (a power cut before its folder's entry
    /// was durable, or removed by hand): forgotten, so a client uploads them again instead of
    /// being told they are there.
    pub vanished: u64,
}

impl Reconciled {
    pub fn any(&self) -> bool {
        *self != Self::default()
    }
}

impl Store {
    /// Settles what a crash left half done, at every start (cheap: one pass over the records
    /// and one over the staging directory). See [`Reconciled`].
    pub(super) fn reconcile(&self) -> Result<Reconciled> {
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
                    } else if record.dedup {
                        // Never visible and never written to: it goes entirely.
                        self.unpublish(id, &record)?;
                        info!(upload = %id, "deduplicated publish rolled back after an unclean stop");
                        done.rolled_back += 1;
                    } else {
                        let mut back = record;
                        back.state = RecordState::Receiving;
                        back.final_name = None;
                        back.content_hash = None;
                        self.put_record(id, &back)?;
                        info!(upload = %id, "publish rolled back after an unclean stop");
                        done.rolled_back += 1;
                    }
                }
                RecordState::Complete => {
                    if staging.exists() {
                        remove_file_durable(&staging)?;
                        done.leftovers += 1;
                    }
                    if self.published_missing(&record) {
                        warn!(upload = %id, owner = record.owner, name = record.final_name, "published file missing; the upload is forgotten, so its client uploads it again");
                        self.forget_complete(id, &record)?;
                        done.vanished += 1;
                    }
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

    /// Whether `record` (complete, of the local store) names a published file that does not
    /// exist. Only a definite "no such file" counts: an unreadable folder is not a loss.
    pub fn published_missing(&self, record: &super::UploadRecord) -> bool {
        let Some(name) = record
            .final_name
            .as_ref()
            .filter(|_| record.remote.is_none())
        else {
            return false;
        };
        let path = self.owner_dir(&record.owner).join(name);
        matches!(fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
    }

    /// Forgets a complete upload whose published file is gone: its record goes, and its bytes
    /// leave the owner's published bytes, in one transaction.
    pub fn forget_complete(&self, id: UploadId, record: &super::UploadRecord) -> Result<()> {
        use sled::Transactional;
        let db = self.db()?;
        let owner = record.owner.as_bytes();
        (&db.uploads, &db.owners)
            .transaction(|(uploads, owners)| {
                uploads.remove(&id.0)?;
                let before = owners
                    .get(owner)?
                    .map_or(0, |v| super::publish::be_u64(v.as_ref()));
                owners.insert(owner, &before.saturating_sub(record.size).to_be_bytes())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| anyhow::anyhow!("failed to forget the upload: {e:?}"))?;
        self.sync()
    }

    /// The uploads whose chunks an unclean stop leaves to re-verify: every receiving upload,
    /// most recently active first, with its recorded durable bytes.
    pub fn to_verify(&self) -> Result<Vec<(UploadId, u64)>> {
        let mut out = Vec::new();
        for (id, record) in self.all_records()? {
            if record.state != RecordState::Receiving {
                continue;
            }
            let Ok(layout) = record.layout() else {
                continue;
            };
            let bytes = layout.bytes_in(&self.durable_chunks(id, &layout)?);
            out.push((record.updated_at, id, bytes));
        }
        out.sort_by(|a, b| b.cmp(a));
        Ok(out.into_iter().map(|(_, id, bytes)| (id, bytes)).collect())
    }

    /// Re-hashes every recorded chunk of `id` and forgets (deletes the record of) each whose
    /// bytes no longer match or cannot be read; they are re-sent. `pace`, if given, is called
    /// after each chunk with its length and may sleep to hold a rate. Runs on a blocking
    /// thread: it reads the whole staged upload.
    pub fn verify_upload(&self, id: UploadId, mut pace: impl FnMut(u64)) -> Result<Verified> {
        let mut done = Verified::default();
        let Some(record) = self.record(id)? else {
            self.remove_chunk_records(id)?;
            return Ok(done);
        };
        if record.state != RecordState::Receiving {
            return Ok(done);
        }
        let layout = record.layout()?;
        let db = self.db()?;
        let file = File::open(self.staging_path(id)).ok();
        let mut bad = Vec::new();
        let mut buf = Vec::new();
        for entry in db.chunks.scan_prefix(id.0) {
            let (key, value) = entry?;
            done.chunks += 1;
            let good = key
                .get(16..24)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .and_then(|raw| layout.index(raw).ok())
                .zip(file.as_ref())
                .is_some_and(|(index, file)| {
                    let span = layout.span(index);
                    buf.resize(span.len as usize, 0);
                    done.bytes += span.len;
                    pace(span.len);
                    file.read_exact_at(&mut buf, span.offset).is_ok()
                        && Digest::of(&buf).as_bytes()[..] == value[..]
                });
            if !good {
                bad.push(key);
            }
        }
        // Only forgetting writes anything; an upload that verified whole needs no sync.
        if !bad.is_empty() {
            for key in bad {
                done.mismatched += 1;
                warn!(%id, "chunk failed re-verification after an unclean stop; it will be re-sent");
                db.chunks.remove(key)?;
            }
            db.sync()?;
        }
        Ok(done)
    }
}

/// What re-verifying found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub chunks: u64,
    pub bytes: u64,
    /// Chunks whose bytes no longer matched (or could not be read): forgotten, re-sent.
    pub mismatched: u64,
}

impl std::ops::AddAssign for Verified {
    fn add_assign(&mut self, other: Self) {
        self.chunks += other.chunks;
        self.bytes += other.bytes;
        self.mismatched += other.mismatched;
    }
}

/// Whether `a` and `b` are names of one file (a hard link made by publishing).
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

//! Whether a new upload is accepted: its name, folder and description checked, the owner's
//! limits (under the owner's lock), the `--on-create` hook, a taken name under
//! `on_exists` skip or fail, an upload link's bounds.

use ferry_proto::units::human;
use ferry_proto::{name, ErrorCode, OnExists};
use tracing::{info, warn};

use crate::driver::WireError;
use crate::store::{unix_now, RecordState, UploadRecord};

use super::{storage, NewUpload, Principal, Uploads};

/// Longest description accepted at create.
const MAX_DESC: usize = 4096;

impl Uploads {
    /// The record of a new upload of the caller's owner, its name and folder sanitised and its
    /// description checked.
    pub(super) fn new_record(
        &self,
        who: &Principal,
        new: NewUpload,
    ) -> Result<UploadRecord, WireError> {
        let NewUpload {
            file_name,
            dir,
            size,
            chunk_size,
            desc,
            on_exists,
            extra,
        } = new;
        if extra.metadata.as_ref().is_some_and(|m| m.len() > MAX_DESC) {
            return Err(WireError::new(
                ErrorCode::BadField,
                format!("Upload-Metadata is over {MAX_DESC} bytes"),
            ));
        }
        let file_name = name::sanitize(&file_name)
            .map_err(|e| WireError::new(ErrorCode::InvalidName, e.to_string()))?;
        let dir = name::sanitize_dir(&dir)
            .map_err(|e| WireError::new(ErrorCode::InvalidName, e.to_string()))?;
        if desc.len() > MAX_DESC {
            return Err(WireError::new(
                ErrorCode::BadField,
                format!(
                    "description is {} bytes, the limit is {MAX_DESC}",
                    desc.len()
                ),
            ));
        }
        // Hooks get the description in their environment, which cannot hold a NUL.
        if desc.contains('\0') {
            return Err(WireError::new(
                ErrorCode::BadField,
                "description holds a NUL byte",
            ));
        }
        // An upload link's session does not see the owner's folder: a taken name is always
        // renamed, silently (with `skip` or `fail` the answer would tell it which names exist).
        let on_exists = match who.link {
            Some(_) => OnExists::Rename,
            None => on_exists,
        };
        let now = unix_now();
        let record = UploadRecord {
            owner: who.owner.clone(),
            file_name,
            desc,
            size: if extra.deferred {
                self.config().max_file_size
            } else {
                size
            },
            chunk_size,
            state: RecordState::Receiving,
            created_at: now,
            updated_at: now,
            final_name: None,
            content_hash: None,
            dir,
            on_exists,
            dedup: false,
            stamp: None,
            remote: None,
            link: who.link.as_ref().map(|l| l.id.clone()),
            deferred: extra.deferred,
            partial: extra.partial,
            metadata: extra.metadata,
            frontend: Some(who.frontend.as_str().to_owned()),
        };
        if on_exists != OnExists::Rename && self.store().name_taken(&record) {
            return Err(name_taken(&record));
        }
        Ok(record)
    }

    /// Runs the `--on-create` hook: a non-zero exit refuses the upload with the hook's first
    /// line of stdout.
    pub(super) async fn ask_on_create(
        &self,
        command: &str,
        record: &UploadRecord,
    ) -> Result<(), WireError> {
        let env = [
            ("FERRY_OWNER", record.owner.clone()),
            ("FERRY_NAME", record.file_name.clone()),
            ("FERRY_DIR", record.dir.join("/")),
            // Empty for an upload whose length is not known yet.
            (
                "FERRY_SIZE",
                if record.deferred {
                    String::new()
                } else {
                    record.size.to_string()
                },
            ),
            ("FERRY_DESC", record.desc.clone()),
        ];
        let ran = crate::hooks::run(command, &env, crate::hooks::ON_CREATE_LIMIT).await;
        crate::metrics::metrics().hook("on_create", ran.result);
        let said = ran.stdout.lines().next().unwrap_or("").trim();
        let message = match ran.result {
            "ok" => return Ok(()),
            "failed" if !said.is_empty() => said.chars().take(1024).collect(),
            "failed" => "refused by the server's on-create hook".to_owned(),
            _ => {
                warn!(status = ran.status, "on-create hook did not run to the end");
                format!(
                    "the server's on-create hook did not answer ({})",
                    ran.status
                )
            }
        };
        info!(
            name = record.file_name,
            size = record.size,
            message,
            "on-create hook refused an upload"
        );
        Err(WireError::new(ErrorCode::Refused, message))
    }

    /// An upload link's bounds allow one more file of `size` bytes: counted now (given back if
    /// the create fails or the upload is aborted). Called under the owner's lock.
    pub(super) fn take_from_link(&self, who: &Principal, size: u64) -> Result<(), WireError> {
        let Some(link) = &who.link else {
            return Ok(());
        };
        // The link as it is now: revoked or expired since this session logged in.
        let now = crate::store::unix_now();
        let current = self
            .links
            .get(&link.id)
            .map_err(|e| storage(&e, "failed to read the upload links"))?;
        let Some(link) = current.filter(|l| !l.expired(now)) else {
            return Err(WireError::new(
                ErrorCode::Unauthorized,
                "this upload link was revoked or has expired",
            ));
        };
        let store = self.store();
        let (files, bytes) = store
            .link_usage(&link.id)
            .map_err(|e| storage(&e, "failed to read the link's usage"))?;
        if link.max_files > 0 && files >= link.max_files {
            return Err(WireError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "this upload link allows {} files, and {files} were created through it",
                    link.max_files
                ),
            ));
        }
        if link.max_size > 0 && bytes.saturating_add(size) > link.max_size {
            return Err(WireError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "this upload link allows {} in all; {} were created through it and this file has {}",
                    human(link.max_size),
                    human(bytes),
                    human(size)
                ),
            ));
        }
        store
            .add_link_usage(&link.id, 1, i64::try_from(size).unwrap_or(i64::MAX))
            .map_err(|e| storage(&e, "failed to count the link's usage"))
    }

    /// Gives back what `take_from_link` counted for an upload that will not be (created or
    /// kept).
    pub(super) fn give_back_to_link(&self, record: &UploadRecord) {
        if let Err(e) = self.store().give_back_to_link(record) {
            warn!(error = %format!("{e:#}"), "failed to give back a link's usage");
        }
    }

    /// Uploads in progress and the quota, checked before a new upload is created.
    /// The owner's quota (and, for a `new_upload`, its uploads in progress) allow `size` more.
    /// Its files and folders too: one more file, and the folders of `dir` it will create.
    pub(super) fn check_owner_limits(
        &self,
        who: &Principal,
        size: u64,
        new_upload: bool,
        dir: &[String],
    ) -> Result<(), WireError> {
        let config = self.tunable();
        let owner = &who.owner;
        let uploads = self
            .store()
            .list(owner)
            .map_err(|e| storage(&e, "failed to list uploads"))?;
        let receiving = uploads
            .iter()
            .filter(|(_, r)| r.state != RecordState::Complete)
            .count() as u64;
        if new_upload
            && config.max_uploads_per_owner > 0
            && receiving >= config.max_uploads_per_owner
        {
            return Err(WireError::new(
                ErrorCode::TooManyUploads,
                format!(
                    "{owner} has {receiving} uploads in progress, the limit is {}",
                    config.max_uploads_per_owner
                ),
            ));
        }
        // One file, and the folders its publish creates (local store: each is an inode).
        if self.backend.files_are_local() {
            let folders = self.store().missing_dirs(owner, dir);
            self.check_entries(owner, 1 + folders)?;
        }
        // Completed uploads count through the owner's published bytes (old records are
        // pruned), unfinished ones through their records.
        let published = self
            .store()
            .published_bytes(owner)
            .map_err(|e| storage(&e, "failed to read the owner's usage"))?;
        // An upload of unknown length counts once it is declared (`Uploads::set_length`).
        let staged: u64 = uploads
            .iter()
            .filter(|(_, r)| r.state != RecordState::Complete && !r.deferred)
            .map(|(_, r)| r.size)
            .sum();
        let used = published.saturating_add(staged);
        if config.quota_per_owner > 0 && used.saturating_add(size) > config.quota_per_owner {
            return Err(WireError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "{owner} uses {} (published and in progress); {} more would exceed the quota of {}",
                    human(used),
                    human(size),
                    human(config.quota_per_owner)
                ),
            ));
        }
        Ok(())
    }
}

impl Uploads {
    /// `owner` may make `more` files or folders: within `--max-entries` (its own) and above
    /// `--min-free-inodes` (the file system's reserve). Local store only.
    pub(super) fn check_entries(&self, owner: &str, more: u64) -> Result<(), WireError> {
        let store = self.store();
        store
            .check_inodes()
            .map_err(|e| WireError::new(ErrorCode::InsufficientStorage, e.to_string()))?;
        let limit = self.tunable().max_entries_per_owner;
        if limit == 0 {
            return Ok(());
        }
        let made = store
            .entries(owner)
            .map_err(|e| storage(&e, "failed to read the owner's usage"))?;
        // Uploads in progress each hold a staging file: counted too.
        let receiving = store
            .list(owner)
            .map_err(|e| storage(&e, "failed to list uploads"))?
            .iter()
            .filter(|(_, r)| r.state != RecordState::Complete)
            .count() as u64;
        let used = made + receiving;
        if used.saturating_add(more) > limit {
            return Err(WireError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "{owner} has {used} files and folders (uploads in progress included); {more} more would exceed the limit of {limit} (--max-entries)"
                ),
            ));
        }
        Ok(())
    }
}

/// `already_exists` for an upload whose name is taken and that asked not to be renamed.
pub fn name_taken(record: &UploadRecord) -> WireError {
    let path: Vec<&str> = record
        .dir
        .iter()
        .map(String::as_str)
        .chain([record.file_name.as_str()])
        .collect();
    WireError::new(
        ErrorCode::AlreadyExists,
        format!(
            "{} already exists on the server (on_exists: {})",
            path.join("/"),
            if record.on_exists == OnExists::Skip {
                "skip"
            } else {
                "fail"
            }
        ),
    )
}

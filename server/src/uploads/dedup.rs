//! `dedup`: publishing, by hard link, content the owner (or, if the operator allows, anyone)
//! already has.

use ferry_proto::{Digest, ErrorCode};
use tracing::info;

use crate::driver::WireError;

use super::admission::name_taken;
use super::{internal, storage, NewUpload, Principal, Uploads};

/// What `dedup` did.
pub enum Deduped {
    /// No content like it: the client uploads the file.
    NoMatch,
    /// Published (or, with `existing`, found published already under the asked path).
    Published {
        upload_id: String,
        file_name: String,
        size: u64,
        content_hash: String,
        existing: bool,
    },
}

impl Uploads {
    /// Publishes, by hard link, content the owner (or, if allowed, anyone) already has.
    pub async fn dedup(
        &self,
        who: &Principal,
        new: NewUpload,
        content_hash: &str,
    ) -> Result<Deduped, WireError> {
        let record = self.new_record(who, new)?;
        let digest = Digest::parse(content_hash)
            .map_err(|e| WireError::new(ErrorCode::BadDigest, e.to_string()))?;
        // A shared store keeps no index of content: the client sends the file.
        if !self.backend.files_are_local() {
            return Ok(Deduped::NoMatch);
        }
        let store = self.store().clone();
        let (owner, size, chunk_size, any) = (
            who.owner.clone(),
            record.size,
            record.chunk_size,
            self.tunable().dedup_across_owners,
        );
        let asked: String = record
            .dir
            .iter()
            .map(|c| format!("{c}/"))
            .chain([record.file_name.clone()])
            .collect();
        let wanted = asked.clone();
        let found = tokio::task::spawn_blocking(move || {
            store.find_content(&owner, (size, chunk_size), digest, any, &wanted)
        })
        .await
        .map_err(internal)?
        .map_err(|e| storage(&e, "failed to look for the content"))?;
        let Some(content) = found else {
            return Ok(Deduped::NoMatch);
        };
        // Already there: published at the asked path, or published from it under a numbered
        // name because the path held another file (a second `dedup` of it publishes nothing).
        let same_ask =
            content.record.dir == record.dir && content.record.file_name == record.file_name;
        if content.record.owner == who.owner
            && (content.record.final_name.as_deref() == Some(&asked) || same_ask)
        {
            return Ok(Deduped::Published {
                upload_id: content.id.to_string(),
                file_name: content.record.final_name.clone().unwrap_or(asked),
                size,
                content_hash: digest.to_hex(),
                existing: true,
            });
        }
        // Counted against the quota like any published file (it is one, for this owner).
        let _reserving = self.owner_lock(&who.owner).await;
        self.check_owner_limits(who, size, false, &record.dir)?;
        let store = self.store().clone();
        let stored = record.clone();
        let published = tokio::task::spawn_blocking(move || {
            store.publish_dedup(&content.path, &stored, digest)
        })
        .await
        .map_err(internal)?;
        let (id, file_name) = match published {
            Ok(done) => done,
            Err(e) if e.downcast_ref::<crate::store::NameTaken>().is_some() => {
                return Err(name_taken(&record))
            }
            Err(e) if e.downcast_ref::<crate::store::NameExhausted>().is_some() => {
                return Err(WireError::new(ErrorCode::NameExhausted, format!("{e:#}")))
            }
            Err(e) => return Err(storage(&e, "failed to publish the deduplicated file")),
        };
        info!(upload = %id, file_name, size, "deduplicated");
        crate::metrics::metrics().completed(who.frontend.as_str());
        Ok(Deduped::Published {
            upload_id: id.to_string(),
            file_name,
            size,
            content_hash: digest.to_hex(),
            existing: false,
        })
    }
}

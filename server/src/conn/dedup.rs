//! `dedup`: publishing, by hard link, content the owner (or, if the operator allows, anyone)
//! already has.

use ferry_proto::{Digest, ErrorCode, Frame};
use tracing::info;

use crate::driver::WireError;
use crate::store::UploadRecord;

use super::admission::name_taken;
use super::{internal, storage, Conn};

impl Conn {
    /// Publishes, by hard link, content the owner (or, if allowed, anyone) already has.
    pub(super) async fn dedup(
        &self,
        req: u64,
        record: Result<UploadRecord, WireError>,
        content_hash: &str,
    ) -> Result<Frame, WireError> {
        let record = record?;
        let digest = Digest::parse(content_hash)
            .map_err(|e| WireError::new(ErrorCode::BadDigest, e.to_string()))?;
        // The s3 store keeps no index of content: the client sends the file.
        if self.shared.s3.is_some() {
            return Ok(Frame::NoMatch { req });
        }
        let store = self.shared.store.clone();
        let (owner, size, chunk_size, any) = (
            self.owner.clone(),
            record.size,
            record.chunk_size,
            self.shared.tunable().dedup_across_owners,
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
            return Ok(Frame::NoMatch { req });
        };
        // Already there: published at the asked path, or published from it under a numbered
        // name because the path held another file (a second `dedup` of it publishes nothing).
        let same_ask =
            content.record.dir == record.dir && content.record.file_name == record.file_name;
        if content.record.owner == self.owner
            && (content.record.final_name.as_deref() == Some(&asked) || same_ask)
        {
            return Ok(Frame::Deduped {
                req,
                upload_id: content.id.to_string(),
                file_name: content.record.final_name.clone().unwrap_or(asked),
                size,
                content_hash: digest.to_hex(),
                existing: true,
            });
        }
        // Counted against the quota like any published file (it is one, for this owner).
        let _reserving = self.owner_lock().await;
        self.check_owner_limits(size, false, &record.dir)?;
        let store = self.shared.store.clone();
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
        crate::metrics::metrics().uploads_completed.inc();
        Ok(Frame::Deduped {
            req,
            upload_id: id.to_string(),
            file_name,
            size,
            content_hash: digest.to_hex(),
            existing: false,
        })
    }
}

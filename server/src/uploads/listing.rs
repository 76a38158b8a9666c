//! What the upload service answers about what it holds, without changing it: the owner's
//! uploads page by page (`list`), an upload or file under a path (`lookup`), an upload's chunk
//! digests (`digests`).

use ferry_proto::name;
use ferry_proto::{
    ErrorCode, FoundComplete, FoundReceiving, UploadSummary, MAX_DIGESTS_PER_FRAME, MAX_FOUND,
    MAX_FRAME,
};

use super::{internal, storage, Principal, Uploads, LISTING_BUDGET};
use crate::driver::WireError;
use crate::store::{DigestPage, RecordState, UploadId, UploadRecord};

impl Uploads {
    /// One page of the owner's uploads, oldest first, from after `cursor`; with the cursor of
    /// the next page when the rest did not fit one frame.
    pub fn list(
        &self,
        who: &Principal,
        cursor: Option<&str>,
    ) -> Result<(Vec<UploadSummary>, Option<String>), WireError> {
        let after = match cursor {
            None => None,
            Some(text) => Some(parse_cursor(text).ok_or_else(|| {
                WireError::new(
                    ErrorCode::BadField,
                    format!("list cursor {text:.80?} is not of the form this server gives"),
                )
            })?),
        };
        let uploads = self
            .store()
            .list(&who.owner)
            .map_err(|e| storage(&e, "failed to list uploads"))?;
        let mut page = Vec::new();
        let mut used = 0;
        let mut last = None;
        // Read once for the page, not once per upload.
        let expire_after = self.tunable().expire_after.as_secs();
        for (id, record) in uploads {
            let key = (record.created_at, id);
            if after.is_some_and(|after| key <= after) {
                continue;
            }
            let summary = self.summary(id, record, expire_after)?;
            // Each summary is measured as it will be sent; one always fits (a description is
            // at most 4 KiB, 24 KiB as escaped JSON).
            let len = serde_json::to_vec(&summary).map_or(MAX_FRAME, |v| v.len()) + 1;
            if used + len > LISTING_BUDGET && !page.is_empty() {
                return Ok((page, last.map(cursor_of)));
            }
            used += len;
            page.push(summary);
            last = Some(key);
        }
        Ok((page, None))
    }

    /// What the server holds of one file (`lookup`): the owner's uploads asked under this
    /// folder, name and size — complete ones whose published file is still the one published,
    /// with their content hashes, and unfinished ones — newest first, at most `MAX_FOUND` each.
    /// A link's session sees only its link's uploads. With a shared store, the uploads this
    /// node has records of.
    pub async fn lookup(
        &self,
        who: &Principal,
        file_name: &str,
        dir: &[String],
        size: u64,
    ) -> Result<(Vec<FoundComplete>, Vec<FoundReceiving>), WireError> {
        let name = name::sanitize(file_name)
            .map_err(|e| WireError::new(ErrorCode::InvalidName, e.to_string()))?;
        let dir = name::sanitize_dir(dir)
            .map_err(|e| WireError::new(ErrorCode::InvalidName, e.to_string()))?;
        let store = self.store().clone();
        let owner = who.owner.clone();
        let link = who.link.as_ref().map(|l| l.id.clone());
        let found = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut records = store.list(&owner)?;
            records.retain(|(_, r)| {
                r.file_name == name
                    && r.dir == dir
                    && r.size == size
                    && link.as_ref().is_none_or(|l| r.link.as_ref() == Some(l))
            });
            records.sort_by_key(|(id, r)| std::cmp::Reverse((r.updated_at, *id)));
            let (mut complete, mut receiving) = (Vec::new(), Vec::new());
            for (id, record) in records {
                match record.state {
                    RecordState::Complete if complete.len() < MAX_FOUND => {
                        let intact =
                            record.remote.is_some() || store.published_intact(&record).is_some();
                        let (Some(hash), Some(published)) =
                            (record.content_hash.clone(), record.final_name.clone())
                        else {
                            continue;
                        };
                        if intact {
                            complete.push(FoundComplete {
                                upload_id: id.to_string(),
                                file_name: published,
                                chunk_size: record.chunk_size,
                                content_hash: hash,
                            });
                        }
                    }
                    RecordState::Receiving if receiving.len() < MAX_FOUND => {
                        let Ok(layout) = record.layout() else {
                            continue;
                        };
                        let durable = store.durable_chunks(id, &layout)?;
                        receiving.push(FoundReceiving {
                            upload_id: id.to_string(),
                            chunk_size: record.chunk_size,
                            chunk_count: layout.count(),
                            durable_bytes: layout.bytes_in(&durable),
                        });
                    }
                    _ => {}
                }
            }
            Ok((complete, receiving))
        })
        .await
        .map_err(internal)?;
        found.map_err(|e| storage(&e, "failed to look the file up"))
    }

    /// The digests of an unfinished upload's durable chunks from `from` on (`digests`), paged.
    pub async fn digests(
        &self,
        who: &Principal,
        raw_id: &str,
        from: u64,
    ) -> Result<(UploadId, DigestPage), WireError> {
        let (id, record) = self.owned_fresh(who, raw_id).await?;
        if record.state != RecordState::Receiving {
            return Err(WireError::new(
                ErrorCode::BadState,
                "the upload is complete: its content hash is in lookup's answer",
            ));
        }
        let layout = record.layout().map_err(|e| internal(e.to_string()))?;
        let page = self
            .backend
            .digests(id, layout, from, MAX_DIGESTS_PER_FRAME)
            .await
            .map_err(|e| storage(&e, "failed to read the chunk digests"))?;
        Ok((id, page))
    }

    /// One line of `listing`; `expire_after` in seconds (0: uploads never expire).
    fn summary(
        &self,
        id: UploadId,
        record: UploadRecord,
        expire_after: u64,
    ) -> Result<UploadSummary, WireError> {
        let durable_bytes = match (record.state, record.layout()) {
            // Publishing: every chunk is durable, the link is being made.
            (RecordState::Complete | RecordState::Publishing, _) => record.size,
            (RecordState::Receiving, Ok(layout)) => {
                let set = self
                    .store()
                    .durable_chunks(id, &layout)
                    .map_err(|e| storage(&e, "failed to read chunks"))?;
                layout.bytes_in(&set)
            }
            (RecordState::Receiving, Err(_)) => 0,
        };
        Ok(UploadSummary {
            upload_id: id.to_string(),
            file_name: record
                .final_name
                .clone()
                .unwrap_or(record.file_name.clone()),
            desc: record.desc,
            size: record.size,
            chunk_size: record.chunk_size,
            durable_bytes,
            state: match record.state {
                RecordState::Receiving | RecordState::Publishing => "receiving".into(),
                RecordState::Complete => "complete".into(),
            },
            created_at: record.created_at,
            updated_at: record.updated_at,
            expires_at: match (record.state, expire_after) {
                (RecordState::Receiving, secs) if secs > 0 => record.updated_at + secs,
                _ => 0,
            },
        })
    }
}

/// A `listing` cursor: the creation time and id of the last upload of the previous page.
fn cursor_of((created_at, id): (u64, UploadId)) -> String {
    format!("{created_at}-{id}")
}

fn parse_cursor(text: &str) -> Option<(u64, UploadId)> {
    let (created_at, id) = text.split_once('-')?;
    Some((created_at.parse().ok()?, UploadId::parse(id)?))
}

//! One upload in the bucket: created (name reserved, multipart upload begun, manifest written),
//! its chunks stored as parts with their markers, published (every part checked against a
//! marker, then completed) or aborted.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use ferry_proto::{ContentHasher, Digest, OnExists};

use super::objects::{b64, code, failed, status};
use super::{Gone, Marker, Markers, PublishError, Remote, SpoolPart, StoredPart, S3};
use crate::store::{RecordState, UploadId, UploadRecord};

impl S3 {
    /// Reserves a name for a new upload (the first free one for `rename`), starts its multipart
    /// upload and writes its manifest. Returns the record with `remote` set.
    pub async fn create(&self, id: UploadId, record: &UploadRecord) -> Result<UploadRecord> {
        let dir: String = record.dir.iter().map(|c| format!("{c}/")).collect();
        let mut chosen = None;
        for n in 0..crate::store::MAX_NUMBERED {
            let name = match n {
                0 => record.file_name.clone(),
                n => ferry_proto::name::numbered(&record.file_name, n),
            };
            let path = format!("{dir}{name}");
            let key = self.owner_key("files", &record.owner, &path);
            let free = !self.exists(&key).await?
                && self
                    .put_if_absent(
                        &self.owner_key("names", &record.owner, &path),
                        id.to_string().into_bytes(),
                    )
                    .await?;
            if free {
                chosen = Some((key, path));
                break;
            }
            if record.on_exists != OnExists::Rename {
                return Err(crate::store::NameTaken {
                    name: path,
                    on_exists: record.on_exists,
                }
                .into());
            }
        }
        let Some((key, name)) = chosen else {
            return Err(crate::store::NameExhausted {
                name: record.file_name.clone(),
            }
            .into());
        };
        let started = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| failed(e, format!("failed to start the multipart upload of {key}")));
        let multipart = match started.map(|s| s.upload_id().map(str::to_owned)) {
            Ok(Some(multipart)) => multipart,
            other => {
                let _ = self
                    .delete(&self.owner_key("names", &record.owner, &name))
                    .await;
                other?;
                bail!("the store started a multipart upload without an id");
            }
        };
        let mut record = record.clone();
        record.remote = Some(Remote {
            key,
            name,
            multipart,
        });
        if let Err(e) = self.put_manifest(id, &record).await {
            // The caller gives back what it counted (`Backend::create`): only the objects go.
            self.abort_objects(id, &record).await.ok();
            return Err(e);
        }
        Ok(record)
    }

    /// Stores one chunk as part `index + 1`, read from the spool as the store takes it, with
    /// its SHA-256 for the store to check. The chunk is durable only once [`S3::mark_part`]
    /// wrote its marker. The caller holds a [`S3::part_slot`] until this returns.
    ///
    /// Another node may have stored other bytes for this part before (a takeover while the old
    /// node still received): their markers are listed while the part is sent, and go in
    /// `mark_part`, so the last writer's is the one left. The listing overlaps the upload to
    /// spare a round trip; a marker another node writes in between is the race there always
    /// was (list, then write), which two digests on one index answer: that chunk is not
    /// durable, and is sent again (`durable_digests`, the check at publish).
    pub async fn put_part(
        &self,
        id: UploadId,
        remote: &Remote,
        index: u64,
        body: &SpoolPart,
        digest: &Digest,
    ) -> Result<StoredPart> {
        let part = i32::try_from(index + 1).context("part number out of range")?;
        let upload = async {
            self.client
                .upload_part()
                .bucket(&self.bucket)
                .key(&remote.key)
                .upload_id(&remote.multipart)
                .part_number(part)
                .checksum_sha256(b64(digest))
                .content_length(i64::try_from(body.len).context("part too large")?)
                .body(body.stream())
                .customize()
                // The body's integrity is the signed `x-amz-checksum-sha256`, which the store
                // checks (every store passed that at start: `probe`); signing the payload too
                // hashed every byte a second time (docs/benchmarks.md, the S3 path).
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| match code(&e) == Some("NoSuchUpload") {
                    true => Gone(remote.key.clone()).into(),
                    false => failed(e, format!("failed to store part {part} of {}", remote.key)),
                })
        };
        let markers = self.markers_prefix(id);
        let mine = format!("{markers}{index:010}.{}.", digest.to_hex());
        let prefix = format!("{markers}{index:010}.");
        let (stored, listed) = tokio::try_join!(upload, self.list(&prefix))?;
        let stale = listed
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| !key.starts_with(&mine))
            .collect();
        Ok(StoredPart {
            index,
            digest: *digest,
            etag: stored
                .e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .to_owned(),
            stale,
        })
    }

    /// Writes the marker of a part [`S3::put_part`] stored, after deleting the other writers'
    /// markers of its index: from then on the chunk is durable.
    pub async fn mark_part(&self, id: UploadId, part: &StoredPart) -> Result<()> {
        self.delete_all(part.stale.clone()).await?;
        self.put(
            &self.marker_key(id, part.index, &part.digest, &part.etag),
            Vec::new(),
        )
        .await
    }

    /// Every marker of `id`. Keys that do not parse are ignored (their chunks are re-sent).
    pub async fn markers(&self, id: UploadId) -> Result<Markers> {
        let prefix = self.markers_prefix(id);
        let mut out = Markers::new();
        for (key, modified) in self.list(&prefix).await? {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            let mut fields = rest.split('.');
            let (Some(index), Some(digest), Some(etag), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let parsed = index.parse::<u64>().ok().zip(Digest::parse(digest).ok());
            let etag = hex::decode(etag)
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok());
            if let (Some((index, digest)), Some(etag)) = (parsed, etag) {
                out.entry(index).or_default().push(Marker {
                    digest,
                    etag,
                    modified,
                });
            }
        }
        Ok(out)
    }

    /// ETags of the multipart upload's parts by chunk index; `None` if the store no longer has
    /// the multipart upload (completed or aborted). A part number can be listed more than
    /// once: SeaweedFS keeps every upload of a part until completion, and completes with the
    /// one whose ETag it is given.
    pub(super) async fn parts(
        &self,
        remote: &Remote,
    ) -> Result<Option<BTreeMap<u64, Vec<String>>>> {
        let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut pages = self
            .client
            .list_parts()
            .bucket(&self.bucket)
            .key(&remote.key)
            .upload_id(&remote.multipart)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) if code(&e) == Some("NoSuchUpload") || status(&e) == Some(404) => {
                    return Ok(None)
                }
                Err(e) => {
                    return Err(failed(
                        e,
                        format!("failed to list the parts of {}", remote.key),
                    ))
                }
            };
            for part in page.parts() {
                if let (Some(n), Some(etag)) = (part.part_number(), part.e_tag()) {
                    if n >= 1 {
                        let etag = etag.trim_matches('"').to_owned();
                        out.entry(n as u64 - 1).or_default().push(etag);
                    }
                }
            }
        }
        Ok(Some(out))
    }

    /// Completes the multipart upload if every part on the store is one whose digest is on
    /// record and the digests give `claimed`. Two steps, like the local publish: the manifest
    /// says `Publishing` before the object is completed, `Complete` after. Returns the record
    /// as completed.
    pub async fn publish(
        &self,
        id: UploadId,
        record: &UploadRecord,
        count: u64,
        claimed: Digest,
    ) -> Result<UploadRecord, PublishError> {
        let remote = record.remote.clone().context("upload without a remote")?;
        let markers = self.markers(id).await?;
        let parts = match self.parts(&remote).await? {
            Some(parts) => parts,
            // A publish that completed the object and stopped before recording it.
            None if record.state == RecordState::Publishing && self.exists(&remote.key).await? => {
                return Ok(self.published(id, record, &markers).await?);
            }
            // Finished or aborted through another node meanwhile: its manifest says which. The
            // same content finished elsewhere is this finish's answer too.
            None => {
                return match self.manifest(id).await? {
                    Some(m) if m.record.state == RecordState::Complete => {
                        match m.record.content_hash.as_deref().map(Digest::parse) {
                            Some(Ok(actual)) if actual == claimed => Ok(m.record),
                            Some(Ok(actual)) => Err(PublishError::Mismatch { actual, claimed }),
                            _ => Err(PublishError::Gone(remote.key)),
                        }
                    }
                    _ => Err(PublishError::Gone(remote.key)),
                };
            }
        };
        let mut hasher = ContentHasher::new();
        let mut chosen = Vec::with_capacity(count as usize);
        let mut missing = Vec::new();
        for index in 0..count {
            // The markers of this chunk whose part the store has. Two with different digests
            // (two nodes wrote it at the same moment) make it missing: it is sent again.
            let etags = parts.get(&index).map(Vec::as_slice).unwrap_or_default();
            let candidates: Vec<&Marker> = markers
                .get(&index)
                .into_iter()
                .flatten()
                .filter(|m| etags.contains(&m.etag))
                .collect();
            let found = match candidates.as_slice() {
                [first, rest @ ..] if rest.iter().all(|m| m.digest == first.digest) => {
                    Some((first.etag.clone(), first.digest))
                }
                _ => None,
            };
            match found {
                Some((etag, digest)) => {
                    hasher.push(&digest);
                    chosen.push((index, etag, digest));
                }
                None => missing.push(index),
            }
        }
        if !missing.is_empty() {
            // Their markers go, so a resume sends them again.
            let stale: Vec<String> = missing
                .iter()
                .flat_map(|i| markers.get(i).into_iter().flatten().map(move |m| (i, m)))
                .map(|(&i, m)| self.marker_key(id, i, &m.digest, &m.etag))
                .collect();
            self.delete_all(stale).await?;
            let shown: Vec<String> = missing.iter().take(10).map(u64::to_string).collect();
            return Err(PublishError::Missing(shown.join(", ")));
        }
        let actual = hasher.finish();
        if actual != claimed {
            return Err(PublishError::Mismatch { actual, claimed });
        }
        let mut intent = record.clone();
        intent.state = RecordState::Publishing;
        intent.content_hash = Some(claimed.to_hex());
        intent.final_name = Some(remote.name.clone());
        self.put_manifest(id, &intent).await?;
        let parts: Vec<(u64, &str, &Digest)> = chosen
            .iter()
            .map(|(index, etag, digest)| (*index, etag.as_str(), digest))
            .collect();
        if !self.complete_if_absent(&remote, &parts).await? {
            self.put_manifest(id, record).await?;
            return Err(PublishError::Taken(remote.key));
        }
        Ok(self.published(id, &intent, &markers).await?)
    }

    /// Completes the multipart upload with `parts` (chunk index, ETag, SHA-256 each, the
    /// store checking each SHA-256 again) and `If-None-Match: *`, so an object already at its
    /// key is never replaced: `false` then (412).
    pub(super) async fn complete_if_absent(
        &self,
        remote: &Remote,
        parts: &[(u64, &str, &Digest)],
    ) -> Result<bool> {
        let completed = parts
            .iter()
            .map(|(index, etag, digest)| {
                CompletedPart::builder()
                    .part_number(*index as i32 + 1)
                    .e_tag(*etag)
                    .checksum_sha256(b64(digest))
                    .build()
            })
            .collect();
        let done = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&remote.key)
            .upload_id(&remote.multipart)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some("PreconditionFailed") || status(&e) == Some(412) => {
                Ok(false)
            }
            Err(e) => Err(failed(e, format!("failed to complete {}", remote.key))),
        }
    }

    /// After the object is complete: the manifest says so; markers and reservation go.
    pub(super) async fn published(
        &self,
        id: UploadId,
        intent: &UploadRecord,
        markers: &Markers,
    ) -> Result<UploadRecord> {
        let remote = intent.remote.clone().context("upload without a remote")?;
        let mut done = intent.clone();
        done.state = RecordState::Complete;
        done.updated_at = crate::store::unix_now();
        self.put_manifest(id, &done).await?;
        let keys = markers
            .iter()
            .flat_map(|(i, all)| all.iter().map(move |m| (i, m)))
            .map(|(&i, m)| self.marker_key(id, i, &m.digest, &m.etag))
            .collect();
        self.delete_all(keys).await?;
        self.delete(&self.owner_key("names", &done.owner, &remote.name))
            .await?;
        // The reservation becomes published bytes. A failure here costs only the count until
        // the sweep settles it (`cluster::settle_usage`).
        if let Err(e) = self.release(&done.owner, id, Some(done.size)).await {
            tracing::warn!(upload = %id, error = %format!("{e:#}"), "cannot update the owner's usage");
        }
        Ok(done)
    }

    /// Aborts the multipart upload and deletes the markers, the reservation and the manifest;
    /// the owner's usage gives back what the upload reserved.
    pub async fn abort(&self, id: UploadId, record: &UploadRecord) -> Result<()> {
        // The objects first: an abort that fails half way and is run again gives back once.
        self.abort_objects(id, record).await?;
        if record.state != RecordState::Complete {
            self.release(&record.owner, id, None).await?;
            if let Some(link) = &record.link {
                self.give_back_link(link, record.size).await?;
            }
        }
        Ok(())
    }

    /// The objects of an unfinished upload: its multipart upload, markers, name reservation
    /// and manifest.
    async fn abort_objects(&self, id: UploadId, record: &UploadRecord) -> Result<()> {
        if let Some(remote) = &record.remote {
            match self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&remote.key)
                .upload_id(&remote.multipart)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if code(&e) == Some("NoSuchUpload") || status(&e) == Some(404) => {}
                Err(e) => return Err(failed(e, format!("failed to abort {}", remote.key))),
            }
            let markers = self.list(&self.markers_prefix(id)).await?;
            self.delete_all(markers.into_iter().map(|(k, _)| k).collect())
                .await?;
            if record.state != RecordState::Complete {
                self.delete(&self.owner_key("names", &record.owner, &remote.name))
                    .await?;
            }
        }
        self.delete(&self.manifest_key(id)).await
    }
}

//! The bucket as a whole: every manifest and its last sign of progress (for expiry), every
//! multipart upload in progress, and the orphans `ferryd s3 gc` removes.

use std::collections::HashSet;

use anyhow::Result;
use tracing::info;

use super::objects::{code, failed, unix};
use super::S3;
use crate::store::UploadId;

impl S3 {
    /// Every manifest in the bucket: upload id and the time it was last written.
    pub async fn manifests(&self) -> Result<Vec<(UploadId, u64)>> {
        let prefix = format!("{}uploads/", self.prefix);
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| failed(e, format!("failed to list {prefix}")))?;
            for object in page.contents() {
                let id = object
                    .key()
                    .and_then(|k| k.strip_prefix(&prefix))
                    .and_then(|k| k.strip_suffix(".json"))
                    .and_then(UploadId::parse);
                if let Some(id) = id {
                    out.push((id, unix(object.last_modified())));
                }
            }
        }
        Ok(out)
    }

    /// The last sign of progress of an upload: its newest marker, or its manifest.
    pub async fn last_activity(&self, id: UploadId, manifest_written: u64) -> Result<u64> {
        let newest = self
            .list(&self.markers_prefix(id))
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .max()
            .unwrap_or(0);
        Ok(newest.max(manifest_written))
    }

    /// What an upload whose manifest was never written leaves (its node died while creating
    /// it): multipart uploads under the prefix that no manifest names, and name reservations of
    /// uploads without a manifest, begun before `cutoff` (Unix seconds). Aborted and deleted
    /// unless `dry_run`. Returns `(key, what)`: the multipart upload's id, or `reservation`.
    pub async fn gc(&self, cutoff: u64, dry_run: bool) -> Result<Vec<(String, String)>> {
        let mut known = HashSet::new();
        let mut ids = HashSet::new();
        for (id, _) in self.manifests().await? {
            ids.insert(id.to_string());
            if let Some(m) = self.manifest(id).await? {
                if let Some(remote) = m.record.remote {
                    known.insert(remote.multipart);
                }
            }
        }
        let mut found = Vec::new();
        for (key, multipart, began) in self.multipart_uploads().await? {
            if known.contains(&multipart) || began >= cutoff {
                continue;
            }
            if !dry_run {
                match self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&key)
                    .upload_id(&multipart)
                    .send()
                    .await
                {
                    Ok(_) => info!(key, multipart, "aborted an orphaned multipart upload"),
                    Err(e) if code(&e) == Some("NoSuchUpload") => {}
                    Err(e) => return Err(failed(e, format!("failed to abort {key}"))),
                }
            }
            found.push((key, multipart));
        }
        for (key, written) in self.list(&format!("{}names/", self.prefix)).await? {
            if written >= cutoff {
                continue;
            }
            let owner = self.get_text(&key).await?.unwrap_or_default();
            if ids.contains(owner.trim()) {
                continue;
            }
            if !dry_run {
                self.delete(&key).await?;
                info!(key, "deleted an orphaned name reservation");
            }
            found.push((key, "reservation".into()));
        }
        Ok(found)
    }

    /// Every multipart upload in progress under `P/files/`: `(key, multipart id, began)`.
    pub async fn multipart_uploads(&self) -> Result<Vec<(String, String, u64)>> {
        let prefix = format!("{}files/", self.prefix);
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        // Bounded: 1 000 pages of up to 1 000 uploads.
        for _ in 0..1000 {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| failed(e, "failed to list multipart uploads".into()))?;
            for upload in page.uploads() {
                if let (Some(key), Some(multipart)) = (upload.key(), upload.upload_id()) {
                    out.push((
                        key.to_owned(),
                        multipart.to_owned(),
                        unix(upload.initiated()),
                    ));
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
        }
        Ok(out)
    }
}

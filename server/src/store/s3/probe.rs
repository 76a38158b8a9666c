//! The start-up check of a store (issue 25): every S3 feature Ferry's guarantees rest on is
//! tried under a reserved prefix before the node takes an upload, and a store that lacks one
//! is refused with the feature named. A store that ignores `If-None-Match` would let two
//! uploads take one name and silently overwrite a published file (Garage 2.5 does); one whose
//! `ListParts` answer cannot be read can never publish (moto). Tried in `docs/scale-out.md`.

use anyhow::{bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use ferry_proto::Digest;
use sha2::{Digest as _, Sha256};

use super::objects::{b64, code, failed, status};
use super::{Remote, S3};
use crate::store::UploadId;

/// Why a store cannot hold a Ferry service: the feature it lacks.
#[derive(Debug, thiserror::Error)]
#[error("the object store lacks {feature}: {seen}; Ferry needs it (docs/scale-out.md, \"Stores\") and does not start on this store")]
pub struct Unfit {
    pub feature: &'static str,
    pub seen: String,
}

fn unfit(feature: &'static str, seen: impl Into<String>) -> anyhow::Error {
    Unfit {
        feature,
        seen: seen.into(),
    }
    .into()
}

impl S3 {
    /// Tries conditional writes, checksummed parts, `ListParts` and a conditional completion
    /// under `P/probe/<random>/`, and deletes what it wrote. `Err` names what is missing (an
    /// [`Unfit`]) or why the store could not be asked.
    pub async fn probe(&self) -> Result<()> {
        let dir = format!("{}probe/{}/", self.prefix, UploadId::random()?);
        let outcome = self.probe_in(&dir).await;
        // Whatever the outcome, nothing is left behind (a failure to clean is only logged:
        // `P/probe/` is never read).
        let leftovers: Vec<String> = self
            .list(&dir)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if let Err(e) = self.delete_all(leftovers).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot delete the store probe's objects");
        }
        outcome
    }

    async fn probe_in(&self, dir: &str) -> Result<()> {
        let taken = format!("{dir}taken");
        // If-None-Match: * — the guard of every name reservation.
        if !self.put_if_absent(&taken, b"first".to_vec()).await? {
            bail!("cannot write the probe object {taken}: the store says it exists already");
        }
        if self.put_if_absent(&taken, b"second".to_vec()).await? {
            return Err(unfit(
                "conditional writes (PUT with If-None-Match: *)",
                "a second PUT of an existing key with If-None-Match: * was accepted, not refused with 412",
            ));
        }
        let kept = self.get(&taken).await?.unwrap_or_default();
        if kept.as_ref() != b"first" {
            return Err(unfit(
                "conditional writes (PUT with If-None-Match: *)",
                "a refused PUT replaced the object anyway",
            ));
        }
        // If-Match with a stale ETag — the guard of compare-and-swap updates.
        let stale = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&taken)
            .if_match("\"00000000000000000000000000000000\"")
            .body(ByteStream::from_static(b"third"))
            .send()
            .await;
        match stale {
            Err(e) if code(&e) == Some("PreconditionFailed") || status(&e) == Some(412) => {}
            Err(e) => return Err(failed(e, format!("failed to write {taken}"))),
            Ok(_) => {
                return Err(unfit(
                    "conditional writes (PUT with If-Match)",
                    "a PUT with a stale If-Match ETag was accepted, not refused with 412",
                ))
            }
        }
        self.probe_multipart(&taken).await
    }

    /// A multipart upload with a SHA-256 per part: a wrong one refused, a right one listed by
    /// `ListParts`, a completion onto an existing key refused.
    async fn probe_multipart(&self, taken: &str) -> Result<()> {
        let started = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(taken)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| failed(e, format!("failed to start a multipart upload at {taken}")))?;
        let remote = Remote {
            key: taken.to_owned(),
            name: "probe".into(),
            multipart: started
                .upload_id()
                .context("the store started a multipart upload without an id")?
                .to_owned(),
        };
        let outcome = self.probe_parts(&remote).await;
        let _ = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&remote.key)
            .upload_id(&remote.multipart)
            .send()
            .await;
        outcome
    }

    async fn probe_parts(&self, remote: &Remote) -> Result<()> {
        let body = bytes::Bytes::from_static(b"ferry probe part");
        let right = Digest::from_bytes(Sha256::digest(&body).into());
        let wrong = Digest::from_bytes(Sha256::digest(b"other bytes").into());
        let refused = self.upload_part(remote, body.clone(), &wrong).await;
        if refused.is_ok() {
            return Err(unfit(
                "SHA-256 checks of parts (x-amz-checksum-sha256)",
                "a part sent with the SHA-256 of other bytes was accepted",
            ));
        }
        let etag = self
            .upload_part(remote, body, &right)
            .await
            .map_err(|e| anyhow::anyhow!("a part with its SHA-256 was refused: {e:#}"))?;
        let listed = self.parts(remote).await.map_err(|e| {
            unfit(
                "ListParts (an answer the AWS SDK can read)",
                format!("{e:#}"),
            )
        })?;
        let ok = listed
            .as_ref()
            .and_then(|parts| parts.get(&0))
            .is_some_and(|etags| etags.contains(&etag));
        if !ok {
            return Err(unfit(
                "ListParts",
                format!("the part just stored (ETag {etag}) is not in its answer: {listed:?}"),
            ));
        }
        // Completion with If-None-Match: * onto the existing key must be refused.
        match self
            .complete_if_absent(remote, &[(0, &etag, &right)])
            .await?
        {
            false => Ok(()),
            true => Err(unfit(
                "conditional completion (CompleteMultipartUpload with If-None-Match: *)",
                "a completion onto an existing key replaced it",
            )),
        }
    }

    /// One part (number 1) with `digest` for the store to check; its ETag.
    async fn upload_part(
        &self,
        remote: &Remote,
        body: bytes::Bytes,
        digest: &Digest,
    ) -> Result<String> {
        let stored = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&remote.key)
            .upload_id(&remote.multipart)
            .part_number(1)
            .checksum_sha256(b64(digest))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| failed(e, format!("failed to store a part of {}", remote.key)))?;
        Ok(stored
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_owned())
    }
}

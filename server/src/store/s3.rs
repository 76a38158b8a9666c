//! The S3 backend (`ferryd serve --store s3`): every upload is a multipart upload, every chunk a
//! part, and everything a node needs to resume an upload lives in the bucket, so any node of a
//! service resumes what another began. sled on each node stays a cache and index.
//!
//! Keys under the prefix `P` (docs/scale-out.md):
//!
//! - `P/files/<owner>/<dir…>/<name>` — published objects (multipart uploads while receiving);
//! - `P/uploads/<id>.json` — the manifest: the upload record, its object key and multipart id;
//! - `P/uploads/<id>/parts/<index>.<sha256>.<etag>` — one empty marker per durable chunk,
//!   written after the store acknowledged the part: its digest and the part's ETag are in the
//!   key, so one listing gives the durable set and every digest;
//! - `P/names/<owner>/<dir…>/<name>` — the reservation of a name by an upload in progress;
//! - `P/tokens` — the token hashes (the format of `DATA/tokens`);
//! - `P/service-id` — the service id every node announces in `welcome`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
};
use aws_sdk_s3::Client;
use base64::Engine;
use bytes::Bytes;
use ferry_proto::{ContentHasher, Digest, OnExists};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::{RecordState, UploadId, UploadRecord};

/// Bytes of parts in flight to the store, for the whole server, in MiB: each part holds its
/// chunk in memory until the store has it (8 parts of 8 MiB, or one of 64 MiB).
pub const PARTS_IN_FLIGHT_MIB: u32 = 64;
/// The smallest chunk (part) the server chooses: S3 wants parts of at least 5 MiB but the last.
pub const MIN_PART: u64 = 8 << 20;
/// The most parts of one multipart upload (S3's limit).
pub const MAX_PARTS: u64 = 10_000;

/// How to reach the bucket (`ferryd serve --store s3 --s3-…`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// `http(s)://host:port`; `None`: AWS's endpoint for the region.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Key prefix, e.g. `ferry/`; empty for the bucket's root.
    pub prefix: String,
    pub region: String,
    /// Path-style URLs (`host/bucket/key`), as most stores other than AWS need.
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// Where an upload lives in the bucket; set at create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// The object key it is published at (reserved at create).
    pub key: String,
    /// Its name under the owner's folder (`card/clip (1).mov`).
    pub name: String,
    /// The multipart upload's id.
    pub multipart: String,
}

/// `P/uploads/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub upload_id: String,
    pub record: UploadRecord,
}

/// One durable chunk as its marker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub digest: Digest,
    pub etag: String,
    /// Unix seconds the marker was written.
    pub modified: u64,
}

/// Every marker of an upload, by chunk index.
pub type Markers = BTreeMap<u64, Vec<Marker>>;

/// The chunk digests a set of markers makes durable: an index with markers of two different
/// digests (two writers of different bytes) is not durable, and is sent again.
pub fn durable_digests(markers: &Markers, count: u64) -> BTreeMap<u64, Digest> {
    markers
        .iter()
        .filter(|(&index, _)| index < count)
        .filter_map(|(&index, all)| {
            let first = all.first()?.digest;
            all.iter()
                .all(|m| m.digest == first)
                .then_some((index, first))
        })
        .collect()
}

/// Why publishing did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the chunks on the store give the content hash {actual}, finish said {claimed}")]
    Mismatch { actual: Digest, claimed: Digest },
    #[error("chunks {0} are not on the store as recorded (another node wrote them since); resume to send them again")]
    Missing(String),
    #[error("{0} exists in the bucket already (written outside Ferry)")]
    Taken(String),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// The chunk size the server chooses for an upload of `size` bytes: at least [`MIN_PART`], few
/// enough parts for S3 ([`MAX_PARTS`]), a whole number of MiB.
pub fn chunk_size_for(size: u64) -> u64 {
    let mib = 1 << 20;
    size.div_ceil(MAX_PARTS)
        .div_ceil(mib)
        .saturating_mul(mib)
        .max(MIN_PART)
}

pub struct S3 {
    client: Client,
    bucket: String,
    prefix: String,
    /// Bounds the parts in flight (and so the memory they hold), in MiB: see [`S3::part_slot`].
    parts: Semaphore,
}

fn b64(digest: &Digest) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest.as_bytes())
}

fn unix(t: Option<&aws_sdk_s3::primitives::DateTime>) -> u64 {
    t.map_or(0, |t| t.secs().max(0) as u64)
}

/// The S3 error code of a failed call (`NoSuchKey`, `PreconditionFailed`, …).
fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    e.as_service_error().and_then(|s| s.code())
}

fn status<E, R: HasStatus>(e: &SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(HasStatus::status)
}

trait HasStatus {
    fn status(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

fn failed<E: std::error::Error + 'static, R: std::fmt::Debug>(
    e: SdkError<E, R>,
    what: String,
) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", DisplayErrorContext(e))
}

impl S3 {
    /// A client for `settings`; checks that the bucket answers.
    pub async fn connect(settings: &S3Settings) -> Result<Self> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key)
        else {
            bail!("the s3 store needs credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or s3-access-key-id and s3-secret-access-key in the config)");
        };
        // A restarting store is ridden through: up to 8 attempts, backing off up to 4 s.
        let retry = aws_sdk_s3::config::retry::RetryConfig::standard()
            .with_max_attempts(8)
            .with_max_backoff(Duration::from_secs(4));
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(120))
            .build();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(Credentials::new(id, secret, None, None, "ferryd"))
            .force_path_style(settings.path_style)
            .http_client(http)
            .retry_config(retry)
            .timeout_config(timeouts)
            // Ferry sends its own SHA-256 with every part; no second checksum is computed.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let client = Client::from_conf(config.build());
        client
            .head_bucket()
            .bucket(&settings.bucket)
            .send()
            .await
            .map_err(|e| failed(e, format!("bucket {} is not reachable", settings.bucket)))?;
        let mut prefix = settings.prefix.trim_start_matches('/').to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self {
            client,
            bucket: settings.bucket.clone(),
            prefix,
            parts: Semaphore::new(PARTS_IN_FLIGHT_MIB as usize),
        })
    }

    /// Room for one part of `len` bytes in [`PARTS_IN_FLIGHT_MIB`]; held until the part is
    /// stored.
    pub async fn part_slot(&self, len: u64) -> Result<tokio::sync::SemaphorePermit<'_>> {
        let mib = len.div_ceil(1 << 20).clamp(1, PARTS_IN_FLIGHT_MIB as u64) as u32;
        Ok(self.parts.acquire_many(mib).await?)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn manifest_key(&self, id: UploadId) -> String {
        format!("{}uploads/{id}.json", self.prefix)
    }

    fn markers_prefix(&self, id: UploadId) -> String {
        format!("{}uploads/{id}/parts/", self.prefix)
    }

    /// The marker of chunk `index` stored with `digest` as the part with `etag`.
    fn marker_key(&self, id: UploadId, index: u64, digest: &Digest, etag: &str) -> String {
        format!(
            "{}{index:010}.{}.{}",
            self.markers_prefix(id),
            digest.to_hex(),
            hex::encode(etag)
        )
    }

    /// `owner/dir…/name` under `kind/` (`files` or `names`).
    fn owner_key(&self, kind: &str, owner: &str, path: &str) -> String {
        format!("{}{kind}/{owner}/{path}", self.prefix)
    }

    /// The service id: read from the bucket, or made by the first node that starts.
    pub async fn service_id(&self) -> Result<String> {
        let key = format!("{}service-id", self.prefix);
        if let Some(id) = self.get_text(&key).await? {
            return Ok(id.trim().to_owned());
        }
        let fresh = UploadId::random()?.to_string();
        // If-None-Match: two nodes starting at once agree on the first one written.
        let _ = self.put_if_absent(&key, fresh.clone().into_bytes()).await?;
        Ok(self
            .get_text(&key)
            .await?
            .map_or(fresh, |t| t.trim().to_owned()))
    }

    async fn get_text(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .get(key)
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// An object's bytes, `None` if absent.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                out.body
                    .collect()
                    .await
                    .with_context(|| format!("failed to read {key}"))?
                    .into_bytes(),
            )),
            Err(e) if code(&e) == Some("NoSuchKey") || status(&e) == Some(404) => Ok(None),
            Err(e) => Err(failed(e, format!("failed to read {key}"))),
        }
    }

    async fn put(&self, key: &str, body: Vec<u8>) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| failed(e, format!("failed to write {key}")))?;
        Ok(())
    }

    /// Writes `key` unless it exists; `false` if it did.
    async fn put_if_absent(&self, key: &str, body: Vec<u8>) -> Result<bool> {
        match self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .body(ByteStream::from(body))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some("PreconditionFailed") || status(&e) == Some(412) => {
                Ok(false)
            }
            Err(e) => Err(failed(e, format!("failed to write {key}"))),
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(failed(e, format!("failed to look up {key}"))),
        }
    }

    /// Every key under `prefix` with its modification time, all pages.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| failed(e, format!("failed to list {prefix}")))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    out.push((key.to_owned(), unix(object.last_modified())));
                }
            }
        }
        Ok(out)
    }

    async fn delete_all(&self, keys: Vec<String>) -> Result<()> {
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()?;
            self.client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| failed(e, "failed to delete markers".into()))?;
        }
        Ok(())
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| failed(e, format!("failed to delete {key}")))?;
        Ok(())
    }

    /// The manifest of `id`, if the bucket has it (an unreadable one counts as absent).
    pub async fn manifest(&self, id: UploadId) -> Result<Option<Manifest>> {
        let Some(raw) = self.get(&self.manifest_key(id)).await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<Manifest>(&raw) {
            Ok(m) if m.upload_id == id.to_string() && m.record.remote.is_some() => Ok(Some(m)),
            Ok(_) => Ok(None),
            Err(e) => {
                warn!(%id, error = %e, "unreadable manifest, treated as absent");
                Ok(None)
            }
        }
    }

    pub async fn put_manifest(&self, id: UploadId, record: &UploadRecord) -> Result<()> {
        let manifest = Manifest {
            upload_id: id.to_string(),
            record: record.clone(),
        };
        self.put(&self.manifest_key(id), serde_json::to_vec(&manifest)?)
            .await
    }

    /// Reserves a name for a new upload (the first free one for `rename`), starts its multipart
    /// upload and writes its manifest. Returns the record with `remote` set.
    pub async fn create(&self, id: UploadId, record: &UploadRecord) -> Result<UploadRecord> {
        let dir: String = record.dir.iter().map(|c| format!("{c}/")).collect();
        let mut chosen = None;
        for n in 0..super::MAX_NUMBERED {
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
                return Err(super::NameTaken {
                    name: path,
                    on_exists: record.on_exists,
                }
                .into());
            }
        }
        let Some((key, name)) = chosen else {
            return Err(super::NameExhausted {
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
            self.abort(id, &record).await.ok();
            return Err(e);
        }
        Ok(record)
    }

    /// Stores one chunk as part `index + 1`, with its SHA-256 for the store to check, then its
    /// marker. Only then is the chunk durable. The caller holds a [`S3::part_slot`].
    pub async fn put_part(
        &self,
        id: UploadId,
        remote: &Remote,
        index: u64,
        body: Bytes,
        digest: &Digest,
    ) -> Result<()> {
        let part = i32::try_from(index + 1).context("part number out of range")?;
        let stored = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&remote.key)
            .upload_id(&remote.multipart)
            .part_number(part)
            .checksum_sha256(b64(digest))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| failed(e, format!("failed to store part {part} of {}", remote.key)))?;
        let etag = stored.e_tag().unwrap_or_default().trim_matches('"');
        // Another node may have stored other bytes for this part before (a takeover while
        // the old node still received): its markers go, so the last writer's is the one left.
        let mine = format!("{index:010}.{}.", digest.to_hex());
        let prefix = format!("{}{index:010}.", self.markers_prefix(id));
        let others: Vec<String> = self
            .list(&prefix)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| !key[self.markers_prefix(id).len()..].starts_with(&mine))
            .collect();
        self.delete_all(others).await?;
        self.put(&self.marker_key(id, index, digest, etag), Vec::new())
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
    async fn parts(&self, remote: &Remote) -> Result<Option<BTreeMap<u64, Vec<String>>>> {
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
            None => {
                return Err(anyhow::anyhow!(
                    "the store no longer has the multipart upload of {}",
                    remote.key
                )
                .into())
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
        let completed = chosen
            .iter()
            .map(|(index, etag, digest)| {
                CompletedPart::builder()
                    .part_number(*index as i32 + 1)
                    .e_tag(etag)
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
            Ok(_) => {}
            Err(e) if code(&e) == Some("PreconditionFailed") || status(&e) == Some(412) => {
                self.put_manifest(id, record).await?;
                return Err(PublishError::Taken(remote.key));
            }
            Err(e) => return Err(failed(e, format!("failed to complete {}", remote.key)).into()),
        }
        Ok(self.published(id, &intent, &markers).await?)
    }

    /// After the object is complete: the manifest says so; markers and reservation go.
    async fn published(
        &self,
        id: UploadId,
        intent: &UploadRecord,
        markers: &Markers,
    ) -> Result<UploadRecord> {
        let remote = intent.remote.clone().context("upload without a remote")?;
        let mut done = intent.clone();
        done.state = RecordState::Complete;
        done.updated_at = super::unix_now();
        self.put_manifest(id, &done).await?;
        let keys = markers
            .iter()
            .flat_map(|(i, all)| all.iter().map(move |m| (i, m)))
            .map(|(&i, m)| self.marker_key(id, i, &m.digest, &m.etag))
            .collect();
        self.delete_all(keys).await?;
        self.delete(&self.owner_key("names", &done.owner, &remote.name))
            .await?;
        Ok(done)
    }

    /// Aborts the multipart upload and deletes the markers, the reservation and the manifest.
    pub async fn abort(&self, id: UploadId, record: &UploadRecord) -> Result<()> {
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
        let mut known = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
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

    /// Creates `P/files/<owner>/<dir…>/` as an empty folder object.
    pub async fn make_dir(&self, owner: &str, dir: &[String]) -> Result<()> {
        let path: String = dir.iter().map(|c| format!("{c}/")).collect();
        self.put(&self.owner_key("files", owner, &path), Vec::new())
            .await
    }

    /// The token file in the bucket, `None` if there is none yet.
    pub async fn tokens(&self) -> Result<Option<Bytes>> {
        self.get(&format!("{}tokens", self.prefix)).await
    }

    pub async fn put_tokens(&self, body: Vec<u8>) -> Result<()> {
        self.put(&format!("{}tokens", self.prefix), body).await
    }

    /// The published object's address, for hooks and logs.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_keep_parts_within_s3_limits() {
        assert_eq!(chunk_size_for(0), MIN_PART);
        assert_eq!(chunk_size_for(1 << 30), MIN_PART);
        // 1 TiB: 10 000 parts of 105 MiB at most.
        let size = 1u64 << 40;
        let chunk = chunk_size_for(size);
        assert_eq!(chunk % (1 << 20), 0);
        assert!(size.div_ceil(chunk) <= MAX_PARTS, "{chunk}");
        assert!(size.div_ceil(chunk - (1 << 20)) > MAX_PARTS);
    }

    #[test]
    fn conflicting_markers_make_a_chunk_not_durable() {
        let d = |b: u8| Digest::from_bytes([b; 32]);
        let m = |digest, etag: &str| Marker {
            digest,
            etag: etag.into(),
            modified: 0,
        };
        let mut markers = Markers::new();
        markers.insert(0, vec![m(d(1), "a")]);
        markers.insert(1, vec![m(d(2), "b"), m(d(2), "c")]);
        markers.insert(2, vec![m(d(3), "d"), m(d(4), "e")]);
        markers.insert(9, vec![m(d(5), "f")]);
        let durable = durable_digests(&markers, 5);
        assert_eq!(durable.keys().copied().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(durable[&1], d(2));
    }
}

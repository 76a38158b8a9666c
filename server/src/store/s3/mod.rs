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
//! - `P/auth/tokens/<name>`, `P/auth/links/<id>` — one token's or upload link's line each;
//! - `P/usage/<owner>.json` — the owner's published bytes and uploads in progress (`usage.rs`);
//! - `P/link-usage/<id>.json` — the files and bytes an upload link created;
//! - `P/service-id` — the service id every node announces in `welcome`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::Client;
use bytes::Bytes;
use ferry_proto::Digest;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::warn;

use super::{UploadId, UploadRecord};
pub use credentials::Kind;
use objects::failed;
pub use objects::{is_unreachable, Unreachable};
pub use probe::Unfit;
pub use usage::{Limits, LinkBounds, LinkUsage, OverLimit, Usage};

mod body;
mod credentials;
mod objects;
mod probe;
mod sweep;
mod upload;
mod usage;

pub use body::SpoolPart;

/// Bytes of parts in flight to the store, for the whole server, in MiB (8 parts of 8 MiB, or
/// one of 64 MiB). A part is read from the spool as the store takes it, 1 MiB at a time, so
/// this bounds the parts being sent, not memory holding them whole.
pub const PARTS_IN_FLIGHT_MIB: u32 = 64;

/// Commits one upload may have running at once with the bucket, each a batch of chunks stored
/// as parts, then marked. With one at a time, a commit's round trips (the part, then its
/// marker) added up: 27 MiB/s with the store 100 ms away (docs/benchmarks.md). The bytes in
/// flight stay bounded by [`PARTS_IN_FLIGHT_MIB`]; a commit writing markers holds none.
pub const COMMITS_IN_FLIGHT: usize = 16;
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

/// A part the store holds and whose marker is still to be written ([`S3::mark_part`]).
#[derive(Debug, Clone)]
pub struct StoredPart {
    index: u64,
    digest: Digest,
    etag: String,
    /// Other writers' markers of the same index, listed while the part was sent.
    stale: Vec<String>,
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

/// The multipart upload is no longer in the store: another node finished or aborted it.
#[derive(Debug, thiserror::Error)]
#[error("the multipart upload of {0} is no longer in the store (finished or aborted through another node)")]
pub struct Gone(pub String);

/// Why publishing did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the chunks on the store give the content hash {actual}, finish said {claimed}")]
    Mismatch { actual: Digest, claimed: Digest },
    #[error("chunks {0} are not on the store as recorded (another node wrote them since); resume to send them again")]
    Missing(String),
    #[error("{0} exists in the bucket already (written outside Ferry)")]
    Taken(String),
    #[error("the multipart upload of {0} is no longer in the store: the upload was aborted or expired through another node")]
    Gone(String),
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
    /// Small objects read before, by key, with the ETag they had: credentials are re-read only
    /// when they change (`credentials.rs`).
    small: std::sync::Mutex<std::collections::HashMap<String, (String, Bytes)>>,
    /// Since when, and why, the store does not answer (`None`: it does); `/healthz` says it.
    outage: std::sync::Mutex<Option<(std::time::Instant, String)>>,
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
            small: Default::default(),
            outage: Default::default(),
        })
    }

    /// How long the store has not been answering, and the first failure's message; `None`
    /// while it answers.
    pub fn outage(&self) -> Option<(Duration, String)> {
        let outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        outage
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    /// Notes a failed call: an outage if the store did not answer (returns whether it was).
    pub fn note_failure(&self, e: &anyhow::Error) -> bool {
        if !is_unreachable(e) {
            return false;
        }
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if outage.is_none() {
            warn!(error = %format!("{e:#}"), "the object store does not answer");
            *outage = Some((std::time::Instant::now(), format!("{e:#}")));
        }
        true
    }

    /// Notes that the store answered: an outage is over.
    pub fn note_answer(&self) {
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((since, _)) = outage.take() {
            tracing::info!(
                secs = since.elapsed().as_secs(),
                "the object store answers again"
            );
        }
    }

    /// Whether the bucket answers now: one `HeadBucket`, without the SDK's retries.
    pub async fn answers(&self) -> bool {
        let once = aws_sdk_s3::config::Builder::default()
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled());
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .customize()
            .config_override(once)
            .send()
            .await
            .is_ok()
    }

    /// Waits until the store answers again (the watcher, `cluster::store_watch_forever`, or a
    /// call that succeeded says so), at most `limit`; whether it does.
    pub async fn wait_for_answer(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        // Bounded by `limit`: one look every 250 ms.
        while tokio::time::Instant::now() < deadline {
            if self.outage().is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.outage().is_none()
    }

    /// Room for one part of `len` bytes in [`PARTS_IN_FLIGHT_MIB`]; held until the part is
    /// stored.
    pub async fn part_slot(&self, len: u64) -> Result<tokio::sync::SemaphorePermit<'_>> {
        let mib = len.div_ceil(1 << 20).clamp(1, PARTS_IN_FLIGHT_MIB as u64) as u32;
        Ok(self.parts.acquire_many(mib).await?)
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

    /// Creates `P/files/<owner>/<dir…>/` as an empty folder object.
    pub async fn make_dir(&self, owner: &str, dir: &[String]) -> Result<()> {
        let path: String = dir.iter().map(|c| format!("{c}/")).collect();
        self.put(&self.owner_key("files", owner, &path), Vec::new())
            .await
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

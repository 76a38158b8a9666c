//! Per-owner usage across the service (issue 25): `P/usage/<owner>.json` holds the bytes the
//! owner published through Ferry and every upload in progress with the bytes it reserved, so
//! `--quota` and `--max-uploads` hold for the service, not per node. Every change is a
//! compare-and-swap: read with its ETag, changed, written with `If-Match` (or `If-None-Match: *`
//! for the first), read again and retried when another node wrote in between — the start-up
//! probe checked that the store refuses a stale `If-Match`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use aws_sdk_s3::primitives::ByteStream;
use ferry_proto::units::human;
use serde::{Deserialize, Serialize};

use super::objects::{code, failed, status};
use super::S3;
use crate::store::{unix_now, UploadId};

/// Attempts of one compare-and-swap before it gives up (`storage_error`): each loses only to
/// another node's write of the same owner's usage, and waits a little before the next.
const CAS_ATTEMPTS: u32 = 64;

/// `P/usage/<owner>.json`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of the owner's files published through Ferry (any node).
    #[serde(default)]
    pub published: u64,
    /// Uploads in progress by id: the bytes each reserved (0 while its length is unknown) and
    /// when (Unix seconds).
    #[serde(default)]
    pub receiving: BTreeMap<String, Reserved>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    pub size: u64,
    pub at: u64,
}

impl Usage {
    /// Published bytes and the bytes every upload in progress reserved.
    pub fn used(&self) -> u64 {
        self.receiving
            .values()
            .fold(self.published, |sum, r| sum.saturating_add(r.size))
    }
}

/// The owner's limits, as `--max-uploads` and `--quota` give them (0: none).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_uploads: u64,
    pub quota: u64,
}

/// A create refused by the service-wide count: `too_many_uploads` or `quota_exceeded`.
#[derive(Debug, thiserror::Error)]
pub enum OverLimit {
    #[error("{owner} has {count} uploads in progress (on every node of the service), the limit is {limit}")]
    Uploads {
        owner: String,
        count: u64,
        limit: u64,
    },
    #[error("{owner} uses {} (published and in progress, on every node of the service); {} more would exceed the quota of {}", human(*.used), human(*.more), human(*.quota))]
    Quota {
        owner: String,
        used: u64,
        more: u64,
        quota: u64,
    },
}

impl S3 {
    fn usage_key(&self, owner: &str) -> String {
        format!("{}usage/{owner}.json", self.prefix)
    }

    /// The owner's usage as the bucket holds it now.
    pub async fn usage(&self, owner: &str) -> Result<Usage> {
        Ok(self.usage_tagged(owner).await?.0)
    }

    async fn usage_tagged(&self, owner: &str) -> Result<(Usage, Option<String>)> {
        let key = self.usage_key(owner);
        match self.get_tagged(&key).await? {
            None => Ok((Usage::default(), None)),
            Some((body, etag)) => {
                let usage = serde_json::from_slice(&body)
                    .map_err(|e| anyhow::anyhow!("{key} is not a usage record: {e}"))?;
                Ok((usage, Some(etag)))
            }
        }
    }

    /// Applies `change` to the owner's usage and writes it back only if no other node wrote
    /// it in between (else reads it again and retries). `change` returning `Err` ends it with
    /// nothing written; `Ok(false)`: nothing to write.
    async fn update_usage(
        &self,
        owner: &str,
        mut change: impl FnMut(&mut Usage) -> Result<bool>,
    ) -> Result<()> {
        let key = self.usage_key(owner);
        for attempt in 0..CAS_ATTEMPTS {
            let (mut usage, etag) = self.usage_tagged(owner).await?;
            if !change(&mut usage)? {
                return Ok(());
            }
            let body = serde_json::to_vec(&usage)?;
            let mut put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .body(ByteStream::from(body));
            put = match &etag {
                Some(etag) => put.if_match(format!("\"{etag}\"")),
                None => put.if_none_match("*"),
            };
            match put.send().await {
                Ok(_) => return Ok(()),
                // Another node wrote it first (412), or is writing it (409 on AWS).
                Err(e)
                    if code(&e) == Some("PreconditionFailed")
                        || matches!(status(&e), Some(412 | 409)) =>
                {
                    let wait = 5 + (u64::from(attempt) * 7 + unix_now() % 13) % 45;
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Err(e) => return Err(failed(e, format!("failed to write {key}"))),
            }
        }
        anyhow::bail!("{key} kept changing under {CAS_ATTEMPTS} attempts to update it; try again")
    }

    /// Counts a new upload of `size` bytes against the owner's limits across the service and
    /// reserves them; `Err` with an [`OverLimit`] if that would exceed one.
    pub async fn reserve(
        &self,
        owner: &str,
        id: UploadId,
        size: u64,
        limits: Limits,
    ) -> Result<()> {
        self.update_usage(owner, |usage| {
            let count = usage.receiving.len() as u64;
            if limits.max_uploads > 0 && count >= limits.max_uploads {
                return Err(OverLimit::Uploads {
                    owner: owner.to_owned(),
                    count,
                    limit: limits.max_uploads,
                }
                .into());
            }
            let used = usage.used();
            if limits.quota > 0 && used.saturating_add(size) > limits.quota {
                return Err(OverLimit::Quota {
                    owner: owner.to_owned(),
                    used,
                    more: size,
                    quota: limits.quota,
                }
                .into());
            }
            usage.receiving.insert(
                id.to_string(),
                Reserved {
                    size,
                    at: unix_now(),
                },
            );
            Ok(true)
        })
        .await
    }

    /// An upload in progress is no more (aborted, expired, its create failed): its
    /// reservation goes; `published` bytes (finished) are counted instead.
    pub async fn release(&self, owner: &str, id: UploadId, published: Option<u64>) -> Result<()> {
        let key = id.to_string();
        self.update_usage(owner, |usage| {
            let held = usage.receiving.remove(&key).is_some();
            match published {
                // Counted once: a finish answered again, or reconciled after, adds nothing.
                Some(bytes) if held => usage.published = usage.published.saturating_add(bytes),
                _ => {}
            }
            Ok(held)
        })
        .await
    }

    /// Every owner with a usage record.
    pub async fn usage_owners(&self) -> Result<Vec<String>> {
        let prefix = format!("{}usage/", self.prefix);
        Ok(self
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|(key, _)| {
                key.strip_prefix(&prefix)?
                    .strip_suffix(".json")
                    .map(str::to_owned)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_counts_published_and_every_reservation() {
        let mut usage = Usage {
            published: 100,
            ..Usage::default()
        };
        usage
            .receiving
            .insert("a".into(), Reserved { size: 20, at: 1 });
        usage
            .receiving
            .insert("b".into(), Reserved { size: 3, at: 2 });
        assert_eq!(usage.used(), 123);
        let text = serde_json::to_string(&usage).unwrap();
        assert_eq!(serde_json::from_str::<Usage>(&text).unwrap(), usage);
        // An empty object reads as no usage.
        assert_eq!(
            serde_json::from_str::<Usage>("{}").unwrap(),
            Usage::default()
        );
    }
}

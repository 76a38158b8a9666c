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

/// The owner's limits, as `--max-uploads` and `--quota` give them (0: none), and the upload
/// link's bounds when a link creates.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_uploads: u64,
    pub quota: u64,
    pub link: Option<LinkBounds>,
}

/// `P/link-usage/<id>.json`: what an upload link created, on every node.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkUsage {
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub bytes: u64,
}

/// An upload link's bounds (0: none).
#[derive(Debug, Clone)]
pub struct LinkBounds {
    pub id: String,
    pub max_files: u64,
    pub max_size: u64,
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
    #[error("this upload link allows {limit} files, and {files} were created through it")]
    LinkFiles { limit: u64, files: u64 },
    #[error("this upload link allows {} in all; {} were created through it and this file has {}", human(*.limit), human(*.bytes), human(*.size))]
    LinkBytes { limit: u64, bytes: u64, size: u64 },
}

impl S3 {
    fn usage_key(&self, owner: &str) -> String {
        format!("{}usage/{owner}.json", self.prefix)
    }

    /// The owner's usage as the bucket holds it now.
    pub async fn usage(&self, owner: &str) -> Result<Usage> {
        Ok(self.json_tagged(&self.usage_key(owner)).await?.0)
    }

    /// What an upload link has created, across the service.
    pub async fn link_usage(&self, link: &str) -> Result<LinkUsage> {
        Ok(self.json_tagged(&self.link_usage_key(link)).await?.0)
    }

    fn link_usage_key(&self, link: &str) -> String {
        format!("{}link-usage/{link}.json", self.prefix)
    }

    async fn json_tagged<T: Default + serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<(T, Option<String>)> {
        match self.get_tagged(key).await? {
            None => Ok((T::default(), None)),
            Some((body, etag)) => {
                let value = serde_json::from_slice(&body)
                    .map_err(|e| anyhow::anyhow!("{key} is not a usage record: {e}"))?;
                Ok((value, Some(etag)))
            }
        }
    }

    async fn update_usage(
        &self,
        owner: &str,
        change: impl FnMut(&mut Usage) -> Result<bool>,
    ) -> Result<()> {
        self.update_json(&self.usage_key(owner), change).await
    }

    /// Applies `change` to the JSON object at `key` (its default if absent) and writes it back
    /// only if no other node wrote it in between (else reads it again and retries). `change`
    /// returning `Err` ends it with nothing written; `Ok(false)`: nothing to write.
    async fn update_json<T>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut T) -> Result<bool>,
    ) -> Result<()>
    where
        T: Default + Serialize + serde::de::DeserializeOwned,
    {
        for attempt in 0..CAS_ATTEMPTS {
            let (mut value, etag) = self.json_tagged::<T>(key).await?;
            if !change(&mut value)? {
                return Ok(());
            }
            let body = serde_json::to_vec(&value)?;
            let mut put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
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

    /// Counts one more file of `size` bytes against an upload link's bounds across the service
    /// (`Err` with an [`OverLimit`] past one).
    pub async fn take_link(&self, link: &LinkBounds, size: u64) -> Result<()> {
        self.update_json::<LinkUsage>(&self.link_usage_key(&link.id), |used| {
            if link.max_files > 0 && used.files >= link.max_files {
                return Err(OverLimit::LinkFiles {
                    limit: link.max_files,
                    files: used.files,
                }
                .into());
            }
            if link.max_size > 0 && used.bytes.saturating_add(size) > link.max_size {
                return Err(OverLimit::LinkBytes {
                    limit: link.max_size,
                    bytes: used.bytes,
                    size,
                }
                .into());
            }
            used.files += 1;
            used.bytes = used.bytes.saturating_add(size);
            Ok(true)
        })
        .await
    }

    /// Gives back what [`S3::take_link`] counted for an upload aborted, expired or not created.
    pub async fn give_back_link(&self, link: &str, size: u64) -> Result<()> {
        self.update_json::<LinkUsage>(&self.link_usage_key(link), |used| {
            used.files = used.files.saturating_sub(1);
            used.bytes = used.bytes.saturating_sub(size);
            Ok(true)
        })
        .await
    }

    /// Counts a new upload of `size` bytes against the owner's limits across the service and
    /// reserves them; `Err` with an [`OverLimit`] if that would exceed one.
    pub async fn reserve(
        &self,
        owner: &str,
        id: UploadId,
        size: u64,
        limits: &Limits,
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

//! The S3 calls every other part of the backend is built on: objects read, written (also only
//! if absent), looked up, listed and deleted, and what a failed call's error says.

use anyhow::{Context, Result};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use base64::Engine;
use bytes::Bytes;
use ferry_proto::Digest;

use super::S3;

pub(super) fn b64(digest: &Digest) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest.as_bytes())
}

pub(super) fn unix(t: Option<&aws_sdk_s3::primitives::DateTime>) -> u64 {
    t.map_or(0, |t| t.secs().max(0) as u64)
}

/// The S3 error code of a failed call (`NoSuchKey`, `PreconditionFailed`, …).
pub(super) fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    e.as_service_error().and_then(|s| s.code())
}

pub(super) fn status<E, R: HasStatus>(e: &SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(HasStatus::status)
}

pub(super) trait HasStatus {
    fn status(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

/// A store that did not answer — no connection, a timeout, a broken response, a 5xx after the
/// SDK's retries: an outage to wait out, not a refusal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// Whether `e` (anywhere in its chain) says the store did not answer.
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Unreachable>().is_some()
}

pub(super) fn failed<E: std::error::Error + 'static, R: std::fmt::Debug + HasStatus>(
    e: SdkError<E, R>,
    what: String,
) -> anyhow::Error {
    let outage = matches!(
        e,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
    ) || status(&e).is_some_and(|s| s >= 500);
    let message = format!("{what}: {}", DisplayErrorContext(e));
    match outage {
        true => Unreachable(message).into(),
        false => anyhow::anyhow!(message),
    }
}

impl S3 {
    pub(super) async fn get_text(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .get(key)
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// An object's bytes, `None` if absent.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.get_tagged(key).await?.map(|(body, _)| body))
    }

    /// An object's bytes and ETag (unquoted), `None` if absent.
    pub(super) async fn get_tagged(&self, key: &str) -> Result<Option<(Bytes, String)>> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let etag = out.e_tag().unwrap_or_default().trim_matches('"').to_owned();
                let body = out
                    .body
                    .collect()
                    .await
                    .with_context(|| format!("failed to read {key}"))?
                    .into_bytes();
                Ok(Some((body, etag)))
            }
            Err(e) if code(&e) == Some("NoSuchKey") || status(&e) == Some(404) => Ok(None),
            Err(e) => Err(failed(e, format!("failed to read {key}"))),
        }
    }

    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<()> {
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
    pub(super) async fn put_if_absent(&self, key: &str, body: Vec<u8>) -> Result<bool> {
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
        Ok(self
            .list_objects(prefix)
            .await?
            .into_iter()
            .map(|(key, modified, _)| (key, modified))
            .collect())
    }

    /// Every key under `prefix` with its modification time and ETag (unquoted; empty if the
    /// store gave none), all pages.
    pub(super) async fn list_objects(&self, prefix: &str) -> Result<Vec<(String, u64, String)>> {
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
                    let etag = object.e_tag().unwrap_or_default().trim_matches('"');
                    out.push((
                        key.to_owned(),
                        unix(object.last_modified()),
                        etag.to_owned(),
                    ));
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn delete_all(&self, keys: Vec<String>) -> Result<()> {
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
}

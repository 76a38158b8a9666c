//! Tokens and upload links in the bucket, one object per entry (issue 25): `P/auth/tokens/<name>`
//! holds a token's `NAME SHA256HEX` line, `P/auth/links/<id>` a link's JSON line. Each is created
//! with `If-None-Match: *`, so two nodes adding at once never lose one another's entry (the
//! single `P/tokens` object before it was read, changed and written back, and concurrent adds
//! lost 6–10 of 20) and two adds of one token name cannot both win. A node mirrors them into its
//! `DATA/tokens` and `DATA/links` with one listing per look, reading only the entries whose
//! ETag changed.

use std::collections::BTreeMap;

use anyhow::Result;
use bytes::Bytes;

use super::S3;

/// What kind of credential, and so where under `P/auth/` it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tokens,
    Links,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Self::Tokens => "tokens",
            Self::Links => "links",
        }
    }
}

impl S3 {
    fn credentials_prefix(&self, kind: Kind) -> String {
        format!("{}auth/{}/", self.prefix, kind.dir())
    }

    /// Every entry of `kind` as its local file holds them, one line each, in key order. One
    /// listing; an object is read only when its ETag is not the one read last time.
    pub async fn credentials(&self, kind: Kind) -> Result<Vec<u8>> {
        let prefix = self.credentials_prefix(kind);
        let listed = self.list_objects(&prefix).await?;
        let mut lines: BTreeMap<String, Bytes> = BTreeMap::new();
        for (key, _, etag) in listed {
            let cached = {
                let cache = self.small.lock().unwrap_or_else(|p| p.into_inner());
                cache
                    .get(&key)
                    .filter(|(seen, _)| !etag.is_empty() && *seen == etag)
                    .map(|(_, body)| body.clone())
            };
            let body = match cached {
                Some(body) => body,
                None => match self.get_tagged(&key).await? {
                    Some((body, read_etag)) => {
                        let mut cache = self.small.lock().unwrap_or_else(|p| p.into_inner());
                        cache.insert(key.clone(), (read_etag, body.clone()));
                        body
                    }
                    // Deleted between the listing and the read.
                    None => continue,
                },
            };
            lines.insert(key, body);
        }
        {
            let mut cache = self.small.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|key, _| !key.starts_with(&prefix) || lines.contains_key(key));
        }
        let mut text = Vec::new();
        for body in lines.values() {
            let line = body.strip_suffix(b"\n").unwrap_or(body);
            if line.is_empty() || line.contains(&b'\n') {
                continue;
            }
            text.extend_from_slice(line);
            text.push(b'\n');
        }
        Ok(text)
    }

    /// Whether any entry of `kind` is in the bucket.
    pub async fn has_credentials(&self, kind: Kind) -> Result<bool> {
        Ok(!self.list(&self.credentials_prefix(kind)).await?.is_empty())
    }

    /// Adds the entry `id` (a token's name, a link's id) with its `line`, unless one with that
    /// id exists: `false` then.
    pub async fn add_credential(&self, kind: Kind, id: &str, line: &str) -> Result<bool> {
        let key = format!("{}{id}", self.credentials_prefix(kind));
        self.put_if_absent(&key, format!("{line}\n").into_bytes())
            .await
    }

    /// Removes the entry `id`; removing one that is not there is no error.
    pub async fn remove_credential(&self, kind: Kind, id: &str) -> Result<()> {
        self.delete(&format!("{}{id}", self.credentials_prefix(kind)))
            .await
    }

    /// The token file of versions before one object per token (`P/tokens`), if any.
    pub async fn legacy_tokens(&self) -> Result<Option<Bytes>> {
        self.get(&format!("{}tokens", self.prefix)).await
    }

    pub async fn delete_legacy_tokens(&self) -> Result<()> {
        self.delete(&format!("{}tokens", self.prefix)).await
    }
}

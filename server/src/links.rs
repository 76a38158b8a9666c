//! Upload links: a URL (`https://HOST:PORT/u/<grant>`) that lets whoever holds it upload into
//! one owner's folder within bounds (an expiry, total bytes, number of files), and nothing
//! else. `DATA/links` holds one JSON object per line per link, with the grant's SHA-256, never
//! the grant (`ferryd link` prints it once). What a link has used is counted in the store.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every grant starts with (tokens start with `fy_`).
pub const GRANT_PREFIX: &str = "fl_";

/// One upload link as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    /// Short public id, for `ferryd link --list` and `--revoke`, logs and records.
    pub id: String,
    /// SHA-256 of the grant, hex.
    pub hash: String,
    /// Whose folder it uploads into.
    pub owner: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds after which it no longer logs in or creates; 0: never.
    pub expires_at: u64,
    /// Bytes it may create in all (the sum of the files' sizes); 0: no bound.
    pub max_size: u64,
    /// Files it may create in all; 0: no bound.
    pub max_files: u64,
    /// A read link (`ferryd link --read`): the one upload it may read (`GET`), and it does
    /// nothing else — no login over QUIC, no upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
}

impl Link {
    /// Whether the link has expired at `now` (Unix seconds).
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at != 0 && now >= self.expires_at
    }
}

/// The links file of one data directory.
pub struct Links {
    path: PathBuf,
    /// The links of the last valid read: what logins use while the file is invalid.
    good: std::sync::Mutex<Option<Vec<Link>>>,
}

impl Links {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("links"),
            good: Default::default(),
        }
    }

    /// The links to log in with: the file's, or, while it is unreadable or invalid, those of its
    /// last valid read (the problem is logged). `Err` only if it was never valid.
    pub fn usable(&self) -> Result<Vec<Link>> {
        let mut good = self.good.lock().unwrap_or_else(|p| p.into_inner());
        match (self.entries(), good.as_ref()) {
            (Ok(entries), _) => {
                *good = Some(entries.clone());
                Ok(entries)
            }
            (Err(e), Some(last)) => {
                tracing::warn!(error = %format!("{e:#}"), "the links file is invalid; its last valid version is used until it is fixed");
                Ok(last.clone())
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Every link, in file order. A missing file means none.
    pub fn entries(&self) -> Result<Vec<Link>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("failed to read {}", self.path.display()))
            }
        };
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str(line)
                    .with_context(|| format!("{} line {}", self.path.display(), n + 1))
            })
            .collect()
    }

    /// Makes a link for `owner` and returns it with its grant (shown once, never stored).
    pub fn add(
        &self,
        owner: &str,
        expires_at: u64,
        max_size: u64,
        max_files: u64,
    ) -> Result<(Link, String)> {
        crate::tokens::validate_owner("owner", owner)?;
        let mut entries = self.entries()?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let grant = format!("{GRANT_PREFIX}{}", hex::encode(secret));
        let mut id = [0u8; 4];
        getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let link = Link {
            id: hex::encode(id),
            hash: hex::encode(hash(&grant)),
            owner: owner.to_owned(),
            created_at: crate::store::unix_now(),
            expires_at,
            max_size,
            max_files,
            read: None,
        };
        entries.push(link.clone());
        self.save(&entries)?;
        Ok((link, grant))
    }

    /// Makes a read link for `owner`'s upload `upload_id` (32 hex characters) and returns it
    /// with its grant.
    pub fn add_read(
        &self,
        owner: &str,
        expires_at: u64,
        upload_id: &str,
    ) -> Result<(Link, String)> {
        if upload_id.len() != 32 || !upload_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{upload_id:?} is not an upload id (32 hex characters, as `ferry list` shows)");
        }
        let (link, grant) = self.add(owner, expires_at, 0, 0)?;
        let mut entries = self.entries()?;
        for entry in entries.iter_mut().filter(|e| e.id == link.id) {
            entry.read = Some(upload_id.to_ascii_lowercase());
        }
        self.save(&entries)?;
        let link = Link {
            read: Some(upload_id.to_ascii_lowercase()),
            ..link
        };
        Ok((link, grant))
    }

    /// Removes the link with this id, or of this grant or URL. Uploads it made stay.
    pub fn revoke(&self, which: &str) -> Result<Link> {
        let mut entries = self.entries()?;
        // An upload link's URL ends in its grant; a read link's carries it as `?grant=`.
        let grant = match which.split_once("grant=") {
            Some((_, grant)) => grant.split('&').next().unwrap_or(grant),
            None => which.rsplit('/').next().unwrap_or(which),
        };
        let by_grant = grant
            .starts_with(GRANT_PREFIX)
            .then(|| hex::encode(hash(grant)));
        let Some(at) = entries
            .iter()
            .position(|l| l.id == which || by_grant.as_deref() == Some(l.hash.as_str()))
        else {
            bail!("no upload link {which:?} (ferryd link --list shows them)");
        };
        let link = entries.remove(at);
        self.save(&entries)?;
        Ok(link)
    }

    /// The link of `grant`, if there is one. Compares every entry in constant time. While the
    /// file is invalid, its last valid version decides ([`Links::usable`]).
    pub fn find(&self, grant: &str) -> Result<Option<Link>> {
        let wanted = hash(grant);
        let mut found = None;
        for link in self.usable()? {
            let Ok(stored) = hex::decode(&link.hash) else {
                continue;
            };
            if bool::from(stored.as_slice().ct_eq(&wanted)) {
                found = Some(link);
            }
        }
        Ok(found)
    }

    /// Replaces the file with `bytes` (the bucket's links, `--store s3`) if they differ;
    /// returns whether it changed.
    pub(crate) fn replace(&self, bytes: &[u8]) -> Result<bool> {
        if std::fs::read(&self.path).unwrap_or_default() == bytes {
            return Ok(false);
        }
        crate::fsutil::write_private(&self.path, bytes)?;
        Ok(true)
    }

    /// The file's identity and bytes, to notice a change cheaply (see `Tokens::snapshot`).
    pub fn snapshot(&self) -> crate::tokens::Snapshot {
        crate::tokens::snapshot(&self.path)
    }

    /// The link with this id (while the file is invalid, in its last valid version).
    pub fn get(&self, id: &str) -> Result<Option<Link>> {
        Ok(self.usable()?.into_iter().find(|l| l.id == id))
    }

    fn save(&self, entries: &[Link]) -> Result<()> {
        let mut text = String::new();
        for link in entries {
            text.push_str(&serde_json::to_string(link)?);
            text.push('\n');
        }
        crate::fsutil::write_private(&self.path, text.as_bytes())
    }
}

/// The SHA-256 of a grant.
pub fn hash(grant: &str) -> [u8; 32] {
    Sha256::digest(grant.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_find_revoke_by_id_or_url() {
        let dir = tempfile::tempdir().unwrap();
        let links = Links::new(dir.path());
        let (link, grant) = links.add("alice", 0, 1 << 30, 3).unwrap();
        assert!(grant.starts_with("fl_") && grant.len() == 67);
        assert_eq!(links.find(&grant).unwrap(), Some(link.clone()));
        assert!(!std::fs::read_to_string(dir.path().join("links"))
            .unwrap()
            .contains(&grant));
        assert_eq!(links.find("fl_00").unwrap(), None);
        let (_, other) = links.add("bob", 0, 0, 0).unwrap();
        links.revoke(&link.id).unwrap();
        assert_eq!(links.find(&grant).unwrap(), None);
        let url = format!("https://files.lan:8443/u/{other}");
        assert_eq!(links.revoke(&url).unwrap().owner, "bob");
        assert!(links.revoke("nope").is_err());
        assert!(links.add("../x", 0, 0, 0).is_err());
    }
}

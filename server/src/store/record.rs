//! What the store records: upload ids, upload records and their states, tombstones of expired
//! uploads, and `--on-complete` hook jobs (all JSON in sled, and in the s3 store's manifests).

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferry_proto::{ChunkLayout, OnExists};
use serde::{Deserialize, Serialize};

use super::s3;

/// 16 random bytes, 32 lowercase hex characters on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(pub(super) [u8; 16]);

impl UploadId {
    pub fn random() -> Result<Self> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(Self(bytes))
    }

    /// Parses the wire form; `None` for anything but 32 lowercase hex characters.
    pub fn parse(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 16];
        let lower = text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (text.len() == 32 && lower && hex::decode_to_slice(text, &mut bytes).is_ok())
            .then_some(Self(bytes))
    }

    pub(super) fn chunk_key(self, index: u64) -> [u8; 24] {
        let mut key = [0u8; 24];
        key[..16].copy_from_slice(&self.0);
        key[16..].copy_from_slice(&index.to_be_bytes());
        key
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    Receiving,
    /// Between the two durable steps of publishing: `final_name` and `content_hash` name the link
    /// about to be made. A crash here is settled at the next start: completed if the link
    /// exists, back to `Receiving` if not (see `Store::reconcile`).
    Publishing,
    Complete,
}

/// One upload as sled keeps it (JSON in the `uploads` tree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Name of the token that created it; only that token can see it.
    pub owner: String,
    /// Sanitised name asked for at create.
    pub file_name: String,
    #[serde(default)]
    pub desc: String,
    pub size: u64,
    pub chunk_size: u64,
    pub state: RecordState,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last commit.
    pub updated_at: u64,
    /// Set when publishing starts: the name under `files/<owner>/`, which may carry ` (n)`.
    #[serde(default)]
    pub final_name: Option<String>,
    /// Folders under `files/<owner>/` to publish into (sanitised), outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dir: Vec<String>,
    /// Set when publishing starts: the digest `finish` carried, as hex. From protocol 4 on the
    /// content hash (SHA-256 over the chunk digests); for uploads completed by protocol 3 or
    /// older, the whole file's plain SHA-256 (the stored key is still `sha256`, so the records
    /// of earlier releases read unchanged and a repeated `finish` of those still matches).
    #[serde(default, rename = "sha256")]
    pub content_hash: Option<String>,
    /// What publishing does when the name is taken.
    #[serde(default, skip_serializing_if = "OnExists::is_default")]
    pub on_exists: OnExists,
    /// Published by `dedup`: its staging name is a second link to an already published file,
    /// never written to. A crash before the link rolls it back by removing it entirely.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dedup: bool,
    /// Inode number and modification time (ns) of the published file when it was published:
    /// `dedup` links to it only while both are unchanged (nobody rewrote it since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<(u64, i64)>,
    /// With the s3 store: the object key, published name and multipart upload (the staging
    /// file is then only a spool of the chunks not yet stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<s3::Remote>,
    /// Created through this upload link (its id): only that link's sessions see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Created without a length (tus `Upload-Defer-Length`, the IETF draft without one): `size`
    /// is then the bound the layout is cut for (the server's `max_file_size` at create), until
    /// the length is declared (`Uploads::set_length`), which sets `size` and clears this.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferred: bool,
    /// A tus partial upload (`Upload-Concat: partial`): never published by itself; a final
    /// upload concatenates it and removes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// The tus `Upload-Metadata` as created (at most 4 KiB), given back by `HEAD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Which front end created it (`quic`, `webtransport`, `tus`, `ietf`); metrics only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
}

impl UploadRecord {
    pub fn layout(&self) -> Result<ChunkLayout> {
        ChunkLayout::new(self.size, self.chunk_size).context("record has a zero chunk size")
    }
}

/// The bytes of an unfinished chunk that a byte-stream front end (tus, the IETF draft) made
/// durable when its request ended mid-chunk: chunk `index` holds `len` bytes on disk whose
/// SHA-256 is `digest`. It counts only while every chunk before `index` is durable and
/// `index` is not; a continuation re-reads the bytes and checks `digest` before building on
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tail {
    pub index: u64,
    pub len: u64,
    #[serde(with = "hex_digest")]
    pub digest: [u8; 32],
}

mod hex_digest {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// What remains of an expired upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub owner: String,
    /// Unix seconds.
    pub expired_at: u64,
}

/// An `--on-complete` hook job, queued durably with the upload's completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookJob {
    pub upload_id: String,
    pub owner: String,
    /// The published file, absolute.
    pub path: PathBuf,
    /// The published name under the owner's folder (`card/clip (1).mov`).
    pub name: String,
    pub size: u64,
    /// Hooks queued by earlier releases carried the plain SHA-256 here.
    #[serde(alias = "sha256")]
    pub content_hash: String,
    /// The chunk size the content hash was computed with (0 in hooks queued by earlier
    /// releases).
    #[serde(default)]
    pub chunk_size: u64,
    pub desc: String,
}

//! The structures frames carry: an upload as `created` and `resumed` describe it, the limits
//! `welcome` announces, `found`'s uploads, `listing`'s summaries, and the frames' own bounds.

use serde::{Deserialize, Serialize};

/// What publishing does when a file of the upload's name exists in its folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExists {
    /// Publish as `name (1)`, `name (2)`, …
    #[default]
    Rename,
    /// Do not publish: `already_exists`; the client counts the file as skipped.
    Skip,
    /// Do not publish: `already_exists`; the client counts the file as failed.
    Fail,
}

impl OnExists {
    pub fn is_default(&self) -> bool {
        *self == Self::Rename
    }
}

impl std::str::FromStr for OnExists {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rename" => Ok(Self::Rename),
            "skip" => Ok(Self::Skip),
            "fail" => Ok(Self::Fail),
            _ => Err(format!("{s:?} is not one of rename, skip, fail")),
        }
    }
}

/// Server limits announced in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_file_size: u64,
    pub min_chunk_size: u64,
    pub max_chunk_size: u64,
    /// Chunk streams the client may have open at once.
    pub max_streams: u64,
    pub max_frame: u64,
    /// Uploads in progress one owner may have; 0 means no limit.
    #[serde(default)]
    pub max_uploads: u64,
    /// Bytes one owner may have stored and staged; 0 means no limit.
    #[serde(default)]
    pub quota: u64,
    /// Seconds without progress after which an upload is removed; 0 means never.
    #[serde(default)]
    pub expire_after: u64,
}

/// A completed upload in `found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundComplete {
    pub upload_id: String,
    /// Where it was published, under the owner's folder (`/`-separated; may be a numbered name).
    pub file_name: String,
    pub chunk_size: u64,
    /// Its content hash with that chunk size (§3.6 of the protocol).
    pub content_hash: String,
}

/// An unfinished upload in `found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundReceiving {
    pub upload_id: String,
    pub chunk_size: u64,
    pub chunk_count: u64,
    pub durable_bytes: u64,
}

/// Most chunk indices in one `rewrite`.
pub const MAX_REWRITE_PER_FRAME: usize = 1000;
/// Most bytes one `read` returns.
pub const MAX_READ: u64 = 16 * 1024 * 1024;

/// Most uploads of each kind in one `found`.
pub const MAX_FOUND: usize = 8;
/// Most digests in one `digest_page` (each at most 90 bytes of JSON: the frame stays far below
/// [`MAX_FRAME`]).
pub const MAX_DIGESTS_PER_FRAME: usize = 500;

/// An upload as `created` and `resumed` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    pub upload_id: String,
    pub file_name: String,
    pub size: u64,
    pub chunk_size: u64,
    pub chunk_count: u64,
    /// Durable chunk index ranges, `[start, end)`, from the `resume.from` index on, at most
    /// [`MAX_RANGES_PER_FRAME`] of them.
    pub durable: Vec<[u64; 2]>,
    /// Length in bytes of the contiguous durable prefix (of the whole upload).
    pub durable_offset: u64,
    /// Present when `durable` was cut to fit one frame: `resume` again with `from` set to it
    /// for the ranges from there on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_next: Option<u64>,
    /// The length is not declared yet: `size` and `chunk_count` are the bound the upload is
    /// laid out for (the server's largest file), not its length.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferred: bool,
}

/// One line of `listing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadSummary {
    pub upload_id: String,
    pub file_name: String,
    #[serde(default)]
    pub desc: String,
    pub size: u64,
    pub chunk_size: u64,
    pub durable_bytes: u64,
    /// `receiving`, `complete`.
    pub state: String,
    /// Unix seconds.
    pub created_at: u64,
    pub updated_at: u64,
    /// Unix seconds at which an unfinished upload will be removed if it makes no progress;
    /// 0 for complete uploads or when uploads never expire.
    #[serde(default)]
    pub expires_at: u64,
}

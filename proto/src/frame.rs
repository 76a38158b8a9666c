//! Control and chunk-header frames: a 4-byte big-endian length, then that many bytes of a
//! UTF-8 JSON object whose `"type"` names the frame. Decoding checks the length before it
//! parses anything, so a hostile length prefix costs nothing.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// Largest frame body, in bytes.
pub const MAX_FRAME: usize = 64 * 1024;
/// Protocol version spoken by this build, sent in `hello` and `welcome`. 2 added paging of
/// `listing` and of `resumed`'s durable ranges, and the codes `token_revoked`,
/// `control_stream_full` and `name_exhausted`; 3 added `create.on_exists`, `dedup`, `ping`,
/// `welcome.server`, `welcome.notice`, `notice` and the codes `already_exists` and `refused`;
/// 4 moved the chunk digest after the payload (`chunk_end`) and made the file-level check the
/// content hash (SHA-256 over the chunk digests) in `finish`, `finished`, `dedup`, `deduped`;
/// 5 added `welcome.service` (the service a resume journal is keyed by), let the server choose
/// the chunk size (`created.upload.chunk_size` may differ from `create.chunk_size`); 6 added
/// WebTransport sessions for browsers and upload links (`hello.token` may be a grant); 7 added
/// the code `too_fragmented` (a bound on the pieces of a chunk stream read out of order); 8
/// added `lookup`/`found` and `digests`/`digest_page` (the server, not a client's journal,
/// says what is uploaded already); 9 added uploads of unknown length (`create.deferred`,
/// `set_length`/`length_set`, `finish.size`, `created.upload.deferred`), `rewrite`/`rewritten`
/// (a durable chunk sent again, for a file rewritten while it grew) and `read`/`read_data` (the
/// durable prefix of an upload, read back while it arrives).
pub const PROTOCOL_VERSION: u32 = 9;
/// The ALPN token of the protocol family; the version is agreed in `hello`, so an old client
/// still connects and is told `unsupported_version`.
pub const ALPN: &[u8] = b"ferry/1";
/// Most `durable` ranges in one `created` or `resumed` (each at most 43 bytes of JSON, so the
/// frame stays far below [`MAX_FRAME`]); the rest follows on request (`resume.from`).
pub const MAX_RANGES_PER_FRAME: usize = 1000;

/// Every frame of the protocol. Unknown fields are ignored; an unknown `type` is an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    Hello {
        version: u32,
        token: String,
    },
    Welcome {
        version: u32,
        owner: String,
        limits: Limits,
        /// The server software and its version, e.g. `ferryd 0.1.0`.
        #[serde(default)]
        server: String,
        /// The operator's notice (message of the day), if one is set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notice: Option<String>,
        /// The service's id (32 hex characters): the same on every node of a service that
        /// shares one store, so a client resumes an upload through any of them.
        #[serde(default)]
        service: String,
    },
    Create {
        req: u64,
        file_name: String,
        size: u64,
        chunk_size: u64,
        #[serde(default)]
        desc: String,
        /// Folders under the owner's folder to publish into, outermost first; each component
        /// is sanitised like a file name. Empty: the owner's folder itself.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dir: Vec<String>,
        /// What publishing does when the name is taken in its folder.
        #[serde(default, skip_serializing_if = "OnExists::is_default")]
        on_exists: OnExists,
        /// The length is not known yet (a file still being written, a pipe): `size` is
        /// ignored (send 0), chunks arrive as the source grows, and `set_length` (or
        /// `finish.size`) declares the length at the end.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deferred: bool,
    },
    Created {
        req: u64,
        upload: UploadInfo,
    },
    Resume {
        req: u64,
        upload_id: String,
        /// The first chunk index `resumed.upload.durable` should cover: 0 at first, then the
        /// `durable_next` of the previous reply to read the rest of a long list.
        #[serde(default)]
        from: u64,
    },
    Resumed {
        req: u64,
        upload: UploadInfo,
    },
    /// Publish the upload. `content_hash` is the upload's content hash: SHA-256 over its
    /// chunk digests, in index order (see [`crate::ContentHasher`]).
    Finish {
        req: u64,
        upload_id: String,
        content_hash: String,
        /// The file's length: declares it for an upload still of unknown length (every chunk
        /// of that length must be durable), and must equal it otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    Finished {
        req: u64,
        upload_id: String,
        file_name: String,
        size: u64,
        content_hash: String,
    },
    /// Declares the length of an upload created `deferred`, once its source has ended: the
    /// layout is cut again for `size` (the last chunk may then be shorter). Refused while
    /// chunks are in flight (wait for their acks) and for a length shorter than what is
    /// durable. Answered with `length_set`.
    SetLength {
        req: u64,
        upload_id: String,
        size: u64,
    },
    LengthSet {
        req: u64,
        upload: UploadInfo,
    },
    /// Forgets durable chunks of an unfinished upload, so they can be sent again with new
    /// content (a region of a growing file rewritten after it was sent). At most
    /// [`MAX_REWRITE_PER_FRAME`] indices; refused while one of them is in flight. Answered with
    /// `rewritten`, after the change is durable.
    Rewrite {
        req: u64,
        upload_id: String,
        chunks: Vec<u64>,
    },
    Rewritten {
        req: u64,
        upload_id: String,
        chunks: Vec<u64>,
    },
    /// Reads up to `max` bytes (at most [`MAX_READ`]) of an upload's contiguous durable
    /// prefix from `offset`: only acknowledged bytes are ever served. Answered with
    /// `read_data`; when its `size` is not 0, the bytes follow on a unidirectional stream the
    /// server opens, which begins with the same `read_data` frame.
    Read {
        req: u64,
        upload_id: String,
        offset: u64,
        max: u64,
    },
    ReadData {
        req: u64,
        upload_id: String,
        offset: u64,
        /// Bytes that follow on the stream (0: nothing durable past `offset` yet).
        size: u64,
        /// The contiguous durable prefix's length now.
        durable: u64,
        /// The upload is complete: `durable` is its length and no more will come.
        complete: bool,
    },
    Abort {
        req: u64,
        upload_id: String,
    },
    Aborted {
        req: u64,
        upload_id: String,
    },
    /// Creates a folder (and its parents) under the owner's folder: how an empty folder of an
    /// uploaded tree is kept.
    Mkdir {
        req: u64,
        dir: Vec<String>,
    },
    /// The folder as created, sanitised, `/`-separated.
    Made {
        req: u64,
        dir: String,
    },
    /// Publish, without sending it, a file whose content the server already holds: the same
    /// owner's completed upload of the same size and SHA-256 (any owner's, if the operator
    /// allows it). Answered with `deduped`, or `no_match`.
    Dedup {
        req: u64,
        file_name: String,
        size: u64,
        /// The chunk size `content_hash` was computed with: only uploads of that chunk size
        /// can match.
        chunk_size: u64,
        content_hash: String,
        #[serde(default)]
        desc: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dir: Vec<String>,
        #[serde(default, skip_serializing_if = "OnExists::is_default")]
        on_exists: OnExists,
    },
    /// The content was found and is published as `file_name` (a new completed upload
    /// `upload_id`), or, with `existing`, it is already there under the asked name.
    Deduped {
        req: u64,
        upload_id: String,
        file_name: String,
        size: u64,
        content_hash: String,
        existing: bool,
    },
    /// No content like it: upload the file.
    NoMatch {
        req: u64,
    },
    /// What the server holds of one file: its completed uploads asked under this folder,
    /// name and size (with their content hashes) and its unfinished ones. How a client without
    /// a record of its own (another machine, a lost journal) learns that a file is uploaded
    /// already, or resumes an upload begun elsewhere, instead of sending it again. Answered
    /// with `found`.
    Lookup {
        req: u64,
        file_name: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dir: Vec<String>,
        size: u64,
    },
    /// The uploads of that folder, name and size: at most [`MAX_FOUND`] of each kind, newest
    /// first. A complete one is listed only while its published file is the one published.
    Found {
        req: u64,
        complete: Vec<FoundComplete>,
        receiving: Vec<FoundReceiving>,
    },
    /// The SHA-256 of every durable chunk of an unfinished upload, from chunk `from` on, so a
    /// client can check them against its own file before it resumes the upload. Answered with
    /// `digest_page`.
    Digests {
        req: u64,
        upload_id: String,
        #[serde(default)]
        from: u64,
    },
    /// Durable chunks and their digests, `[index, sha256]`, ascending, at most
    /// [`MAX_DIGESTS_PER_FRAME`]; `next` when more follow (send `digests` with `from` = it).
    DigestPage {
        req: u64,
        upload_id: String,
        chunks: Vec<(u64, String)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<u64>,
    },
    /// Answered at once with `pong`: `ferry ping` measures round trips with it.
    Ping {
        req: u64,
    },
    Pong {
        req: u64,
    },
    List {
        req: u64,
        /// Where to continue: the `next` of the previous `listing`; absent for the first page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    Listing {
        req: u64,
        uploads: Vec<UploadSummary>,
        /// Present when more uploads follow: send `list` again with this `cursor`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Pushed to every connected client when the operator sets a notice (`ferryd notice`).
    Notice {
        text: String,
    },
    Ack {
        upload_id: String,
        chunks: Vec<[u64; 2]>,
    },
    Reject {
        upload_id: String,
        index: u64,
        code: ErrorCode,
        message: String,
    },
    Detached {
        upload_id: String,
        code: ErrorCode,
        message: String,
    },
    /// Opens a chunk stream; `size` payload bytes and a `chunk_end` follow.
    Chunk {
        upload_id: String,
        index: u64,
        size: u64,
    },
    /// Ends a chunk stream, after the payload: the SHA-256 of the payload bytes as sent.
    ChunkEnd {
        sha256: String,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        code: ErrorCode,
        message: String,
    },
}

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

/// Why bytes could not be decoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge { len: u64 },
    /// The body is not UTF-8.
    #[error("frame is not valid UTF-8")]
    BadUtf8,
    /// The body is not a JSON object.
    #[error("frame is not a JSON object: {0}")]
    BadJson(String),
    /// `type` is missing or unknown.
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    /// A field is missing or has the wrong type.
    #[error("bad field in {kind} frame: {detail}")]
    BadField { kind: String, detail: String },
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::BadUtf8 => ErrorCode::BadUtf8,
            Self::BadJson(_) => ErrorCode::BadJson,
            Self::UnknownType(_) => ErrorCode::UnknownType,
            Self::BadField { .. } => ErrorCode::BadField,
        }
    }
}

const KNOWN_TYPES: &[&str] = &[
    "hello",
    "welcome",
    "create",
    "created",
    "resume",
    "resumed",
    "finish",
    "finished",
    "set_length",
    "length_set",
    "rewrite",
    "rewritten",
    "read",
    "read_data",
    "abort",
    "aborted",
    "mkdir",
    "made",
    "dedup",
    "deduped",
    "no_match",
    "lookup",
    "found",
    "digests",
    "digest_page",
    "ping",
    "pong",
    "notice",
    "list",
    "listing",
    "ack",
    "reject",
    "detached",
    "chunk",
    "chunk_end",
    "error",
];

impl Frame {
    /// Appends the length-prefixed encoding of this frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        // Serialising a derived Serialize type into a Vec cannot fail.
        serde_json::to_writer(&mut *out, self).expect("frame serialises");
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// The encoding to send, refused if it would break the frame limit: a peer must never
    /// receive a frame it is required to reject.
    pub fn to_wire(&self) -> Result<Vec<u8>, FrameError> {
        let bytes = self.to_bytes();
        let len = bytes.len() - 4;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge { len: len as u64 });
        }
        Ok(bytes)
    }

    /// Decodes one frame from the front of `buf`. Returns `Ok(None)` while the frame has not
    /// fully arrived, and otherwise the frame with the number of bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(len) = Self::peek_len(buf)? else {
            return Ok(None);
        };
        let Some(body) = buf.get(4..4 + len) else {
            return Ok(None);
        };
        Ok(Some((Self::decode_body(body)?, 4 + len)))
    }

    /// Reads the length prefix, refusing an oversized one before anything else arrives.
    pub fn peek_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge { len: len as u64 });
        }
        Ok(Some(len))
    }

    /// Decodes a frame body (the bytes after the length prefix).
    pub fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
        let text = std::str::from_utf8(body).map_err(|_| FrameError::BadUtf8)?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| FrameError::BadJson(e.to_string()))?;
        let kind = match value.get("type") {
            Some(serde_json::Value::String(kind)) if KNOWN_TYPES.contains(&kind.as_str()) => {
                kind.clone()
            }
            Some(serde_json::Value::String(kind)) => {
                return Err(FrameError::UnknownType(kind.chars().take(64).collect()))
            }
            _ if !value.is_object() => return Err(FrameError::BadJson("not an object".into())),
            _ => return Err(FrameError::UnknownType(String::new())),
        };
        serde_json::from_value(value).map_err(|e| FrameError::BadField {
            kind,
            detail: e.to_string(),
        })
    }

    /// The name in the frame's `type` field.
    /// The request a reply answers: `Some(req)` for every frame the server sends in answer to
    /// a request (an `error` with a `req` too), `None` for the frames it pushes.
    pub fn reply_to(&self) -> Option<u64> {
        match self {
            Self::Created { req, .. }
            | Self::Resumed { req, .. }
            | Self::Finished { req, .. }
            | Self::Aborted { req, .. }
            | Self::Made { req, .. }
            | Self::Deduped { req, .. }
            | Self::NoMatch { req }
            | Self::Found { req, .. }
            | Self::DigestPage { req, .. }
            | Self::LengthSet { req, .. }
            | Self::Rewritten { req, .. }
            | Self::ReadData { req, .. }
            | Self::Pong { req }
            | Self::Listing { req, .. }
            | Self::Error { req: Some(req), .. } => Some(*req),
            Self::Hello { .. }
            | Self::Welcome { .. }
            | Self::Create { .. }
            | Self::Resume { .. }
            | Self::Finish { .. }
            | Self::Abort { .. }
            | Self::Mkdir { .. }
            | Self::Dedup { .. }
            | Self::Lookup { .. }
            | Self::Digests { .. }
            | Self::SetLength { .. }
            | Self::Rewrite { .. }
            | Self::Read { .. }
            | Self::Ping { .. }
            | Self::List { .. }
            | Self::Notice { .. }
            | Self::Ack { .. }
            | Self::Reject { .. }
            | Self::Detached { .. }
            | Self::Chunk { .. }
            | Self::ChunkEnd { .. }
            | Self::Error { req: None, .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Welcome { .. } => "welcome",
            Self::Create { .. } => "create",
            Self::Created { .. } => "created",
            Self::Resume { .. } => "resume",
            Self::Resumed { .. } => "resumed",
            Self::Finish { .. } => "finish",
            Self::Finished { .. } => "finished",
            Self::SetLength { .. } => "set_length",
            Self::LengthSet { .. } => "length_set",
            Self::Rewrite { .. } => "rewrite",
            Self::Rewritten { .. } => "rewritten",
            Self::Read { .. } => "read",
            Self::ReadData { .. } => "read_data",
            Self::Abort { .. } => "abort",
            Self::Aborted { .. } => "aborted",
            Self::Mkdir { .. } => "mkdir",
            Self::Made { .. } => "made",
            Self::Dedup { .. } => "dedup",
            Self::Deduped { .. } => "deduped",
            Self::NoMatch { .. } => "no_match",
            Self::Lookup { .. } => "lookup",
            Self::Found { .. } => "found",
            Self::Digests { .. } => "digests",
            Self::DigestPage { .. } => "digest_page",
            Self::Ping { .. } => "ping",
            Self::Pong { .. } => "pong",
            Self::Notice { .. } => "notice",
            Self::List { .. } => "list",
            Self::Listing { .. } => "listing",
            Self::Ack { .. } => "ack",
            Self::Reject { .. } => "reject",
            Self::Detached { .. } => "detached",
            Self::Chunk { .. } => "chunk",
            Self::ChunkEnd { .. } => "chunk_end",
            Self::Error { .. } => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// Every frame of version 3's additions decodes (its type is known) and round-trips.
    #[test]
    fn version_3_frames_round_trip() {
        let frames = [
            Frame::Dedup {
                req: 1,
                file_name: "a.mov".into(),
                size: 5,
                chunk_size: 4096,
                content_hash: "00".repeat(32),
                desc: String::new(),
                dir: vec!["card".into()],
                on_exists: OnExists::Skip,
            },
            Frame::Deduped {
                req: 1,
                upload_id: "ab".into(),
                file_name: "card/a.mov".into(),
                size: 5,
                content_hash: "00".repeat(32),
                existing: false,
            },
            Frame::NoMatch { req: 1 },
            Frame::Ping { req: 2 },
            Frame::Pong { req: 2 },
            Frame::Notice {
                text: "maintenance at 22:00 UTC".into(),
            },
        ];
        for frame in frames {
            let bytes = frame.to_bytes();
            assert_eq!(Frame::decode_body(&bytes[4..]).unwrap(), frame);
            assert!(KNOWN_TYPES.contains(&frame.kind()));
        }
        let create = r#"{"type":"create","req":1,"file_name":"a","size":1,"chunk_size":4096,"on_exists":"fail"}"#;
        match Frame::decode_body(create.as_bytes()).unwrap() {
            Frame::Create { on_exists, .. } => assert_eq!(on_exists, OnExists::Fail),
            other => panic!("{other:?}"),
        }
    }

    /// Version 9's frames round-trip, their replies are routed, and a `create` or `finish`
    /// of an older client (no `deferred`, no `size`) still decodes as before.
    #[test]
    fn version_9_frames_round_trip() {
        let info = UploadInfo {
            upload_id: "ab".into(),
            file_name: "x.ts".into(),
            size: 1 << 40,
            chunk_size: 4096,
            chunk_count: (1 << 40) / 4096,
            durable: vec![[0, 3]],
            durable_offset: 3 * 4096,
            durable_next: None,
            deferred: true,
        };
        let frames = [
            Frame::SetLength {
                req: 1,
                upload_id: "ab".into(),
                size: 12_345,
            },
            Frame::LengthSet {
                req: 1,
                upload: info,
            },
            Frame::Rewrite {
                req: 2,
                upload_id: "ab".into(),
                chunks: vec![0, 7],
            },
            Frame::Rewritten {
                req: 2,
                upload_id: "ab".into(),
                chunks: vec![0, 7],
            },
            Frame::Read {
                req: 3,
                upload_id: "ab".into(),
                offset: 0,
                max: MAX_READ,
            },
            Frame::ReadData {
                req: 3,
                upload_id: "ab".into(),
                offset: 0,
                size: 4096,
                durable: 8192,
                complete: false,
            },
        ];
        for frame in frames {
            let bytes = frame.to_bytes();
            assert_eq!(Frame::decode_body(&bytes[4..]).unwrap(), frame);
            assert!(KNOWN_TYPES.contains(&frame.kind()));
        }
        let replies = [(
            Frame::LengthSet {
                req: 4,
                upload: UploadInfo {
                    deferred: false,
                    ..info_of(0)
                },
            },
            4,
        )];
        for (frame, req) in replies {
            assert_eq!(frame.reply_to(), Some(req));
        }
        let old = r#"{"type":"finish","req":1,"upload_id":"ab","content_hash":"00"}"#;
        match Frame::decode_body(old.as_bytes()).unwrap() {
            Frame::Finish { size, .. } => assert_eq!(size, None),
            other => panic!("{other:?}"),
        }
        let old = r#"{"type":"create","req":1,"file_name":"a","size":1,"chunk_size":4096}"#;
        match Frame::decode_body(old.as_bytes()).unwrap() {
            Frame::Create { deferred, .. } => assert!(!deferred),
            other => panic!("{other:?}"),
        }
    }

    fn info_of(size: u64) -> UploadInfo {
        UploadInfo {
            upload_id: "ab".into(),
            file_name: "a".into(),
            size,
            chunk_size: 4096,
            chunk_count: 0,
            durable: Vec::new(),
            durable_offset: 0,
            durable_next: None,
            deferred: false,
        }
    }

    #[test]
    fn round_trip_and_partial_input() {
        let frame = Frame::Chunk {
            upload_id: "ab".into(),
            index: 3,
            size: 10,
        };
        let bytes = frame.to_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(Frame::decode(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        assert_eq!(Frame::decode(&two), Ok(Some((frame, bytes.len()))));
    }

    #[test]
    fn oversize_is_refused_from_the_prefix_alone() {
        let prefix = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(
            Frame::decode(&prefix),
            Err(FrameError::TooLarge {
                len: MAX_FRAME as u64 + 1
            })
        );
    }

    #[test]
    fn distinct_errors() {
        let code = |body: &[u8]| Frame::decode(&framed(body)).unwrap_err().code();
        assert_eq!(code(b"\xff\xfe"), ErrorCode::BadUtf8);
        assert_eq!(code(b"{not json"), ErrorCode::BadJson);
        assert_eq!(code(b"[1,2]"), ErrorCode::BadJson);
        assert_eq!(code(br#"{"type":"teleport"}"#), ErrorCode::UnknownType);
        assert_eq!(code(br#"{"no_type":1}"#), ErrorCode::UnknownType);
        assert_eq!(code(br#"{"type":"list"}"#), ErrorCode::BadField);
        assert_eq!(
            code(br#"{"type":"list","req":"seven"}"#),
            ErrorCode::BadField
        );
        assert_eq!(
            code(br#"{"type":"create","req":1,"file_name":"a","size":-1,"chunk_size":4}"#),
            ErrorCode::BadField
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = br#"{"type":"list","req":7,"colour":"blue"}"#;
        assert_eq!(
            Frame::decode(&framed(body)).unwrap().unwrap().0,
            Frame::List {
                req: 7,
                cursor: None
            }
        );
    }

    #[test]
    fn an_oversized_frame_is_refused_by_the_encoder() {
        let summary = UploadSummary {
            upload_id: "0".repeat(32),
            file_name: "f".into(),
            desc: "d".repeat(MAX_FRAME),
            size: 0,
            chunk_size: 0,
            durable_bytes: 0,
            state: "complete".into(),
            created_at: 0,
            updated_at: 0,
            expires_at: 0,
        };
        let listing = Frame::Listing {
            req: 1,
            uploads: vec![summary],
            next: None,
        };
        assert!(matches!(
            listing.to_wire(),
            Err(FrameError::TooLarge { .. })
        ));
        let small = Frame::List {
            req: 1,
            cursor: None,
        };
        assert_eq!(small.to_wire().unwrap(), small.to_bytes());
    }
}

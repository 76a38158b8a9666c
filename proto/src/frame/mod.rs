//! Control and chunk-header frames: a 4-byte big-endian length, then that many bytes of a
//! UTF-8 JSON object whose `"type"` names the frame. Decoding checks the length before it
//! parses anything, so a hostile length prefix costs nothing.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

mod codec;
#[cfg(test)]
mod tests;
mod types;

pub use codec::FrameError;
pub use types::{
    FoundComplete, FoundReceiving, Limits, OnExists, UploadInfo, UploadSummary,
    MAX_DIGESTS_PER_FRAME, MAX_FOUND, MAX_READ, MAX_REWRITE_PER_FRAME,
};

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

//! The one table of wire error codes. `docs/protocol.md` lists the same table; a code never
//! changes meaning once released.

use serde::{Deserialize, Serialize};

/// A stable machine code carried in `error`, `reject` and `detached` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A frame's length prefix exceeds 65 536 bytes.
    FrameTooLarge,
    /// A frame body is not valid UTF-8.
    BadUtf8,
    /// A frame body is not a JSON object.
    BadJson,
    /// A frame has no `type`, or one this side does not know.
    UnknownType,
    /// A stream ended in the middle of a frame.
    TruncatedFrame,
    /// A frame's fields are missing or of the wrong JSON type.
    BadField,
    /// A frame arrived that is not allowed at this point of the exchange.
    UnexpectedFrame,
    /// `hello.version` is not a version this server speaks.
    UnsupportedVersion,
    /// No token, or a token the server does not know.
    Unauthorized,
    /// A request before `hello` succeeded.
    NotAuthenticated,
    /// No upload with that id belongs to this token (it may belong to another one).
    NotFound,
    /// A file name that is empty or nothing but dots after sanitising, or over 255 bytes.
    InvalidName,
    /// The declared file size is above the server's maximum.
    FileTooLarge,
    /// The requested chunk size is outside the server's limits.
    BadChunkSize,
    /// A chunk index at or past the chunk count.
    IndexOutOfRange,
    /// A chunk header's size differs from the size of that chunk in the layout.
    WrongChunkSize,
    /// A digest that is not 64 lowercase hex characters.
    BadDigest,
    /// A chunk's bytes do not hash to the digest in its header. Re-send it.
    DigestMismatch,
    /// Another stream is delivering this chunk right now. Re-send it later.
    ChunkInProgress,
    /// A chunk stream ended before `size` bytes arrived.
    ShortPayload,
    /// A chunk stream carried more than `size` bytes.
    LongPayload,
    /// Another connection resumed this upload; this one no longer drives it.
    TakenOver,
    /// A chunk for an upload this connection has not created or resumed.
    NotAttached,
    /// The upload is finishing, complete or aborted, so it takes no more chunks.
    BadState,
    /// `finish` before every chunk is durable.
    Incomplete,
    /// The whole file does not hash to the digest given in `finish`.
    FileDigestMismatch,
    /// The server could not write or sync the data. Re-send later.
    StorageError,
    /// The server's disk is full. Re-send later.
    StorageFull,
    /// The server is shutting down. Reconnect later.
    ShuttingDown,
    /// A bug or an unexpected condition on the server.
    Internal,
    /// At create: the file is larger than the server's free disk space.
    InsufficientStorage,
    /// At create: the owner has as many uploads in progress as the server allows.
    TooManyUploads,
    /// At create: the owner's stored and staged bytes plus this file exceed the quota.
    QuotaExceeded,
    /// The server has as many connections as it allows, in total or from this address.
    TooManyConnections,
    /// The upload made no progress for the server's expiry time and was removed. Start afresh.
    Expired,
    /// A stream stalled in the middle of a frame or a chunk for too long and was cut off.
    StreamTimeout,
    /// The operator revoked the token this connection logged in with. Permanent.
    TokenRevoked,
    /// The client left too many of the server's frames unread on the control stream (replies
    /// and acks waiting), so the server stopped waiting and closed the connection.
    ControlStreamFull,
    /// At finish: no free name like the upload's could be found (10 000 numbered names exist).
    /// Permanent for the upload; abort it, or start it again under another name.
    NameExhausted,
    /// A file of the upload's name exists in its folder and the upload said `on_exists`
    /// `skip` or `fail` (at `create`, `dedup` or `finish`). Permanent for that name.
    AlreadyExists,
    /// At create: the server's `--on-create` hook refused the upload; the message is the
    /// hook's. Permanent for that file as it is.
    Refused,
    /// A chunk stream arrived in more separate pieces (byte ranges with gaps between them) than
    /// the server keeps track of: 4 096 per stream, 16 384 per connection. The stream is
    /// stopped and the chunk rejected; re-send it. An honest sender meets it only on a path
    /// that loses or reorders far beyond its windows.
    TooFragmented,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code, for the docs table and its test.
    pub const ALL: &'static [ErrorCode] = &[
        Self::FrameTooLarge,
        Self::BadUtf8,
        Self::BadJson,
        Self::UnknownType,
        Self::TruncatedFrame,
        Self::BadField,
        Self::UnexpectedFrame,
        Self::UnsupportedVersion,
        Self::Unauthorized,
        Self::NotAuthenticated,
        Self::NotFound,
        Self::InvalidName,
        Self::FileTooLarge,
        Self::BadChunkSize,
        Self::IndexOutOfRange,
        Self::WrongChunkSize,
        Self::BadDigest,
        Self::DigestMismatch,
        Self::ChunkInProgress,
        Self::ShortPayload,
        Self::LongPayload,
        Self::TakenOver,
        Self::NotAttached,
        Self::BadState,
        Self::Incomplete,
        Self::FileDigestMismatch,
        Self::StorageError,
        Self::StorageFull,
        Self::ShuttingDown,
        Self::Internal,
        // New codes go here, at the end: a code's QUIC number is its position.
        Self::InsufficientStorage,
        Self::TooManyUploads,
        Self::QuotaExceeded,
        Self::TooManyConnections,
        Self::Expired,
        Self::StreamTimeout,
        Self::TokenRevoked,
        Self::ControlStreamFull,
        Self::NameExhausted,
        Self::AlreadyExists,
        Self::Refused,
        Self::TooFragmented,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FrameTooLarge => "frame_too_large",
            Self::BadUtf8 => "bad_utf8",
            Self::BadJson => "bad_json",
            Self::UnknownType => "unknown_type",
            Self::TruncatedFrame => "truncated_frame",
            Self::BadField => "bad_field",
            Self::UnexpectedFrame => "unexpected_frame",
            Self::UnsupportedVersion => "unsupported_version",
            Self::Unauthorized => "unauthorized",
            Self::NotAuthenticated => "not_authenticated",
            Self::NotFound => "not_found",
            Self::InvalidName => "invalid_name",
            Self::FileTooLarge => "file_too_large",
            Self::BadChunkSize => "bad_chunk_size",
            Self::IndexOutOfRange => "index_out_of_range",
            Self::WrongChunkSize => "wrong_chunk_size",
            Self::BadDigest => "bad_digest",
            Self::DigestMismatch => "digest_mismatch",
            Self::ChunkInProgress => "chunk_in_progress",
            Self::ShortPayload => "short_payload",
            Self::LongPayload => "long_payload",
            Self::TakenOver => "taken_over",
            Self::NotAttached => "not_attached",
            Self::BadState => "bad_state",
            Self::Incomplete => "incomplete",
            Self::FileDigestMismatch => "file_digest_mismatch",
            Self::StorageError => "storage_error",
            Self::StorageFull => "storage_full",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
            Self::InsufficientStorage => "insufficient_storage",
            Self::TooManyUploads => "too_many_uploads",
            Self::QuotaExceeded => "quota_exceeded",
            Self::TooManyConnections => "too_many_connections",
            Self::Expired => "expired",
            Self::StreamTimeout => "stream_timeout",
            Self::TokenRevoked => "token_revoked",
            Self::ControlStreamFull => "control_stream_full",
            Self::NameExhausted => "name_exhausted",
            Self::AlreadyExists => "already_exists",
            Self::Refused => "refused",
            Self::TooFragmented => "too_fragmented",
            Self::Unknown => "unknown",
        }
    }

    /// True when a chunk rejected with this code should simply be sent again.
    pub fn is_retryable_chunk(self) -> bool {
        matches!(
            self,
            Self::DigestMismatch
                | Self::ChunkInProgress
                | Self::ShortPayload
                | Self::StorageError
                | Self::StorageFull
                | Self::StreamTimeout
                | Self::TooFragmented
        )
    }

    /// The QUIC application error code used when closing a connection or stopping a stream
    /// because of this error: its position in [`ErrorCode::ALL`] plus one (0 means no error).
    pub fn quic_code(self) -> u32 {
        Self::ALL
            .iter()
            .position(|&c| c == self)
            .map_or(0xffff, |p| p as u32 + 1)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spelling_matches_serde() {
        for &code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        let unknown: ErrorCode = serde_json::from_str("\"from_the_future\"").unwrap();
        assert_eq!(unknown, ErrorCode::Unknown);
    }

    #[test]
    fn docs_list_every_code() {
        let doc = include_str!("../../docs/protocol.md");
        for &code in ErrorCode::ALL {
            let row = format!("| `{}` | {} |", code.as_str(), code.quic_code());
            assert!(
                doc.contains(&row),
                "docs/protocol.md lacks the row starting {row}"
            );
        }
    }
}

//! Encoding and decoding: the length prefix, checked before anything is parsed, and the
//! errors a peer's bytes can cause.

use crate::ErrorCode;

use super::{Frame, MAX_FRAME};

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

/// Every frame's `type`: a body naming another is `unknown_type`.
pub(super) const KNOWN_TYPES: &[&str] = &[
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

//! ferry-proto: the sans-IO core of Ferry. Frames and their codec, the chunk layout, chunk
//! sets, and the two upload state machines ([`UploadSession`] on the server,
//! [`UploadSender`] on the client). Nothing here reads a clock, a socket, a file or a random
//! number generator: time and ids are arguments, effects are return values.

mod chunkset;
mod congestion;
mod digest;
mod error;
pub mod frame;
mod layout;
pub mod name;
mod sender;
mod session;
pub mod units;

pub use chunkset::{ChunkSet, RangeError};
pub use congestion::Congestion;
pub use digest::{ContentHasher, Digest, DigestParseError};
pub use error::ErrorCode;
pub use frame::{
    FoundComplete, FoundReceiving, Frame, FrameError, Limits, OnExists, UploadInfo, UploadSummary,
    ALPN, MAX_DIGESTS_PER_FRAME, MAX_FOUND, MAX_FRAME, MAX_RANGES_PER_FRAME, MAX_READ,
    MAX_REWRITE_PER_FRAME, PROTOCOL_VERSION,
};
pub use layout::{ChunkIndex, ChunkLayout, LayoutError, Span};
pub use sender::{SenderError, UploadSender, MAX_DIGEST_FAILURES, RETRY_DELAY};
pub use session::{
    Accept, ChunkError, ChunkHeader, CommitBatch, CommitPolicy, FinishError, Output, UploadSession,
};

#[cfg(test)]
mod robust;
#[cfg(test)]
mod sim;

//! Reading and writing frames on the protocol's streams (plain QUIC or WebTransport): exact reads, the length checked before the
//! body is read, and a bound on how long a frame may take once it has started.

use std::time::Duration;

use ferry_proto::{ErrorCode, Frame, FrameError};

use crate::conn::peer::{ExactError, Recv, Send};

/// Why a frame could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes arrived but are not a valid frame: tell the peer.
    Frame(FrameError),
    /// The stream ended inside a frame.
    Truncated,
    /// The frame started but did not complete in time.
    Timeout(Duration),
    /// The stream or connection failed: nobody to tell.
    Gone,
}

impl ReadError {
    /// The code to send the peer, if there is one to tell.
    pub fn code(&self) -> Option<(ErrorCode, String)> {
        match self {
            Self::Frame(e) => Some((e.code(), e.to_string())),
            Self::Truncated => Some((
                ErrorCode::TruncatedFrame,
                "stream ended inside a frame".into(),
            )),
            Self::Timeout(limit) => Some((
                ErrorCode::StreamTimeout,
                format!("a frame took longer than {} s to arrive", limit.as_secs()),
            )),
            Self::Gone => None,
        }
    }
}

/// Reads one frame; `Ok(None)` if the stream ended cleanly before it. With `idle_first`, the
/// wait for the frame's first byte is unbounded (a control stream may be quiet between
/// requests); every other byte must arrive within `stall` of the first.
pub async fn read_frame(
    recv: &mut Recv,
    stall: Duration,
    idle_first: bool,
) -> Result<Option<Frame>, ReadError> {
    Ok(read_frame_sized(recv, stall, idle_first)
        .await?
        .map(|(frame, _)| frame))
}

/// Like [`read_frame`], with the number of stream bytes the frame took.
pub async fn read_frame_sized(
    recv: &mut Recv,
    stall: Duration,
    idle_first: bool,
) -> Result<Option<(Frame, u64)>, ReadError> {
    let mut prefix = [0u8; 4];
    if idle_first {
        match recv.read(&mut prefix[..1]).await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(None),
            Err(_) => return Err(ReadError::Gone),
        }
    }
    let start = if idle_first { 1 } else { 0 };
    let rest = async {
        match recv.read_exact(&mut prefix[start..]).await {
            Ok(()) => {}
            Err(ExactError::Finished(0)) if start == 0 => return Ok(None),
            Err(ExactError::Finished(_)) => return Err(ReadError::Truncated),
            Err(ExactError::Gone) => return Err(ReadError::Gone),
        }
        let len = Frame::peek_len(&prefix)
            .map_err(ReadError::Frame)?
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        match recv.read_exact(&mut body).await {
            Ok(()) => {}
            Err(ExactError::Finished(_)) => return Err(ReadError::Truncated),
            Err(ExactError::Gone) => return Err(ReadError::Gone),
        }
        Frame::decode_body(&body)
            .map(|frame| Some((frame, 4 + len as u64)))
            .map_err(ReadError::Frame)
    };
    tokio::time::timeout(stall, rest)
        .await
        .unwrap_or(Err(ReadError::Timeout(stall)))
}

/// Writes one frame. A frame over the limit is never sent (the peer would have to refuse it):
/// an `internal` error goes in its place, and the bug is logged. Every reply that can grow is
/// paged to stay far below the limit, so this is a last line of defence.
pub async fn write_frame(send: &mut Send, frame: &Frame) -> Result<(), ()> {
    let bytes = frame.to_wire().unwrap_or_else(|e| {
        tracing::error!(kind = frame.kind(), error = %e, "refused to send an oversized frame");
        let error = Frame::Error {
            req: None,
            code: ErrorCode::Internal,
            message: format!("the server's {} was too large to send", frame.kind()),
        };
        error.to_bytes()
    });
    send.write_all(&bytes).await
}

//! The two ways a client reaches the protocol, behind one face: a plain QUIC connection (ALPN
//! `ferry/1`, Ferry's own client) and a WebTransport session over HTTP/3 (ALPN `h3`, browsers).
//! The frames are the same on both; only the streams that carry them differ.

use std::time::Duration;

use ferry_proto::ErrorCode;
use quinn::VarInt;
use tokio::sync::Notify;

/// The connection a client logged in on.
#[derive(Clone)]
pub(crate) enum Peer {
    Quic(quinn::Connection),
    /// A WebTransport session and the QUIC connection under it.
    Web(Box<web_transport_quinn::Session>, quinn::Connection),
}

impl Peer {
    /// The QUIC connection (for its address, RTT and flow-control settings).
    pub(crate) fn quic(&self) -> &quinn::Connection {
        match self {
            Self::Quic(c) | Self::Web(_, c) => c,
        }
    }

    /// The control stream: the first bidirectional stream the client opens.
    pub(crate) async fn accept_bi(&self) -> Option<(Send, Recv)> {
        match self {
            Self::Quic(c) => c
                .accept_bi()
                .await
                .ok()
                .map(|(s, r)| (Send::Quic(s), Recv::Quic(r))),
            Self::Web(s, _) => s
                .accept_bi()
                .await
                .ok()
                .map(|(s, stream)| (Send::Web(s), Recv::Web { stream, read: 0 })),
        }
    }

    /// The next chunk stream the client opened; `None` once the connection is gone.
    pub(crate) async fn accept_uni(&self) -> Option<Recv> {
        match self {
            Self::Quic(c) => c.accept_uni().await.ok().map(Recv::Quic),
            Self::Web(s, _) => s
                .accept_uni()
                .await
                .ok()
                .map(|stream| Recv::Web { stream, read: 0 }),
        }
    }

    /// Closes the connection (the session, for a browser) with the code's number and a reason.
    pub(crate) fn close(&self, code: ErrorCode, reason: &str) {
        match self {
            Self::Quic(c) => c.close(VarInt::from_u32(code.quic_code()), reason.as_bytes()),
            Self::Web(s, _) => s.close(code.quic_code(), reason.as_bytes()),
        }
    }

    /// Closes the connection after an `error` frame the client has acknowledged. A browser's
    /// page closes the session itself once it has read the frame, and is given up to `linger`
    /// to (cut short by `cut_short`): web-transport-quinn follows its own close capsule with the
    /// QUIC close 100 ms later, which in a busy browser can overtake the frame, and the page
    /// would see a lost session instead of the error. A `ferry/1` client is closed at once: its
    /// QUIC stack holds the acknowledged frame, and quinn's streams give their received bytes
    /// before the connection's end.
    pub(crate) async fn close_once_read(
        &self,
        code: ErrorCode,
        reason: &str,
        linger: Duration,
        cut_short: &Notify,
    ) {
        if let Self::Web(_, quic) = self {
            tokio::select! {
                _ = quic.closed() => {}
                () = tokio::time::sleep(linger) => {}
                () = cut_short.notified() => {}
            }
        }
        self.close(code, reason);
    }

    /// Why the connection closed, if it has.
    pub(crate) fn close_reason(&self) -> Option<String> {
        self.quic().close_reason().map(|why| why.to_string())
    }

    pub(crate) fn rtt(&self) -> Duration {
        self.quic().rtt()
    }

    /// Whether chunk streams may be read out of order (`read_chunk` with offsets): only on
    /// plain QUIC, where a stream's offsets are the protocol's own.
    pub(crate) fn unordered_reads(&self) -> bool {
        matches!(self, Self::Quic(_))
    }
}

/// The receiving side of a stream: the control stream or a chunk stream.
pub(crate) enum Recv {
    Quic(quinn::RecvStream),
    /// A WebTransport stream, read in order only. Its QUIC offsets count the WebTransport
    /// stream header too, so `read` counts the bytes delivered and `read_chunk` reports
    /// offsets from the protocol's first byte, as on plain QUIC.
    Web {
        stream: web_transport_quinn::RecvStream,
        read: u64,
    },
}

/// A stream that failed or ended before a read was satisfied.
pub(crate) enum ExactError {
    /// The stream ended after this many of the wanted bytes.
    Finished(usize),
    /// Reset, or the connection is gone.
    Gone,
}

impl Recv {
    /// Some bytes into `buf`; `Ok(None)` at the end of the stream; `Err` if reset or gone.
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ()> {
        match self {
            Self::Quic(r) => r.read(buf).await.map_err(drop),
            Self::Web { stream, read } => {
                let n = stream.read(buf).await.map_err(drop)?;
                *read += n.unwrap_or(0) as u64;
                Ok(n)
            }
        }
    }

    /// Exactly `buf.len()` bytes.
    pub(crate) async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ExactError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]).await {
                Ok(Some(n)) => filled += n,
                Ok(None) => return Err(ExactError::Finished(filled)),
                Err(()) => return Err(ExactError::Gone),
            }
        }
        Ok(())
    }

    /// The next piece of the stream, at most `max` bytes, with its offset from the stream's
    /// first protocol byte. Out of order only where [`Peer::unordered_reads`] allows it.
    pub(crate) async fn read_chunk(
        &mut self,
        max: usize,
        ordered: bool,
    ) -> Result<Option<quinn::Chunk>, ()> {
        match self {
            Self::Quic(r) => r.read_chunk(max, ordered).await.map_err(drop),
            Self::Web { stream, read } => {
                let chunk = stream.read_chunk(max, true).await.map_err(drop)?;
                Ok(chunk.map(|mut chunk| {
                    chunk.offset = *read;
                    *read += chunk.bytes.len() as u64;
                    chunk
                }))
            }
        }
    }

    /// Asks the peer to stop sending, with the code's number (0: no more bytes needed).
    pub(crate) fn stop(&mut self, code: u32) {
        let _ = match self {
            Self::Quic(r) => r.stop(VarInt::from_u32(code)),
            Self::Web { stream, .. } => stream.stop(code),
        };
    }
}

/// The sending side of the control stream.
pub(crate) enum Send {
    Quic(quinn::SendStream),
    Web(web_transport_quinn::SendStream),
}

impl Send {
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ()> {
        match self {
            Self::Quic(s) => s.write_all(bytes).await.map_err(drop),
            Self::Web(s) => s.write_all(bytes).await.map_err(drop),
        }
    }

    /// Ends the stream, then gives the peer up to `linger` to read what was sent.
    pub(crate) async fn finish(&mut self, linger: Duration) {
        match self {
            Self::Quic(s) => {
                let _ = s.finish();
                let _ = tokio::time::timeout(linger, s.stopped()).await;
            }
            Self::Web(s) => {
                let _ = s.finish();
                let _ = tokio::time::timeout(linger, s.stopped()).await;
            }
        }
    }
}

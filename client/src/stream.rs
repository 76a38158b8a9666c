//! One chunk stream: the header claiming the chunk's digest, then its bytes in pieces of at
//! most 256 KiB (the unit of rate limiting and progress), then FIN.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ferry_proto::{Digest, Frame, Span};
use sha2::{Digest as _, Sha256};

use crate::rate::RateLimiter;
use crate::wire::write_frame;
use crate::ClientError;

/// Bytes written to a stream per call: the unit of rate limiting and progress.
const PIECE: usize = 256 * 1024;

/// One chunk stream.
pub(crate) struct ChunkJob {
    pub(crate) quic: quinn::Connection,
    pub(crate) file: Arc<File>,
    pub(crate) upload_id: String,
    pub(crate) index: u64,
    pub(crate) span: Span,
    pub(crate) limiter: Option<Arc<RateLimiter>>,
    pub(crate) sent: Arc<AtomicU64>,
    /// A place in the command's window of sending streams, waited for first.
    pub(crate) window: Option<Arc<tokio::sync::Semaphore>>,
    /// The upload's streams holding a place, this one included while it sends.
    pub(crate) sending: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a stream in `ChunkJob::sending` while it lives.
struct Sending(Arc<std::sync::atomic::AtomicUsize>);

impl Sending {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ChunkJob {
    /// Two passes over the chunk's bytes: one to hash them (the header carries the digest),
    /// one to send them piece by piece. The second read comes from the page cache, and the
    /// client never holds a whole chunk in memory: its memory is the QUIC send window, not
    /// `parallel` × chunk size. If the file changes between the passes, the server's digest
    /// check rejects the chunk and it is sent again.
    pub(crate) async fn send(self) -> Result<(), ClientError> {
        let _place = match &self.window {
            Some(window) => Some(
                window
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ClientError::Interrupted)?,
            ),
            None => None,
        };
        let _sending = Sending::new(&self.sending);
        let (file, span, index) = (self.file.clone(), self.span, self.index);
        let unreadable = move |e: std::io::Error| {
            ClientError::local(
                format!("cannot read chunk {index} of the source file (did it shrink?)"),
                e,
            )
        };
        let digest = tokio::task::spawn_blocking(move || -> std::io::Result<Digest> {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; PIECE];
            let mut offset = span.offset;
            while offset < span.offset + span.len {
                let n = (span.offset + span.len - offset).min(PIECE as u64) as usize;
                file.read_exact_at(&mut buf[..n], offset)?;
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Ok(hasher.into())
        })
        .await
        .map_err(|e| ClientError::Local(e.to_string()))?
        .map_err(unreadable)?;
        let file = self.file.clone();
        let read = move |offset: u64, len: usize| {
            let file = file.clone();
            async move {
                tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, span.offset + offset)?;
                    Ok(Bytes::from(buf))
                })
                .await
                .map_err(std::io::Error::other)?
            }
        };
        let chunk = Outgoing {
            upload_id: &self.upload_id,
            index,
            size: span.len,
            digest,
        };
        send_stream(&self.quic, chunk, read, self.limiter.as_deref(), &self.sent)
            .await
            .map_err(|e| match e {
                StreamError::Read(e) => unreadable(e),
                StreamError::Send(e) => e,
            })
    }
}

/// Sends one chunk stream: the header claiming `digest`, then `data`. Public so tests can
/// send a chunk whose bytes do not match its digest.
pub async fn send_chunk(
    quic: &quinn::Connection,
    upload_id: &str,
    index: u64,
    data: Bytes,
    digest: Digest,
    limiter: Option<&RateLimiter>,
    sent: &AtomicU64,
) -> Result<(), ClientError> {
    let chunk = Outgoing {
        upload_id,
        index,
        size: data.len() as u64,
        digest,
    };
    let read = |offset: u64, len: usize| {
        let piece = data.slice(offset as usize..offset as usize + len);
        async move { Ok(piece) }
    };
    send_stream(quic, chunk, read, limiter, sent)
        .await
        .map_err(|e| match e {
            StreamError::Read(e) => ClientError::Local(e.to_string()),
            StreamError::Send(e) => e,
        })
}

/// The header fields of a chunk stream.
struct Outgoing<'a> {
    upload_id: &'a str,
    index: u64,
    size: u64,
    digest: Digest,
}

enum StreamError {
    Read(std::io::Error),
    Send(ClientError),
}

/// One chunk stream: header, then the payload in pieces of at most `PIECE` bytes obtained
/// from `read(offset, len)`, then FIN.
async fn send_stream<F, Fut>(
    quic: &quinn::Connection,
    chunk: Outgoing<'_>,
    mut read: F,
    limiter: Option<&RateLimiter>,
    sent: &AtomicU64,
) -> Result<(), StreamError>
where
    F: FnMut(u64, usize) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Bytes>>,
{
    let lost =
        |e: &dyn std::fmt::Display| StreamError::Send(ClientError::Connection(e.to_string()));
    let mut stream = quic.open_uni().await.map_err(|e| lost(&e))?;
    let header = Frame::Chunk {
        upload_id: chunk.upload_id.to_owned(),
        index: chunk.index,
        size: chunk.size,
        sha256: chunk.digest.to_hex(),
    };
    write_frame(&mut stream, &header)
        .await
        .map_err(|e| lost(&e))?;
    let mut offset = 0;
    while offset < chunk.size {
        let n = (chunk.size - offset).min(PIECE as u64) as usize;
        let piece = read(offset, n).await.map_err(StreamError::Read)?;
        if let Some(limiter) = limiter {
            limiter.acquire(n).await;
        }
        match stream.write_chunk(piece).await {
            Ok(()) => {}
            // The server needs no more of this chunk (it holds it, or its reply says why not).
            Err(quinn::WriteError::Stopped(_)) => return Ok(()),
            Err(e) => return Err(lost(&e)),
        }
        sent.fetch_add(n as u64, Ordering::Relaxed);
        offset += n as u64;
    }
    let _ = stream.finish();
    Ok(())
}

//! One chunk stream: the header, the chunk's bytes in pieces of at most 256 KiB (the unit of
//! rate limiting and progress), read and hashed once, then `chunk_end` with their digest and
//! FIN.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_proto::{Digest, Frame, Span};
use sha2::{Digest as _, Sha256};

use crate::digests::ChunkDigests;
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
    /// Where the digest of the bytes sent is recorded, before FIN (so before any ack).
    pub(crate) digests: Arc<Mutex<ChunkDigests>>,
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
    /// One pass over the chunk's bytes: each piece is read, hashed and sent, and the digest
    /// follows the payload in `chunk_end`. The client never holds a whole chunk in memory:
    /// its memory is the QUIC send window, not `parallel` × chunk size. The digest of the
    /// bytes sent is recorded before the stream ends, so before the server can acknowledge it.
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
        let index = self.index;
        let chunk = Outgoing {
            upload_id: &self.upload_id,
            index,
            size: self.span.len,
        };
        let source = FileSource {
            file: self.file.clone(),
            base: self.span.offset,
            hasher: Some(Sha256::new()),
        };
        let record = |digest| {
            self.digests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(index, digest)
        };
        send_stream(
            &self.quic,
            chunk,
            source,
            record,
            self.limiter.as_deref(),
            &self.sent,
        )
        .await
        .map_err(|e| match e {
            StreamError::Read(e) => ClientError::local(
                format!("cannot read chunk {index} of the source file (did it shrink?)"),
                e,
            ),
            StreamError::Send(e) => e,
        })
    }
}

/// Sends one chunk stream: the header, `data`, then `chunk_end` claiming `digest`. Public so
/// tests can send a chunk whose bytes do not match its digest.
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
    };
    send_stream(quic, chunk, Given { data, digest }, |_| {}, limiter, sent)
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
}

enum StreamError {
    Read(std::io::Error),
    Send(ClientError),
}

/// Where a chunk's bytes come from, and the digest that goes in its `chunk_end`.
trait Source {
    /// `len` bytes from `offset` within the chunk, in order.
    async fn piece(&mut self, offset: u64, len: usize) -> std::io::Result<Bytes>;
    /// The digest of every piece handed out.
    fn digest(self) -> Digest;
}

/// A chunk of a file, hashed as it is read, in the blocking pool.
struct FileSource {
    file: Arc<File>,
    /// The chunk's offset in the file.
    base: u64,
    /// `None` only while a read owns it.
    hasher: Option<Sha256>,
}

impl Source for FileSource {
    async fn piece(&mut self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let (file, at) = (self.file.clone(), self.base + offset);
        let mut hasher = self.hasher.take().unwrap_or_default();
        let (bytes, hasher) = tokio::task::spawn_blocking(move || {
            let mut buf = pool::take(len);
            file.read_exact_at(&mut buf[..len], at)?;
            hasher.update(&buf[..len]);
            Ok::<_, std::io::Error>((pool::bytes(buf, len), hasher))
        })
        .await
        .map_err(std::io::Error::other)??;
        self.hasher = Some(hasher);
        Ok(bytes)
    }

    fn digest(self) -> Digest {
        self.hasher.unwrap_or_default().into()
    }
}

/// Piece buffers, used again once quinn drops a piece (the server acknowledged its bytes): a
/// steady upload reads into memory mapped once instead of a fresh zeroed allocation per piece
/// (docs/benchmarks.md, "Performance III"). At most [`pool::KEPT`] free buffers are kept.
mod pool {
    use std::sync::Mutex;

    use bytes::Bytes;

    /// Free buffers kept: 16 MiB of 256 KiB pieces, the client's starting send window.
    pub(super) const KEPT: usize = 64;

    static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    fn free() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
        FREE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A buffer of at least `len` bytes (of [`super::PIECE`] when new), contents unspecified.
    pub(super) fn take(len: usize) -> Vec<u8> {
        let mut buf = free().pop().unwrap_or_default();
        if buf.len() < len {
            buf.resize(len.max(super::PIECE), 0);
        }
        buf
    }

    /// The first `len` bytes of `buf`, handed back to the pool when the last `Bytes` of them
    /// is dropped.
    pub(super) fn bytes(buf: Vec<u8>, len: usize) -> Bytes {
        Bytes::from_owner(Piece { buf, len })
    }

    struct Piece {
        buf: Vec<u8>,
        len: usize,
    }

    impl AsRef<[u8]> for Piece {
        fn as_ref(&self) -> &[u8] {
            &self.buf[..self.len]
        }
    }

    impl Drop for Piece {
        fn drop(&mut self) {
            let mut free = free();
            if free.len() < KEPT {
                free.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// Bytes in memory with the digest to claim for them (right or not).
struct Given {
    data: Bytes,
    digest: Digest,
}

impl Source for Given {
    async fn piece(&mut self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        Ok(self.data.slice(offset as usize..offset as usize + len))
    }

    fn digest(self) -> Digest {
        self.digest
    }
}

/// One chunk stream: header, then the payload in pieces of at most `PIECE` bytes, then
/// `chunk_end`, `record` of its digest, and FIN. Ends early, without error, if the server
/// stops the stream (it holds the chunk, or its reply says why not).
async fn send_stream(
    quic: &quinn::Connection,
    chunk: Outgoing<'_>,
    mut source: impl Source,
    record: impl FnOnce(Digest),
    limiter: Option<&RateLimiter>,
    sent: &AtomicU64,
) -> Result<(), StreamError> {
    let lost =
        |e: &dyn std::fmt::Display| StreamError::Send(ClientError::Connection(e.to_string()));
    let mut stream = quic.open_uni().await.map_err(|e| lost(&e))?;
    let header = Frame::Chunk {
        upload_id: chunk.upload_id.to_owned(),
        index: chunk.index,
        size: chunk.size,
    };
    write_frame(&mut stream, &header)
        .await
        .map_err(|e| lost(&e))?;
    let mut offset = 0;
    while offset < chunk.size {
        let n = (chunk.size - offset).min(PIECE as u64) as usize;
        let piece = source.piece(offset, n).await.map_err(StreamError::Read)?;
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
    let digest = source.digest();
    let end = Frame::ChunkEnd {
        sha256: digest.to_hex(),
    };
    match write_frame(&mut stream, &end).await {
        Ok(()) => {}
        Err(quinn::WriteError::Stopped(_)) => return Ok(()),
        Err(e) => return Err(lost(&e)),
    }
    record(digest);
    let _ = stream.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pool;

    #[test]
    fn a_piece_buffer_is_used_again_once_its_bytes_are_dropped() {
        let mut buf = pool::take(5);
        buf[..5].copy_from_slice(b"hello");
        let at = buf.as_ptr();
        let bytes = pool::bytes(buf, 5);
        assert_eq!(&bytes[..], b"hello");
        let half = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(&half[..], b"el", "a slice keeps the buffer alive");
        drop(half);
        // Tests run in parallel threads sharing the pool: find ours among the free buffers.
        let again: Vec<Vec<u8>> = (0..pool::KEPT).map(|_| pool::take(1)).collect();
        assert!(
            again.iter().any(|b| b.as_ptr() == at),
            "the buffer was not given back"
        );
        assert!(again.iter().all(|b| b.len() >= super::PIECE));
    }
}

//! The worker under each request: writes and hashes the body's pieces in order, off the
//! runtime threads.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use ferry_proto::{ChunkIndex, Digest};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::Checksum;

/// Bytes gathered before one write to the staging file.
pub(super) const WRITE_BUF: usize = 1 << 20;

/// What the worker is told.
pub(super) enum Piece {
    /// Bytes of chunk `index` from `at` on follow; `hasher` has its bytes before `at`. With
    /// `write` false the chunk is durable or received already: the bytes only feed the
    /// checksum.
    Start {
        index: ChunkIndex,
        chunk_start: u64,
        at: u64,
        hasher: Box<Sha256>,
        write: bool,
    },
    Data(Bytes),
    /// The chunk is whole: its digest is reported.
    End,
}

/// What the worker hands back at the end: the open chunk (index, bytes in it, hash so far),
/// the checksum.
pub(super) type WorkerEnd = (Option<(ChunkIndex, u64, Box<Sha256>)>, Option<Checksum>);

/// The worker: writes and hashes the pieces in order, off the runtime threads, and reports each
/// whole chunk's digest.
pub(super) fn work(
    file: Arc<std::fs::File>,
    mut queue: mpsc::Receiver<Piece>,
    done: mpsc::UnboundedSender<(ChunkIndex, Digest)>,
    mut checksum: Option<Checksum>,
) -> std::io::Result<WorkerEnd> {
    let mut open: Option<Open> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BUF);
    // Bounded by the request's body: the queue closes when it ends.
    while let Some(piece) = queue.blocking_recv() {
        match piece {
            Piece::Start {
                index,
                chunk_start,
                at,
                hasher,
                write,
            } => {
                open = Some(Open {
                    index,
                    chunk_start,
                    next: at,
                    written: at,
                    hasher,
                    write,
                });
            }
            Piece::Data(data) => {
                if let Some(c) = &mut checksum {
                    c.update(&data);
                }
                let Some(chunk) = &mut open else {
                    continue;
                };
                chunk.next += data.len() as u64;
                if chunk.write {
                    chunk.hasher.update(&data);
                    buf.extend_from_slice(&data);
                    if buf.len() >= WRITE_BUF {
                        chunk.flush(&file, &mut buf)?;
                    }
                }
            }
            Piece::End => {
                if let Some(mut chunk) = open.take() {
                    if chunk.write {
                        chunk.flush(&file, &mut buf)?;
                        let _ = done.send((chunk.index, Digest::from(*chunk.hasher)));
                    }
                }
            }
        }
    }
    let open = match open {
        Some(mut chunk) if chunk.write => {
            chunk.flush(&file, &mut buf)?;
            Some((chunk.index, chunk.next - chunk.chunk_start, chunk.hasher))
        }
        _ => None,
    };
    Ok((open, checksum))
}

/// The chunk the worker is writing.
struct Open {
    index: ChunkIndex,
    chunk_start: u64,
    /// The offset of the next byte to arrive.
    next: u64,
    /// The offset up to which its bytes are written.
    written: u64,
    hasher: Box<Sha256>,
    write: bool,
}

impl Open {
    fn flush(&mut self, file: &std::fs::File, buf: &mut Vec<u8>) -> std::io::Result<()> {
        if !buf.is_empty() {
            file.write_all_at(buf, self.written)?;
            start_writeback(file, self.written, buf.len() as u64);
            self.written += buf.len() as u64;
            buf.clear();
        }
        Ok(())
    }
}

/// Starts writing `len` bytes at `offset` back to the disk now, without waiting for it, so the
/// commit's `fdatasync` at the end of the request has little left to do: an HTTP client waits
/// for that sync before it sends its next request. Durability still comes from the commit's
/// sync; this only moves work earlier (an error here is left to that sync to report).
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: a plain syscall on a descriptor open for the duration of the call.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

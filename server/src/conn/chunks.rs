//! Chunk streams: the header, the driver's verdict, the payload streamed to disk while it is
//! hashed (off the runtime threads, memory bounded by the read buffer), then the client's
//! digest in `chunk_end`.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use std::time::Duration;

use ferry_proto::{ChunkHeader, ChunkIndex, ChunkSet, Digest, ErrorCode, Frame, Span, MAX_FRAME};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};

use crate::driver::{Msg, Verdict, WireError};
use crate::wire::{read_frame_sized, ReadError};

use super::peer::Recv;
use super::Conn;
use crate::uploads::internal;

/// Paths with a smoothed RTT from this on read chunk streams out of order (loopback stays far
/// below it even when both sides are busy: 1.5–13 ms measured).
const UNORDERED_FROM_RTT: Duration = Duration::from_millis(20);
/// Bytes read from a chunk stream before they are hashed and written in one blocking call.
const READ_BUF: usize = 256 * 1024;
/// Out of order, separate runs read before they are written in one blocking call: what bounds a
/// batch when a client sends tiny pieces (each run costs an allocation, however small).
const MAX_BATCH_RUNS: usize = 1024;
/// Separate received pieces (byte ranges with gaps between them) one chunk stream may have the
/// server keep track of, out of order; past it the stream is stopped (`too_fragmented`). The
/// same ranges are held by quinn's own reassembly (for de-duplication) until the stream ends,
/// so this bounds both. An honest sender's gaps are its packets lost in flight: far fewer
/// (an 8 MiB stream window holds about 6 000 packets).
pub(crate) const MAX_PIECES_PER_STREAM: usize = 4096;
/// The same, summed over one connection's chunk streams.
pub(crate) const MAX_PIECES_PER_CONNECTION: usize = 16384;

pub(super) async fn accept_chunk_streams(conn: Arc<Conn>) {
    while let Some(recv) = conn.peer.accept_uni().await {
        tokio::spawn(chunk_stream(conn.clone(), recv));
    }
}

/// One chunk: header, validation by the driver, then the payload streamed to disk.
async fn chunk_stream(conn: Arc<Conn>, mut recv: Recv) {
    let stall = conn.ctx.stream_timeout;
    let (upload_id, index, size, header_len) = match read_frame_sized(&mut recv, stall, false).await
    {
        Ok(Some((
            Frame::Chunk {
                upload_id,
                index,
                size,
            },
            header_len,
        ))) => (upload_id, index, size, header_len),
        Ok(None) | Err(ReadError::Gone) => return,
        Ok(Some((other, _))) => {
            let message = format!(
                "a chunk stream must start with a chunk frame, not {}",
                other.kind()
            );
            conn.events.push(Frame::Error {
                req: None,
                code: ErrorCode::UnexpectedFrame,
                message,
            });
            recv.stop(ErrorCode::UnexpectedFrame.quic_code());
            return;
        }
        Err(e) => {
            if let Some((code, message)) = e.code() {
                conn.events.push(Frame::Error {
                    req: None,
                    code,
                    message,
                });
                recv.stop(code.quic_code());
            }
            return;
        }
    };
    let verdict = match header_verdict(&conn, &upload_id, index, size).await {
        Ok(v) => v,
        Err(error) => {
            recv.stop(error.code.quic_code());
            return conn.reject(&upload_id, index, error);
        }
    };
    let (driver, index, span, file, mut takeover) = match verdict {
        (_, Verdict::Skip) => {
            recv.stop(0);
            return;
        }
        (
            driver,
            Verdict::Receive {
                index,
                span,
                file,
                takeover,
            },
        ) => (driver, index, span, file, takeover),
    };

    // On a short path read in order, in large copies; on a long one read as pieces arrive,
    // so that a lost packet does not hold up flow-control credit for a round trip or more.
    let at = Placement {
        span,
        payload_start: header_len,
        ordered: !conn.peer.unordered_reads() || conn.peer.rtt() < UNORDERED_FROM_RTT,
    };
    let mut pieces = Pieces::new(&conn.pieces);
    let outcome = match receive(&mut recv, &file, at, stall, &mut takeover, &mut pieces).await {
        Ok((digest, tail)) => match trailer(&tail, index) {
            Ok(claimed) => {
                crate::metrics::metrics().received(conn.who.frontend, span.len);
                Msg::Payload {
                    index,
                    digest,
                    claimed,
                }
            }
            Err(error) => Msg::Failed { index, error },
        },
        Err(Fail::Abandoned) => Msg::Abandoned { index },
        Err(Fail::Stop(error)) => {
            recv.stop(error.code.quic_code());
            Msg::Failed { index, error }
        }
    };
    let _ = driver.send(outcome);
}

/// Why a chunk stream ended without a verified payload.
enum Fail {
    /// The stream was reset, the connection dropped, or another connection took the upload
    /// over: nobody to tell (the driver forgets the chunk).
    Abandoned,
    /// Stop the stream with the error's code and reject the chunk.
    Stop(WireError),
}

/// Where a chunk's payload lies: in the file (`span`) and in its stream (from
/// `payload_start`, after the header frame).
#[derive(Clone, Copy)]
struct Placement {
    span: Span,
    payload_start: u64,
    /// Read in order (a short path) or as pieces arrive (a long one).
    ordered: bool,
}

/// Reads the rest of a chunk stream **out of order**: each piece QUIC delivers is written
/// at its place in the file at once, so a lost packet holds up neither the stream's nor the
/// connection's flow-control credit (on a lossy long link, ordered reads left megabytes of
/// received data per stream waiting behind each hole). The payload is hashed in order: what
/// arrives in order is hashed from memory; what arrived beyond a hole is hashed when the hole
/// fills, read back from the file (the page cache). Returns the payload's digest and the
/// bytes after the payload (the `chunk_end` frame, at most one frame's worth). Hashing and
/// writing run in the blocking pool, in batches of up to `READ_BUF` bytes.
async fn receive(
    recv: &mut Recv,
    file: &Arc<std::fs::File>,
    at: Placement,
    stall: Duration,
    takeover: &mut watch::Receiver<u64>,
    pieces: &mut Pieces<'_>,
) -> Result<(Digest, Vec<u8>), Fail> {
    let ordered = at.ordered;
    let len = at.span.len;
    let mut hashing = Some(InOrder {
        hasher: Sha256::new(),
        hashed: 0,
        received: ChunkSet::new(),
    });
    let mut tail = Vec::new();
    // Runs of adjacent payload bytes (payload offset, bytes), copied out of quinn's packet
    // buffers (holding those would pin whole receive buffers for a few bytes each).
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut batched = 0;
    // The in-order path's buffer: zeroed once per stream, filled in place (its first `batched`
    // bytes are payload from `pos - batched`), lent to each batch and given back.
    let mut inbuf: Vec<u8> = Vec::new();
    // In order: stream bytes read after the header.
    let mut pos = 0u64;
    let mut ended = false;
    while !ended {
        if ordered && pos < len {
            // Straight into the buffer: one copy, many packets per call.
            inbuf.resize(READ_BUF, 0);
            let room = (READ_BUF - batched).min((len - pos) as usize);
            let read = tokio::select! {
                read = tokio::time::timeout(stall, recv.read(&mut inbuf[batched..batched + room])) => read,
                _ = takeover.changed() => {
                    recv.stop(ErrorCode::TakenOver.quic_code());
                    return Err(Fail::Abandoned);
                }
            };
            let n = match read {
                Ok(Ok(Some(n))) => n,
                Ok(Ok(None)) => {
                    ended = true;
                    0
                }
                Ok(Err(_)) => return Err(Fail::Abandoned),
                Err(_) => return Err(stalled(stall)),
            };
            pos += n as u64;
            batched += n;
        } else {
            let read = tokio::select! {
                read = tokio::time::timeout(stall, recv.read_chunk(READ_BUF, ordered)) => read,
                _ = takeover.changed() => {
                    recv.stop(ErrorCode::TakenOver.quic_code());
                    return Err(Fail::Abandoned);
                }
            };
            match read {
                Ok(Ok(Some(chunk))) => {
                    let offset = chunk.offset.saturating_sub(at.payload_start);
                    batched += place(offset, &chunk.bytes, len, &mut batch, &mut tail)?;
                }
                Ok(Ok(None)) => ended = true,
                Ok(Err(_)) => return Err(Fail::Abandoned),
                Err(_) => return Err(stalled(stall)),
            }
        }
        if batched >= READ_BUF || batch.len() >= MAX_BATCH_RUNS || (ended && batched > 0) {
            if ordered && batched > 0 {
                let mut run = std::mem::take(&mut inbuf);
                run.truncate(batched);
                batch.push((pos - batched as u64, run));
            }
            let (file, runs) = (file.clone(), std::mem::take(&mut batch));
            let mut state = hashing.take().expect("returned by the previous batch");
            let offset = at.span.offset;
            let result = tokio::task::spawn_blocking(move || {
                let written = state.take(&file, offset, &runs);
                (state, written, runs)
            })
            .await;
            let (state, written, mut runs) =
                result.map_err(|e| Fail::Stop(internal(e.to_string())))?;
            if ordered {
                // Back to its full length: only the part past a short last batch is zeroed.
                inbuf = runs.pop().map(|(_, run)| run).unwrap_or_default();
            }
            if let Err(e) = written {
                return Err(Fail::Stop(WireError::storage(
                    &e,
                    "failed to write the chunk",
                )));
            }
            pieces.hold(state.received.range_count())?;
            hashing = Some(state);
            batched = 0;
        }
    }
    let state = hashing.expect("returned by the last batch");
    if state.hashed < len {
        let message = format!(
            "the stream ended after {} of {len} payload bytes in order",
            state.hashed
        );
        return Err(Fail::Stop(WireError::new(ErrorCode::ShortPayload, message)));
    }
    Ok((state.hasher.into(), tail))
}

/// The separate pieces one chunk stream holds, counted into its connection's total; given back
/// when the stream ends.
struct Pieces<'a> {
    connection: &'a std::sync::atomic::AtomicUsize,
    held: usize,
}

impl<'a> Pieces<'a> {
    fn new(connection: &'a std::sync::atomic::AtomicUsize) -> Self {
        Self {
            connection,
            held: 0,
        }
    }

    /// The stream now holds `now` separate pieces: within both bounds, or `too_fragmented`.
    fn hold(&mut self, now: usize) -> Result<(), Fail> {
        use std::sync::atomic::Ordering::Relaxed;
        let total = if now >= self.held {
            self.connection.fetch_add(now - self.held, Relaxed) + (now - self.held)
        } else {
            self.connection.fetch_sub(self.held - now, Relaxed) - (self.held - now)
        };
        self.held = now;
        let message = if now > MAX_PIECES_PER_STREAM {
            format!("the chunk arrived in {now} separate pieces, more than the {MAX_PIECES_PER_STREAM} a stream may have the server track")
        } else if total > MAX_PIECES_PER_CONNECTION {
            format!("the connection's chunk streams arrived in {total} separate pieces, more than the {MAX_PIECES_PER_CONNECTION} a connection may have the server track")
        } else {
            return Ok(());
        };
        Err(Fail::Stop(WireError::new(
            ErrorCode::TooFragmented,
            message,
        )))
    }
}

impl Drop for Pieces<'_> {
    fn drop(&mut self) {
        self.connection
            .fetch_sub(self.held, std::sync::atomic::Ordering::Relaxed);
    }
}

fn stalled(stall: Duration) -> Fail {
    let message = format!("no byte for {} s", stall.as_secs());
    Fail::Stop(WireError::new(ErrorCode::StreamTimeout, message))
}

/// Puts stream bytes read out of order where they belong: payload bytes into the batch (a new
/// run, or the end of the run they continue), bytes after the payload into `tail` (at most
/// one frame's worth). Returns the payload bytes added.
fn place(
    offset: u64,
    bytes: &[u8],
    len: u64,
    batch: &mut Vec<(u64, Vec<u8>)>,
    tail: &mut Vec<u8>,
) -> Result<usize, Fail> {
    let end = offset + bytes.len() as u64;
    if end > len {
        let from = offset.max(len);
        let part = &bytes[(from - offset) as usize..];
        let at = (from - len) as usize;
        if at + part.len() > 4 + MAX_FRAME {
            let message = "more than one chunk_end frame's worth of bytes after the payload";
            return Err(Fail::Stop(WireError::new(ErrorCode::LongPayload, message)));
        }
        if tail.len() < at + part.len() {
            tail.resize(at + part.len(), 0);
        }
        tail[at..at + part.len()].copy_from_slice(part);
    }
    if offset >= len {
        return Ok(0);
    }
    let keep = &bytes[..(len.min(end) - offset) as usize];
    match batch.last_mut() {
        Some((at, run)) if *at + run.len() as u64 == offset => run.extend_from_slice(keep),
        _ => batch.push((offset, keep.to_vec())),
    }
    Ok(keep.len())
}

/// The payload hashed so far, in order, and which of its bytes are on disk.
struct InOrder {
    hasher: Sha256,
    /// Payload bytes `[0, hashed)` are hashed.
    hashed: u64,
    /// Payload byte ranges written to the file.
    received: ChunkSet,
}

impl InOrder {
    /// Writes `runs` (payload offset, bytes) at `base` + offset, then hashes the payload
    /// from `hashed` up to the first byte not yet received: from the runs where they cover
    /// it, else read back from the file.
    fn take(
        &mut self,
        file: &std::fs::File,
        base: u64,
        runs: &[(u64, Vec<u8>)],
    ) -> std::io::Result<()> {
        for (offset, run) in runs {
            file.write_all_at(run, base + offset)?;
            self.received
                .insert_range(*offset, offset + run.len() as u64);
        }
        let prefix = self.received.contiguous_prefix();
        let mut sorted: Vec<&(u64, Vec<u8>)> = runs.iter().collect();
        sorted.sort_by_key(|(offset, _)| *offset);
        let mut buf = Vec::new();
        for (offset, run) in sorted {
            let end = offset + run.len() as u64;
            if end <= self.hashed || *offset >= prefix {
                continue;
            }
            if *offset > self.hashed {
                self.read_back(file, base, *offset, &mut buf)?;
            }
            let from = (self.hashed - offset) as usize;
            let to = (end.min(prefix) - offset) as usize;
            self.hasher.update(&run[from..to]);
            self.hashed = offset + to as u64;
        }
        self.read_back(file, base, prefix, &mut buf)
    }

    /// Hashes payload bytes `[hashed, to)` read from the file.
    fn read_back(
        &mut self,
        file: &std::fs::File,
        base: u64,
        to: u64,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        while self.hashed < to {
            let n = (to - self.hashed).min(READ_BUF as u64) as usize;
            buf.resize(n, 0);
            file.read_exact_at(buf, base + self.hashed)?;
            self.hasher.update(&buf[..]);
            self.hashed += n as u64;
        }
        Ok(())
    }
}

/// The bytes after the payload must be exactly one `chunk_end` frame.
fn trailer(tail: &[u8], index: ChunkIndex) -> Result<Digest, WireError> {
    let fail =
        |code, message: String| Err(WireError::new(code, format!("chunk {index}: {message}")));
    match Frame::decode(tail) {
        Ok(None) => fail(
            ErrorCode::ShortPayload,
            "the stream ended after its payload without a whole chunk_end frame".into(),
        ),
        Ok(Some((_, used))) if used < tail.len() => fail(
            ErrorCode::LongPayload,
            "bytes after its chunk_end frame".into(),
        ),
        Ok(Some((Frame::ChunkEnd { sha256 }, _))) => {
            Digest::parse(&sha256).or_else(|e| fail(ErrorCode::BadDigest, e.to_string()))
        }
        Ok(Some((other, _))) => fail(
            ErrorCode::UnexpectedFrame,
            format!(
                "its payload must be followed by chunk_end, not {}",
                other.kind()
            ),
        ),
        Err(e) => fail(e.code(), format!("chunk_end: {e}")),
    }
}

/// Parses the header's fields and asks the upload service whether to read the payload: only
/// for an upload this connection created or resumed.
async fn header_verdict(
    conn: &Conn,
    upload_id: &str,
    index: u64,
    size: u64,
) -> Result<(mpsc::UnboundedSender<Msg>, Verdict), WireError> {
    // Someone else's upload is reported exactly like a missing one.
    let (id, _) = conn.ctx.uploads.owned(&conn.who, upload_id)?;
    let attached = conn
        .attached
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&id);
    if !attached {
        return Err(WireError::new(
            ErrorCode::NotAttached,
            "send create or resume for this upload first",
        ));
    }
    let header = ChunkHeader { index, size };
    conn.ctx.uploads.verdict(&conn.who, id, header).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::ChunkLayout;

    /// A payload whose packets arrive shuffled, some twice, with the `chunk_end` after it
    /// split too: every byte lands at its place, the hash is the payload's in order (parts
    /// read back from the file), and the trailer is whole.
    #[test]
    fn out_of_order_pieces_are_written_and_hashed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("staging"))
            .unwrap();
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let payload: Vec<u8> = (0..1_000_003).map(|_| next() as u8).collect();
        let digest = Digest::of(&payload);
        let end = Frame::ChunkEnd {
            sha256: digest.to_hex(),
        }
        .to_bytes();
        let (header_len, base) = (57u64, 4096u64);
        let stream = [&payload[..], &end[..]].concat();
        let mut pieces: Vec<(u64, &[u8])> = stream
            .chunks(1200)
            .enumerate()
            .map(|(i, p)| (header_len + i as u64 * 1200, p))
            .collect();
        for i in (1..pieces.len()).rev() {
            pieces.swap(i, next() as usize % (i + 1));
        }
        let again: Vec<_> = pieces.iter().step_by(50).copied().collect();
        pieces.extend(again);
        let len = payload.len() as u64;
        let mut state = InOrder {
            hasher: Sha256::new(),
            hashed: 0,
            received: ChunkSet::new(),
        };
        let (mut batch, mut tail) = (Vec::new(), Vec::new());
        for (n, (offset, bytes)) in pieces.iter().enumerate() {
            let placed = place(offset - header_len, bytes, len, &mut batch, &mut tail);
            assert!(placed.is_ok());
            if n % 64 == 63 {
                state
                    .take(&file, base, &std::mem::take(&mut batch))
                    .unwrap();
            }
        }
        state.take(&file, base, &batch).unwrap();
        assert_eq!(state.hashed, len);
        assert_eq!(Digest::from(state.hasher), digest);
        let mut written = vec![0u8; payload.len()];
        file.read_exact_at(&mut written, base).unwrap();
        assert!(written == payload, "every byte at its place");
        let index = ChunkLayout::new(1, 1).unwrap().index(0).unwrap();
        assert_eq!(trailer(&tail, index).ok(), Some(digest));
    }
}

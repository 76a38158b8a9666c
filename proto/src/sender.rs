//! `UploadSender`, the client side of one upload: which chunk to send next, how many may be
//! unacknowledged at once, what to re-send after a rejection or a lost stream, and when the
//! upload is complete. Acknowledgements come only from the server's `ack` frames.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::{ChunkIndex, ChunkLayout, ChunkSet, ErrorCode};

/// How long to wait before re-sending a chunk the server said it is busy with or could not
/// store.
pub const RETRY_DELAY: Duration = Duration::from_millis(250);
/// How many times one chunk may fail its digest check before the upload stops: a chunk that
/// keeps arriving corrupted means the source or the machine is broken, not the network.
pub const MAX_DIGEST_FAILURES: u32 = 5;

/// Why the upload cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenderError {
    /// The server rejected a chunk for a reason re-sending cannot fix.
    #[error("server rejected chunk {index}: {code}: {message}")]
    Rejected {
        index: u64,
        code: ErrorCode,
        message: String,
    },
    /// A chunk kept failing its digest check.
    #[error(
        "chunk {index} failed its digest check {failures} times; is the source file changing?"
    )]
    KeepsFailing { index: u64, failures: u32 },
    /// The server acknowledged a chunk that does not exist.
    #[error("server acknowledged chunk range [{start}, {end}) of an upload with {count} chunks")]
    BadAck { start: u64, end: u64, count: u64 },
}

/// The client's view of one upload.
#[derive(Debug)]
pub struct UploadSender {
    layout: ChunkLayout,
    /// Most chunks sent or being sent and not yet acknowledged.
    window: usize,
    /// Chunks the server acknowledged as durable. Only grows.
    acked: ChunkSet,
    /// Chunks to send, lowest first.
    queue: ChunkSet,
    /// Chunks handed out by `poll_send` and not yet acked or given back.
    in_flight: BTreeSet<u64>,
    /// Chunks to send again once their time has come.
    delayed: Vec<(Instant, u64)>,
    /// Digest failures per chunk.
    failures: std::collections::HashMap<u64, u32>,
}

impl UploadSender {
    /// A sender for an upload of which the server holds `durable` already.
    pub fn new(layout: ChunkLayout, durable: ChunkSet, window: usize) -> Self {
        let queue = durable.missing(layout.count());
        Self {
            layout,
            window: window.max(1),
            acked: durable,
            queue,
            in_flight: BTreeSet::new(),
            delayed: Vec::new(),
            failures: Default::default(),
        }
    }

    /// Raises the window to `window` chunks (a long, fast path needs more in flight); a
    /// smaller value changes nothing.
    pub fn widen(&mut self, window: usize) {
        self.window = self.window.max(window);
    }

    pub fn window(&self) -> usize {
        self.window
    }

    pub fn layout(&self) -> &ChunkLayout {
        &self.layout
    }

    pub fn acked(&self) -> &ChunkSet {
        &self.acked
    }

    /// Bytes the server acknowledged.
    pub fn acked_bytes(&self) -> u64 {
        self.layout.bytes_in(&self.acked)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_complete(&self) -> bool {
        self.acked.len() == self.layout.count()
    }

    /// The next chunk to send, if the window has room and one is due.
    pub fn poll_send(&mut self, now: Instant) -> Option<ChunkIndex> {
        if self.in_flight.len() >= self.window {
            return None;
        }
        let due = self.delayed.iter().position(|&(at, _)| at <= now);
        let raw = match due {
            Some(pos) => self.delayed.swap_remove(pos).1,
            None => self.queue.pop_first()?,
        };
        self.in_flight.insert(raw);
        // Every index in the queue came from the layout, so it is in range.
        self.layout.index(raw).ok()
    }

    /// When a delayed re-send becomes due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.delayed.iter().map(|&(at, _)| at).min()
    }

    /// The server acknowledged `ranges` as durable. Returns how many chunks were new.
    pub fn handle_ack(&mut self, ranges: &[[u64; 2]]) -> Result<u64, SenderError> {
        let set =
            ChunkSet::from_wire(ranges, self.layout.count()).map_err(|e| SenderError::BadAck {
                start: e.start,
                end: e.end,
                count: e.count,
            })?;
        let mut new = 0;
        for index in set.iter() {
            if self.acked.insert(index) {
                new += 1;
            }
            self.in_flight.remove(&index);
            self.queue.remove(index);
            self.delayed.retain(|&(_, i)| i != index);
        }
        Ok(new)
    }

    /// The server rejected chunk `index` with `code`.
    pub fn handle_reject(
        &mut self,
        index: u64,
        code: ErrorCode,
        message: &str,
        now: Instant,
    ) -> Result<(), SenderError> {
        if !self.in_flight.remove(&index) || self.acked.contains(index) {
            // A late rejection of a chunk given back or acked since: nothing to do.
            return Ok(());
        }
        match code {
            ErrorCode::DigestMismatch => {
                let failures = self.failures.entry(index).or_default();
                *failures += 1;
                if *failures >= MAX_DIGEST_FAILURES {
                    return Err(SenderError::KeepsFailing {
                        index,
                        failures: *failures,
                    });
                }
                self.queue.insert(index);
            }
            code if code.is_retryable_chunk() => self.delayed.push((now + RETRY_DELAY, index)),
            code => {
                return Err(SenderError::Rejected {
                    index,
                    code,
                    message: message.to_owned(),
                })
            }
        }
        Ok(())
    }

    /// The stream carrying `index` failed (connection trouble): send it again.
    pub fn handle_send_failed(&mut self, index: u64) {
        if self.in_flight.remove(&index) && !self.acked.contains(index) {
            self.queue.insert(index);
        }
    }

    /// After a reconnect the server says `durable` is held: everything else is sent again.
    pub fn handle_resumed(&mut self, durable: &ChunkSet) {
        for (s, e) in durable.ranges() {
            self.acked.insert_range(s, e);
        }
        self.in_flight.clear();
        self.delayed.clear();
        self.queue = self.acked.missing(self.layout.count());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds_unacked_chunks() {
        let now = Instant::now();
        let mut s = UploadSender::new(ChunkLayout::new(40, 4).unwrap(), ChunkSet::new(), 3);
        let sent: Vec<u64> = std::iter::from_fn(|| s.poll_send(now))
            .map(|i| i.get())
            .collect();
        assert_eq!(sent, vec![0, 1, 2]);
        s.handle_ack(&[[1, 2]]).unwrap();
        assert_eq!(s.poll_send(now).map(|i| i.get()), Some(3));
        assert_eq!(s.poll_send(now), None);
    }

    #[test]
    fn resume_skips_durable_chunks() {
        let now = Instant::now();
        let durable = ChunkSet::from_wire(&[[0, 2], [3, 4]], 5).unwrap();
        let mut s = UploadSender::new(ChunkLayout::new(20, 4).unwrap(), durable, 8);
        let sent: Vec<u64> = std::iter::from_fn(|| s.poll_send(now))
            .map(|i| i.get())
            .collect();
        assert_eq!(sent, vec![2, 4]);
        assert_eq!(s.acked_bytes(), 12);
    }

    #[test]
    fn rejections_requeue_or_fail() {
        let now = Instant::now();
        let mut s = UploadSender::new(ChunkLayout::new(8, 4).unwrap(), ChunkSet::new(), 8);
        assert_eq!(s.poll_send(now).unwrap().get(), 0);
        assert_eq!(s.poll_send(now).unwrap().get(), 1);
        s.handle_reject(0, ErrorCode::DigestMismatch, "", now)
            .unwrap();
        assert_eq!(
            s.poll_send(now).unwrap().get(),
            0,
            "digest mismatch is re-sent at once"
        );
        s.handle_reject(1, ErrorCode::ChunkInProgress, "", now)
            .unwrap();
        assert_eq!(s.poll_send(now), None, "busy chunk waits");
        assert_eq!(s.poll_timeout(), Some(now + RETRY_DELAY));
        assert_eq!(s.poll_send(now + RETRY_DELAY).unwrap().get(), 1);
        let err = s
            .handle_reject(1, ErrorCode::WrongChunkSize, "no", now)
            .unwrap_err();
        assert!(matches!(
            err,
            SenderError::Rejected {
                index: 1,
                code: ErrorCode::WrongChunkSize,
                ..
            }
        ));
    }

    #[test]
    fn bogus_ack_is_an_error() {
        let mut s = UploadSender::new(ChunkLayout::new(8, 4).unwrap(), ChunkSet::new(), 8);
        assert!(s.handle_ack(&[[0, 3]]).is_err());
        assert!(s.acked().is_empty());
    }
}

//! The chunk pump: keeps the window of chunk streams busy until every chunk is acknowledged,
//! re-sending what the server rejects.

use std::fs::File;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::{ErrorCode, Frame};
use tokio::task::JoinSet;

use super::Active;
use crate::progress::FileProgress;
use crate::rate::RateLimiter;
use crate::stream::ChunkJob;
use crate::ClientError;

/// What the pump reads from and reports to, the same across reconnects.
pub(super) struct Io<'a> {
    pub(super) file: &'a Arc<File>,
    /// Payload bytes written to streams, this run.
    pub(super) sent: &'a Arc<AtomicU64>,
    pub(super) limiter: Option<&'a Arc<RateLimiter>>,
    /// Chunk streams sending at once across the command's files.
    pub(super) window: Option<&'a Arc<crate::Window>>,
    /// The most chunks in flight the window may grow to.
    pub(super) max_parallel: usize,
    pub(super) progress: &'a FileProgress,
    /// Where notes for the user go.
    pub(super) tracker: &'a crate::progress::Tracker,
    /// No ack for this long while chunks are outstanding ends the pump with an error.
    pub(super) stall: Duration,
    /// What connections learn about their path, for the next one (`crate::path`).
    pub(super) paths: Option<&'a Arc<crate::path::PathMemory>>,
}

/// Sends chunks until every one is acknowledged.
pub(super) async fn pump(
    conn: &mut crate::Connection,
    active: &mut Active,
    io: &Io<'_>,
    last_progress: &mut Instant,
) -> Result<(), ClientError> {
    let Io {
        file,
        sent,
        limiter,
        window,
        max_parallel,
        progress,
        tracker,
        stall,
        paths,
    } = *io;
    // This upload's streams that hold a place in the window (the others wait for one).
    let sending = Arc::new(AtomicUsize::new(0));
    let quic = conn.quic().clone();
    let layout = *active.sender.layout();
    let upload_id = active.info.upload_id.clone();
    let mut tasks = JoinSet::new();
    let mut last_ack = Instant::now();
    // The latest rejection, to say why acks stopped if they do (a full disk, say).
    let mut last_reject: Option<(ErrorCode, String)> = None;
    let learned = paths
        .and_then(|p| p.get(quic.remote_address()))
        .filter(|l| l.same_path(quic.rtt()));
    let mut widening = Widening::new(&quic, active.sender.window(), learned);
    if learned.is_some() {
        // Started at speed: the chunk window follows the learned send window at once.
        let chunks = widening.tune(&quic, max_parallel);
        active.sender.widen(chunks);
        if let Some(window) = window {
            window.grow_to(chunks);
        }
    }
    // Since when the server has refused chunks because its disk is full, with no ack since.
    let mut full_since: Option<(Instant, String)> = None;
    let mut tune = tokio::time::interval(TUNE_EVERY);
    loop {
        let now = Instant::now();
        while let Some(index) = active.sender.poll_send(now) {
            let job = ChunkJob {
                quic: quic.clone(),
                file: file.clone(),
                upload_id: upload_id.clone(),
                index: index.get(),
                span: layout.span(index),
                limiter: limiter.cloned(),
                sent: sent.clone(),
                window: window.map(|w| w.permits().clone()),
                sending: sending.clone(),
                digests: active.digests.clone(),
            };
            tasks.spawn(async move { (job.index, job.send().await) });
        }
        if active.sender.is_complete() {
            if let Some(paths) = paths {
                widening.teach(&quic, paths);
            }
            return Ok(());
        }
        let retry = active.sender.poll_timeout();
        tokio::select! {
            Some(joined) = tasks.join_next() => {
                if let Ok((index, Err(e))) = joined {
                    active.sender.handle_send_failed(index);
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    if quic.close_reason().is_some() {
                        return Err(conn.lost());
                    }
                }
            }
            event = conn.events.recv() => match event {
                Some(Frame::Ack { upload_id: id, chunks }) if id == upload_id => {
                    if active.sender.handle_ack(&chunks)? > 0 {
                        full_since = None;
                        last_ack = Instant::now();
                        *last_progress = last_ack;
                        progress.set_safe(active.sender.acked_bytes());
                    }
                }
                Some(Frame::Reject { upload_id: id, index, code, message }) if id == upload_id => {
                    tracing::debug!(index, %code, message, "chunk rejected");
                    active.sender.handle_reject(index, code, &message, Instant::now())?;
                    if code == ErrorCode::StorageFull && full_since.is_none() {
                        // Said at once, with the server's figures: not after minutes at 100 %.
                        tracker.note(&format!(
                            "ferry: {}: the server says: storage_full: {message}; waiting up to {} s for space",
                            progress.name,
                            FULL_PATIENCE.min(stall).as_secs()
                        ));
                        full_since = Some((Instant::now(), message.clone()));
                    }
                    last_reject = Some((code, message));
                }
                Some(Frame::Detached { message, .. }) => return Err(ClientError::TakenOver(message)),
                Some(Frame::Error { code, message, .. }) => return Err(ClientError::Server { code, message }),
                Some(_) => {}
                None => return Err(conn.lost()),
            },
            _ = tokio::time::sleep_until(retry.unwrap_or(now).into()), if retry.is_some() => {}
            _ = tokio::time::sleep_until(full_since.as_ref().map_or(now, |(t, _)| *t + FULL_PATIENCE.min(stall)).into()), if full_since.is_some() => {
                let message = full_since.take().map(|(_, m)| m).unwrap_or_default();
                return Err(ClientError::ServerFull(message));
            }
            _ = tune.tick() => {
                let chunks = widening.tune(&quic, max_parallel);
                active.sender.widen(chunks);
                if let Some(window) = window {
                    window.grow_to(chunks);
                }
            }
            _ = tokio::time::sleep_until((last_ack + stall).into()), if active.sender.in_flight() > 0 || retry.is_some() => {
                // Chunks still queued for a place in the window shared with other files are
                // not a silent server.
                if sending.load(Ordering::Relaxed) == 0 && active.sender.in_flight() > 0 {
                    last_ack = Instant::now();
                    continue;
                }
                if let Some((_, message)) = full_since.take() {
                    return Err(ClientError::ServerFull(message));
                }
                let silence = format!("no acknowledgement for {} s", stall.as_secs());
                return Err(match last_reject {
                    Some((code, message)) => ClientError::Server { code, message: format!("{message} ({silence})") },
                    None => ClientError::Connection(silence),
                });
            }
        }
    }
}

/// How long a full disk on the server is waited for (nothing acknowledged meanwhile) before
/// the file is given up on for this run.
pub(super) const FULL_PATIENCE: Duration = Duration::from_secs(30);

/// How often the windows are checked against the path.
const TUNE_EVERY: Duration = Duration::from_millis(250);
/// The QUIC send window at first and on any short path: the client's memory for unacknowledged
/// data (the loopback benchmark never fills it).
const SEND_WINDOW: u64 = 16 << 20;
/// The most the send window grows to on a long, fast path.
const MAX_SEND_WINDOW: u64 = 128 << 20;

/// Windows that follow the path: on a long, fast, lossy link (100 ms each way, 1 Gbit/s, 5 %
/// loss) a 16 MiB send window and 8 chunks of 4 MiB in flight held Ferry near 28 MB/s,
/// because every lost packet keeps its chunk (and its bytes in the send buffer) in flight for
/// another round trip or more. Every `TUNE_EVERY` the QUIC send window is raised to
/// [`PATH_ROUNDS`] times what the path carried in one round trip (the rate over the last
/// interval × the smallest smoothed RTT seen), between [`SEND_WINDOW`] and
/// [`MAX_SEND_WINDOW`], and the chunk window by the same factor, up to `max_parallel`. Both
/// only grow, for the life of the connection. On loopback (an RTT of a millisecond or two)
/// the product stays far below 16 MiB and nothing changes.
struct Widening {
    send_window: u64,
    /// UDP bytes sent and when, at the last look.
    last: (u64, Instant),
    /// The smallest smoothed RTT seen: the path's, without the queues a busy machine adds (on
    /// loopback the smoothed RTT jumped between 1.5 and 13 ms under load).
    min_rtt: Duration,
    /// The chunk window the user asked for (`--parallel`), at the starting send window.
    parallel: usize,
}

/// Round trips of data the send window holds: one in flight, and the rest for chunks whose
/// lost packets are being sent again (at 5 % loss a 4 MiB chunk often needs three rounds).
const PATH_ROUNDS: u64 = 6;

impl Widening {
    /// Starts at [`SEND_WINDOW`], or at the send window an earlier connection over the same
    /// path ended with (`learned`).
    fn new(
        quic: &quinn::Connection,
        parallel: usize,
        learned: Option<crate::path::Learned>,
    ) -> Self {
        let send_window = learned
            .map_or(SEND_WINDOW, |l| l.send_window)
            .clamp(SEND_WINDOW, MAX_SEND_WINDOW);
        quic.set_send_window(send_window);
        Self {
            send_window,
            last: (quic.stats().udp_tx.bytes, Instant::now()),
            min_rtt: learned.map_or(quic.rtt(), |l| l.min_rtt().min(quic.rtt())),
            parallel,
        }
    }

    /// Records what this connection learned about its path for the next one.
    fn teach(&self, quic: &quinn::Connection, paths: &crate::path::PathMemory) {
        let min_rtt = self.min_rtt.min(quic.rtt());
        paths.record(
            quic.remote_address(),
            min_rtt,
            quic.stats().path.cwnd,
            self.send_window,
        );
    }

    /// The chunk window the path calls for now.
    fn tune(&mut self, quic: &quinn::Connection, max_parallel: usize) -> usize {
        let (bytes, now) = (quic.stats().udp_tx.bytes, Instant::now());
        let (then_bytes, then) = std::mem::replace(&mut self.last, (bytes, now));
        let secs = now.duration_since(then).as_secs_f64();
        if secs > 0.0 {
            let rate = bytes.saturating_sub(then_bytes) as f64 / secs;
            self.min_rtt = self.min_rtt.min(quic.rtt());
            let per_round = rate * self.min_rtt.as_secs_f64();
            let wanted = ((PATH_ROUNDS as f64 * per_round) as u64).min(MAX_SEND_WINDOW);
            if wanted > self.send_window {
                self.send_window = wanted;
                quic.set_send_window(wanted);
                tracing::debug!(send_window = wanted, "send window raised");
            }
        }
        // The chunk window grows by the send window's factor.
        let factor = self.send_window.div_ceil(SEND_WINDOW) as usize;
        (self.parallel * factor).min(max_parallel.max(self.parallel))
    }
}

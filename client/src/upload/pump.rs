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
    pub(super) window: Option<&'a Arc<tokio::sync::Semaphore>>,
    pub(super) progress: &'a FileProgress,
    /// No ack for this long while chunks are outstanding ends the pump with an error.
    pub(super) stall: Duration,
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
        progress,
        stall,
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
                window: window.cloned(),
                sending: sending.clone(),
                digests: active.digests.clone(),
            };
            tasks.spawn(async move { (job.index, job.send().await) });
        }
        if active.sender.is_complete() {
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
                        last_ack = Instant::now();
                        *last_progress = last_ack;
                        progress.set_safe(active.sender.acked_bytes());
                    }
                }
                Some(Frame::Reject { upload_id: id, index, code, message }) if id == upload_id => {
                    tracing::debug!(index, %code, message, "chunk rejected");
                    active.sender.handle_reject(index, code, &message, Instant::now())?;
                    last_reject = Some((code, message));
                }
                Some(Frame::Detached { message, .. }) => return Err(ClientError::TakenOver(message)),
                Some(Frame::Error { code, message, .. }) => return Err(ClientError::Server { code, message }),
                Some(_) => {}
                None => return Err(conn.lost()),
            },
            _ = tokio::time::sleep_until(retry.unwrap_or(now).into()), if retry.is_some() => {}
            _ = tokio::time::sleep_until((last_ack + stall).into()), if active.sender.in_flight() > 0 || retry.is_some() => {
                // Chunks still queued for a place in the window shared with other files are
                // not a silent server.
                if sending.load(Ordering::Relaxed) == 0 && active.sender.in_flight() > 0 {
                    last_ack = Instant::now();
                    continue;
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

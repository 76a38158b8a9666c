//! The frames waiting to be written to one connection's control stream: replies to requests
//! and frames the server pushes (acks, rejections, takeover). It is bounded, so a client that
//! sends requests or chunks but never reads its control stream cannot make the server queue
//! frames without end.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::Frame;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};

/// Frames that may wait at once: each is at most 64 KiB, so at most 4 MiB per connection.
pub const OUTBOX_FRAMES: usize = 64;

/// The sending side, shared by the request loop and the drivers of attached uploads.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Frame>,
    /// Signalled once the outbox overflowed; the connection's loop then closes it with
    /// `control_stream_full`.
    full: Arc<Notify>,
}

/// The receiving side: the writer task drains `frames`; the request loop waits on `full`.
pub struct Drain {
    pub frames: mpsc::Receiver<Frame>,
    pub full: Arc<Notify>,
}

impl Outbox {
    pub fn new() -> (Self, Drain) {
        let (tx, frames) = mpsc::channel(OUTBOX_FRAMES);
        let full = Arc::new(Notify::new());
        let drain = Drain {
            frames,
            full: full.clone(),
        };
        (Self { tx, full }, drain)
    }

    /// For frames the server pushes: never waits (a driver must not stall on one client).
    /// When the outbox is full the frame is dropped and the connection is to be closed; the
    /// client reconnects and `resume` tells it everything a lost ack would have.
    pub fn push(&self, frame: Frame) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(frame) {
            self.full.notify_one();
        }
    }

    /// For replies: waits for room, so the request loop stops reading requests while the
    /// client does not read replies; after `limit` without room the connection is to be
    /// closed. Returns false then.
    pub async fn reply(&self, frame: Frame, limit: Duration) -> bool {
        match tokio::time::timeout(limit, self.tx.send(frame)).await {
            Ok(_) => true,
            Err(_) => {
                self.full.notify_one();
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Frame {
        Frame::List {
            req: n,
            cursor: None,
        }
    }

    #[tokio::test]
    async fn a_reader_that_never_reads_is_noticed_not_buffered() {
        let (outbox, drain) = Outbox::new();
        let limit = Duration::from_millis(50);
        for n in 0..OUTBOX_FRAMES as u64 {
            assert!(outbox.reply(frame(n), limit).await);
        }
        assert!(!outbox.reply(frame(99), limit).await);
        outbox.push(frame(100));
        // The overflow was signalled (a stored permit), and nothing past the bound was kept.
        tokio::time::timeout(Duration::from_millis(1), drain.full.notified())
            .await
            .expect("overflow signalled");
        assert_eq!(drain.frames.len(), OUTBOX_FRAMES);
    }
}

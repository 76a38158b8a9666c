//! A run of `ferry upload -` after one that died: what its spool kept is sent, and what the
//! server holds of that stream is said.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_proto::{Digest, Frame};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::{Client, ClientError};

use super::{Feed, JournalFile, Outcome, Spool, State, STALL};

impl Client {
    /// A run of `ferry upload -` after one that died: sends what its spool kept, then says what
    /// the server holds of that stream. The new standard input is not read.
    pub(super) async fn rescue(
        &mut self,
        state: &mut State,
        spool: Spool,
        journal: &JournalFile,
    ) -> Result<Outcome, ClientError> {
        let kept = spool.load();
        let mut feed = Feed::Stdin {
            rx: mpsc::channel(1).1,
            held: BTreeMap::new(),
            read: 0,
            bytes: 0,
            eof: true,
            spool,
        };
        if let Feed::Stdin { held, .. } = &mut feed {
            for (index, data) in kept {
                // A short chunk (the stream's last) waited for a length that is not known now.
                if data.len() as u64 == state.cs && !state.acked.contains(index) {
                    state.todo.insert(index);
                    held.insert(index, data);
                }
            }
        }
        // Sends the spooled chunks and waits for their acks; the end game is not played.
        for _ in 0..20 {
            if state.todo.is_empty() && state.unacked.is_empty() {
                break;
            }
            match self.send_held(state, &mut feed).await {
                Ok(()) => {}
                Err(e) if e.is_retryable() => {
                    self.conn = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    match self.connection().await {
                        Ok(conn) => match conn.resume(&state.id).await {
                            Ok(info) => state.rebuild(&info, &feed),
                            Err(e) if e.is_retryable() => {}
                            Err(e) => return Err(e),
                        },
                        Err(e) if e.is_retryable() => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let layout_prefix = (0..).take_while(|i| state.acked.contains(*i)).count() as u64;
        let held_bytes = match &feed {
            Feed::Stdin { .. } => state.acked.len() * state.cs,
            Feed::File { .. } => 0,
        };
        journal.remove();
        if let Feed::Stdin { spool, .. } = &feed {
            spool.remove_all();
        }
        Ok(Outcome::StreamLost {
            upload_id: state.id.clone(),
            held: held_bytes,
            prefix: layout_prefix * state.cs,
        })
    }

    /// Sends the chunks queued in `state.todo` and reads acks until none is outstanding (or an
    /// error): `rescue`'s loop.
    async fn send_held(&mut self, state: &mut State, feed: &mut Feed) -> Result<(), ClientError> {
        let conn = self.connection().await?;
        let mut streams = JoinSet::new();
        while let Some(index) = state.todo.pop_first() {
            let data = feed.chunk(index, index * state.cs, state.cs).await?;
            let digest = Digest::from(Sha256::new_with_prefix(&data));
            state.unacked.insert(index);
            let (quic, id, sent) = (conn.quic().clone(), state.id.clone(), state.sent.clone());
            streams.spawn(async move {
                crate::stream::send_chunk(&quic, &id, index, data, digest, None, &sent).await
            });
        }
        while !state.unacked.is_empty() {
            let event = tokio::time::timeout(STALL, conn.events.recv())
                .await
                .map_err(|_| ClientError::Connection("no acknowledgement for 60 s".into()))?;
            match event {
                Some(Frame::Ack { upload_id, chunks }) if upload_id == state.id => {
                    for [start, end] in chunks {
                        for index in start..end.min(start.saturating_add(1 << 20)) {
                            state.acked.insert(index);
                            state.unacked.remove(&index);
                        }
                    }
                }
                Some(Frame::Reject {
                    upload_id, index, ..
                }) if upload_id == state.id => {
                    state.unacked.remove(&index);
                }
                Some(_) => {}
                None => return Err(conn.lost()),
            }
        }
        Ok(())
    }
}

//! The sending loop of a growing upload: whole chunks sent as the source holds them, each kept
//! (spool or file) until acknowledged, reconnecting and resuming when the connection is lost.

use super::*;

impl Client {
    /// Sends until the source ends and the upload is published; reconnects and resumes on a
    /// lost connection for up to `--reconnect-for` without progress. Returns the published
    /// name, size and content hash.
    pub(super) async fn drive(
        &mut self,
        state: &mut State,
        feed: &mut Feed,
    ) -> Result<(String, u64, String), ClientError> {
        let mut progress_at = Instant::now();
        let mut wait = Duration::from_millis(250);
        // Set once a connection was lost: every later round starts by resuming the upload on a
        // new connection (chunks are sent only on a connection that has it attached).
        let mut lost = false;
        loop {
            if lost {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                self.conn = None;
                let info = match self.connection().await {
                    Ok(conn) => {
                        state.attached_on = Some(conn.quic().stable_id());
                        conn.resume(&state.id).await
                    }
                    Err(e) => Err(e),
                };
                match info {
                    Ok(info) => {
                        state.reconnects += 1;
                        state.rebuild(&info, feed);
                    }
                    Err(e)
                        if e.is_retryable() && progress_at.elapsed() < self.opts.reconnect_for =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let acked_before = state.acked.len();
            let result = self.drive_once(state, feed).await;
            if state.acked.len() > acked_before {
                progress_at = Instant::now();
                wait = Duration::from_millis(250);
            }
            match result {
                Ok(done) => return Ok(done),
                Err(e) if e.is_retryable() && progress_at.elapsed() < self.opts.reconnect_for => {
                    self.shared
                        .tracker
                        .event(&format!("ferry: {e}; reconnecting"));
                    lost = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One connection's worth of `drive`.
    async fn drive_once(
        &mut self,
        state: &mut State,
        feed: &mut Feed,
    ) -> Result<(String, u64, String), ClientError> {
        let window = self.opts.parallel.max(1);
        let limiter = self.limiter.clone();
        let mut streams: JoinSet<(u64, Result<(), ClientError>)> = JoinSet::new();
        let mut tick = tokio::time::interval(LOOK_EVERY);
        let mut last_ack = Instant::now();
        // After a rejection, sending waits a moment (a chunk still arriving, a store recovering).
        let mut pause_until = Instant::now();
        loop {
            feed.look(state).await?;
            // The source ended and everything of it is acknowledged: the end game.
            if state.end.is_some()
                && state.unacked.is_empty()
                && state.todo.is_empty()
                && streams.is_empty()
            {
                if let Some(done) = self.end_game(state, feed).await? {
                    return Ok(done);
                }
                continue;
            }
            // Chunks go only on the connection the upload was created or resumed on: one made
            // since (a request's silent reconnect) has not attached it.
            let conn = match self.conn.as_mut() {
                Some(conn)
                    if conn.quic().close_reason().is_none()
                        && Some(conn.quic().stable_id()) == state.attached_on =>
                {
                    conn
                }
                Some(conn) if conn.quic().close_reason().is_some() => return Err(conn.lost()),
                _ => {
                    return Err(ClientError::Connection(
                        "the upload is not attached to this connection".into(),
                    ))
                }
            };
            while state.unacked.len() < window && Instant::now() >= pause_until {
                let Some(index) = state.todo.pop_first() else {
                    break;
                };
                let data = match feed
                    .chunk(index, index * state.cs, state.len_of(index))
                    .await
                {
                    Ok(data) => data,
                    Err(e) => {
                        state.todo.insert(index);
                        return Err(e);
                    }
                };
                state.unacked.insert(index);
                let (quic, id, digests, sent) = (
                    conn.quic().clone(),
                    state.id.clone(),
                    state.digests.clone(),
                    state.sent.clone(),
                );
                let limiter = limiter.clone();
                streams.spawn(async move {
                    let digest = match tokio::task::spawn_blocking({
                        let data = data.clone();
                        move || Digest::from(Sha256::new_with_prefix(&data))
                    })
                    .await
                    {
                        Ok(digest) => digest,
                        Err(e) => return (index, Err(ClientError::Local(e.to_string()))),
                    };
                    // Recorded before the stream ends, so before the server can acknowledge it.
                    digests
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(index, digest);
                    let result = crate::stream::send_chunk(
                        &quic,
                        &id,
                        index,
                        data,
                        digest,
                        limiter.as_deref(),
                        &sent,
                    )
                    .await;
                    (index, result)
                });
            }
            let mut acked_now = Vec::new();
            let mut read = None;
            let stdin = feed.wants(window);
            let reading = stdin.is_some();
            tokio::select! {
                next = async { stdin.expect("guarded").recv().await }, if reading => read = Some(next),
                Some(joined) = streams.join_next() => {
                    if let Ok((index, Err(e))) = joined {
                        state.unacked.remove(&index);
                        if !state.acked.contains(index) {
                            state.todo.insert(index);
                        }
                        if !e.is_retryable() {
                            return Err(e);
                        }
                        if conn.quic().close_reason().is_some() {
                            return Err(conn.lost());
                        }
                    }
                }
                event = conn.events.recv() => match event {
                    Some(Frame::Ack { upload_id, chunks }) if upload_id == state.id => {
                        for [start, end] in chunks {
                            for index in start..end.min(start.saturating_add(1 << 20)) {
                                state.acked.insert(index);
                                state.unacked.remove(&index);
                                state.todo.remove(&index);
                                acked_now.push(index);
                            }
                        }
                        last_ack = Instant::now();
                    }
                    Some(Frame::Reject { upload_id, index, code, message }) if upload_id == state.id => {
                        // What sending again can mend: a chunk that changed while read, one
                        // still arriving from a lost connection, a store that may recover.
                        let again = matches!(
                            code,
                            ErrorCode::DigestMismatch
                                | ErrorCode::ShortPayload
                                | ErrorCode::ChunkInProgress
                                | ErrorCode::StreamTimeout
                                | ErrorCode::StorageError
                                | ErrorCode::StorageFull
                                | ErrorCode::ShuttingDown
                                | ErrorCode::Internal
                        );
                        if code == ErrorCode::NotAttached {
                            return Err(ClientError::Connection(message));
                        }
                        state.rejects += 1;
                        if !again || state.rejects > MAX_REJECTS {
                            return Err(ClientError::Server { code, message });
                        }
                        tracing::debug!(index, %code, message, "chunk rejected; sending it again");
                        state.unacked.remove(&index);
                        state.todo.insert(index);
                        pause_until = Instant::now() + RETRY_PAUSE;
                    }
                    Some(Frame::Detached { upload_id, code, message }) if upload_id == state.id => {
                        return Err(if code == ErrorCode::TakenOver {
                            ClientError::TakenOver(message)
                        } else {
                            ClientError::Server { code, message }
                        });
                    }
                    Some(_) => {}
                    None => return Err(conn.lost()),
                },
                _ = tick.tick() => {
                    if state.reported.elapsed() >= state.progress_every {
                        state.reported = Instant::now();
                        let (read, what) = feed.read_so_far();
                        self.shared.tracker.note(&format!(
                            "ferry: {what}: {} read, {} safe on the server{}",
                            ferry_proto::units::human(read),
                            ferry_proto::units::human((state.acked.len() * state.cs).min(read)),
                            if state.end.is_none() { ", waiting for more" } else { "" }
                        ));
                    }
                    if !state.unacked.is_empty() && last_ack.elapsed() > STALL {
                        return Err(ClientError::Connection(format!(
                            "no acknowledgement for {} s with chunks in flight",
                            STALL.as_secs()
                        )));
                    }
                }
            }
            for index in acked_now {
                feed.acked(index);
            }
            if let Some(next) = read {
                feed.take(next, state)?;
            }
        }
    }
}

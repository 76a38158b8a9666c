//! How an upload ends: the server asked to confirm a file the journal remembers as
//! complete, to publish one by content (`dedup`), or to finish one; a name taken under
//! `--on-exists skip`; an upload discarded; the journal told.

use std::time::Instant;

use ferry_proto::{Digest, ErrorCode, Frame, OnExists};

use super::Report;
use crate::journal::{Completed, Entry, FileKey};
use crate::{connected, Backoff, Client, ClientError};

impl Client {
    /// `already_exists` with `--on-exists skip` is a skipped file; any other error stays one.
    pub(super) fn name_taken(
        &self,
        e: ClientError,
        shown: &str,
        key: &FileKey,
        started: Instant,
    ) -> Result<Report, ClientError> {
        match e {
            ClientError::Server {
                code: ErrorCode::AlreadyExists,
                ..
            } if self.opts.on_exists == OnExists::Skip => Ok(Report {
                status: "skipped",
                upload_id: String::new(),
                file_name: shown.to_owned(),
                size: key.size,
                content_hash: String::new(),
                sha256: None,
                bytes_sent: 0,
                bytes_skipped: 0,
                bytes_rehashed: 0,
                elapsed_ms: started.elapsed().as_millis() as u64,
                resumed: false,
                reconnects: 0,
                reason: Some("a file of that name exists on the server (--on-exists skip)".into()),
            }),
            e => Err(e),
        }
    }

    /// Aborts an upload that must not be published and forgets it locally.
    pub(super) async fn discard(&mut self, upload_id: &str, key: &FileKey) {
        if let Ok(conn) = connected(&mut self.conn, &self.endpoint, &self.opts.target).await {
            let id = upload_id.to_owned();
            let _ = conn
                .request(|req| Frame::Abort { req, upload_id: id })
                .await;
        }
        self.journal.remove(key);
    }

    /// Records the file as complete in the journal: a re-run confirms it with the server and
    /// sends nothing.
    pub(super) fn remember_complete(&self, key: &FileKey, file_name: &str, digest: Digest) {
        let mut entry = self.journal.get(key).unwrap_or_else(|| Entry {
            upload_id: String::new(),
            server: key.server.clone(),
            path: key.path.clone(),
            size: key.size,
            chunk_size: 0,
            complete: None,
        });
        entry.complete = Some(Completed {
            file_name: file_name.to_owned(),
            sha256: digest.to_hex(),
        });
        if let Err(e) = self.journal.put(key, &entry) {
            self.shared.tracker.error(&format!(
                "ferry: cannot record {} as complete in the journal: {e}",
                key.path.display()
            ));
        }
    }

    /// Offers the file's content to the server (`dedup`): a report if it was published by
    /// link (or is there already under this name), `None` if it must be sent.
    pub(super) async fn dedup(
        &mut self,
        key: &FileKey,
        (name, dir, desc): (&str, &[String], &str),
        (digest, plain): (Digest, Digest),
        started: Instant,
        reconnects: &mut u32,
    ) -> Result<Option<Report>, ClientError> {
        let on_exists = self.opts.on_exists;
        let chunk_size = self.opts.chunk_size;
        let ask = |req| Frame::Dedup {
            req,
            file_name: name.to_owned(),
            size: key.size,
            chunk_size,
            content_hash: digest.to_hex(),
            desc: desc.to_owned(),
            dir: dir.to_vec(),
            on_exists,
        };
        let reply = self.request_retrying(ask, reconnects).await?;
        match reply {
            Frame::NoMatch { .. } => Ok(None),
            Frame::Deduped {
                upload_id,
                file_name,
                size,
                existing,
                ..
            } => {
                self.journal
                    .put(
                        key,
                        &Entry {
                            upload_id: upload_id.clone(),
                            server: key.server.clone(),
                            path: key.path.clone(),
                            size: key.size,
                            chunk_size: 0,
                            complete: None,
                        },
                    )
                    .map_err(|e| ClientError::local("cannot write the resume journal", e))?;
                self.remember_complete(key, &file_name, digest);
                let status = if existing { "skipped" } else { "deduplicated" };
                Ok(Some(Report {
                    sha256: self.opts.sha256.then(|| plain.to_hex()),
                    reason: existing
                        .then(|| "the same content is on the server under this name".into()),
                    ..Report::held(
                        status,
                        (upload_id, file_name, size),
                        digest.to_hex(),
                        started,
                        *reconnects,
                    )
                }))
            }
            other => Err(ClientError::Protocol(format!(
                "expected deduped or no_match, got {}",
                other.kind()
            ))),
        }
    }

    /// If the journal says this very file (same server, path, size, mtime) was completed, asks
    /// the server to confirm it (`finish` again with the recorded digest: answered with the
    /// same `finished` while the server still has it) and returns a `skipped` report; nothing
    /// is read from the file or sent. If the server no longer knows it (expired history, a
    /// wiped server), the journal entry goes and the file is uploaded afresh.
    pub(super) async fn already_there(
        &mut self,
        key: &FileKey,
        started: Instant,
        reconnects: &mut u32,
    ) -> Result<Option<Report>, ClientError> {
        let Some(entry) = self.journal.get(key) else {
            return Ok(None);
        };
        let Some(done) = entry.complete else {
            return Ok(None);
        };
        let Ok(digest) = Digest::parse(&done.sha256) else {
            self.journal.remove(key);
            return Ok(None);
        };
        match self.finish(&entry.upload_id, digest, reconnects).await {
            Ok((file_name, size)) => Ok(Some(Report::held(
                "skipped",
                (entry.upload_id, file_name, size),
                done.sha256,
                started,
                *reconnects,
            ))),
            Err(ClientError::Server {
                code: ErrorCode::NotFound | ErrorCode::Expired | ErrorCode::FileDigestMismatch,
                ..
            }) => {
                self.journal.remove(key);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `finish`, reconnecting (and re-sending it) if the connection drops meanwhile; the
    /// server answers a repeated finish of a completed upload with the same reply.
    pub(super) async fn finish(
        &mut self,
        upload_id: &str,
        digest: Digest,
        reconnects: &mut u32,
    ) -> Result<(String, u64), ClientError> {
        let ask = |req| Frame::Finish {
            req,
            upload_id: upload_id.to_owned(),
            content_hash: digest.to_hex(),
            size: None,
        };
        match self.request_retrying(ask, reconnects).await? {
            Frame::Finished {
                file_name, size, ..
            } => Ok((file_name, size)),
            other => Err(ClientError::Protocol(format!(
                "expected finished, got {}",
                other.kind()
            ))),
        }
    }

    /// Sends the request `make` builds, reconnecting and sending it again while the
    /// connection fails, for at most `--reconnect-for`: for requests the server answers the
    /// same way when repeated (`finish`, `dedup`). A server never reached fails at once.
    pub(super) async fn request_retrying(
        &mut self,
        make: impl Fn(u64) -> Frame,
        reconnects: &mut u32,
    ) -> Result<Frame, ClientError> {
        let deadline = Instant::now() + self.opts.reconnect_for;
        let mut backoff = Backoff::new();
        // Bounded by the deadline: each turn waits or returns.
        loop {
            let attempt = async {
                let conn = connected(&mut self.conn, &self.endpoint, &self.opts.target).await?;
                backoff.welcomed();
                conn.request(&make).await
            }
            .await;
            match attempt {
                Err(e @ ClientError::Unreachable(_)) if !self.endpoint.reached() => return Err(e),
                Err(e) if e.is_retryable() && Instant::now() + Backoff::FIRST < deadline => {
                    self.drop_connection();
                    *reconnects += 1;
                    let wait = backoff.next();
                    self.shared.tracker.note(&format!(
                        "ferry: {e}; reconnecting in {} ms",
                        wait.as_millis()
                    ));
                    tokio::time::sleep(
                        wait.min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                }
                other => return other,
            }
        }
    }
}

impl Report {
    /// A file whose content the server holds already under the reported name: nothing read
    /// to send, nothing sent.
    pub(super) fn held(
        status: &'static str,
        (upload_id, file_name, size): (String, String, u64),
        content_hash: String,
        started: Instant,
        reconnects: u32,
    ) -> Self {
        Self {
            status,
            upload_id,
            file_name,
            size,
            content_hash,
            sha256: None,
            bytes_sent: 0,
            bytes_skipped: size,
            bytes_rehashed: 0,
            elapsed_ms: started.elapsed().as_millis() as u64,
            resumed: false,
            reconnects,
            reason: None,
        }
    }
}

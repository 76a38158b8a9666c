//! The control stream's requests: each decoded frame becomes one call of the upload service
//! (`crate::uploads`), and its answer (or error) the reply frame. The connection keeps only what
//! is its own: which uploads it attached.

use ferry_proto::{Digest, ErrorCode, Frame, OnExists};

use crate::driver::WireError;
use crate::uploads::{Deduped, NewUpload};

use super::peer::Peer;
use super::Conn;

impl Conn {
    pub(super) async fn request(&self, frame: Frame) {
        let uploads = &self.ctx.uploads;
        let who = &self.who;
        let (req, result) = match frame {
            Frame::Create {
                req,
                file_name,
                size,
                chunk_size,
                desc,
                dir,
                on_exists,
                deferred,
            } => {
                let mut new = new_upload(file_name, dir, size, chunk_size, desc, on_exists);
                new.extra.deferred = deferred;
                let checked = match deferred {
                    true => uploads.check_deferred(),
                    false => Ok(()),
                };
                let created = match checked {
                    Ok(()) => uploads.create(who, new).await,
                    Err(e) => Err(e),
                };
                let created = match created {
                    Ok(created) => self.attach(created, 0).await,
                    Err(e) => Err(e),
                };
                (req, created.map(|upload| Frame::Created { req, upload }))
            }
            Frame::Dedup { req, .. } | Frame::Mkdir { req, .. } | Frame::List { req, .. }
                if who.link.is_some() =>
            {
                let message =
                    "an upload link can only create, resume, finish and abort its own uploads";
                (req, Err(WireError::new(ErrorCode::Refused, message)))
            }
            Frame::Dedup {
                req,
                file_name,
                size,
                chunk_size,
                content_hash,
                desc,
                dir,
                on_exists,
            } => {
                let new = new_upload(file_name, dir, size, chunk_size, desc, on_exists);
                let reply = uploads
                    .dedup(who, new, &content_hash)
                    .await
                    .map(|done| match done {
                        Deduped::NoMatch => Frame::NoMatch { req },
                        Deduped::Published {
                            upload_id,
                            file_name,
                            size,
                            content_hash,
                            existing,
                        } => Frame::Deduped {
                            req,
                            upload_id,
                            file_name,
                            size,
                            content_hash,
                            existing,
                        },
                    });
                (req, reply)
            }
            Frame::Ping { req } => (req, Ok(Frame::Pong { req })),
            Frame::Lookup {
                req,
                file_name,
                dir,
                size,
            } => (
                req,
                uploads
                    .lookup(who, &file_name, &dir, size)
                    .await
                    .map(|(complete, receiving)| Frame::Found {
                        req,
                        complete,
                        receiving,
                    }),
            ),
            Frame::Digests {
                req,
                upload_id,
                from,
            } => (
                req,
                uploads
                    .digests(who, &upload_id, from)
                    .await
                    .map(|(id, (page, next))| Frame::DigestPage {
                        req,
                        upload_id: id.to_string(),
                        chunks: page.into_iter().map(|(i, d)| (i, d.to_hex())).collect(),
                        next,
                    }),
            ),
            Frame::Mkdir { req, dir } => (
                req,
                uploads
                    .mkdir(who, &dir)
                    .await
                    .map(|dir| Frame::Made { req, dir }),
            ),
            Frame::Resume {
                req,
                upload_id,
                from,
            } => (
                req,
                self.resume(&upload_id, from)
                    .await
                    .map(|upload| Frame::Resumed { req, upload }),
            ),
            Frame::Finish {
                req,
                upload_id,
                content_hash,
                size,
            } => {
                let declared = match size {
                    Some(size) => uploads
                        .declare_length(who, &upload_id, size)
                        .await
                        .map(drop),
                    None => Ok(()),
                };
                let finished = match declared {
                    Ok(()) => self.finish(req, &upload_id, &content_hash).await,
                    Err(e) => Err(e),
                };
                (req, finished)
            }
            Frame::SetLength {
                req,
                upload_id,
                size,
            } => (
                req,
                uploads
                    .declare_length(who, &upload_id, size)
                    .await
                    .map(|upload| Frame::LengthSet { req, upload }),
            ),
            Frame::Rewrite {
                req,
                upload_id,
                chunks,
            } => (
                req,
                uploads
                    .rewrite(who, &upload_id, chunks)
                    .await
                    .map(|chunks| Frame::Rewritten {
                        req,
                        upload_id,
                        chunks,
                    }),
            ),
            Frame::Read {
                req,
                upload_id,
                offset,
                max,
            } => (req, self.read(req, upload_id, offset, max).await),
            Frame::Abort { req, upload_id } => (
                req,
                uploads
                    .abort(who, &upload_id)
                    .await
                    .map(|_| Frame::Aborted { req, upload_id }),
            ),
            Frame::List { req, cursor } => (
                req,
                uploads
                    .list(who, cursor.as_deref())
                    .map(|(uploads, next)| Frame::Listing { req, uploads, next }),
            ),
            other => {
                let message = format!("{} is not a request", other.kind());
                self.events.push(Frame::Error {
                    req: None,
                    code: ErrorCode::UnexpectedFrame,
                    message,
                });
                return;
            }
        };
        let reply = result.unwrap_or_else(|e| Frame::Error {
            req: Some(req),
            code: e.code,
            message: e.message,
        });
        // Waits for room: while the client does not read replies, no more requests are read.
        let limit = self.ctx.stream_timeout;
        self.events.reply(reply, limit).await;
    }

    /// Attaches a created upload to this connection.
    async fn attach(
        &self,
        created: (crate::store::UploadId, crate::store::UploadRecord),
        from: u64,
    ) -> Result<ferry_proto::UploadInfo, WireError> {
        let id = created.0;
        let info = self
            .ctx
            .uploads
            .attach(&self.who, created, from, self.events.clone())
            .await?;
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ok(info)
    }

    async fn resume(&self, raw_id: &str, from: u64) -> Result<ferry_proto::UploadInfo, WireError> {
        let (info, attached) = self
            .ctx
            .uploads
            .resume(&self.who, raw_id, from, self.events.clone())
            .await?;
        if let Some(id) = attached {
            self.attached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id);
        }
        Ok(info)
    }

    async fn finish(&self, req: u64, raw_id: &str, hash: &str) -> Result<Frame, WireError> {
        let digest =
            Digest::parse(hash).map_err(|e| WireError::new(ErrorCode::BadDigest, e.to_string()))?;
        let done = self.ctx.uploads.finish(&self.who, raw_id, digest).await?;
        if let Some(id) = crate::store::UploadId::parse(&done.upload_id) {
            self.attached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        Ok(Frame::Finished {
            req,
            upload_id: done.upload_id,
            file_name: done.file_name,
            size: done.size,
            content_hash: done.content_hash,
        })
    }

    pub(super) fn detach_all(&self) {
        let attached =
            std::mem::take(&mut *self.attached.lock().unwrap_or_else(|p| p.into_inner()));
        self.ctx.uploads.detach(&self.who, attached);
    }

    pub(super) fn reject(&self, upload_id: &str, index: u64, error: WireError) {
        crate::metrics::metrics().rejected(error.code);
        self.events.push(Frame::Reject {
            upload_id: upload_id.chars().take(64).collect(),
            index,
            code: error.code,
            message: error.message,
        });
    }
}

fn new_upload(
    file_name: String,
    dir: Vec<String>,
    size: u64,
    chunk_size: u64,
    desc: String,
    on_exists: OnExists,
) -> NewUpload {
    NewUpload {
        file_name,
        dir,
        size,
        chunk_size,
        desc,
        on_exists,
        extra: Default::default(),
    }
}

/// Bytes read from a file and written to a `read` stream at a time.
const READ_PIECE: usize = 1024 * 1024;

impl Conn {
    /// `read`: answers `read_data` with what is acknowledged from `offset` (at most `max` and
    /// [`ferry_proto::MAX_READ`] bytes), and sends those bytes on a unidirectional stream it
    /// opens, which begins with the same `read_data` frame. One read at a time per connection:
    /// a second waits for the first stream to end.
    async fn read(
        &self,
        req: u64,
        raw_id: String,
        offset: u64,
        max: u64,
    ) -> Result<Frame, WireError> {
        let Peer::Quic(quic) = &self.peer else {
            return Err(WireError::new(
                ErrorCode::Refused,
                "reading uploads back is for ferry/1 connections",
            ));
        };
        let view = self.ctx.uploads.read_view(&self.who, &raw_id).await?;
        if offset > view.durable {
            return Err(WireError::new(
                ErrorCode::BadField,
                format!(
                    "offset {offset} is past the {} acknowledged bytes",
                    view.durable
                ),
            ));
        }
        let size = (view.durable - offset).min(max).min(ferry_proto::MAX_READ);
        if size == 0 {
            // Nothing to send: no stream.
            return Ok(Frame::ReadData {
                req,
                upload_id: raw_id,
                offset,
                size,
                durable: view.durable,
                complete: view.complete,
            });
        }
        let limit = self.ctx.stream_timeout;
        let permit = tokio::time::timeout(limit, self.reading.clone().acquire_owned())
            .await
            .map_err(|_| {
                WireError::new(
                    ErrorCode::StreamTimeout,
                    "the previous read's stream was not read",
                )
            })?
            .map_err(|_| WireError::new(ErrorCode::ShuttingDown, "the connection is closing"))?;
        let frame = Frame::ReadData {
            req,
            upload_id: raw_id,
            offset,
            size,
            durable: view.durable,
            complete: view.complete,
        };
        // Opened before the answer: a file that cannot be read is said as such, not as a
        // stream that never comes.
        let file = std::fs::File::open(&view.path).map_err(|e| {
            tracing::warn!(path = %view.path.display(), error = %e, "cannot open an upload to read it");
            WireError::new(ErrorCode::StorageError, "the upload's bytes cannot be read")
        })?;
        let quic = quic.clone();
        let header = frame.to_bytes();
        tokio::spawn(async move {
            let _permit = permit;
            let sent = tokio::time::timeout(
                limit.saturating_mul(1 + (size / (4 << 20)) as u32),
                send_read(quic, header, file, offset, size),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::debug!(offset, size, "read stream not completed");
            }
        });
        Ok(frame)
    }
}

/// Writes `header` and `size` bytes of `file` from `offset` on a new unidirectional stream.
async fn send_read(
    quic: quinn::Connection,
    header: Vec<u8>,
    file: std::fs::File,
    offset: u64,
    size: u64,
) -> Result<(), ()> {
    let mut stream = quic.open_uni().await.map_err(drop)?;
    stream.write_all(&header).await.map_err(drop)?;
    let file = std::sync::Arc::new(file);
    let mut done = 0;
    while done < size {
        let len = (size - done).min(READ_PIECE as u64) as usize;
        let (file, at) = (file.clone(), offset + done);
        let piece = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, at).map(|()| buf)
        })
        .await
        .map_err(drop)?
        .map_err(drop)?;
        stream.write_all(&piece).await.map_err(drop)?;
        done += len as u64;
    }
    stream.finish().map_err(drop)?;
    let _ = stream.stopped().await;
    Ok(())
}

//! The control stream's requests: create, resume, finish, abort, list, and their replies.

use ferry_proto::name;
use ferry_proto::{
    ChunkSet, Digest, ErrorCode, FoundComplete, FoundReceiving, Frame, OnExists, UploadInfo,
    UploadSummary, MAX_DIGESTS_PER_FRAME, MAX_FOUND, MAX_FRAME,
};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::driver::{Msg, WireError};
use crate::store::{RecordState, UploadId, UploadRecord};

use super::{internal, storage, Conn};

/// Room for summaries in one `listing`: the frame limit less the envelope (`type`, `req`,
/// `next`), which takes under 200 bytes.
const LISTING_BUDGET: usize = MAX_FRAME - 512;

/// A `listing` cursor: the creation time and id of the last upload of the previous page.
fn cursor_of((created_at, id): (u64, UploadId)) -> String {
    format!("{created_at}-{id}")
}

fn parse_cursor(text: &str) -> Option<(u64, UploadId)> {
    let (created_at, id) = text.split_once('-')?;
    Some((created_at.parse().ok()?, UploadId::parse(id)?))
}

/// The error for a failed create in the bucket: a taken or exhausted name keeps its code.
fn publish_error(e: &anyhow::Error, what: &str) -> WireError {
    if e.downcast_ref::<crate::store::NameTaken>().is_some() {
        WireError::new(ErrorCode::AlreadyExists, format!("{e:#}"))
    } else if e.downcast_ref::<crate::store::NameExhausted>().is_some() {
        WireError::new(ErrorCode::NameExhausted, format!("{e:#}"))
    } else {
        storage(e, what)
    }
}

impl Conn {
    pub(super) async fn request(&self, frame: Frame) {
        let (req, result) = match frame {
            Frame::Create {
                req,
                file_name,
                size,
                chunk_size,
                desc,
                dir,
                on_exists,
            } => (
                req,
                self.create(file_name, size, chunk_size, desc, (dir, on_exists))
                    .await
                    .map(|upload| Frame::Created { req, upload }),
            ),
            Frame::Dedup { req, .. } | Frame::Mkdir { req, .. } | Frame::List { req, .. }
                if self.link.is_some() =>
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
                let record = self.new_record(file_name, size, chunk_size, desc, (dir, on_exists));
                (req, self.dedup(req, record, &content_hash).await)
            }
            Frame::Ping { req } => (req, Ok(Frame::Pong { req })),
            Frame::Lookup {
                req,
                file_name,
                dir,
                size,
            } => (
                req,
                self.lookup(&file_name, &dir, size)
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
            } => (req, self.digests(req, &upload_id, from).await),
            Frame::Mkdir { req, dir } => (
                req,
                self.mkdir(&dir).await.map(|dir| Frame::Made { req, dir }),
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
            } => (req, self.finish(req, &upload_id, &content_hash).await),
            Frame::Abort { req, upload_id } => (
                req,
                self.abort(&upload_id)
                    .await
                    .map(|()| Frame::Aborted { req, upload_id }),
            ),
            Frame::List { req, cursor } => (
                req,
                self.list(cursor.as_deref())
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
        let limit = self.shared.config.stream_timeout;
        self.events.reply(reply, limit).await;
    }

    async fn create(
        &self,
        file_name: String,
        size: u64,
        chunk_size: u64,
        desc: String,
        dir: (Vec<String>, OnExists),
    ) -> Result<UploadInfo, WireError> {
        let config = &self.shared.config;
        let record = self.new_record(file_name, size, chunk_size, desc, dir)?;
        if size > config.max_file_size {
            return Err(WireError::new(
                ErrorCode::FileTooLarge,
                format!(
                    "the file ({}) is larger than the server's limit of {}",
                    ferry_proto::units::human(size),
                    ferry_proto::units::human(config.max_file_size)
                ),
            ));
        }
        if chunk_size < config.min_chunk_size || chunk_size > config.max_chunk_size {
            return Err(WireError::new(
                ErrorCode::BadChunkSize,
                format!(
                    "chunk size {chunk_size} is outside [{}, {}]",
                    config.min_chunk_size, config.max_chunk_size
                ),
            ));
        }
        if let Some(command) = &self.shared.tunable().on_create {
            self.ask_on_create(command, &record).await?;
        }
        // Check and reserve in one step per owner: concurrent creates queue here.
        let _reserving = self.owner_lock().await;
        self.check_owner_limits(size, true, &record.dir)?;
        self.take_from_link(size)?;
        let created = match &self.shared.s3 {
            Some(s3) => self.create_remote(s3.clone(), record.clone()).await,
            None => self.create_local(record.clone()).await,
        };
        let (id, record) = created.inspect_err(|_| self.give_back_to_link(&record))?;
        info!(upload = %id, name = record.file_name, size, chunk_size = record.chunk_size, "created");
        crate::metrics::metrics().uploads_created.inc();
        self.attach(id, record, 0).await
    }

    /// Records a new upload in the data directory, its whole size reserved on disk.
    async fn create_local(
        &self,
        record: UploadRecord,
    ) -> Result<(UploadId, UploadRecord), WireError> {
        let store = self.shared.store.clone();
        let stored = record.clone();
        let id = tokio::task::spawn_blocking(move || store.create(&stored))
            .await
            .map_err(internal)?
            .map_err(|e| match e.downcast_ref::<crate::store::NoSpace>() {
                Some(no_space) => {
                    WireError::new(ErrorCode::InsufficientStorage, no_space.to_string())
                }
                None => storage(&e, "failed to create the upload"),
            })?;
        Ok((id, record))
    }

    /// With the s3 store: the server chooses the chunk size (parts of at least 8 MiB, at most
    /// 10 000 of them), reserves the name and starts the multipart upload, then records the
    /// upload here.
    async fn create_remote(
        &self,
        s3: std::sync::Arc<crate::store::s3::S3>,
        mut record: UploadRecord,
    ) -> Result<(UploadId, UploadRecord), WireError> {
        use crate::store::s3::{chunk_size_for, MAX_PARTS};
        let max_chunk = self.shared.config.max_chunk_size;
        record.chunk_size = chunk_size_for(record.size);
        if record.chunk_size > max_chunk {
            return Err(WireError::new(
                ErrorCode::FileTooLarge,
                format!(
                    "file of {} bytes exceeds what the s3 store takes: {MAX_PARTS} parts of at most {max_chunk} bytes",
                    record.size
                ),
            ));
        }
        let id = UploadId::random().map_err(internal)?;
        let record = s3
            .create(id, &record)
            .await
            .map_err(|e| publish_error(&e, "failed to create the upload"))?;
        let store = self.shared.store.clone();
        let stored = record.clone();
        let adopted = tokio::task::spawn_blocking(move || store.adopt(id, &stored))
            .await
            .map_err(internal)?;
        if let Err(e) = adopted {
            let _ = s3.abort(id, &record).await;
            return Err(storage(&e, "failed to create the upload"));
        }
        Ok((id, record))
    }

    /// With the s3 store the bucket, not this node, knows the upload's state: unless this node
    /// drives it now, its record is refreshed from the manifest (it may have been begun,
    /// finished or aborted through another node). Then [`Conn::owned`].
    async fn owned_fresh(&self, raw_id: &str) -> Result<(UploadId, UploadRecord), WireError> {
        let (Some(s3), Some(id)) = (&self.shared.s3, UploadId::parse(raw_id)) else {
            return self.owned(raw_id);
        };
        if self.shared.registry.get(id).is_some() {
            return self.owned(raw_id);
        }
        let manifest = s3
            .manifest(id)
            .await
            .map_err(|e| storage(&e, "failed to read the upload's manifest"))?;
        // Another owner's upload is not cached here; `owned` answers `not_found` for it.
        let manifest = manifest.filter(|m| m.record.owner == self.owner);
        let store = self.shared.store.clone();
        let owner = self.owner.clone();
        let cached = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let local = store.record(id)?;
            match (manifest, local) {
                (Some(m), Some(local)) if m.record == local => Ok(()),
                (Some(m), _) => store.adopt(id, &m.record),
                // Gone from the bucket (aborted or expired elsewhere): gone here too, but a
                // complete record stays as the answer to a repeated `finish`.
                (None, Some(local))
                    if local.state != RecordState::Complete && local.owner == owner =>
                {
                    store.remove(id)
                }
                (None, _) => Ok(()),
            }
        })
        .await
        .map_err(internal)?;
        cached.map_err(|e| storage(&e, "failed to record the upload"))?;
        self.owned(raw_id)
    }

    /// What the server holds of one file (`lookup`): the owner's uploads asked under this folder,
    /// name and size — complete ones whose published file is still the one published, with
    /// their content hashes, and unfinished ones — newest first, at most `MAX_FOUND` each. A
    /// link's session sees only its link's uploads. With the s3 store, the uploads this node
    /// has records of (those created or resumed through it).
    async fn lookup(
        &self,
        file_name: &str,
        dir: &[String],
        size: u64,
    ) -> Result<(Vec<FoundComplete>, Vec<FoundReceiving>), WireError> {
        let name = name::sanitize(file_name)
            .map_err(|e| WireError::new(ErrorCode::InvalidName, e.to_string()))?;
        let dir = name::sanitize_dir(dir)
            .map_err(|e| WireError::new(ErrorCode::InvalidName, e.to_string()))?;
        let store = self.shared.store.clone();
        let owner = self.owner.clone();
        let link = self.link.as_ref().map(|l| l.id.clone());
        let found = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut records = store.list(&owner)?;
            records.retain(|(_, r)| {
                r.file_name == name
                    && r.dir == dir
                    && r.size == size
                    && link.as_ref().is_none_or(|l| r.link.as_ref() == Some(l))
            });
            records.sort_by_key(|(id, r)| std::cmp::Reverse((r.updated_at, *id)));
            let (mut complete, mut receiving) = (Vec::new(), Vec::new());
            for (id, record) in records {
                match record.state {
                    RecordState::Complete if complete.len() < MAX_FOUND => {
                        let intact =
                            record.remote.is_some() || store.published_intact(&record).is_some();
                        let (Some(hash), Some(published)) =
                            (record.content_hash.clone(), record.final_name.clone())
                        else {
                            continue;
                        };
                        if intact {
                            complete.push(FoundComplete {
                                upload_id: id.to_string(),
                                file_name: published,
                                chunk_size: record.chunk_size,
                                content_hash: hash,
                            });
                        }
                    }
                    RecordState::Receiving if receiving.len() < MAX_FOUND => {
                        let Ok(layout) = record.layout() else {
                            continue;
                        };
                        let durable = store.durable_chunks(id, &layout)?;
                        receiving.push(FoundReceiving {
                            upload_id: id.to_string(),
                            chunk_size: record.chunk_size,
                            chunk_count: layout.count(),
                            durable_bytes: layout.bytes_in(&durable),
                        });
                    }
                    _ => {}
                }
            }
            Ok((complete, receiving))
        })
        .await
        .map_err(internal)?;
        found.map_err(|e| storage(&e, "failed to look the file up"))
    }

    /// The digests of an unfinished upload's durable chunks from `from` on (`digests`), paged.
    async fn digests(&self, req: u64, raw_id: &str, from: u64) -> Result<Frame, WireError> {
        let (id, record) = self.owned_fresh(raw_id).await?;
        if record.state != RecordState::Receiving {
            return Err(WireError::new(
                ErrorCode::BadState,
                "the upload is complete: its content hash is in lookup's answer",
            ));
        }
        let layout = record.layout().map_err(|e| internal(e.to_string()))?;
        let (page, next) = match &self.shared.s3 {
            Some(s3) => {
                let markers = s3
                    .markers(id)
                    .await
                    .map_err(|e| storage(&e, "failed to list the stored chunks"))?;
                let all = crate::store::s3::durable_digests(&markers, layout.count());
                let mut page: Vec<(u64, Digest)> = all
                    .range(from..)
                    .take(MAX_DIGESTS_PER_FRAME + 1)
                    .map(|(i, d)| (*i, *d))
                    .collect();
                let next = (page.len() > MAX_DIGESTS_PER_FRAME)
                    .then(|| page.pop().map(|(i, _)| i))
                    .flatten();
                (page, next)
            }
            None => {
                let store = self.shared.store.clone();
                tokio::task::spawn_blocking(move || {
                    store.chunk_digests(id, &layout, from, MAX_DIGESTS_PER_FRAME)
                })
                .await
                .map_err(internal)?
                .map_err(|e| storage(&e, "failed to read the chunk digests"))?
            }
        };
        Ok(Frame::DigestPage {
            req,
            upload_id: id.to_string(),
            chunks: page.into_iter().map(|(i, d)| (i, d.to_hex())).collect(),
            next,
        })
    }

    /// Creates a folder under the owner's folder (an empty folder of an uploaded tree).
    async fn mkdir(&self, dir: &[String]) -> Result<String, WireError> {
        let dir = name::sanitize_dir(dir)
            .map_err(|e| WireError::new(ErrorCode::InvalidName, e.to_string()))?;
        // Checked and made under the owner's lock, like a create's limits.
        let _counting = self.owner_lock().await;
        if let Some(s3) = &self.shared.s3 {
            s3.make_dir(&self.owner, &dir)
                .await
                .map_err(|e| storage(&e, "failed to create the folder"))?;
            return Ok(dir.join("/"));
        }
        self.check_entries(self.shared.store.missing_dirs(&self.owner, &dir))?;
        let store = self.shared.store.clone();
        let owner = self.owner.clone();
        let made = dir.join("/");
        tokio::task::spawn_blocking(move || store.make_dir(&owner, &dir))
            .await
            .map_err(internal)?
            .map_err(|e| storage(&e, "failed to create the folder"))?;
        Ok(made)
    }

    async fn resume(&self, raw_id: &str, from: u64) -> Result<UploadInfo, WireError> {
        let (id, record) = self.owned_fresh(raw_id).await?;
        if record.state == RecordState::Complete {
            // Complete already (the finish reply may have been lost): everything is durable,
            // and a finish with the same digest is answered again.
            let layout = record.layout().map_err(|e| internal(e.to_string()))?;
            // It does not attach: there is nothing left to send (chunks get `not_attached`).
            let all = ChunkSet::full(layout.count());
            let (durable, durable_next) = all.to_wire_page(from, ferry_proto::MAX_RANGES_PER_FRAME);
            return Ok(UploadInfo {
                upload_id: id.to_string(),
                file_name: record.file_name,
                size: layout.size(),
                chunk_size: layout.chunk_size(),
                chunk_count: layout.count(),
                durable,
                durable_offset: layout.size(),
                durable_next,
            });
        }
        self.verified(id).await?;
        if from == 0 {
            info!(upload = %id, name = record.file_name, "resumed");
        }
        self.attach(id, record, from).await
    }

    async fn attach(
        &self,
        id: UploadId,
        record: UploadRecord,
        from: u64,
    ) -> Result<UploadInfo, WireError> {
        let driver = self.driver(id, record).await?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Attach {
            conn: self.id,
            events: self.events.clone(),
            from,
            reply,
        });
        let info = rx.await.map_err(|_| {
            WireError::new(
                ErrorCode::BadState,
                "the upload finished or was aborted meanwhile",
            )
        })?;
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ok(info)
    }

    async fn finish(&self, req: u64, raw_id: &str, hash: &str) -> Result<Frame, WireError> {
        let digest =
            Digest::parse(hash).map_err(|e| WireError::new(ErrorCode::BadDigest, e.to_string()))?;
        let (id, record) = self.owned_fresh(raw_id).await?;
        if record.state == RecordState::Complete && self.shared.store.published_missing(&record) {
            // Its file is gone (removed by hand, or lost): the upload is forgotten, and the
            // client told so, so it uploads the file again instead of skipping it.
            let store = self.shared.store.clone();
            let forgotten = record.clone();
            tokio::task::spawn_blocking(move || store.forget_complete(id, &forgotten))
                .await
                .map_err(internal)?
                .map_err(|e| storage(&e, "failed to forget the upload"))?;
            return Err(WireError::new(
                ErrorCode::NotFound,
                format!(
                    "upload {id} was published as {}, which is no longer on the server; upload it again",
                    record.final_name.unwrap_or_default()
                ),
            ));
        }
        if record.state == RecordState::Complete {
            let stored = record.content_hash.clone().unwrap_or_default();
            if stored != digest.to_hex() {
                return Err(WireError::new(
                    ErrorCode::FileDigestMismatch,
                    format!(
                        "the upload completed with content hash {stored}, finish said {digest}"
                    ),
                ));
            }
            return Ok(Frame::Finished {
                req,
                upload_id: id.to_string(),
                file_name: self.shown_name(&record, record.final_name.clone()),
                size: record.size,
                content_hash: stored,
            });
        }
        self.verified(id).await?;
        let record_shown = record.clone();
        let driver = self.driver(id, record).await?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Finish { digest, reply });
        let published = rx.await.map_err(|_| {
            WireError::new(ErrorCode::BadState, "the upload was aborted meanwhile")
        })??;
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        Ok(Frame::Finished {
            req,
            upload_id: id.to_string(),
            file_name: self.shown_name(&record_shown, Some(published.file_name)),
            size: published.size,
            content_hash: published.content_hash.to_hex(),
        })
    }

    async fn abort(&self, raw_id: &str) -> Result<(), WireError> {
        let (id, record) = self.owned_fresh(raw_id).await?;
        if record.state == RecordState::Complete {
            return Err(WireError::new(
                ErrorCode::BadState,
                "the upload is complete; it cannot be aborted",
            ));
        }
        let driver = self.driver(id, record.clone()).await?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Abort { reply });
        rx.await
            .map_err(|_| WireError::new(ErrorCode::BadState, "the upload finished meanwhile"))??;
        self.give_back_to_link(&record);
        Ok(())
    }

    /// One page of the owner's uploads, oldest first, from after `cursor`; with the cursor of
    /// the next page when the rest did not fit one frame.
    fn list(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<UploadSummary>, Option<String>), WireError> {
        let after = match cursor {
            None => None,
            Some(text) => Some(parse_cursor(text).ok_or_else(|| {
                WireError::new(
                    ErrorCode::BadField,
                    format!("list cursor {text:.80?} is not one this server gave"),
                )
            })?),
        };
        let uploads = self
            .shared
            .store
            .list(&self.owner)
            .map_err(|e| storage(&e, "failed to list uploads"))?;
        let mut page = Vec::new();
        let mut used = 0;
        let mut last = None;
        // Read once for the page, not once per upload.
        let expire_after = self.shared.tunable().expire_after.as_secs();
        for (id, record) in uploads {
            let key = (record.created_at, id);
            if after.is_some_and(|after| key <= after) {
                continue;
            }
            let summary = self.summary(id, record, expire_after)?;
            // Each summary is measured as it will be sent; one always fits (a description is
            // at most 4 KiB, 24 KiB as escaped JSON).
            let len = serde_json::to_vec(&summary).map_or(MAX_FRAME, |v| v.len()) + 1;
            if used + len > LISTING_BUDGET && !page.is_empty() {
                return Ok((page, last.map(cursor_of)));
            }
            used += len;
            page.push(summary);
            last = Some(key);
        }
        Ok((page, None))
    }

    /// One line of `listing`; `expire_after` in seconds (0: uploads never expire).
    fn summary(
        &self,
        id: UploadId,
        record: UploadRecord,
        expire_after: u64,
    ) -> Result<UploadSummary, WireError> {
        let durable_bytes = match (record.state, record.layout()) {
            // Publishing: every chunk is durable, the link is being made.
            (RecordState::Complete | RecordState::Publishing, _) => record.size,
            (RecordState::Receiving, Ok(layout)) => {
                let set = self
                    .shared
                    .store
                    .durable_chunks(id, &layout)
                    .map_err(|e| storage(&e, "failed to read chunks"))?;
                layout.bytes_in(&set)
            }
            (RecordState::Receiving, Err(_)) => 0,
        };
        Ok(UploadSummary {
            upload_id: id.to_string(),
            file_name: record
                .final_name
                .clone()
                .unwrap_or(record.file_name.clone()),
            desc: record.desc,
            size: record.size,
            chunk_size: record.chunk_size,
            durable_bytes,
            state: match record.state {
                RecordState::Receiving | RecordState::Publishing => "receiving".into(),
                RecordState::Complete => "complete".into(),
            },
            created_at: record.created_at,
            updated_at: record.updated_at,
            expires_at: match (record.state, expire_after) {
                (RecordState::Receiving, secs) if secs > 0 => record.updated_at + secs,
                _ => 0,
            },
        })
    }

    /// The published path `finished` reports: the final one, or for an upload link's session
    /// the asked one (a link's session does not see the owner's folder, so it is not told that
    /// a name was taken and numbered).
    fn shown_name(&self, record: &UploadRecord, published: Option<String>) -> String {
        match (&self.link, published) {
            (None, Some(published)) => published,
            _ => record
                .dir
                .iter()
                .map(String::as_str)
                .chain([record.file_name.as_str()])
                .collect::<Vec<_>>()
                .join("/"),
        }
    }

    /// The record of `raw_id` if it exists and belongs to this connection's owner. Another
    /// owner's upload is reported exactly like a missing one.
    pub(super) fn owned(&self, raw_id: &str) -> Result<(UploadId, UploadRecord), WireError> {
        let not_found = || WireError::new(ErrorCode::NotFound, format!("no upload {raw_id:.40}"));
        let id = UploadId::parse(raw_id).ok_or_else(not_found)?;
        // A link's session sees only the uploads made through that link; a token's, all of
        // its owner's.
        let link = self.link.as_ref().map(|l| &l.id);
        let visible = |r: &UploadRecord| {
            r.owner == self.owner && link.is_none_or(|id| r.link.as_ref() == Some(id))
        };
        match self.shared.store.record(id) {
            Ok(Some(record)) if visible(&record) => Ok((id, record)),
            Ok(Some(_)) => Err(not_found()),
            Ok(None) => match self.shared.store.tombstone(id) {
                Ok(Some(t)) if t.owner == self.owner => Err(WireError::new(
                    ErrorCode::Expired,
                    format!("upload {id} expired at {} (Unix time) after making no progress; start it afresh", t.expired_at),
                )),
                Ok(_) => Err(not_found()),
                Err(e) => Err(storage(&e, "failed to read the upload")),
            },
            Err(e) => Err(storage(&e, "failed to read the upload")),
        }
    }

    /// Waits until `id` is re-verified, if an unclean stop left it to verify (`crate::verify`):
    /// a `resume` or `finish` must not build on chunks that may no longer match.
    async fn verified(&self, id: UploadId) -> Result<(), WireError> {
        match &self.shared.verifier {
            Some(verifier) => verifier
                .ready(id)
                .await
                .map_err(|e| storage(&e, "failed to re-verify the upload")),
            None => Ok(()),
        }
    }

    /// The upload's driver, started if needed. With the s3 store a new driver starts from
    /// the markers in the bucket (what every node made durable), not from this node's cache.
    async fn driver(
        &self,
        id: UploadId,
        record: UploadRecord,
    ) -> Result<mpsc::UnboundedSender<Msg>, WireError> {
        let shared = &self.shared;
        if let Some(driver) = shared.registry.get(id) {
            return Ok(driver);
        }
        let durable = match (&shared.s3, record.layout()) {
            (Some(s3), Ok(layout)) => {
                let markers = s3
                    .markers(id)
                    .await
                    .map_err(|e| storage(&e, "failed to list the stored chunks"))?;
                let digests = crate::store::s3::durable_digests(&markers, layout.count());
                let mut set = ChunkSet::new();
                for index in digests.keys() {
                    set.insert(*index);
                }
                Some(set)
            }
            _ => None,
        };
        shared
            .registry
            .get_or_start(shared, id, record, durable)
            .map_err(|e| storage(&e, "failed to open the upload"))
    }

    pub(super) fn detach_all(&self) {
        let attached =
            std::mem::take(&mut *self.attached.lock().unwrap_or_else(|p| p.into_inner()));
        for id in attached {
            if let Some(driver) = self.shared.registry.get(id) {
                let _ = driver.send(Msg::Detach { conn: self.id });
            }
        }
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

//! The upload service: what every front end asks of the server, in one place. A front end
//! (`conn/` for `ferry/1` and browsers' WebTransport sessions, `http/` for tus and the IETF
//! draft) authenticates its client (`crate::auth`), then calls these operations with the
//! [`Principal`] it got, and writes their answers in its own wire format. It never names a
//! backend: the service calls the storage seam (`crate::store::Backend`) and owns the per-upload
//! drivers (`crate::driver`), which run the group commits.
//!
//! - `create` (name, folder and description checked, size and chunk size, the `--on-create`
//!   hook, then under one lock per owner: uploads in progress, files and folders, the quota, an
//!   upload link's bounds) and `attach` (acks and rejections go to the caller's outbox);
//! - `lookup` and `digests`: what the server holds of a file, and `list` (`listing.rs`);
//! - `resume`, `finish`, `abort`, `list`, `mkdir`, `dedup`;
//! - `verdict`: whether to read a chunk's payload (the driver's decision);
//! - `offset` and `append`: bytes at an offset, for front ends that send a byte stream
//!   (`append/`).
//!
//! What a front end passes in and gets back is in `request.rs`; which upload a caller may
//! touch (`owned`, `owned_fresh`) in `access.rs`.

mod access;
mod admission;
pub mod append;
mod concat;
mod dedup;
mod grow;
mod listing;
mod request;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use ferry_proto::name;
use ferry_proto::{ChunkHeader, ChunkSet, Digest, ErrorCode, Limits, UploadInfo, MAX_FRAME};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::config::{Config, Tunable};
use crate::driver::{Events, Msg, Registry, Verdict, WireError};
use crate::store::{Backend, RecordState, Store, UploadId, UploadRecord};
use crate::verify::Verifier;

pub use admission::name_taken;
pub use dedup::Deduped;
pub use grow::ReadView;
pub use request::{Extra, Finished, Frontend, NewUpload, Principal};

/// Room for summaries in one `listing`: the frame limit less the envelope (`type`, `req`,
/// `next`), which takes under 200 bytes.
const LISTING_BUDGET: usize = MAX_FRAME - 512;

/// The service. One per server; front ends hold an `Arc` of it.
pub struct Uploads {
    config: Config,
    /// The settings a reload changes; read them here, not from `config`.
    tunable: RwLock<Tunable>,
    backend: Arc<Backend>,
    registry: Arc<Registry>,
    /// After an unclean stop, until every upload is re-verified; `None` after a clean one.
    verifier: Option<Arc<Verifier>>,
    /// The upload links, for their current bounds at `create`.
    links: Arc<crate::links::Links>,
    /// One lock per owner, held from the check of the owner's limits to the record of a new
    /// upload, so concurrent creates cannot all pass a check meant for one. One entry per
    /// owner that created something: bounded by the tokens file.
    create_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The service id announced to clients: the same on every node sharing one store.
    service: String,
}

impl Uploads {
    pub fn new(
        config: Config,
        backend: Arc<Backend>,
        verifier: Option<Arc<Verifier>>,
        links: Arc<crate::links::Links>,
        service: String,
    ) -> Self {
        Self {
            tunable: RwLock::new(config.tunable()),
            config,
            backend,
            registry: Default::default(),
            verifier,
            links,
            create_locks: Default::default(),
            service,
        }
    }

    /// The server's configuration as it started.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current tunable settings.
    pub fn tunable(&self) -> Tunable {
        self.tunable
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the tunable settings (a reload); returns the old ones.
    pub fn set_tunable(&self, new: Tunable) -> Tunable {
        std::mem::replace(
            &mut *self.tunable.write().unwrap_or_else(|p| p.into_inner()),
            new,
        )
    }

    /// The limits clients are told, with the current tunable settings.
    pub fn limits(&self) -> Limits {
        let t = self.tunable();
        Limits {
            max_uploads: t.max_uploads_per_owner,
            quota: t.quota_per_owner,
            expire_after: t.expire_after.as_secs(),
            ..self.config.limits()
        }
    }

    pub fn service_id(&self) -> &str {
        &self.service
    }

    /// The local store (records, staging files): for the operator's views and sweeps.
    pub fn store(&self) -> &Arc<Store> {
        self.backend.store()
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn verifier(&self) -> Option<&Arc<Verifier>> {
        self.verifier.as_ref()
    }

    /// Creates an upload (not yet attached to anyone): every check `create` makes, in the order
    /// `docs/protocol.md` §3.2 gives.
    pub async fn create(
        &self,
        who: &Principal,
        new: NewUpload,
    ) -> Result<(UploadId, UploadRecord), WireError> {
        let config = &self.config;
        let deferred = new.extra.deferred;
        // An upload of unknown length is laid out for the largest file the server takes, and
        // counts nothing against quotas until its length is declared (`set_length`).
        let size = if deferred { 0 } else { new.size };
        let chunk_size = new.chunk_size;
        let record = self.new_record(who, new)?;
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
        if let Some(command) = &self.tunable().on_create {
            self.ask_on_create(command, &record).await?;
        }
        // Check and reserve in one step per owner: concurrent creates queue here.
        let _reserving = self.owner_lock(&who.owner).await;
        self.check_owner_limits(who, size, true, &record.dir)?;
        self.take_from_link(who, size)?;
        let created = self
            .backend
            .create(
                record.clone(),
                config.max_chunk_size,
                crate::store::s3::Limits {
                    max_uploads: self.tunable().max_uploads_per_owner,
                    quota: self.tunable().quota_per_owner,
                    link: who.link.as_ref().map(|l| crate::store::s3::LinkBounds {
                        id: l.id.clone(),
                        max_files: l.max_files,
                        max_size: l.max_size,
                    }),
                },
            )
            .await
            .map_err(|e| create_error(&e));
        let (id, record) = created.inspect_err(|_| self.give_back_to_link(&record))?;
        info!(upload = %id, name = record.file_name, size, chunk_size = record.chunk_size, "created");
        crate::metrics::metrics().created(who.frontend);
        Ok((id, record))
    }

    /// Attaches an upload to the caller: its acks and rejections go to `events`, and any
    /// other connection attached before is detached (`taken_over`). The reply describes the
    /// upload, its durable ranges paged from chunk `from`.
    pub async fn attach(
        &self,
        who: &Principal,
        (id, record): (UploadId, UploadRecord),
        from: u64,
        events: Events,
    ) -> Result<UploadInfo, WireError> {
        let driver = self.driver(id, record).await?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Attach {
            conn: who.conn,
            events,
            from,
            reply,
        });
        rx.await.map_err(|_| {
            WireError::new(
                ErrorCode::BadState,
                "the upload finished or was aborted meanwhile",
            )
        })
    }

    /// `resume`: the upload as it is (a complete one with every chunk durable, not attached),
    /// else attached to the caller; with the id attached, if it was.
    pub async fn resume(
        &self,
        who: &Principal,
        raw_id: &str,
        from: u64,
        events: Events,
    ) -> Result<(UploadInfo, Option<UploadId>), WireError> {
        let (id, record) = self.owned_fresh(who, raw_id).await?;
        if record.state == RecordState::Complete {
            // Complete already (the finish reply may have been lost): everything is durable,
            // and a finish with the same digest is answered again.
            return Ok((complete_info(id, record, from)?, None));
        }
        self.verified(id).await?;
        if from == 0 {
            info!(upload = %id, name = record.file_name, "resumed");
        }
        let info = self.attach(who, (id, record), from, events).await?;
        Ok((info, Some(id)))
    }

    /// `finish`: publishes the upload whose content hash is `digest`, or answers again for one
    /// published already. A complete upload whose file is gone is forgotten and `not_found`.
    pub async fn finish(
        &self,
        who: &Principal,
        raw_id: &str,
        digest: Digest,
    ) -> Result<Finished, WireError> {
        let (id, record) = self.owned_fresh(who, raw_id).await?;
        let store = self.store();
        if record.state == RecordState::Complete && store.published_missing(&record) {
            // Its file is gone (removed by hand, or lost): the upload is forgotten, and the
            // client told so, so it uploads the file again instead of skipping it.
            let store = store.clone();
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
            return Ok(Finished {
                upload_id: id.to_string(),
                file_name: shown_name(who, &record, record.final_name.clone()),
                size: record.size,
                content_hash: stored,
            });
        }
        self.verified(id).await?;
        let shown = record.clone();
        let driver = self.driver(id, record).await?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Finish { digest, reply });
        let published = rx.await.map_err(|_| {
            WireError::new(ErrorCode::BadState, "the upload was aborted meanwhile")
        })??;
        Ok(Finished {
            upload_id: id.to_string(),
            file_name: shown_name(who, &shown, Some(published.file_name)),
            size: published.size,
            content_hash: published.content_hash.to_hex(),
        })
    }

    /// `abort`: deletes an unfinished upload and gives back what it counted against its link.
    pub async fn abort(&self, who: &Principal, raw_id: &str) -> Result<UploadId, WireError> {
        self.remove(who, raw_id, "aborted").await
    }

    /// Deletes an unfinished upload (see `Msg::Abort` for `reason`).
    async fn remove(
        &self,
        who: &Principal,
        raw_id: &str,
        reason: &'static str,
    ) -> Result<UploadId, WireError> {
        let (id, record) = self.owned_fresh(who, raw_id).await?;
        if record.state == RecordState::Complete {
            return Err(WireError::new(
                ErrorCode::BadState,
                "the upload is complete; it cannot be aborted",
            ));
        }
        let driver = self.driver(id, record.clone()).await?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Abort { reason, reply });
        rx.await
            .map_err(|_| WireError::new(ErrorCode::BadState, "the upload finished meanwhile"))??;
        self.give_back_to_link(&record);
        Ok(id)
    }

    /// Creates a folder under the owner's folder (an empty folder of an uploaded tree); the
    /// folder as created, `/`-separated.
    pub async fn mkdir(&self, who: &Principal, dir: &[String]) -> Result<String, WireError> {
        let dir = name::sanitize_dir(dir)
            .map_err(|e| WireError::new(ErrorCode::InvalidName, e.to_string()))?;
        // Checked and made under the owner's lock, like a create's limits.
        let _counting = self.owner_lock(&who.owner).await;
        if self.backend.files_are_local() {
            self.check_entries(&who.owner, self.store().missing_dirs(&who.owner, &dir))?;
        }
        let made = dir.join("/");
        self.backend
            .mkdir(&who.owner, dir)
            .await
            .map_err(|e| storage(&e, "failed to create the folder"))?;
        Ok(made)
    }

    /// Whether to read a chunk stream's payload, for an upload the caller attached: the
    /// driver's verdict, and the driver to report the payload to.
    pub async fn verdict(
        &self,
        who: &Principal,
        id: UploadId,
        header: ChunkHeader,
    ) -> Result<(mpsc::UnboundedSender<Msg>, Verdict), WireError> {
        let Some(driver) = self.registry.get(id) else {
            return Err(WireError::new(
                ErrorCode::NotAttached,
                "send create or resume for this upload first",
            ));
        };
        self.check_deferred_room(who, id, &header)?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Header {
            conn: who.conn,
            header,
            reply,
        });
        let verdict = rx.await.map_err(|_| {
            WireError::new(ErrorCode::BadState, "the upload finished or was aborted")
        })??;
        Ok((driver, verdict))
    }

    /// An upload of unknown length counts nothing against the quota until its length is
    /// declared: with a quota set, a chunk reaching past the owner's free quota is refused
    /// here, as a tus request's bytes are (`quota_exceeded`).
    fn check_deferred_room(
        &self,
        who: &Principal,
        id: UploadId,
        header: &ChunkHeader,
    ) -> Result<(), WireError> {
        if self.tunable().quota_per_owner == 0 {
            return Ok(());
        }
        let record = match self.store().record(id) {
            Ok(Some(record)) if record.deferred => record,
            _ => return Ok(()),
        };
        let end = header
            .index
            .saturating_add(1)
            .saturating_mul(record.chunk_size);
        let room = self.room(who, &record, 0)?;
        if end > room {
            return Err(WireError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "chunk {} would take this upload of unknown length to {}, past the {} the owner's quota leaves",
                    header.index,
                    ferry_proto::units::human(end),
                    ferry_proto::units::human(room)
                ),
            ));
        }
        Ok(())
    }

    /// Detaches the caller from these uploads (its connection ended).
    pub fn detach(&self, who: &Principal, ids: impl IntoIterator<Item = UploadId>) {
        for id in ids {
            if let Some(driver) = self.registry.get(id) {
                let _ = driver.send(Msg::Detach { conn: who.conn });
            }
        }
    }

    /// The upload's driver, started if needed from what the backend holds.
    async fn driver(
        &self,
        id: UploadId,
        record: UploadRecord,
    ) -> Result<mpsc::UnboundedSender<Msg>, WireError> {
        if let Some(driver) = self.registry.get(id) {
            return Ok(driver);
        }
        let layout = record.layout().map_err(|e| internal(e.to_string()))?;
        let durable = self
            .backend
            .durable_at_start(id, &layout)
            .await
            .map_err(|e| storage(&e, "failed to list the stored chunks"))?;
        self.registry
            .get_or_start(
                &self.backend,
                self.backend.commit_policy(self.config.commit),
                (id, record),
                durable,
            )
            .map_err(|e| storage(&e, "failed to open the upload"))
    }

    /// The owner's lock, held from the check of its limits to the record of what it adds.
    async fn owner_lock(&self, owner: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.create_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(owner.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// The published path `finished` reports: the final one, or for an upload link's session the
/// asked one (a link's session does not see the owner's folder, so it is not told that a name
/// was taken and numbered).
fn shown_name(who: &Principal, record: &UploadRecord, published: Option<String>) -> String {
    match (&who.link, published) {
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

/// The code for a failed create: no room is `insufficient_storage`, a file too large for the
/// store `file_too_large`, a taken or exhausted name keeps its code.
fn create_error(e: &anyhow::Error) -> WireError {
    if let Some(no_space) = e.downcast_ref::<crate::store::NoSpace>() {
        WireError::new(ErrorCode::InsufficientStorage, no_space.to_string())
    } else if let Some(large) = e.downcast_ref::<crate::store::TooLargeForStore>() {
        WireError::new(ErrorCode::FileTooLarge, large.to_string())
    } else if e.downcast_ref::<crate::store::NameTaken>().is_some() {
        WireError::new(ErrorCode::AlreadyExists, format!("{e:#}"))
    } else if e.downcast_ref::<crate::store::NameExhausted>().is_some() {
        WireError::new(ErrorCode::NameExhausted, format!("{e:#}"))
    } else if let Some(over) = e.downcast_ref::<crate::store::s3::OverLimit>() {
        let code = match over {
            crate::store::s3::OverLimit::Uploads { .. } => ErrorCode::TooManyUploads,
            _ => ErrorCode::QuotaExceeded,
        };
        WireError::new(code, over.to_string())
    } else {
        storage(e, "failed to create the upload")
    }
}

/// A complete upload as `resumed` describes it: every chunk durable.
fn complete_info(id: UploadId, record: UploadRecord, from: u64) -> Result<UploadInfo, WireError> {
    let layout = record.layout().map_err(|e| internal(e.to_string()))?;
    let all = ChunkSet::full(layout.count());
    let (durable, durable_next) = all.to_wire_page(from, ferry_proto::MAX_RANGES_PER_FRAME);
    Ok(UploadInfo {
        upload_id: id.to_string(),
        file_name: record.file_name,
        size: layout.size(),
        chunk_size: layout.chunk_size(),
        chunk_count: layout.count(),
        durable,
        durable_offset: layout.size(),
        durable_next,
        deferred: false,
    })
}

pub(crate) fn internal(e: impl ToString) -> WireError {
    WireError::new(ErrorCode::Internal, e.to_string())
}

pub(crate) fn storage(e: &anyhow::Error, what: &str) -> WireError {
    WireError::from_error(e, what)
}

//! Bytes at an offset: the service call under front ends whose clients send a byte stream
//! (tus and the IETF draft over HTTP) rather than chunks.
//!
//! A request's body is cut at the upload's chunk boundaries. Each whole chunk takes the same
//! path as a chunk stream of `ferry/1`: the driver's verdict, the bytes written and hashed off
//! the runtime threads (a worker per request, fed through a bounded channel), the digest handed
//! to the driver, which acknowledges it once durable. The request is answered only after every
//! chunk it completed is acknowledged, so the offset it reports is the durable offset.
//!
//! A request that ends (or breaks off) inside a chunk keeps those bytes: they are synced and
//! recorded as the upload's [`Tail`] with their SHA-256, and the upload's offset includes them.
//! The next request re-reads them, checks the digest and continues the chunk's hash; a `ferry`
//! client resuming the upload sends that chunk whole (the tail counts only while every chunk
//! before it is durable and it is not).
//!
//! With a checksum (tus `Upload-Checksum`) nothing of the body is handed to the driver or
//! recorded as a tail until the whole body matched it: on a mismatch the bytes are not kept.
//!
//! A second request for the same upload takes it over (like a second `resume`): the first
//! stops where it is and its partial chunk is not recorded.

use bytes::Bytes;
use ferry_proto::ErrorCode;
use tokio::sync::oneshot;

use crate::driver::{Msg, WireError};
use crate::outbox::Outbox;
use crate::store::{RecordState, Tail, UploadId, UploadRecord};

use super::{internal, storage, Finished, Principal, Uploads};

mod checksum;
mod run;
mod worker;

pub use checksum::{Checksum, CHECKSUM_ALGORITHMS};
use run::Run;

/// The next piece of a request body; `None` at its end.
pub trait ByteSource: Send {
    fn next(&mut self) -> impl std::future::Future<Output = Option<Result<Bytes, String>>> + Send;
}

/// Where an upload stands for a byte-stream client.
#[derive(Debug, Clone)]
pub struct Offset {
    pub id: UploadId,
    pub record: UploadRecord,
    /// The durable offset: the contiguous durable chunks and the tail after them.
    pub offset: u64,
}

impl Offset {
    /// The length, unless it is still to be declared.
    pub fn length(&self) -> Option<u64> {
        (!self.record.deferred).then_some(self.record.size)
    }

    pub fn complete(&self) -> bool {
        self.record.state != RecordState::Receiving
            || (!self.record.deferred && self.offset == self.record.size)
    }
}

/// One request's bytes.
pub struct Append<S> {
    /// Where the client says its bytes start: must be the durable offset.
    pub at: u64,
    pub body: S,
    /// The length, declared with these bytes (tus `Upload-Length` on a deferred upload).
    pub length: Option<u64>,
    /// The body ends the upload: its end is the length (the IETF draft's `Upload-Complete`).
    pub last: bool,
    /// The body's checksum, checked before any of it is kept.
    pub checksum: Option<Checksum>,
}

/// What an append achieved.
pub struct Appended {
    /// The durable offset now.
    pub offset: u64,
    pub length: Option<u64>,
    /// Published: the last byte arrived (and the upload is not a tus partial one).
    pub finished: Option<Finished>,
    /// The body broke off (the client went away, or stalled); what arrived before is kept.
    pub broken: Option<String>,
}

/// Why an append kept nothing of its body.
#[derive(Debug)]
pub enum AppendError {
    /// The offset asked is not the durable offset.
    Conflict {
        offset: u64,
    },
    /// The body does not match its checksum.
    ChecksumMismatch {
        algorithm: &'static str,
    },
    /// The body goes past the upload's length (or the largest file, or the owner's quota).
    TooLarge {
        limit: u64,
    },
    /// Another request took the upload over meanwhile.
    TakenOver,
    Wire(WireError),
}

impl From<WireError> for AppendError {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

impl Uploads {
    /// The durable offset of an upload the caller may see.
    pub async fn offset(&self, who: &Principal, raw_id: &str) -> Result<Offset, WireError> {
        let (id, record) = self.owned_fresh(who, raw_id).await?;
        if record.state != RecordState::Receiving {
            let offset = record.size;
            return Ok(Offset { id, record, offset });
        }
        self.verified(id).await?;
        let prefix = self.durable_prefix(id, &record).await?;
        let tail = self.tail_after(id, &record, prefix)?;
        if tail.is_some() {
            // A tail is visible in the database a moment before its record is synced (its bytes
            // are synced before it is written): the offset given out must be durable.
            self.store()
                .flush()
                .await
                .map_err(|e| storage(&e, "failed to sync the database"))?;
        }
        let offset = prefix + tail.map_or(0, |t| t.len);
        Ok(Offset { id, record, offset })
    }

    /// Declares the length of an upload created without one; under the owner's lock, counted
    /// against the quota and the upload link's bounds like a create.
    pub async fn set_length(
        &self,
        who: &Principal,
        id: UploadId,
        record: UploadRecord,
        size: u64,
    ) -> Result<UploadRecord, WireError> {
        if size > self.config.max_file_size {
            return Err(WireError::new(
                ErrorCode::FileTooLarge,
                format!(
                    "the file ({}) is larger than the server's limit of {}",
                    ferry_proto::units::human(size),
                    ferry_proto::units::human(self.config.max_file_size)
                ),
            ));
        }
        let _counting = self.owner_lock(&who.owner).await;
        self.check_owner_limits(who, size, false, &[])?;
        if let Some(link) = &record.link {
            self.add_to_link(link, size)?;
        }
        let driver = self.driver(id, record.clone()).await?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::SetLength { size, reply });
        let declared = rx
            .await
            .map_err(|_| WireError::new(ErrorCode::BadState, "the upload was aborted meanwhile"))
            .and_then(|r| r);
        if declared.is_err() {
            if let Some(link) = &record.link {
                let _ = self
                    .store()
                    .add_link_usage(link, 0, -i64::try_from(size).unwrap_or(0));
            }
        }
        declared
    }

    /// Appends a request's body at `append.at` (see the module's notes). The body is read to
    /// its end, or until it breaks off, goes past the length, or the upload is taken over.
    pub async fn append<S: ByteSource>(
        &self,
        who: &Principal,
        raw_id: &str,
        append: Append<S>,
    ) -> Result<Appended, AppendError> {
        let (id, mut record) = self.owned_fresh(who, raw_id).await?;
        if record.state != RecordState::Receiving {
            // Complete already: nothing to add; the client learns the offset.
            if append.at != record.size {
                return Err(AppendError::Conflict {
                    offset: record.size,
                });
            }
            return Ok(Appended {
                offset: record.size,
                length: Some(record.size),
                finished: None,
                broken: None,
            });
        }
        self.verified(id).await?;
        let (events, drain) = Outbox::new();
        let info = self.attach(who, (id, record.clone()), 0, events).await?;
        let attached = Attached {
            uploads: self,
            who,
            id,
        };
        if let Some(length) = append.length {
            if record.deferred {
                record = self.set_length(who, id, record, length).await?;
            } else if length != record.size {
                return Err(WireError::new(
                    ErrorCode::BadField,
                    format!("the upload's length is {}, not {length}", record.size),
                )
                .into());
            }
        }
        let prefix = info.durable_offset;
        let tail = self.tail_after(id, &record, prefix)?;
        let offset = prefix + tail.map_or(0, |t| t.len);
        if append.at != offset {
            return Err(AppendError::Conflict { offset });
        }
        let room = self.room(who, &record, offset)?;
        let mut run = Run::new(self, who, id, &record, drain)?;
        let outcome = run
            .receive(append.body, offset, room, tail, append.checksum)
            .await;
        let (held, open, broken) = match outcome {
            Ok(received) => received,
            Err(e) => {
                run.abandon_all().await;
                return Err(e);
            }
        };
        run.report(held);
        // Nothing more comes from this request: what it handed over is committed now.
        let _ = run.driver.send(Msg::Flush);
        let mut kept_tail = None;
        if let Some((index, len, hasher)) = open {
            // The chunk the body ended in: its bytes are kept as the tail, unless the body
            // ends the upload, whose length is then declared and the chunk is whole.
            let _ = run.driver.send(Msg::Abandoned { index });
            if append.last && record.deferred {
                run.wait_for_acks().await?;
                let end = index.get() * record.chunk_size + len;
                record = self.set_length(who, id, record, end).await?;
                run.layout = record.layout().map_err(internal)?;
                run.deliver_whole(index, len, hasher).await?;
            } else if len > 0 {
                kept_tail = Some(run.keep_tail(index, len, hasher).await?);
            }
        } else if append.last && record.deferred && broken.is_none() {
            run.wait_for_acks().await?;
            record = self.set_length(who, id, record, run.end).await?;
            run.layout = record.layout().map_err(internal)?;
        }
        run.wait_for_acks().await?;
        let prefix = self.durable_prefix(id, &record).await?;
        let tail_len = kept_tail
            .filter(|t| t.index * record.chunk_size == prefix)
            .map_or(0, |t| t.len);
        let offset = prefix + tail_len;
        drop(attached);
        let length = (!record.deferred).then_some(record.size);
        let mut finished = None;
        if length == Some(offset) && !record.partial {
            finished = Some(self.finish_here(who, id, &record).await?);
        }
        Ok(Appended {
            offset,
            length,
            finished,
            broken,
        })
    }

    /// Publishes an upload of length 0 (nothing to send: complete at its creation).
    pub async fn finish_empty(
        &self,
        who: &Principal,
        id: UploadId,
        record: &UploadRecord,
    ) -> Result<Finished, WireError> {
        self.finish_here(who, id, record).await
    }

    /// Publishes an upload whose every byte is durable, with the content hash of its chunk
    /// digests on record (the client of a byte stream computes none).
    pub(super) async fn finish_here(
        &self,
        who: &Principal,
        id: UploadId,
        record: &UploadRecord,
    ) -> Result<Finished, WireError> {
        let layout = record.layout().map_err(internal)?;
        let digest = self
            .backend
            .content_hash(id, layout)
            .await
            .map_err(|e| storage(&e, "failed to read the chunk digests"))?;
        self.finish(who, &id.to_string(), digest).await
    }

    /// The durable contiguous prefix of an upload, in bytes: from its driver if one runs,
    /// else from the backend.
    async fn durable_prefix(&self, id: UploadId, record: &UploadRecord) -> Result<u64, WireError> {
        if let Some(driver) = self.registry.get(id) {
            let (reply, rx) = oneshot::channel();
            let _ = driver.send(Msg::Info { reply });
            if let Ok(info) = rx.await {
                return Ok(info.durable_offset);
            }
        }
        let layout = record.layout().map_err(internal)?;
        let durable = self
            .backend
            .durable_at_start(id, &layout)
            .await
            .map_err(|e| storage(&e, "failed to list the stored chunks"))?;
        Ok(layout.prefix_bytes(&durable))
    }

    /// The upload's tail, if it continues the durable prefix `prefix`.
    fn tail_after(
        &self,
        id: UploadId,
        record: &UploadRecord,
        prefix: u64,
    ) -> Result<Option<Tail>, WireError> {
        let tail = self
            .store()
            .tail(id)
            .map_err(|e| storage(&e, "failed to read the upload's partial chunk"))?;
        let layout = record.layout().map_err(internal)?;
        Ok(tail.filter(|t| {
            t.index * record.chunk_size == prefix
                && layout
                    .index(t.index)
                    .is_ok_and(|index| t.len < layout.span(index).len)
        }))
    }

    /// How many bytes past `offset` this upload may take: to its length, or for one of
    /// unknown length to the largest file and the owner's free quota.
    pub(super) fn room(
        &self,
        who: &Principal,
        record: &UploadRecord,
        offset: u64,
    ) -> Result<u64, WireError> {
        if !record.deferred {
            return Ok(record.size - offset);
        }
        let mut room = self.config.max_file_size.saturating_sub(offset);
        let quota = self.tunable().quota_per_owner;
        if quota > 0 {
            let published = self
                .store()
                .published_bytes(&who.owner)
                .map_err(|e| storage(&e, "failed to read the owner's usage"))?;
            let staged: u64 = self
                .store()
                .list(&who.owner)
                .map_err(|e| storage(&e, "failed to list uploads"))?
                .iter()
                .filter(|(_, r)| r.state != RecordState::Complete && !r.deferred)
                .map(|(_, r)| r.size)
                .sum();
            let free = quota.saturating_sub(published.saturating_add(staged));
            room = room.min(free.saturating_sub(offset));
        }
        Ok(room)
    }

    /// Counts `size` more bytes against an upload link's bound (a declared length).
    fn add_to_link(&self, link_id: &str, size: u64) -> Result<(), WireError> {
        let link = self
            .links
            .get(link_id)
            .map_err(|e| storage(&e, "failed to read the upload links"))?;
        let Some(link) = link else {
            return Err(WireError::new(
                ErrorCode::Unauthorized,
                "this upload link was revoked or has expired",
            ));
        };
        let (_, bytes) = self
            .store()
            .link_usage(&link.id)
            .map_err(|e| storage(&e, "failed to read the link's usage"))?;
        if link.max_size > 0 && bytes.saturating_add(size) > link.max_size {
            return Err(WireError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "this upload link allows {} in all; {} were created through it and this file has {}",
                    ferry_proto::units::human(link.max_size),
                    ferry_proto::units::human(bytes),
                    ferry_proto::units::human(size)
                ),
            ));
        }
        self.store()
            .add_link_usage(&link.id, 0, i64::try_from(size).unwrap_or(i64::MAX))
            .map_err(|e| storage(&e, "failed to count the link's usage"))
    }
}

/// Detaches the request from its upload when it ends, however it ends.
struct Attached<'a> {
    uploads: &'a Uploads,
    who: &'a Principal,
    id: UploadId,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.uploads.detach(self.who, [self.id]);
    }
}

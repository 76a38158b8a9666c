//! Uploads that grow while they are sent (a file still being written, a pipe): the length
//! declared at the end (`declare_length`), durable chunks sent again after their region of the
//! source was rewritten (`rewrite`), and the durable prefix read back while the upload arrives
//! (`read_view`). All three need the bytes in files here: with the s3 store they are refused.

use std::path::PathBuf;

use ferry_proto::{ErrorCode, UploadInfo, MAX_REWRITE_PER_FRAME};
use tokio::sync::oneshot;

use super::{internal, Principal, Uploads};
use crate::driver::{Msg, WireError};
use crate::store::RecordState;

/// Where an upload's acknowledged bytes can be read, and how many there are.
pub struct ReadView {
    /// The staging file of an unfinished upload, the published file of a complete one.
    pub path: PathBuf,
    /// The contiguous durable prefix: bytes `0..durable` are verified and synced.
    pub durable: u64,
    pub complete: bool,
}

impl Uploads {
    /// Whether uploads of unknown length, rewrites and reads are available: the store keeps
    /// the bytes in files on this machine.
    pub fn can_grow(&self) -> bool {
        self.backend.files_are_local()
    }

    fn need_local(&self, what: &str) -> Result<(), WireError> {
        if self.can_grow() {
            return Ok(());
        }
        Err(WireError::new(
            ErrorCode::Refused,
            format!("{what} needs the server's local store; this server stores uploads in a bucket (--store s3)"),
        ))
    }

    /// Checks that a `create` of unknown length can be served.
    pub fn check_deferred(&self) -> Result<(), WireError> {
        self.need_local("an upload of unknown length")
    }

    /// `set_length` (and `finish.size` on an upload still of unknown length): declares the
    /// length, counted against the quota and link bounds as at create. For an upload whose
    /// length is known, the same length is answered as it is; another is `bad_state`.
    pub async fn declare_length(
        &self,
        who: &Principal,
        raw_id: &str,
        size: u64,
    ) -> Result<UploadInfo, WireError> {
        let (id, record) = self.owned_fresh(who, raw_id).await?;
        if record.state == RecordState::Complete && record.size == size {
            // A finish repeated after its reply was lost.
            return super::complete_info(id, record, 0);
        }
        if !record.deferred && record.size != size {
            return Err(WireError::new(
                ErrorCode::BadState,
                format!("the upload's length is {} already, not {size}", record.size),
            ));
        }
        self.verified(id).await?;
        let record = if record.deferred {
            self.set_length(who, id, record, size).await?
        } else {
            record
        };
        let driver = self.driver(id, record).await?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Info { reply });
        rx.await
            .map_err(|_| WireError::new(ErrorCode::BadState, "the upload was aborted meanwhile"))
    }

    /// `rewrite`: the durable chunks `chunks` of an unfinished upload are forgotten (durably),
    /// so the client sends them again with their new content.
    pub async fn rewrite(
        &self,
        who: &Principal,
        raw_id: &str,
        chunks: Vec<u64>,
    ) -> Result<Vec<u64>, WireError> {
        self.need_local("rewrite")?;
        if chunks.len() > MAX_REWRITE_PER_FRAME {
            return Err(WireError::new(
                ErrorCode::BadField,
                format!(
                    "a rewrite names at most {MAX_REWRITE_PER_FRAME} chunks, not {}",
                    chunks.len()
                ),
            ));
        }
        let (id, record) = self.owned_fresh(who, raw_id).await?;
        if record.state != RecordState::Receiving {
            return Err(WireError::new(
                ErrorCode::BadState,
                "the upload is complete; nothing of it can be sent again",
            ));
        }
        self.verified(id).await?;
        let driver = self.driver(id, record).await?;
        let (reply, rx) = oneshot::channel();
        let _ = driver.send(Msg::Rewrite { chunks, reply });
        rx.await
            .map_err(|_| WireError::new(ErrorCode::BadState, "the upload finished meanwhile"))?
    }

    /// Where the acknowledged bytes of an upload are: for its owner's token sessions only (an
    /// upload link cannot read anything back).
    pub async fn read_view(&self, who: &Principal, raw_id: &str) -> Result<ReadView, WireError> {
        // A read link reads its one upload as its owner would; an upload link reads nothing.
        let owner;
        let who =
            match who.link.as_ref().map(|l| l.read.as_deref()) {
                None => who,
                Some(Some(readable)) if readable.eq_ignore_ascii_case(raw_id) => {
                    owner = Principal {
                        link: None,
                        ..who.clone()
                    };
                    &owner
                }
                Some(Some(_)) => {
                    return Err(WireError::new(
                        ErrorCode::NotFound,
                        format!("no upload {raw_id} for this read link"),
                    ))
                }
                Some(None) => return Err(WireError::new(
                    ErrorCode::Refused,
                    "an upload link cannot read uploads back; the owner's token or a read link can",
                )),
            };
        self.need_local("reading an upload back")?;
        let offset = self.offset(who, raw_id).await?;
        let store = self.store();
        if offset.record.state == RecordState::Complete {
            let name =
                offset.record.final_name.clone().ok_or_else(|| {
                    internal("a complete upload without a published name".to_owned())
                })?;
            return Ok(ReadView {
                path: store.owner_dir(&offset.record.owner).join(name),
                durable: offset.record.size,
                complete: true,
            });
        }
        Ok(ReadView {
            path: store.staging_path(offset.id),
            durable: offset.offset,
            complete: false,
        })
    }
}

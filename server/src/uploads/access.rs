//! Which upload a caller may touch: its record if the caller may see it (another owner's
//! upload answers exactly like a missing one), brought up to date from a shared store, and
//! re-verified after an unclean stop before anything builds on it.

use ferry_proto::ErrorCode;

use super::{storage, Principal, Uploads};
use crate::driver::WireError;
use crate::store::{UploadId, UploadRecord};

impl Uploads {
    /// The record of `raw_id` if it exists and the caller may see it. Another owner's upload
    /// (or for a link, one made otherwise) is reported exactly like a missing one.
    pub fn owned(
        &self,
        who: &Principal,
        raw_id: &str,
    ) -> Result<(UploadId, UploadRecord), WireError> {
        let not_found = || WireError::new(ErrorCode::NotFound, format!("no upload {raw_id:.40}"));
        let id = UploadId::parse(raw_id).ok_or_else(not_found)?;
        let link = who.link.as_ref().map(|l| &l.id);
        let visible = |r: &UploadRecord| {
            r.owner == who.owner && link.is_none_or(|id| r.link.as_ref() == Some(id))
        };
        let store = self.store();
        match store.record(id) {
            Ok(Some(record)) if visible(&record) => Ok((id, record)),
            Ok(Some(_)) => Err(not_found()),
            Ok(None) => match store.tombstone(id) {
                Ok(Some(t)) if t.owner == who.owner => Err(WireError::new(
                    ErrorCode::Expired,
                    format!("upload {id} expired at {} (Unix time) after making no progress; start it afresh", t.expired_at),
                )),
                Ok(_) => Err(not_found()),
                Err(e) => Err(storage(&e, "failed to read the upload")),
            },
            Err(e) => Err(storage(&e, "failed to read the upload")),
        }
    }

    /// Like [`Uploads::owned`], with this node's record brought up to date first when the
    /// store is shared and no driver here holds the upload.
    pub async fn owned_fresh(
        &self,
        who: &Principal,
        raw_id: &str,
    ) -> Result<(UploadId, UploadRecord), WireError> {
        if let Some(id) = UploadId::parse(raw_id) {
            if self.registry.get(id).is_none() {
                self.backend
                    .refresh(id, &who.owner)
                    .await
                    .map_err(|e| storage(&e, "failed to read the upload's manifest"))?;
            }
        }
        self.owned(who, raw_id)
    }

    /// Waits until `id` is re-verified, if an unclean stop left it to verify (`crate::verify`):
    /// a `resume` or `finish` must not build on chunks that may no longer match.
    pub(super) async fn verified(&self, id: UploadId) -> Result<(), WireError> {
        match &self.verifier {
            Some(verifier) => verifier
                .ready(id)
                .await
                .map_err(|e| storage(&e, "failed to re-verify the upload")),
            None => Ok(()),
        }
    }
}

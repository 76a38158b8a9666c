//! `finish`: the content hash checked against the chunk digests on record, then the upload
//! published — into the data directory, or with the s3 store completed in the bucket.

use std::time::Instant;

use ferry_proto::{Digest, ErrorCode};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Driver, Published, Step, WireError};
use crate::metrics::metrics;
use crate::store::s3::{PublishError, S3};

impl Driver {
    pub(super) async fn finish(
        &mut self,
        digest: Digest,
        reply: oneshot::Sender<Result<Published, WireError>>,
    ) -> Step {
        if let Err(e) = self.session.handle_finish() {
            let _ = reply.send(Err(WireError::new(e.code(), e.to_string())));
            return Step::Continue;
        }
        if let Some(s3) = self.s3.clone() {
            return self.finish_remote(&s3, digest, reply).await;
        }
        let (store, id, record) = (self.store.clone(), self.id, self.record.clone());
        let started = Instant::now();
        // The content hash comes from the chunk digests on record, each checked against the
        // bytes when they arrived (and again after an unclean stop): no data is read again.
        let layout = *self.session.layout();
        let result =
            tokio::task::spawn_blocking(move || -> anyhow::Result<Result<String, Digest>> {
                let actual = store.content_hash(id, &layout)?;
                if actual != digest {
                    return Ok(Err(actual));
                }
                Ok(Ok(store.publish(id, &record, digest)?))
            })
            .await;
        let outcome = match result {
            Ok(Ok(Ok(file_name))) => {
                // From create to publish, interruptions included.
                let took = crate::store::unix_now()
                    .saturating_sub(self.record.created_at)
                    .max(1);
                info!(
                    owner = self.record.owner,
                    path = file_name,
                    size = self.record.size,
                    upload_s = took,
                    rate_mib_s =
                        format!("{:.1}", self.record.size as f64 / took as f64 / 1048576.0),
                    publish_ms = started.elapsed().as_millis() as u64,
                    "published"
                );
                Ok(Published {
                    file_name,
                    size: self.record.size,
                    content_hash: digest,
                })
            }
            Ok(Ok(Err(actual))) => Err(WireError::new(
                ErrorCode::FileDigestMismatch,
                format!(
                    "the chunks on the server give the content hash {actual}, finish said {digest}"
                ),
            )),
            Ok(Err(e)) if e.downcast_ref::<crate::store::NameTaken>().is_some() => {
                Err(WireError::new(ErrorCode::AlreadyExists, format!("{e:#}")))
            }
            Ok(Err(e)) if e.downcast_ref::<crate::store::NameExhausted>().is_some() => {
                Err(WireError::new(ErrorCode::NameExhausted, format!("{e:#}")))
            }
            Ok(Err(e)) => Err(WireError::new(ErrorCode::StorageError, format!("{e:#}"))),
            Err(e) => Err(WireError::new(ErrorCode::Internal, e.to_string())),
        };
        let done = outcome.is_ok();
        match &outcome {
            Ok(_) => {
                metrics().uploads_completed.inc();
            }
            Err(e) => metrics().failed(e.code.as_str()),
        }
        self.session.handle_finalized(done);
        let _ = reply.send(outcome);
        if done {
            Step::Stop
        } else {
            Step::Continue
        }
    }

    /// `finish` with the s3 store: the bucket's parts are checked against the markers and
    /// completed (`S3::publish`), then recorded here.
    pub(super) async fn finish_remote(
        &mut self,
        s3: &S3,
        digest: Digest,
        reply: oneshot::Sender<Result<Published, WireError>>,
    ) -> Step {
        let started = Instant::now();
        let count = self.session.layout().count();
        let result = s3.publish(self.id, &self.record, count, digest).await;
        let outcome = match result {
            Ok(done) => {
                let (store, id, url) = (
                    self.store.clone(),
                    self.id,
                    done.remote
                        .as_ref()
                        .map_or(String::new(), |r| s3.url(&r.key)),
                );
                let name = done.final_name.clone().unwrap_or_default();
                let recorded =
                    tokio::task::spawn_blocking(move || store.complete_remote(id, &done, &url))
                        .await;
                match recorded {
                    Ok(Ok(())) => Ok(name),
                    // The object is complete in the bucket whatever this node failed to note.
                    Ok(Err(e)) => {
                        warn!(error = %format!("{e:#}"), "published, but not recorded here");
                        Ok(name)
                    }
                    Err(e) => Err(WireError::new(ErrorCode::Internal, e.to_string())),
                }
            }
            Err(e @ PublishError::Mismatch { .. }) => {
                Err(WireError::new(ErrorCode::FileDigestMismatch, e.to_string()))
            }
            Err(e @ PublishError::Missing(_)) => {
                Err(WireError::new(ErrorCode::Incomplete, e.to_string()))
            }
            Err(e @ PublishError::Taken(_)) => {
                Err(WireError::new(ErrorCode::AlreadyExists, e.to_string()))
            }
            Err(PublishError::Store(e)) => {
                Err(WireError::new(ErrorCode::StorageError, format!("{e:#}")))
            }
        };
        let done = outcome.is_ok();
        match &outcome {
            Ok(name) => {
                metrics().uploads_completed.inc();
                info!(
                    owner = self.record.owner,
                    path = name,
                    size = self.record.size,
                    publish_ms = started.elapsed().as_millis() as u64,
                    "published"
                );
            }
            Err(e) => metrics().failed(e.code.as_str()),
        }
        // Chunks found missing at finish are durable no longer: this driver stops, and the
        // next resume starts from the bucket's markers.
        let stop = done
            || outcome
                .as_ref()
                .is_err_and(|e| e.code == ErrorCode::Incomplete);
        self.session.handle_finalized(done);
        let _ = reply.send(outcome.map(|file_name| Published {
            file_name,
            size: self.record.size,
            content_hash: digest,
        }));
        if stop {
            Step::Stop
        } else {
            Step::Continue
        }
    }
}

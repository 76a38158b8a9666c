//! `finish`: the content hash checked and the upload published by the backend
//! (`Backend::publish`), then the session told how it went.

use std::time::Instant;

use ferry_proto::{Digest, ErrorCode};
use tokio::sync::oneshot;
use tracing::info;

use super::{Driver, Published, Step, WireError};
use crate::metrics::metrics;

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
        let started = Instant::now();
        let layout = *self.session.layout();
        let outcome = self
            .backend
            .publish(self.id, &self.record, layout, digest)
            .await;
        let done = outcome.is_ok();
        match &outcome {
            Ok(published) => {
                metrics().completed(self.record.frontend.as_deref().unwrap_or("quic"));
                // From create to publish, interruptions included.
                let took = crate::store::unix_now()
                    .saturating_sub(self.record.created_at)
                    .max(1);
                info!(
                    owner = self.record.owner,
                    path = published.file_name,
                    size = self.record.size,
                    upload_s = took,
                    rate_mib_s =
                        format!("{:.1}", self.record.size as f64 / took as f64 / 1048576.0),
                    publish_ms = started.elapsed().as_millis() as u64,
                    "published"
                );
            }
            Err(e) => metrics().failed(e.code.as_str()),
        }
        // Chunks found missing at finish (another node rewrote them in the bucket) are durable
        // no longer: this driver stops, and the next resume starts from what the store holds.
        // Gone from the bucket (aborted or expired through another node): nothing to drive.
        let stop = done
            || outcome
                .as_ref()
                .is_err_and(|e| matches!(e.code, ErrorCode::Incomplete | ErrorCode::NotFound));
        self.session.handle_finalized(done);
        let _ = reply.send(outcome.map(|published| Published {
            file_name: published.file_name,
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

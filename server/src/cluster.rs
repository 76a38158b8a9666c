//! What a node of a service sharing one bucket (`--store s3`) does beside uploads: it mirrors
//! the bucket's token file into `DATA/tokens` (so logins and revocations work as with the local
//! store), and sweeps the bucket's abandoned uploads, whichever node began them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tracing::{info, warn};

use crate::store::s3::S3;
use crate::store::{unix_now, RecordState};
use crate::uploads::Uploads;
use crate::Tokens;

/// How often the bucket's token file is fetched. A token unknown at login is fetched at once
/// (at most once a second, `crate::auth`), so an added token works at its first use; a
/// revocation reaches every node within this period (plus the revocation watcher's 100 ms).
const TOKENS_POLL: Duration = Duration::from_secs(2);

/// Copies the bucket's token file over `DATA/tokens` (an absent one means no tokens).
pub(crate) async fn mirror_tokens(s3: &S3, tokens: &Tokens) -> Result<bool> {
    let bytes = s3.tokens().await?.unwrap_or_default();
    tokens.replace(&bytes)
}

/// A bucket without a token file gets this node's (a local installation moved to the s3
/// store keeps its tokens); one with a token file is left alone.
pub(crate) async fn seed_tokens(s3: &S3, tokens: &Tokens) -> Result<()> {
    let local = tokens.bytes();
    if !local.is_empty() && s3.tokens().await?.is_none() {
        tokens.entries()?;
        s3.put_tokens(local).await?;
        info!("the bucket had no tokens; this node's were copied into it");
    }
    Ok(())
}

pub(crate) async fn tokens_forever(s3: Arc<S3>, auth: Arc<crate::auth::Auth>) {
    // Bounded by the process: one fetch per period.
    loop {
        tokio::time::sleep(TOKENS_POLL).await;
        if let Err(e) = mirror_tokens(&s3, auth.tokens()).await {
            warn!(error = %format!("{e:#}"), "cannot fetch the tokens from the bucket");
        }
    }
}

/// Every `sweep_interval`: each upload in the bucket that is still receiving and shows no
/// progress (no marker, no manifest written) for `expire_after` has its multipart upload
/// aborted and its manifest and markers deleted; a finished upload's manifest goes after the
/// same time. Every node sweeps; a second abort of the same upload finds nothing to do.
pub(crate) async fn sweep_forever(s3: Arc<S3>, uploads: Arc<Uploads>) {
    // Bounded by the process: one sweep per turn.
    loop {
        tokio::time::sleep(uploads.config().sweep_interval).await;
        let expire = uploads.tunable().expire_after.as_secs();
        if expire == 0 {
            continue;
        }
        if let Err(e) = sweep(&uploads, &s3, expire).await {
            warn!(error = %format!("{e:#}"), "sweep of the bucket failed");
        }
        let _ = uploads
            .store()
            .prune_tombstones(unix_now().saturating_sub(crate::tasks::TOMBSTONE_LIFE));
    }
}

async fn sweep(uploads: &Uploads, s3: &S3, expire: u64) -> Result<()> {
    let now = unix_now();
    let cutoff = now.saturating_sub(expire);
    for (id, written) in s3.manifests().await? {
        if written >= cutoff {
            continue;
        }
        let Some(manifest) = s3.manifest(id).await? else {
            continue;
        };
        let record = manifest.record;
        if record.state != RecordState::Receiving {
            // Finished long ago (or a publish that stopped half way, long ago): the manifest
            // was the answer to a repeated `finish`; it goes now.
            if record.state == RecordState::Complete {
                s3.abort(id, &record).await?;
                let store = uploads.store().clone();
                tokio::task::spawn_blocking(move || store.remove(id)).await??;
            }
            continue;
        }
        if s3.last_activity(id, written).await? >= cutoff {
            continue;
        }
        // A driver on this node decides itself: it refuses while a connection drives it.
        let expired = match uploads.registry().get(id) {
            Some(driver) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let _ = driver.send(crate::driver::Msg::Expire { now, reply });
                answer.await.unwrap_or(false)
            }
            None => {
                s3.abort(id, &record).await?;
                let (store, owner) = (uploads.store().clone(), record.owner.clone());
                tokio::task::spawn_blocking(move || store.expire(id, &owner, now)).await??;
                true
            }
        };
        if expired {
            crate::metrics::metrics().failed("expired");
            info!(upload = %id, owner = record.owner, "expired after making no progress");
        }
    }
    Ok(())
}

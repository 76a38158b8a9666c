//! The local node's background tasks: the expiry sweep of the data directory's uploads, and
//! the watch that closes the sessions of revoked tokens and links. (`cluster.rs` has the s3
//! store's sweep.)

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::auth::Auth;
use crate::store;
use crate::uploads::Uploads;

/// Tombstones of expired uploads are kept this long, for a clear error on resume.
pub(crate) const TOMBSTONE_LIFE: u64 = 30 * 24 * 3600;

/// Removes uploads that made no progress for `expire_after`, every `sweep_interval`.
pub(crate) async fn sweep_forever(uploads: Arc<Uploads>) {
    let store = uploads.store().clone();
    // Bounded by the process: one sweep per turn.
    loop {
        tokio::time::sleep(uploads.config().sweep_interval).await;
        let expire = uploads.tunable().expire_after.as_secs();
        if expire == 0 {
            continue;
        }
        let now = store::unix_now();
        let reading = store.clone();
        let stale =
            tokio::task::spawn_blocking(move || reading.stale(now.saturating_sub(expire))).await;
        let stale = match stale {
            Ok(Ok(stale)) => stale,
            Ok(Err(e)) => {
                warn!(error = %format!("{e:#}"), "sweep failed");
                continue;
            }
            Err(_) => continue,
        };
        for (id, record) in stale {
            if uploads
                .registry()
                .expire_if_idle(&store, id, &record.owner, now)
                .await
            {
                info!(upload = %id, owner = record.owner, "expired after making no progress");
                // What it counted against its upload link comes back.
                if let Err(e) = store.give_back_to_link(&record) {
                    warn!(error = %format!("{e:#}"), "failed to give back a link's usage");
                }
            }
        }
        let _ = store.prune_tombstones(now.saturating_sub(TOMBSTONE_LIFE));
    }
}

/// How often the tokens file is looked at for revocations.
const TOKENS_POLL: Duration = Duration::from_millis(100);

/// Watches the tokens and links files (every [`TOKENS_POLL`]) and closes, within that time,
/// every live session whose token or upload link is no longer in them (`token_revoked`). It
/// checks every live credential when a file changed (its inode, change time or bytes: a write
/// always replaces the file) or a session logged in since its last look, so a token added,
/// used and revoked within one look is caught too. New sessions always read the files, so
/// added ones work at once without this. (An upload link that expires while a session lives
/// keeps the session; its next `create` is refused.)
pub(crate) async fn revoke_forever(auth: Arc<Auth>) {
    let mut seen = auth.look();
    loop {
        tokio::time::sleep(TOKENS_POLL).await;
        let now = auth.look();
        if now == seen {
            continue;
        }
        seen = now;
        auth.close_revoked();
    }
}

/// How often free memory is handed back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Gives glibc's free memory back to the system every few seconds. Chunk buffers are
/// allocated on the runtime's threads and freed on the blocking pool's, and glibc keeps what
/// is freed in each thread's arena: over a long upload the server's RSS grew to twice its live
/// memory (after a 4 GiB upload, `malloc_trim` gave back 30 of 50 MiB; docs/benchmarks.md).
/// One call walks the arenas' free lists: well under a millisecond here.
pub(crate) async fn trim_forever() {
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory; it is thread-safe in glibc.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

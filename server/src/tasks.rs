//! The local node's background tasks: the expiry sweep of the data directory's uploads, and
//! the watch that closes the connections of revoked tokens. (`cluster.rs` has the s3 store's.)

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::ErrorCode;
use tracing::{info, warn};

use crate::{store, Shared};

/// Tombstones of expired uploads are kept this long, for a clear error on resume.
pub(crate) const TOMBSTONE_LIFE: u64 = 30 * 24 * 3600;

/// Removes uploads that made no progress for `expire_after`, every `sweep_interval`.
pub(crate) async fn sweep_forever(shared: Arc<Shared>) {
    // Bounded by the process: one sweep per turn.
    loop {
        tokio::time::sleep(shared.config.sweep_interval).await;
        let expire = shared.tunable().expire_after.as_secs();
        if expire == 0 {
            continue;
        }
        let now = store::unix_now();
        let store = shared.store.clone();
        let stale =
            tokio::task::spawn_blocking(move || store.stale(now.saturating_sub(expire))).await;
        let stale = match stale {
            Ok(Ok(stale)) => stale,
            Ok(Err(e)) => {
                warn!(error = %format!("{e:#}"), "sweep failed");
                continue;
            }
            Err(_) => continue,
        };
        for (id, record) in stale {
            if shared
                .registry
                .expire_if_idle(&shared.store, id, &record.owner, now)
                .await
            {
                info!(upload = %id, owner = record.owner, "expired after making no progress");
                // What it counted against its upload link comes back.
                if let Err(e) = shared.store.give_back_to_link(&record) {
                    warn!(error = %format!("{e:#}"), "failed to give back a link's usage");
                }
            }
        }
        let _ = shared
            .store
            .prune_tombstones(now.saturating_sub(TOMBSTONE_LIFE));
    }
}

/// How often the tokens file is looked at for revocations.
const TOKENS_POLL: Duration = Duration::from_millis(100);

/// Watches the tokens and links files (every [`TOKENS_POLL`]) and closes, within that time,
/// every live connection whose token or upload link is no longer in them (`token_revoked`).
/// It checks every live credential when a file changed (its inode, change time or bytes: a
/// write always replaces the file) or a connection logged in since its last look, so a
/// token added, used and revoked within one look is caught too. New connections always read
/// the files, so added ones work at once without this. (An upload link that expires while a
/// session lives keeps the session; its next `create` is refused.)
pub(crate) async fn revoke_forever(shared: Arc<Shared>) {
    let look = || {
        // The count first: a login counted after it is looked at next time.
        let logins = shared.logins.load(Ordering::Acquire);
        (logins, shared.tokens.snapshot(), shared.links.snapshot())
    };
    let mut seen = look();
    loop {
        tokio::time::sleep(TOKENS_POLL).await;
        let now = look();
        if now == seen {
            continue;
        }
        seen = now;
        close_revoked(&shared);
    }
}

/// Closes every live connection whose token or upload link is no longer in the files. A file
/// that is invalid right now keeps every connection (logged; fixed, it is looked at again).
pub(crate) fn close_revoked(shared: &Shared) {
    let (tokens, links) = match (shared.tokens.entries(), shared.links.entries()) {
        (Ok(tokens), Ok(links)) => (tokens, links),
        (Err(e), _) | (_, Err(e)) => {
            return warn!(error = %format!("{e:#}"), "tokens or links file changed but is invalid; live connections kept");
        }
    };
    let live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
    for (conn, (credential, connection)) in live.iter() {
        if !credential.valid(&tokens, &links) {
            info!(conn, "token or upload link revoked; closing its connection");
            connection.close(ErrorCode::TokenRevoked, "token revoked");
        }
    }
}

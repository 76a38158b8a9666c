//! The local node's background tasks: the expiry sweep of the data directory's uploads, and
//! the watch that closes the connections of revoked tokens. (`cluster.rs` has the s3 store's.)

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::ErrorCode;
use quinn::VarInt;
use tracing::{info, warn};

use crate::{store, Shared, Tokens};

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
            }
        }
        let _ = shared
            .store
            .prune_tombstones(now.saturating_sub(TOMBSTONE_LIFE));
    }
}

/// How often the tokens file is looked at for revocations.
const TOKENS_POLL: Duration = Duration::from_millis(100);

/// Watches the tokens file (every [`TOKENS_POLL`]) and closes, within that time, every live
/// connection whose token is no longer in it (`token_revoked`). New connections always read
/// the file, so added tokens work at once without this.
pub(crate) async fn revoke_forever(shared: Arc<Shared>) {
    let mut seen = shared.tokens.snapshot();
    loop {
        tokio::time::sleep(TOKENS_POLL).await;
        let now = shared.tokens.snapshot();
        if now == seen {
            continue;
        }
        seen = now;
        let entries = match shared.tokens.entries() {
            Ok(entries) => entries,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "tokens file changed but is invalid; live connections kept");
                continue;
            }
        };
        let live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        for (conn, (hash, connection)) in live.iter() {
            if Tokens::find(&entries, hash).is_none() {
                info!(conn, "token revoked; closing its connection");
                connection.close(
                    VarInt::from_u32(ErrorCode::TokenRevoked.quic_code()),
                    b"token revoked",
                );
            }
        }
    }
}

//! What a node of a service sharing one bucket (`--store s3`) does beside uploads: it mirrors
//! the bucket's tokens and upload links into `DATA/tokens` and `DATA/links` (so logins and
//! revocations work as with the local store), and sweeps the bucket's abandoned uploads,
//! whichever node began them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tracing::{info, warn};

use crate::links::Links;
use crate::store::s3::{Kind, S3};
use crate::store::{unix_now, RecordState};
use crate::uploads::Uploads;
use crate::Tokens;

/// How often the bucket's tokens and links are fetched. An unknown token or grant at login is
/// fetched at once (at most once a second, `crate::auth`), so an added one works at its first
/// use; a revocation reaches every node within this period (plus the revocation watcher's
/// 100 ms).
const CREDENTIALS_POLL: Duration = Duration::from_secs(2);

/// Written in the data directory once its links came from the bucket: until then the node's
/// own `DATA/links` (links were kept per node before they were kept in the bucket) is added to
/// the bucket at start; after, never again (a link revoked while this node was down must not
/// come back from its old copy).
const LINKS_FROM_BUCKET: &str = "links-from-bucket";

/// Copies the bucket's tokens and links over `DATA/tokens` and `DATA/links`; whether either
/// changed.
pub(crate) async fn mirror(s3: &S3, tokens: &Tokens, links: &Links) -> Result<bool> {
    let tokens_changed = tokens.replace(&s3.credentials(Kind::Tokens).await?)?;
    let links_changed = links.replace(&s3.credentials(Kind::Links).await?)?;
    Ok(tokens_changed || links_changed)
}

/// At start, brings into the bucket what older layouts kept elsewhere, then mirrors it: the
/// single token object `P/tokens` (imported, then deleted), this node's tokens when the bucket
/// has none (a local installation moved to the s3 store keeps its tokens), and this node's links
/// if it never took them from the bucket.
pub(crate) async fn seed(s3: &S3, tokens: &Tokens, links: &Links, data: &Path) -> Result<()> {
    if let Some(legacy) = s3.legacy_tokens().await? {
        let n = import_tokens(s3, &legacy).await?;
        s3.delete_legacy_tokens().await?;
        info!(
            tokens = n,
            "the bucket's token file was moved to one object per token"
        );
    }
    let local = tokens.bytes();
    if !local.is_empty() && !s3.has_credentials(Kind::Tokens).await? {
        tokens.entries()?;
        let n = import_tokens(s3, &local).await?;
        info!(
            tokens = n,
            "the bucket had no tokens; this node's were copied into it"
        );
    }
    let marker = data.join(LINKS_FROM_BUCKET);
    if !marker.exists() {
        let own = links.entries()?;
        for link in &own {
            s3.add_credential(Kind::Links, &link.id, &serde_json::to_string(link)?)
                .await?;
        }
        if !own.is_empty() {
            info!(
                links = own.len(),
                "this node's upload links were copied into the bucket"
            );
        }
    }
    mirror(s3, tokens, links).await?;
    if !marker.exists() {
        crate::fsutil::write_private(&marker, b"")?;
    }
    Ok(())
}

/// Adds each `NAME SHA256HEX` line of a token file to the bucket (a name there already keeps
/// its entry); how many lines there were.
async fn import_tokens(s3: &S3, file: &[u8]) -> Result<usize> {
    let text = String::from_utf8_lossy(file);
    let mut n = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((name, _)) = line.split_once(' ') else {
            anyhow::bail!("token file line {line:?}: expected `NAME SHA256HEX`");
        };
        crate::tokens::validate_owner("token name", name)?;
        s3.add_credential(Kind::Tokens, name, line).await?;
        n += 1;
    }
    Ok(n)
}

pub(crate) async fn credentials_forever(s3: Arc<S3>, auth: Arc<crate::auth::Auth>) {
    // Bounded by the process: one fetch per period.
    loop {
        tokio::time::sleep(CREDENTIALS_POLL).await;
        match mirror(&s3, auth.tokens(), auth.links()).await {
            Ok(_) => s3.note_answer(),
            // An outage is logged once by `note_failure`; anything else each time.
            Err(e) if s3.note_failure(&e) => {}
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot fetch the tokens and links from the bucket")
            }
        }
    }
}

/// Brings this node's records of uploads in progress that no driver here holds up to date
/// from their manifests, at start and at every sweep: one finished through another node is
/// recorded complete, one aborted or expired elsewhere is removed with its spool. Without it a
/// node killed mid-upload kept such an upload `receiving` forever after its restart, with its
/// spool file, counted against the owner's limits. At start (`spools`) the spool files are also
/// emptied: they hold only chunks that were not acknowledged, which the clients send again.
pub(crate) async fn reconcile(uploads: &Uploads, spools: bool) {
    let store = uploads.store().clone();
    let local = match tokio::task::spawn_blocking(move || store.in_progress()).await {
        Ok(Ok(local)) => local,
        Ok(Err(e)) => {
            return warn!(error = %format!("{e:#}"), "cannot list the uploads in progress")
        }
        Err(e) => return warn!(error = %e, "cannot list the uploads in progress"),
    };
    let (mut finished, mut gone) = (0, 0);
    for (id, record, _) in local {
        if uploads.registry().get(id).is_some() {
            continue;
        }
        if let Err(e) = uploads.backend().refresh(id, &record.owner).await {
            warn!(upload = %id, error = %format!("{e:#}"), "cannot read the upload's manifest");
            continue;
        }
        match uploads.store().record(id) {
            Ok(None) => gone += 1,
            Ok(Some(now)) if now.state == RecordState::Complete => finished += 1,
            Ok(Some(now)) if spools => {
                if let Ok(file) = std::fs::OpenOptions::new()
                    .write(true)
                    .open(uploads.store().staging_path(id))
                {
                    crate::fsutil::punch_hole(&file, 0, now.size);
                }
            }
            _ => {}
        }
    }
    if finished + gone > 0 {
        info!(
            finished,
            gone, "uploads finished, aborted or expired through other nodes are settled here"
        );
    }
}

/// A reservation older than this whose upload has no manifest is a create that died half way
/// (or a give-back that failed): the sweep gives it back.
const STALE_RESERVATION: u64 = 3600;

/// The owners' usage brought in line with the manifests, at every sweep: a reservation whose
/// upload was published is counted as published, one whose upload is gone (a node died
/// between the reservation and the manifest, or the give-back failed) is given back.
pub(crate) async fn settle_usage(s3: &S3) -> Result<()> {
    let cutoff = unix_now().saturating_sub(STALE_RESERVATION);
    for owner in s3.usage_owners().await? {
        let usage = s3.usage(&owner).await?;
        for (raw, reserved) in &usage.receiving {
            let Some(id) = crate::store::UploadId::parse(raw) else {
                continue;
            };
            let published = match s3.manifest(id).await? {
                Some(m) if m.record.state == RecordState::Complete => Some(m.record.size),
                Some(_) => continue,
                None if reserved.at < cutoff => None,
                None => continue,
            };
            s3.release(&owner, id, published).await?;
            info!(upload = %id, owner, "a stale reservation of the owner's usage was settled");
        }
    }
    Ok(())
}

/// While the store does not answer, asks it once a second (`HeadBucket`), so the commits that
/// wait for it (`store::backend`) go on as soon as it is back.
pub(crate) async fn store_watch_forever(s3: Arc<S3>) {
    // Bounded by the process: one look a second.
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if s3.outage().is_some() && s3.answers().await {
            s3.note_answer();
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
        reconcile(&uploads, false).await;
        if let Err(e) = settle_usage(&s3).await {
            warn!(error = %format!("{e:#}"), "cannot settle the owners' usage");
        }
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

/// `ferryd token …` and `ferryd link …` with `--store s3`: runs `edit` on a scratch data
/// directory holding the bucket's `tokens` or `links` file, then applies what it changed to the
/// bucket one entry at a time — entries gone are deleted, new ones created only if absent — so
/// nothing another node adds at the same moment is lost. A new entry whose id (a token's name,
/// a link's id) was taken meanwhile is an error, and `edit`'s result (a token, a link's grant)
/// is not returned: nothing is printed that would not work.
pub async fn edit_credentials<T>(
    s3: &S3,
    kind: Kind,
    edit: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let scratch = tempfile::tempdir()?;
    let file = scratch.path().join(match kind {
        Kind::Tokens => "tokens",
        Kind::Links => "links",
    });
    let before = s3.credentials(kind).await?;
    std::fs::write(&file, &before)?;
    let out = edit(scratch.path())?;
    let after = std::fs::read(&file).unwrap_or_default();
    let (old, new) = (entries(kind, &before), entries(kind, &after));
    for (id, line) in &old {
        if new.get(id) != Some(line) {
            s3.remove_credential(kind, id).await?;
        }
    }
    for (id, line) in &new {
        if old.get(id) != Some(line) && !s3.add_credential(kind, id, line).await? {
            match kind {
                Kind::Tokens => anyhow::bail!(
                    "a token named {id:?} exists already (added through another node just now); revoke it first"
                ),
                Kind::Links => anyhow::bail!("link id {id} was taken just now; run the command again"),
            }
        }
    }
    Ok(out)
}

/// The lines of a tokens or links file by their entry's id.
fn entries(kind: Kind, file: &[u8]) -> std::collections::BTreeMap<String, String> {
    String::from_utf8_lossy(file)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|line| {
            let id = match kind {
                Kind::Tokens => line.split_once(' ').map(|(name, _)| name.to_owned()),
                Kind::Links => serde_json::from_str::<crate::links::Link>(line)
                    .ok()
                    .map(|l| l.id),
            }?;
            Some((id, line.to_owned()))
        })
        .collect()
}

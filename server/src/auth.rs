//! Who may upload: bearer tokens and upload links, the throttle on failed logins, and the
//! registry of live sessions a revocation closes. Every front end logs its clients in here and
//! gets a [`Login`]; the watch in `tasks.rs` closes what a revocation took away.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proto::ErrorCode;
use tracing::{info, warn};

use crate::guard::AuthThrottle;
use crate::links::{Link, Links};
use crate::store::s3::S3;
use crate::tokens::{Entry, Tokens};

/// What a session logged in with, for the watch that closes revoked ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The SHA-256 of a token.
    Token([u8; 32]),
    /// The id of an upload link.
    Link(String),
}

/// A successful login.
pub struct Login {
    pub owner: String,
    pub credential: Credential,
    /// The upload link, when the credential is one.
    pub link: Option<Link>,
}

/// Ends a live session (a QUIC connection, a WebTransport session, an HTTP exchange) with a
/// code and a reason.
pub type Closer = Arc<dyn Fn(ErrorCode, &str) + Send + Sync>;

/// With the s3 store a token or link added on another node reaches this one through the bucket:
/// fetched at most this often on demand (an unknown token or grant).
const FETCH_AT_MOST_EVERY: Duration = Duration::from_secs(1);

pub struct Auth {
    tokens: Tokens,
    links: Arc<Links>,
    throttle: AuthThrottle,
    /// Live sessions by id, with their credential: a revoked one is closed. At most the
    /// connection limits' worth of entries: added at login, removed when the session ends.
    live: Mutex<HashMap<u64, (Credential, Closer)>>,
    /// Counts registrations in `live`: the revocation watch checks every live credential when it
    /// moved, so a token added, used and revoked between two of its looks is caught too.
    logins: AtomicU64,
    /// The bucket that holds the service's tokens and links, with `--store s3`.
    bucket: Option<Arc<S3>>,
    /// When the bucket's tokens and links were last fetched on demand.
    fetched: tokio::sync::Mutex<Option<Instant>>,
}

impl Auth {
    pub fn new(tokens: Tokens, links: Arc<Links>, bucket: Option<Arc<S3>>) -> Self {
        Self {
            tokens,
            links,
            throttle: AuthThrottle::default(),
            live: Default::default(),
            logins: AtomicU64::new(0),
            bucket,
            fetched: Default::default(),
        }
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    pub fn links(&self) -> &Arc<Links> {
        &self.links
    }

    /// Who `token` is: a token's owner, or an upload link (a grant, `fl_…`) and its owner.
    /// `Ok(Err(message))` for an unknown token or link, or a link that expired.
    pub async fn login(&self, token: &str) -> anyhow::Result<Result<Login, &'static str>> {
        if token.starts_with(crate::links::GRANT_PREFIX) {
            let mut link = self.links.find(token)?;
            // With the s3 store a link made through another node may not be mirrored here yet.
            if link.is_none() && self.fetch_now().await {
                link = self.links.find(token)?;
            }
            return Ok(match link {
                Some(link) if link.expired(crate::store::unix_now()) => {
                    Err("this upload link has expired")
                }
                Some(link) => Ok(Login {
                    owner: link.owner.clone(),
                    credential: Credential::Link(link.id.clone()),
                    link: Some(link),
                }),
                None => Err("unknown or revoked upload link"),
            });
        }
        let mut verified = self.tokens.verify(token)?;
        // With the s3 store a token added on another node may not be mirrored here yet.
        if verified.is_none() && self.fetch_now().await {
            verified = self.tokens.verify(token)?;
        }
        Ok(match verified {
            Some(owner) => Ok(Login {
                owner,
                credential: Credential::Token(crate::tokens::hash(token)),
                link: None,
            }),
            None => Err("unknown token"),
        })
    }

    /// A failed login from `ip`: how long to wait before answering it (growing per address,
    /// `guard::AuthThrottle`).
    pub fn failed(&self, ip: IpAddr) -> Duration {
        crate::metrics::metrics().auth_failures.inc();
        self.throttle.fail(ip, Instant::now())
    }

    /// Registers a live session: a revocation of its credential from now on calls `close`.
    /// Removed when the guard drops.
    pub fn register(self: &Arc<Self>, id: u64, credential: Credential, close: Closer) -> Live {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(id, (credential, close));
        // After the insert: the revocation watch looks at every live credential when it moves.
        self.logins.fetch_add(1, Ordering::Release);
        Live {
            auth: self.clone(),
            id,
        }
    }

    /// Whether `credential` is still in the files (their last valid version while one is
    /// invalid).
    pub fn still_valid(&self, credential: &Credential) -> bool {
        match (self.tokens.usable(), self.links.usable()) {
            (Ok(tokens), Ok(links)) => credential.valid(&tokens, &links),
            // Unreadable since the login read them: the revocation watch decides.
            _ => true,
        }
    }

    /// What the revocation watch compares between two looks: the logins so far and the two
    /// files' identities.
    pub(crate) fn look(&self) -> (u64, crate::tokens::Snapshot, crate::tokens::Snapshot) {
        // The count first: a login counted after it is looked at next time.
        let logins = self.logins.load(Ordering::Acquire);
        (logins, self.tokens.snapshot(), self.links.snapshot())
    }

    /// Closes every live session whose token or upload link is no longer in the files. A file
    /// that is invalid right now keeps every session (logged; fixed, it is looked at again).
    pub(crate) fn close_revoked(&self) {
        let (tokens, links) = match (self.tokens.entries(), self.links.entries()) {
            (Ok(tokens), Ok(links)) => (tokens, links),
            (Err(e), _) | (_, Err(e)) => {
                return warn!(error = %format!("{e:#}"), "tokens or links file changed but is invalid; live connections kept");
            }
        };
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for (conn, (credential, close)) in live.iter() {
            if !credential.valid(&tokens, &links) {
                info!(conn, "token or upload link revoked; closing its connection");
                close(ErrorCode::TokenRevoked, "token revoked");
            }
        }
    }

    /// With the s3 store, at a login with an unknown token or grant: fetches the bucket's
    /// tokens and links now, unless that was done within [`FETCH_AT_MOST_EVERY`]. Returns
    /// whether a file changed.
    async fn fetch_now(&self) -> bool {
        let Some(bucket) = &self.bucket else {
            return false;
        };
        let mut last = self.fetched.lock().await;
        if last.is_some_and(|t| t.elapsed() < FETCH_AT_MOST_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        crate::cluster::mirror(bucket, &self.tokens, &self.links)
            .await
            .unwrap_or(false)
    }
}

impl Credential {
    /// Whether the credential is among `tokens` and `links` (the files as read now).
    pub(crate) fn valid(&self, tokens: &[Entry], links: &[Link]) -> bool {
        match self {
            Self::Token(hash) => Tokens::find(tokens, hash).is_some(),
            Self::Link(id) => links.iter().any(|l| &l.id == id),
        }
    }
}

/// A live session's entry in the registry, removed on drop.
pub struct Live {
    auth: Arc<Auth>,
    id: u64,
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut live = self.auth.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&self.id);
    }
}

//! ferry-server: the QUIC endpoint of Ferry. `Server::bind` opens the data directory (sled
//! store, certificate, tokens) and the UDP socket; `Server::run` accepts connections until the
//! shutdown future resolves, then lets every upload driver commit what it received, marks the
//! store clean and returns.

mod admin;
mod cluster;
mod conn;
mod driver;
mod fsutil;
mod guard;
pub mod hooks;
pub mod metrics;
mod outbox;
pub mod store;
pub mod tls;
pub mod tokens;
mod transport;
mod verify;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_proto::{CommitPolicy, ErrorCode, Limits, MAX_FRAME};
use quinn::VarInt;
use tracing::{info, warn};

pub use store::{OpenReport, Store};
pub use tokens::Tokens;

/// Everything `ferryd serve` can be told.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Largest file accepted at create.
    pub max_file_size: u64,
    pub min_chunk_size: u64,
    pub max_chunk_size: u64,
    /// Chunk streams one connection may have open at once.
    pub max_streams: u64,
    /// A connection with no traffic (not even keep-alives) for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for the TLS handshake and the `hello` frame.
    pub handshake_timeout: Duration,
    pub commit: CommitPolicy,
    /// Use this certificate and key instead of the generated one.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// Free disk space kept for the database: uploads that would eat into it are refused at
    /// create, and commits stop (clients are told `storage_full` and retry) while free space
    /// is below it.
    pub min_free_space: u64,
    /// Congestion controller for what the server sends (acks and replies: little).
    pub congestion: ferry_proto::Congestion,
    /// Uploads in progress per owner; 0 for no limit.
    pub max_uploads_per_owner: u64,
    /// Stored plus staged bytes per owner; 0 for no limit.
    pub quota_per_owner: u64,
    /// Connections at once, in total and from one IP address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Connections still logging in (handshake and `hello`), in total and from one address:
    /// a budget apart from the logged-in connections, the oldest evicted when it is full.
    pub max_pending_logins: usize,
    pub max_pending_logins_per_ip: usize,
    /// A stream that stops in the middle of a frame or a chunk payload for this long is cut
    /// off (`stream_timeout`), so a slow or stuck client cannot hold a slot forever.
    pub stream_timeout: Duration,
    /// Unfinished uploads without progress for this long are removed; zero for never.
    pub expire_after: Duration,
    /// How often the sweeper looks for expired uploads.
    pub sweep_interval: Duration,
    /// Bytes per second the background re-verification after an unclean stop may read; 0 for
    /// no limit. A client's `resume` of an upload not yet verified is served at once, unpaced.
    pub verify_rate: u64,
    /// `dedup` may link to another owner's file of the same content (off by default: it
    /// tells a client that some owner has that content).
    pub dedup_across_owners: bool,
    /// The admin HTTP listener (health, metrics, uploads); `None`: off.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin listener requires (except for `/healthz`); `None`: none.
    pub admin_token: Option<String>,
    /// Command run (by `/bin/sh -c`) after each upload is published; see `crate::hooks`.
    pub on_complete: Option<String>,
    /// Command run before each upload is created; a non-zero exit refuses it.
    pub on_create: Option<String>,
    /// `--on-complete` runs at once, at most.
    pub hook_concurrency: usize,
    /// An `--on-complete` run is killed after this long.
    pub hook_timeout: Duration,
    /// Store into this S3 bucket (`--store s3`); `None`: the local data directory.
    pub s3: Option<store::s3::S3Settings>,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            max_file_size: 1 << 40,
            min_chunk_size: 4 << 10,
            max_chunk_size: 64 << 20,
            max_streams: 32,
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            commit: CommitPolicy::default(),
            cert: None,
            min_free_space: 64 << 20,
            congestion: ferry_proto::Congestion::default(),
            max_uploads_per_owner: 16,
            quota_per_owner: 0,
            max_connections: 256,
            max_connections_per_ip: 16,
            max_pending_logins: 64,
            max_pending_logins_per_ip: 8,
            stream_timeout: Duration::from_secs(30),
            expire_after: Duration::from_secs(7 * 24 * 3600),
            sweep_interval: Duration::from_secs(600),
            verify_rate: 200 << 20,
            dedup_across_owners: false,
            admin_listen: None,
            admin_token: None,
            on_complete: None,
            on_create: None,
            hook_concurrency: 2,
            hook_timeout: Duration::from_secs(300),
            s3: None,
        }
    }

    /// The settings SIGHUP can change without a restart.
    pub fn tunable(&self) -> Tunable {
        Tunable {
            max_uploads_per_owner: self.max_uploads_per_owner,
            quota_per_owner: self.quota_per_owner,
            expire_after: self.expire_after,
            dedup_across_owners: self.dedup_across_owners,
            on_complete: self.on_complete.clone(),
            on_create: self.on_create.clone(),
            hook_timeout: self.hook_timeout,
        }
    }

    /// The limits announced in `welcome`.
    pub fn limits(&self) -> Limits {
        Limits {
            max_file_size: self.max_file_size,
            min_chunk_size: self.min_chunk_size,
            max_chunk_size: self.max_chunk_size,
            max_streams: self.max_streams,
            max_frame: MAX_FRAME as u64,
            max_uploads: self.max_uploads_per_owner,
            quota: self.quota_per_owner,
            expire_after: self.expire_after.as_secs(),
        }
    }
}

/// The part of the configuration a reload (SIGHUP) changes in a running server; the rest
/// takes effect at the next start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunable {
    pub max_uploads_per_owner: u64,
    pub quota_per_owner: u64,
    pub expire_after: Duration,
    pub dedup_across_owners: bool,
    pub on_complete: Option<String>,
    pub on_create: Option<String>,
    pub hook_timeout: Duration,
}

impl Tunable {
    /// `key: old → new` for every setting that differs, named like the options.
    fn changes(&self, new: &Self) -> Vec<String> {
        let mut out = Vec::new();
        let mut note = |key: &str, old: String, new: String| {
            if old != new {
                out.push(format!("{key}: {old} → {new}"));
            }
        };
        note(
            "max-uploads",
            self.max_uploads_per_owner.to_string(),
            new.max_uploads_per_owner.to_string(),
        );
        note(
            "quota",
            self.quota_per_owner.to_string(),
            new.quota_per_owner.to_string(),
        );
        note(
            "expire-after",
            format!("{}s", self.expire_after.as_secs()),
            format!("{}s", new.expire_after.as_secs()),
        );
        note(
            "dedup-across-owners",
            self.dedup_across_owners.to_string(),
            new.dedup_across_owners.to_string(),
        );
        note(
            "on-complete",
            format!("{:?}", self.on_complete),
            format!("{:?}", new.on_complete),
        );
        note(
            "on-create",
            format!("{:?}", self.on_create),
            format!("{:?}", new.on_create),
        );
        note(
            "hook-timeout",
            format!("{}s", self.hook_timeout.as_secs()),
            format!("{}s", new.hook_timeout.as_secs()),
        );
        out
    }
}

/// Changes a running server's [`Tunable`] settings (what SIGHUP does in `ferryd`).
#[derive(Clone)]
pub struct Reloader(Arc<Shared>);

impl Reloader {
    /// Applies `config`'s tunable settings and returns what changed (`key: old → new`);
    /// logs it, and names the settings that differ but need a restart.
    pub fn reload(&self, config: &Config) -> Vec<String> {
        let new = config.tunable();
        let changed = {
            let mut current = self.0.tunable.write().unwrap_or_else(|p| p.into_inner());
            let changed = current.changes(&new);
            *current = new;
            changed
        };
        self.0.store.set_queue_hooks(config.on_complete.is_some());
        let old = &self.0.config;
        let mut fixed = Vec::new();
        if old.listen != config.listen {
            fixed.push("listen");
        }
        if old.data_dir != config.data_dir {
            fixed.push("data");
        }
        if old.cert != config.cert {
            fixed.push("cert/key");
        }
        if old.admin_listen != config.admin_listen || old.admin_token != config.admin_token {
            fixed.push("admin-listen/admin-token");
        }
        if old.max_connections != config.max_connections
            || old.max_connections_per_ip != config.max_connections_per_ip
        {
            fixed.push("max-connections");
        }
        if changed.is_empty() {
            info!("reloaded: no setting that a reload changes differs");
        } else {
            info!(changed = changed.join("; "), "reloaded");
        }
        if !fixed.is_empty() {
            warn!(
                settings = fixed.join(", "),
                "changed settings that take effect only at the next start"
            );
        }
        changed
    }
}

/// State every connection shares.
pub(crate) struct Shared {
    config: Config,
    /// The settings a reload changes; read them here, not from `config`.
    tunable: std::sync::RwLock<Tunable>,
    /// The operator's notice (`ferryd notice`), sent in `welcome`; kept in `DATA/notice`.
    notice: std::sync::RwLock<Option<String>>,
    /// Each new notice, for every connection to push to its client.
    notices: tokio::sync::broadcast::Sender<String>,
    store: Arc<Store>,
    tokens: Tokens,
    /// Logged-in connections by connection id, with the hash of the token each used, so a
    /// revoked token's connections can be closed. At most `max_connections` entries: a
    /// connection is added after `welcome` and removed when it ends.
    live: std::sync::Mutex<std::collections::HashMap<u64, ([u8; 32], quinn::Connection)>>,
    registry: Arc<driver::Registry>,
    limiter: Arc<guard::ConnLimiter>,
    pending: Arc<guard::PendingPool>,
    /// One lock per owner, held from the check of the owner's limits to the record of a new
    /// upload, so concurrent creates cannot all pass a check meant for one. One entry per
    /// owner that created something: bounded by the tokens file.
    create_locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// After an unclean stop, until every upload is re-verified; `None` after a clean one.
    verifier: Option<Arc<verify::Verifier>>,
    throttle: guard::AuthThrottle,
    /// The bucket, with `--store s3`.
    s3: Option<Arc<store::s3::S3>>,
    /// The service id announced in `welcome`.
    service: String,
    /// With `--store s3`: when the tokens were last fetched on demand (an unknown token).
    tokens_fetched: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// Where the operator's notice is kept, in the data directory.
const NOTICE_FILE: &str = "notice";
/// Longest notice, in bytes.
pub const MAX_NOTICE: usize = 1024;

impl Shared {
    /// The operator's notice, if any.
    pub(crate) fn notice(&self) -> Option<String> {
        self.notice
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets (or, with `None`, clears) the notice: kept durably for `welcome`, and pushed to
    /// every connected client.
    pub(crate) fn set_notice(&self, text: Option<String>) -> Result<()> {
        let path = self.config.data_dir.join(NOTICE_FILE);
        match &text {
            Some(text) => fsutil::write_atomic(&path, text.as_bytes())?,
            None if path.exists() => fsutil::remove_file_durable(&path)?,
            None => {}
        }
        *self.notice.write().unwrap_or_else(|p| p.into_inner()) = text.clone();
        if let Some(text) = text {
            info!(text, "notice set");
            let _ = self.notices.send(text);
        } else {
            info!("notice cleared");
        }
        Ok(())
    }

    /// The current tunable settings.
    pub(crate) fn tunable(&self) -> Tunable {
        self.tunable
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The limits announced in `welcome`, with the current tunable settings.
    pub(crate) fn limits(&self) -> Limits {
        let t = self.tunable();
        Limits {
            max_uploads: t.max_uploads_per_owner,
            quota: t.quota_per_owner,
            expire_after: t.expire_after.as_secs(),
            ..self.config.limits()
        }
    }
}

/// A bound server, not yet accepting.
pub struct Server {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    fingerprint: String,
    report: OpenReport,
    /// The admin listener, bound (`--admin-listen`).
    admin: Option<std::net::TcpListener>,
}

impl Server {
    /// Opens the data directory (creating it, the certificate and the database on first start)
    /// and binds the UDP socket; with `--store s3`, reaches the bucket first.
    pub async fn bind(config: Config) -> Result<Self> {
        let dir = &config.data_dir;
        fsutil::create_dir_durable(dir)
            .with_context(|| format!("failed to create data directory {}", dir.display()))?;
        // The socket first: a port in use must not cost an unclean mark on the store (and a
        // full re-verification at the next start).
        let socket = transport::bind_udp(config.listen)?;
        let admin = match config.admin_listen {
            Some(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("failed to bind the admin listener {addr}"))?;
                listener.set_nonblocking(true)?;
                Some(listener)
            }
            None => None,
        };
        let queue_hooks = config.on_complete.is_some();
        let (store, report) =
            Store::open_with(dir, config.min_free_space, queue_hooks).map_err(|e| {
                let locked = e.chain().any(|c| c.to_string().contains("WouldBlock"));
                if locked {
                    anyhow::anyhow!(
                        "data directory {} is in use by another ferryd (its database is locked)",
                        dir.display()
                    )
                } else {
                    e.context(format!("failed to open data directory {}", dir.display()))
                }
            })?;
        let s3 = match &config.s3 {
            Some(settings) => Some(Arc::new(store::s3::S3::connect(settings).await?)),
            None => None,
        };
        let tokens = Tokens::new(dir);
        if let Some(s3) = &s3 {
            cluster::seed_tokens(s3, &tokens).await?;
            cluster::mirror_tokens(s3, &tokens).await?;
        }
        tokens
            .entries()
            .context("cannot start with this tokens file")?;
        let service = match &s3 {
            Some(s3) => s3.service_id().await?,
            None => store.service_id()?,
        };
        let store = Arc::new(store);
        // With the s3 store the staging files are spools, not the durable copy: nothing to
        // re-verify (the store checked every part's SHA-256).
        let verifier = (!report.clean && s3.is_none())
            .then(|| verify::Verifier::new(store.clone(), report.to_verify.clone()));
        let identity = match &config.cert {
            Some((cert, key)) => tls::Identity::load(cert, key)?,
            None => {
                let (identity, generated) = tls::Identity::load_or_generate(dir, config.listen)?;
                if generated {
                    info!(
                        fingerprint = identity.fingerprint(),
                        "generated a self-signed certificate"
                    );
                }
                identity
            }
        };
        let fingerprint = identity.fingerprint();
        let crypto = tls::server_crypto(identity)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(Arc::new(transport::server(&config)?));
        let (reset_key, cid_key) = tls::reset_keys(dir)?;
        let mut endpoint_config = quinn::EndpointConfig::new(reset_key);
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .with_context(|| format!("failed to start QUIC on {}", config.listen))?;
        let notice = std::fs::read_to_string(dir.join(NOTICE_FILE))
            .ok()
            .filter(|n| !n.is_empty());
        let shared = Arc::new(Shared {
            tunable: std::sync::RwLock::new(config.tunable()),
            notice: std::sync::RwLock::new(notice),
            notices: tokio::sync::broadcast::channel(16).0,
            tokens,
            live: Default::default(),
            create_locks: Default::default(),
            store,
            verifier,
            registry: Default::default(),
            limiter: guard::ConnLimiter::new(config.max_connections, config.max_connections_per_ip),
            pending: guard::PendingPool::new(
                config.max_pending_logins,
                config.max_pending_logins_per_ip,
            ),
            throttle: Default::default(),
            s3,
            service,
            tokens_fetched: Default::default(),
            config,
        });
        Ok(Self {
            endpoint,
            shared,
            fingerprint,
            report,
            admin,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// A handle to change the tunable settings while the server runs.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.shared.clone())
    }

    /// Where the admin listener listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// `sha256:<hex>` of the certificate the server presents.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// What opening the store found (clean stop or not, chunks re-verified).
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Accepts connections until `shutdown` resolves, then stops cleanly.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let next_id = AtomicU64::new(1);
        let sweeper = match self.shared.s3.is_some() {
            true => tokio::spawn(cluster::sweep_forever(self.shared.clone())),
            false => tokio::spawn(sweep_forever(self.shared.clone())),
        };
        let mirror = self
            .shared
            .s3
            .is_some()
            .then(|| tokio::spawn(cluster::tokens_forever(self.shared.clone())));
        let revoker = tokio::spawn(revoke_forever(self.shared.clone()));
        let hooks = Some(tokio::spawn(hooks::complete_forever(self.shared.clone())));
        let admin = match self.admin {
            Some(listener) => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                Some(tokio::spawn(admin::serve(listener, self.shared.clone())))
            }
            None => None,
        };
        if let Some(verifier) = &self.shared.verifier {
            tokio::spawn(verifier.clone().run(self.shared.config.verify_rate));
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let pending = self.shared.pending.admit(incoming.remote_address().ip());
                    let span = tracing::info_span!(
                        "conn",
                        id,
                        peer = %incoming.remote_address(),
                        owner = tracing::field::Empty
                    );
                    tokio::spawn(
                        tracing::Instrument::instrument(
                            conn::serve(self.shared.clone(), incoming, id, pending),
                            span,
                        ),
                    );
                }
                () = &mut shutdown => break,
            }
        }
        info!("shutting down");
        sweeper.abort();
        revoker.abort();
        if let Some(mirror) = mirror {
            mirror.abort();
        }
        if let Some(admin) = admin {
            admin.abort();
        }
        // A hook still running is killed; its job stays queued and runs at the next start.
        if let Some(hooks) = hooks {
            hooks.abort();
        }
        self.endpoint.close(
            VarInt::from_u32(ErrorCode::ShuttingDown.quic_code()),
            b"server shutting down",
        );
        self.shared.registry.shutdown(Duration::from_secs(30)).await;
        // Clean only if nothing is left to re-verify: otherwise the next start verifies again.
        if self.shared.verifier.as_ref().is_none_or(|v| v.finished()) {
            let store = self.shared.store.clone();
            tokio::task::spawn_blocking(move || store.mark_clean()).await??;
        } else {
            warn!("re-verification unfinished; the next start re-verifies");
        }
        if tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle())
            .await
            .is_err()
        {
            warn!("connections did not close in time");
        }
        info!("stopped cleanly");
        Ok(())
    }
}

/// Tombstones of expired uploads are kept this long, for a clear error on resume.
pub(crate) const TOMBSTONE_LIFE: u64 = 30 * 24 * 3600;

/// Removes uploads that made no progress for `expire_after`, every `sweep_interval`.
async fn sweep_forever(shared: Arc<Shared>) {
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
async fn revoke_forever(shared: Arc<Shared>) {
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

/// Binds and runs a server until `shutdown` resolves: what `ferryd serve` calls.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    Server::bind(config).await?.run(shutdown).await
}

//! ferry-server: the QUIC endpoint of Ferry. `Server::bind` opens the data directory (sled
//! store, certificate, tokens) and the UDP socket; `Server::run` accepts connections until the
//! shutdown future resolves, then lets every upload driver commit what it received, marks the
//! store clean and returns.

mod admin;
mod cluster;
mod config;
pub(crate) mod conn;
mod driver;
mod fsutil;
mod guard;
pub mod hooks;
mod httpconn;
pub mod links;
pub mod metrics;
mod outbox;
pub mod store;
mod tasks;
pub mod tls;
pub mod tokens;
mod transport;
mod verify;
mod web;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_proto::{ErrorCode, Limits};
use quinn::VarInt;
use tracing::{info, warn};

pub use config::{Config, Reloader, Tunable};
pub use store::{OpenReport, Store};
pub use tokens::Tokens;

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
    links: links::Links,
    /// Counts connections registered in `live`: the revocation watch checks every live
    /// credential when it moved, so a token added, used and revoked between two of its looks
    /// (the file back to its old bytes) still closes its connection.
    logins: AtomicU64,
    /// Logged-in connections by connection id, with the token (its hash) or upload link each
    /// used, so a revoked one's connections can be closed. At most `max_connections` entries: a
    /// connection is added after `welcome` and removed when it ends.
    live: std::sync::Mutex<std::collections::HashMap<u64, (conn::Credential, conn::peer::Peer)>>,
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
    /// The short-lived certificates browsers accept by hash: with the web listener and the
    /// self-signed identity only.
    browser_certs: Option<Arc<web::certs::BrowserCerts>>,
    /// The UDP port the endpoint is bound to (the pages' session port, `Alt-Svc`).
    quic_port: u16,
    /// The TCP port the web listener is bound to, if it is on.
    web_port: Option<u16>,
}

/// File descriptors kept for the QUIC path beyond what the TCP listeners may hold: a staging
/// file per active upload, the database, hook pipes.
const FD_RESERVE: usize = 1024;

/// Where the web listener's public address is recorded, in the data directory: the base of
/// the upload links `ferryd link` prints.
pub const WEB_URL_FILE: &str = "web-url";

/// The web listener's public address: `--web-url`, else `https://HOSTNAME:PORT`.
pub fn web_url(config: &Config, port: u16) -> String {
    match &config.web_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => format!(
            "https://{}:{port}",
            tls::host_name().unwrap_or_else(|| "localhost".to_owned())
        ),
    }
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
    /// The web listener, bound (`--web-listen`), and its TLS configuration.
    web: Option<(std::net::TcpListener, Arc<rustls::ServerConfig>)>,
}

impl Server {
    /// Opens the data directory (creating it, the certificate and the database on first start)
    /// and binds the UDP socket; with `--store s3`, reaches the bucket first.
    pub async fn bind(config: Config) -> Result<Self> {
        let dir = &config.data_dir;
        // The listeners' connection caps leave descriptors for the QUIC path (staging files,
        // the database, hooks): warn if the limit does not allow that.
        let fds = httpconn::raise_fd_limit();
        let listeners = config
            .web_listen
            .map_or(0, |_| httpconn::Limits::WEB.descriptors())
            + config
                .admin_listen
                .map_or(0, |_| httpconn::Limits::ADMIN.descriptors());
        let wanted = (listeners + FD_RESERVE) as u64;
        if fds > 0 && fds < wanted {
            warn!(
                limit = fds,
                wanted,
                "the open-files limit is low: raise LimitNOFILE (the listeners may hold {listeners}, and uploads need the rest)"
            );
        }
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
        let web_listener = match config.web_listen {
            Some(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("failed to bind the web listener {addr}"))?;
                listener.set_nonblocking(true)?;
                Some(listener)
            }
            None => None,
        };
        // After every socket is bound: a port in use leaves no empty data directory behind.
        fsutil::create_dir_durable(dir)
            .with_context(|| format!("failed to create data directory {}", dir.display()))?;
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
            .usable()
            .context("cannot start with this tokens file")?;
        let links = links::Links::new(dir);
        links
            .usable()
            .context("cannot start with this upload links file")?;
        let service = match &s3 {
            Some(s3) => s3.service_id().await?,
            None => store.service_id()?,
        };
        store.set_min_free_inodes(config.min_free_inodes);
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
        let browser_certs = match (&web_listener, &config.cert) {
            (Some(_), None) => Some(Arc::new(web::certs::BrowserCerts::open(
                dir,
                tls::names(config.listen),
            )?)),
            _ => None,
        };
        let web = match web_listener {
            Some(listener) => Some((listener, tls::web_crypto(&identity)?)),
            None => None,
        };
        let crypto = tls::server_crypto(identity, browser_certs.clone())?;
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
        // Where upload links point: `ferryd link` reads it, so it needs no --web-url.
        if let Some(port) = web
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| a.port())
        {
            let url = web_url(&config, port);
            fsutil::write_atomic(&dir.join(WEB_URL_FILE), format!("{url}\n").as_bytes())
                .context("failed to record the web listener's address")?;
        }
        let notice = std::fs::read_to_string(dir.join(NOTICE_FILE))
            .ok()
            .filter(|n| !n.is_empty());
        let shared = Arc::new(Shared {
            tunable: std::sync::RwLock::new(config.tunable()),
            notice: std::sync::RwLock::new(notice),
            notices: tokio::sync::broadcast::channel(16).0,
            tokens,
            links,
            logins: AtomicU64::new(0),
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
            browser_certs,
            quic_port: endpoint.local_addr()?.port(),
            web_port: web
                .as_ref()
                .and_then(|(l, _)| l.local_addr().ok())
                .map(|a| a.port()),
            config,
        });
        Ok(Self {
            endpoint,
            shared,
            fingerprint,
            report,
            admin,
            web,
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

    /// Where the web listener listens, if it is on.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().and_then(|(l, _)| l.local_addr().ok())
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
            false => tokio::spawn(tasks::sweep_forever(self.shared.clone())),
        };
        let mirror = self
            .shared
            .s3
            .is_some()
            .then(|| tokio::spawn(cluster::tokens_forever(self.shared.clone())));
        let revoker = tokio::spawn(tasks::revoke_forever(self.shared.clone()));
        let hooks = Some(tokio::spawn(hooks::complete_forever(self.shared.clone())));
        let admin = match self.admin {
            Some(listener) => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                Some(tokio::spawn(admin::serve(listener, self.shared.clone())))
            }
            None => None,
        };
        let web = match self.web {
            Some((listener, tls)) => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                Some(tokio::spawn(web::listener::serve(
                    listener,
                    tls,
                    self.shared.clone(),
                )))
            }
            None => None,
        };
        let rotation = self
            .shared
            .browser_certs
            .clone()
            .map(|certs| tokio::spawn(web::certs::rotate_forever(certs)));
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
        for task in [web, rotation].into_iter().flatten() {
            task.abort();
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

/// Binds and runs a server until `shutdown` resolves: what `ferryd serve` calls.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    Server::bind(config).await?.run(shutdown).await
}

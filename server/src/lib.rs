//! ferry-server: the server of Ferry. `Server::bind` opens the data directory (sled store,
//! certificate, tokens) and binds the sockets; `Server::run` serves until the shutdown future
//! resolves, then lets every upload driver commit what it received, marks the store clean and
//! returns.
//!
//! The layers, each knowing only the one below (`docs/architecture.md`): front ends (`conn/`:
//! `ferry/1` over QUIC and browsers' WebTransport sessions; `web/`: the page; `http/`: tus and
//! the IETF resumable-upload draft) parse their wire and call the upload service (`uploads/`),
//! which calls the storage seam (`store::Backend`: the data directory or an S3 bucket). Beside
//! them: `auth` (tokens, links, revocation), `guard` and `httpconn` (connection budgets), and the
//! operator's side (`admin`, `hooks`, `metrics`, `tasks`, `cluster`).

mod admin;
pub mod auth;
pub mod cluster;
mod config;
pub(crate) mod conn;
mod driver;
mod filebody;
mod fsutil;
mod guard;
pub mod hooks;
mod http;
mod httpconn;
pub mod links;
pub mod metrics;
mod notice;
mod outbox;
pub mod store;
mod tasks;
pub mod tls;
pub mod tokens;
mod transport;
pub mod uploads;
mod verify;
mod web;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_proto::ErrorCode;
use quinn::VarInt;
use tracing::{info, warn};

pub use config::{Config, Reloader, Tunable};
pub use notice::MAX_NOTICE;
pub use store::{OpenReport, Store};
pub use tokens::Tokens;

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

/// A bound server, not yet accepting.
pub struct Server {
    endpoint: quinn::Endpoint,
    /// The upload service every front end calls.
    uploads: Arc<uploads::Uploads>,
    auth: Arc<auth::Auth>,
    /// The QUIC front end's context (`ferry/1` and WebTransport sessions).
    quic: Arc<conn::Context>,
    /// The bucket, with `--store s3`: its token mirror and sweep run beside the service.
    bucket: Option<Arc<store::s3::S3>>,
    fingerprint: String,
    report: OpenReport,
    /// The admin listener, bound (`--admin-listen`), and what it serves from.
    admin: Option<(std::net::TcpListener, Arc<admin::Context>)>,
    /// The web listener, bound (`--web-listen`), its TLS configuration and what it serves from.
    web: Option<(
        std::net::TcpListener,
        Arc<rustls::ServerConfig>,
        Arc<web::listener::Context>,
    )>,
    browser_certs: Option<Arc<web::certs::BrowserCerts>>,
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
            Some(settings) => {
                let s3 = store::s3::S3::connect(settings).await?;
                s3.probe().await?;
                Some(Arc::new(s3))
            }
            None => None,
        };
        let tokens = Tokens::new(dir);
        let links = links::Links::new(dir);
        if let Some(s3) = &s3 {
            cluster::seed(s3, &tokens, &links, dir).await?;
        }
        tokens
            .usable()
            .context("cannot start with this tokens file")?;
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
        let quic_port = endpoint.local_addr()?.port();
        let web_port = web
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| a.port());
        let links = Arc::new(links);
        let backend = Arc::new(store::Backend::new(store, s3.clone()));
        let uploads = Arc::new(uploads::Uploads::new(
            config.clone(),
            backend,
            verifier,
            links.clone(),
            service,
        ));
        if s3.is_some() {
            // Before the server says it listens: no phantom is ever served.
            cluster::reconcile(&uploads, true).await;
        }
        let auth = Arc::new(auth::Auth::new(tokens, links, s3.clone()));
        let notices = Arc::new(notice::Notices::open(dir));
        let origins = web::Origins {
            allowed: config.web_origins.clone(),
            web_url: config.web_url.clone(),
            web_port,
        };
        let quic = Arc::new(conn::Context {
            uploads: uploads.clone(),
            auth: auth.clone(),
            notices: notices.clone(),
            limiter: guard::ConnLimiter::new(config.max_connections, config.max_connections_per_ip),
            pending: guard::PendingPool::new(
                config.max_pending_logins,
                config.max_pending_logins_per_ip,
            ),
            handshake_timeout: config.handshake_timeout,
            stream_timeout: config.stream_timeout,
            max_streams: config.max_streams,
            web: origins.clone(),
        });
        let admin = admin.map(|listener| {
            let ctx = Arc::new(admin::Context {
                uploads: uploads.clone(),
                notices: notices.clone(),
                token: config.admin_token.clone(),
            });
            (listener, ctx)
        });
        let web = web.map(|(listener, tls)| {
            let ctx = Arc::new(web::listener::Context {
                quic_port,
                browser_certs: browser_certs.clone(),
                http: http::Context::new(uploads.clone(), auth.clone(), &config, origins.clone()),
                origins,
                peers: config.web_peers.clone(),
            });
            (listener, tls, ctx)
        });
        Ok(Self {
            endpoint,
            uploads,
            auth,
            quic,
            bucket: s3,
            fingerprint,
            report,
            admin,
            web,
            browser_certs,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// A handle to change the tunable settings while the server runs.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.uploads.clone())
    }

    /// Where the admin listener listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Where the web listener listens, if it is on.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().and_then(|(l, _, _)| l.local_addr().ok())
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
        let uploads = self.uploads.clone();
        let sweeper = match &self.bucket {
            Some(s3) => tokio::spawn(cluster::sweep_forever(s3.clone(), uploads.clone())),
            None => tokio::spawn(tasks::sweep_forever(uploads.clone())),
        };
        let mirror = self
            .bucket
            .clone()
            .map(|s3| tokio::spawn(cluster::credentials_forever(s3, self.auth.clone())));
        let store_watch = self
            .bucket
            .clone()
            .map(|s3| tokio::spawn(cluster::store_watch_forever(s3)));
        let revoker = tokio::spawn(tasks::revoke_forever(self.auth.clone()));
        let trimmer = tokio::spawn(tasks::trim_forever());
        let hooks = tokio::spawn(hooks::complete_forever(uploads.clone()));
        let admin = match self.admin {
            Some((listener, ctx)) => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                Some(tokio::spawn(admin::serve(listener, ctx)))
            }
            None => None,
        };
        let web = match self.web {
            Some((listener, tls, ctx)) => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                Some(tokio::spawn(web::listener::serve(listener, tls, ctx)))
            }
            None => None,
        };
        let rotation = self
            .browser_certs
            .clone()
            .map(|certs| tokio::spawn(web::certs::rotate_forever(certs)));
        if let Some(verifier) = uploads.verifier() {
            tokio::spawn(verifier.clone().run(uploads.config().verify_rate));
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let id = session_id();
                    let pending = self.quic.pending.admit(incoming.remote_address().ip());
                    let span = tracing::info_span!(
                        "conn",
                        id,
                        peer = %incoming.remote_address(),
                        owner = tracing::field::Empty
                    );
                    tokio::spawn(
                        tracing::Instrument::instrument(
                            conn::serve(self.quic.clone(), incoming, id, pending),
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
        trimmer.abort();
        // A hook still running is killed; its job stays queued and runs at the next start.
        hooks.abort();
        for task in [mirror, store_watch, admin, web, rotation]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        self.endpoint.close(
            VarInt::from_u32(ErrorCode::ShuttingDown.quic_code()),
            b"server shutting down",
        );
        uploads.registry().shutdown(Duration::from_secs(30)).await;
        // Clean only if nothing is left to re-verify: otherwise the next start verifies again.
        if uploads.verifier().is_none_or(|v| v.finished()) {
            let store = uploads.store().clone();
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

/// A new id for a session (a QUIC connection, an HTTP request that uploads): unique for the
/// process's run, so the upload drivers can tell who drives an upload.
pub(crate) fn session_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

//! The client's endpoint: one UDP socket shared by a command's connections, and one
//! connection attempt to one address — certificate checked (pinned, known or CA-signed),
//! `hello` said. Which address is tried is `route.rs`'s.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::ALPN;
use quinn::crypto::rustls::QuicClientConfig;

use super::{Connection, Endpoint, Notices, Reporter, Target};
use crate::trust::{KnownServers, PinVerifier};
use crate::ClientError;

impl Endpoint {
    pub fn new(ipv6: bool) -> Result<Self, ClientError> {
        let bind: SocketAddr = if ipv6 { "[::]:0" } else { "0.0.0.0:0" }
            .parse()
            .expect("literal address");
        let socket = std::net::UdpSocket::bind(bind)
            .map_err(|e| ClientError::local("failed to bind a UDP socket", e))?;
        crate::transport::tune_socket(&socket);
        let endpoint = quinn::Endpoint::new(
            Default::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| ClientError::local("failed to start QUIC", e))?;
        Ok(Self {
            endpoint,
            ipv6,
            connect_timeout: Duration::from_secs(5),
            reached: Default::default(),
            reporter: None,
            notices: Notices::default(),
            route: Default::default(),
            paths: None,
        })
    }

    /// Connections start from what earlier ones learned about their path, and teach it.
    pub fn set_paths(&mut self, paths: Arc<crate::path::PathMemory>) {
        self.paths = Some(paths);
    }

    pub fn paths(&self) -> Option<&Arc<crate::path::PathMemory>> {
        self.paths.as_ref()
    }

    /// Shows the server's notices through `show` (a line, `ferry: notice from the server: …`).
    pub fn set_notices(&mut self, show: Reporter) {
        self.notices.show = Some(show);
    }

    /// Reports connection events (connected, with the handshake time) to `reporter`.
    pub fn set_reporter(&mut self, reporter: Reporter) {
        self.reporter = Some(reporter);
    }

    pub fn set_connect_timeout(&mut self, limit: Duration) {
        self.connect_timeout = limit.max(Duration::from_millis(100));
    }

    /// Whether a connection to the server succeeded at least once.
    pub fn reached(&self) -> bool {
        self.reached.load(Ordering::Relaxed)
    }

    /// Resolves when every connection of this endpoint is closed and the peer was told.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }

    /// Moves the endpoint to a new local UDP socket (as when the network changes); open
    /// connections migrate to it.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> std::io::Result<()> {
        self.endpoint.rebind(socket)
    }

    /// One connection attempt to `addr`, the address of `name`.
    pub(super) async fn connect_to(
        &self,
        target: &Target,
        name: &str,
        addr: SocketAddr,
    ) -> Result<Connection, ClientError> {
        let started = std::time::Instant::now();
        let known = KnownServers::new(&target.known_servers);
        let pinned = target.fingerprint.clone().or_else(|| known.get(name));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinVerifier::new(pinned.clone(), provider.clone()));
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClientError::local("TLS setup failed", e))?;
        let mut tls = match &target.ca {
            // A CA-signed server certificate: verified against the CA and the server's name.
            Some(ca) => builder
                .with_root_certificates(load_roots(ca)?)
                .with_no_client_auth(),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth(),
        };
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::local("TLS setup failed", e))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let start = self.paths.as_ref().and_then(|p| p.start_window(addr));
        config.transport_config(Arc::new(crate::transport::client(
            target.idle_timeout,
            target.congestion,
            start,
        )));
        let host = name.rsplit_once(':').map_or(name, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let connecting = self
            .endpoint
            .connect_with(config, addr, host)
            .map_err(|e| ClientError::Connection(format!("cannot connect to {name}: {e}")))?;
        let limit = self.connect_timeout;
        let Ok(connected) = tokio::time::timeout(limit, connecting).await else {
            return Err(ClientError::Unreachable(format!(
                "cannot reach {name} ({addr}): no answer over UDP within {} s; is ferryd running and UDP port {} open?",
                limit.as_secs_f32(),
                addr.port()
            )));
        };
        let connection = match connected {
            Ok(c) => c,
            Err(e) => {
                if let (Some(expected), Some(presented)) = (verifier.expected(), verifier.seen()) {
                    if expected != presented {
                        return Err(ClientError::Trust {
                            presented,
                            expected: expected.to_owned(),
                            known_servers: known.path().display().to_string(),
                        });
                    }
                }
                return Err(ClientError::Unreachable(format!(
                    "cannot connect to {name} ({addr}): {e}"
                )));
            }
        };
        if pinned.is_none() && target.ca.is_none() {
            if let Some(seen) = verifier.seen() {
                known.add(name, &seen).map_err(|e| {
                    ClientError::local(
                        format!("failed to record the server in {}", known.path().display()),
                        e,
                    )
                })?;
                eprintln!(
                    "ferry: trusting {name} on first use, certificate {seen} (recorded in {})",
                    known.path().display()
                );
            }
        }
        let connection = Connection::hello(connection, &target.token, self.notices.clone()).await?;
        self.reached.store(true, Ordering::Relaxed);
        if let Some(report) = &self.reporter {
            report(&format!(
                "ferry: connected to {name} ({addr}) as {:?}, {}, in {:.1} ms",
                connection.owner,
                if connection.server.is_empty() {
                    "ferryd"
                } else {
                    &connection.server
                },
                started.elapsed().as_secs_f64() * 1000.0
            ));
        }
        Ok(connection)
    }
}

/// The CA certificates of a PEM file.
fn load_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, ClientError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |e: &dyn std::fmt::Display| {
        ClientError::Usage(format!("cannot read CA file {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in it"));
    }
    Ok(roots)
}

//! One authenticated QUIC connection to a Ferry server: the `hello` exchange, requests with
//! their replies matched by `req`, and a channel of the frames the server pushes (acks,
//! rejections, takeover notices).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::{ErrorCode, Frame, Limits, UploadInfo, UploadSummary, ALPN, PROTOCOL_VERSION};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::{mpsc, oneshot};

use crate::trust::{KnownServers, PinVerifier};
use crate::wire::{read_frame, write_frame};
use crate::ClientError;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// `HOST:PORT` as the user wrote it; also the key in the known-servers file.
    pub server: String,
    /// Other addresses of the same service (`--server` repeated, the nodes of a cluster):
    /// every address of every name is a way in, tried in turn when one does not answer.
    pub alternates: Vec<String>,
    pub token: String,
    /// Pinned `sha256:<hex>`; `None` means trust on first use.
    pub fingerprint: Option<String>,
    pub known_servers: PathBuf,
    pub idle_timeout: Duration,
    /// Congestion controller for this side's sending (the upload's direction).
    pub congestion: ferry_proto::Congestion,
    /// Trust server certificates signed by the CAs in this PEM file (checking the name)
    /// instead of pinning a fingerprint.
    pub ca: Option<PathBuf>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>;

pub struct Connection {
    connection: quinn::Connection,
    send: tokio::sync::Mutex<quinn::SendStream>,
    pending: Pending,
    next_req: AtomicU64,
    /// Frames without a `req`: acks, rejections, takeover, connection-level errors.
    pub events: mpsc::UnboundedReceiver<Frame>,
    pub owner: String,
    pub limits: Limits,
    /// The server software and version from `welcome` (empty from an older server).
    pub server: String,
    /// The service id from `welcome`: the same on every node of a service.
    pub service: String,
}

/// A client endpoint: one UDP socket, reused across reconnects. Cloning shares it.
#[derive(Clone)]
pub struct Endpoint {
    endpoint: quinn::Endpoint,
    /// The socket's address family; server names resolve to an address of this family.
    ipv6: bool,
    /// How long a connection attempt waits for the server's answer (5 s unless set).
    connect_timeout: Duration,
    /// Set by the first connection that succeeds: from then on a failed connect is a lost
    /// server worth waiting for, before it a server never reached (fail fast).
    reached: Arc<std::sync::atomic::AtomicBool>,
    /// Told of connection events (`ferry -v`).
    reporter: Option<Reporter>,
    /// Shows the server's notices.
    notices: Notices,
    /// Which address the next connection tries first; shared by the endpoint's clones.
    route: Arc<Mutex<Route>>,
    /// What earlier connections learned about each path (`crate::path`).
    paths: Option<Arc<crate::path::PathMemory>>,
}

/// The way in among several addresses: the one that worked last is tried first, unless its
/// connection was lost (then it is tried last), and the first choice is random so that many
/// clients spread over a cluster's nodes.
#[derive(Default)]
struct Route {
    /// The address to try first: the last that worked.
    first: Option<SocketAddr>,
    /// The last connection made, to see at the next connect whether it was lost.
    last: Option<quinn::Connection>,
    /// The service id of the first connection: a node of another service is never used.
    service: Option<String>,
}

/// Where connection events go.
pub type Reporter = Arc<dyn Fn(&str) + Send + Sync>;

/// The operator's notices (`welcome.notice`, pushed `notice` frames), each shown once per
/// endpoint even when several connections or reconnects receive it. Stderr by default.
#[derive(Clone, Default)]
pub struct Notices {
    show: Option<Reporter>,
    last: Arc<Mutex<Option<String>>>,
}

impl Notices {
    fn show(&self, text: &str) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(text) {
            return;
        }
        *last = Some(text.to_owned());
        let line = format!("ferry: notice from the server: {text}");
        match &self.show {
            Some(show) => show(&line),
            None => eprintln!("{line}"),
        }
    }
}

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

    /// Connects to the first address of the service that answers, checks the certificate,
    /// says hello. Every address of every name in `target` is a candidate (`Route` orders
    /// them); an address that does not answer, or whose connection breaks before `welcome`,
    /// passes the turn to the next one. A refusal (token, version, certificate) does not.
    pub async fn connect(&self, target: &Target) -> Result<Connection, ClientError> {
        let candidates = self.candidates(target).await?;
        let many = candidates.len() > 1;
        let mut failed = None;
        for (name, addr) in candidates {
            match self.connect_to(target, &name, addr).await {
                Ok(conn) => match self.admit(&conn, &name, addr) {
                    Ok(()) => return Ok(conn),
                    Err(e) => {
                        conn.close();
                        failed = Some(e);
                    }
                },
                Err(e @ (ClientError::Unreachable(_) | ClientError::Connection(_))) => {
                    failed = Some(e)
                }
                Err(
                    e @ ClientError::Server {
                        code: ErrorCode::ShuttingDown | ErrorCode::TooManyConnections,
                        ..
                    },
                ) => failed = Some(e),
                Err(e) => return Err(e),
            }
            if let (true, Some(e), Some(report)) = (many, &failed, &self.reporter) {
                report(&format!(
                    "ferry: {name} ({addr}): {e}; trying the next address"
                ));
            }
        }
        Err(failed.expect("at least one candidate"))
    }

    /// Every address of every server name, in the order to try them: the family of the
    /// endpoint's socket, the address that worked last first (a random one before any did),
    /// the address of a connection that was lost last.
    async fn candidates(&self, target: &Target) -> Result<Vec<(String, SocketAddr)>, ClientError> {
        let mut all: Vec<(String, SocketAddr)> = Vec::new();
        let mut unresolved = None;
        for name in std::iter::once(&target.server).chain(&target.alternates) {
            match resolve(name, self.ipv6).await {
                Ok(addrs) => {
                    for addr in addrs {
                        if !all.iter().any(|(_, a)| *a == addr) {
                            all.push((name.clone(), addr));
                        }
                    }
                }
                // One name that does not resolve (a node's record withdrawn) is not fatal
                // while another leads somewhere.
                Err(e) => unresolved = Some(e),
            }
        }
        if all.is_empty() {
            return Err(unresolved.unwrap_or_else(|| {
                ClientError::Usage(format!(
                    "server address {:?} resolves to nothing",
                    target.server
                ))
            }));
        }
        let route = self.route.lock().unwrap_or_else(|p| p.into_inner());
        let start = match route
            .first
            .and_then(|f| all.iter().position(|(_, a)| *a == f))
        {
            Some(i) => i,
            None => random_index(all.len()),
        };
        all.rotate_left(start);
        // A connection that ended without this side closing it: its node is tried last.
        let lost = route.last.as_ref().and_then(|c| match c.close_reason() {
            None | Some(quinn::ConnectionError::LocallyClosed) => None,
            Some(_) => Some(c.remote_address()),
        });
        if let Some(lost) = lost {
            if let Some(i) = all.iter().position(|(_, a)| *a == lost) {
                let moved = all.remove(i);
                all.push(moved);
            }
        }
        Ok(all)
    }

    /// Takes a new connection as the way in, unless it leads to another service than the one
    /// this endpoint reached first (a stray address must not receive uploads).
    fn admit(&self, conn: &Connection, name: &str, addr: SocketAddr) -> Result<(), ClientError> {
        let mut route = self.route.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(service) = &route.service {
            if !conn.service.is_empty() && conn.service != *service {
                return Err(ClientError::Unreachable(format!(
                    "{name} ({addr}) is another service (id {}, not {service}); not used",
                    conn.service
                )));
            }
        } else if !conn.service.is_empty() {
            route.service = Some(conn.service.clone());
        }
        route.first = Some(addr);
        route.last = Some(conn.connection.clone());
        Ok(())
    }

    /// One connection attempt to `addr`, the address of `name`.
    async fn connect_to(
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

impl Connection {
    async fn hello(
        connection: quinn::Connection,
        token: &str,
        notices: Notices,
    ) -> Result<Self, ClientError> {
        let lost = |e: &dyn std::fmt::Display| ClientError::Connection(e.to_string());
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| lost(&e))?;
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            token: token.to_owned(),
        };
        write_frame(&mut send, &hello).await.map_err(|e| lost(&e))?;
        let (owner, limits, server, service) = match read_frame(&mut recv).await {
            Ok(Some(Frame::Welcome {
                owner,
                limits,
                server,
                notice,
                service,
                ..
            })) => {
                if let Some(text) = notice {
                    notices.show(&text);
                }
                (owner, limits, server, service)
            }
            Ok(Some(Frame::Error { code, message, .. })) => {
                return Err(ClientError::Server { code, message })
            }
            Ok(Some(other)) => {
                return Err(ClientError::Protocol(format!(
                    "expected welcome, got {}",
                    other.kind()
                )))
            }
            Ok(None) | Err(_) => return Err(close_reason(&connection)),
        };
        let pending: Pending = Default::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(recv, pending.clone(), events_tx, notices));
        Ok(Self {
            connection,
            send: tokio::sync::Mutex::new(send),
            pending,
            next_req: AtomicU64::new(1),
            events,
            owner,
            limits,
            server,
            service,
        })
    }

    pub fn quic(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Sends the request built by `make(req)` and waits for its reply. An `error` reply
    /// becomes `ClientError::Server`.
    pub async fn request(&self, make: impl FnOnce(u64) -> Frame) -> Result<Frame, ClientError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        // The server would have to refuse a frame over the limit: refuse it here instead.
        let bytes = make(req)
            .to_wire()
            .map_err(|e| ClientError::Usage(format!("request not sent: {e}")))?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(req, tx);
        {
            let mut send = self.send.lock().await;
            if send.write_all(&bytes).await.is_err() {
                return Err(close_reason(&self.connection));
            }
        }
        match rx.await {
            Ok(Frame::Error { code, message, .. }) => Err(ClientError::Server { code, message }),
            Ok(frame) => Ok(frame),
            Err(_) => Err(close_reason(&self.connection)),
        }
    }

    /// `resume`, reading every page of a long `durable` list (`durable_next`) into one answer.
    /// The first page attaches the upload to this connection.
    pub async fn resume(&self, upload_id: &str) -> Result<UploadInfo, ClientError> {
        let mut info: Option<UploadInfo> = None;
        let mut from = 0;
        // Each page moves `from` forward past at least one range, so this ends; the bound is
        // for a server that misbehaves.
        for _ in 0..1_000_000 {
            let upload_id = upload_id.to_owned();
            let page = match self
                .request(|req| Frame::Resume {
                    req,
                    upload_id,
                    from,
                })
                .await?
            {
                Frame::Resumed { upload, .. } => upload,
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected resumed, got {}",
                        other.kind()
                    )))
                }
            };
            let next = page.durable_next.filter(|&next| next > from);
            match info.as_mut() {
                None => info = Some(page),
                Some(info) => info.durable.extend(page.durable),
            }
            match next {
                Some(next) => from = next,
                None => break,
            }
        }
        let mut info = info.ok_or_else(|| ClientError::Protocol("no resumed page".into()))?;
        info.durable_next = None;
        Ok(info)
    }

    /// Every upload of this token, reading `listing` page by page.
    pub async fn list(&self) -> Result<Vec<UploadSummary>, ClientError> {
        let mut all = Vec::new();
        let mut cursor = None;
        for _ in 0..1_000_000 {
            let page_cursor = cursor.take();
            match self
                .request(|req| Frame::List {
                    req,
                    cursor: page_cursor,
                })
                .await?
            {
                Frame::Listing { uploads, next, .. } => {
                    let empty = uploads.is_empty();
                    all.extend(uploads);
                    match next {
                        Some(next) if !empty => cursor = Some(next),
                        _ => break,
                    }
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected listing, got {}",
                        other.kind()
                    )))
                }
            }
        }
        Ok(all)
    }

    /// Why the connection is gone, as an error.
    pub fn lost(&self) -> ClientError {
        close_reason(&self.connection)
    }

    pub fn close(&self) {
        self.connection.close(0u32.into(), b"done");
    }
}

/// Routes control-stream frames: replies to their waiting request, the rest to `events`.
async fn dispatch(
    mut recv: quinn::RecvStream,
    pending: Pending,
    events: mpsc::UnboundedSender<Frame>,
    notices: Notices,
) {
    loop {
        let frame = match read_frame(&mut recv).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                if let Some((code, message)) = e.code() {
                    let message = format!("the server sent a malformed frame: {message}");
                    let _ = events.send(Frame::Error {
                        req: None,
                        code,
                        message,
                    });
                }
                break;
            }
        };
        if let Frame::Notice { text } = &frame {
            notices.show(text);
            continue;
        }
        match frame
            .reply_to()
            .and_then(|r| pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&r))
        {
            Some(waiter) => {
                let _ = waiter.send(frame);
            }
            None => {
                let _ = events.send(frame);
            }
        }
    }
    // Dropping the waiters wakes every request with "connection lost".
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// Turns a closed connection into the most useful error: a server's close code and reason
/// when it gave one.
fn close_reason(connection: &quinn::Connection) -> ClientError {
    match connection.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            let code = ErrorCode::ALL
                .iter()
                .copied()
                .find(|c| u64::from(c.quic_code()) == close.error_code.into_inner())
                .unwrap_or(ErrorCode::Unknown);
            let message = String::from_utf8_lossy(&close.reason).into_owned();
            if code == ErrorCode::ShuttingDown {
                ClientError::Connection(format!("server is shutting down: {message}"))
            } else {
                ClientError::Server { code, message }
            }
        }
        Some(e) => ClientError::Connection(e.to_string()),
        None => ClientError::Connection("control stream closed".into()),
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

/// The addresses of `server` in the endpoint's family (a name like `localhost` may resolve to
/// both; the other family is kept only when there is nothing else, to say why it failed).
async fn resolve(server: &str, ipv6: bool) -> Result<Vec<SocketAddr>, ClientError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
        .await
        .map_err(|e| {
            ClientError::Usage(format!(
                "cannot resolve server address {server:?} (want HOST:PORT): {e}"
            ))
        })?
        .collect();
    let family: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| a.is_ipv6() == ipv6)
        .collect();
    match (family.is_empty(), addrs.first()) {
        (false, _) => Ok(family),
        (true, Some(&other)) => Ok(vec![other]),
        (true, None) => Err(ClientError::Usage(format!(
            "server address {server:?} resolves to nothing"
        ))),
    }
}

/// A random index below `len` (the first node a client tries, so clients spread).
fn random_index(len: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() % len.max(1) as u64) as usize
}

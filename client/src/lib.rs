//! ferry-client: the library behind the `ferry` command. A [`Client`] holds one QUIC
//! endpoint and at most one connection, reconnecting when it is lost; `upload` drives the
//! chunk pipeline (see `upload.rs`), `list` and `abort` are single requests.

pub mod config;
pub mod congestion;
pub mod connection;
pub mod digests;
mod error;
pub mod grow;
pub mod job;
pub mod journal;
pub mod path;
pub mod progress;
pub mod rate;
mod stream;
mod transport;
pub mod trust;
pub mod upload;
mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::{ErrorCode, Frame, OnExists, UploadSummary};
use tokio::sync::Semaphore;

pub use connection::{Connection, Endpoint, Target};
pub use error::ClientError;
pub use transport::controller as transport_controller;
pub use upload::Report;

/// Everything an upload run can be told.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    /// Holds the resume journal.
    pub state_dir: PathBuf,
    pub chunk_size: u64,
    /// Chunks sent and not yet acknowledged, at most: at first, and always on a short path.
    pub parallel: usize,
    /// On a long, fast path the window of chunks grows with the bandwidth-delay product up to
    /// this many (equal to `parallel` when the user fixed `--parallel`). See `upload::pump`.
    pub max_parallel: usize,
    /// Bytes per second, all streams together.
    pub limit_rate: Option<u64>,
    /// After a connection loss, keep reconnecting this long without progress before giving up.
    pub reconnect_for: Duration,
    /// What publishing does when the file's name is taken on the server.
    pub on_exists: OnExists,
    /// Before sending a new upload, hash the whole file and ask the server whether it holds
    /// that content already (then it is published by link, nothing is sent).
    pub dedup: bool,
    /// Also compute the plain SHA-256 of each file (a second read and hash pass).
    pub sha256: bool,
    /// How long a connection attempt waits for the server's answer. A server never reached
    /// in this run fails after one attempt; one that was reached is reconnected to.
    pub connect_timeout: Duration,
}

impl Options {
    pub fn new(target: Target, state_dir: PathBuf) -> Self {
        Self {
            target,
            state_dir,
            chunk_size: 4 << 20,
            parallel: 8,
            max_parallel: 32,
            limit_rate: None,
            reconnect_for: Duration::from_secs(300),
            on_exists: OnExists::Rename,
            dedup: false,
            sha256: false,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What the clients of one command share: the window of chunk streams, the rate limit and the
/// progress.
#[derive(Clone, Default)]
pub struct Shared {
    /// Chunk streams sending at once, all files together; `None`: each upload's own
    /// `parallel` only.
    pub window: Option<Arc<Window>>,
    pub limiter: Option<Arc<rate::RateLimiter>>,
    pub tracker: Arc<progress::Tracker>,
}

/// The chunk streams that may send at once, all files of a command together. It grows (never
/// shrinks) when a long, fast path needs more chunks in flight.
pub struct Window {
    permits: Arc<Semaphore>,
    size: std::sync::atomic::AtomicUsize,
}

impl Window {
    pub fn new(size: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size: size.into(),
        }
    }

    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// Raises the window to `size` streams if it is smaller.
    pub fn grow_to(&self, size: usize) {
        let old = self
            .size
            .fetch_max(size, std::sync::atomic::Ordering::Relaxed);
        if size > old {
            self.permits.add_permits(size - old);
        }
    }
}

pub struct Client {
    opts: Options,
    shared: Shared,
    endpoint: Endpoint,
    /// The current connection; dropped on loss and re-made on the next request.
    conn: Option<Connection>,
    journal: journal::Journal,
    limiter: Option<Arc<rate::RateLimiter>>,
}

impl Client {
    pub fn new(opts: Options) -> Result<Self, ClientError> {
        let limiter = opts.limit_rate.map(|r| Arc::new(rate::RateLimiter::new(r)));
        let shared = Shared {
            limiter,
            ..Shared::default()
        };
        let endpoint = Self::endpoint_for(&opts)?;
        Ok(Self::with(opts, endpoint, shared))
    }

    /// A new endpoint (UDP socket) for `opts`' server.
    pub fn endpoint_for(opts: &Options) -> Result<Endpoint, ClientError> {
        let ipv6 = opts.target.server.starts_with('[');
        let mut endpoint = Endpoint::new(ipv6)?;
        endpoint.set_connect_timeout(opts.connect_timeout);
        endpoint.set_paths(Arc::new(path::PathMemory::open(&opts.state_dir)));
        Ok(endpoint)
    }

    /// A client on `endpoint` (which several clients of one command may share, each with its
    /// own connection), sharing `shared` with the others.
    pub fn with(opts: Options, mut endpoint: Endpoint, shared: Shared) -> Self {
        let tracker = shared.tracker.clone();
        endpoint.set_reporter(Arc::new(move |line| tracker.event(line)));
        let tracker = shared.tracker.clone();
        endpoint.set_notices(Arc::new(move |line| tracker.note(line)));
        Self {
            endpoint,
            conn: None,
            journal: journal::Journal::new(&opts.state_dir),
            limiter: shared.limiter.clone(),
            shared,
            opts,
        }
    }

    pub fn tracker(&self) -> &Arc<progress::Tracker> {
        &self.shared.tracker
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The connection, made if needed.
    pub async fn connection(&mut self) -> Result<&mut Connection, ClientError> {
        connected(&mut self.conn, &self.endpoint, &self.opts.target).await
    }

    /// Every upload of this token on the server.
    pub async fn list(&mut self) -> Result<Vec<UploadSummary>, ClientError> {
        self.connection().await?.list().await
    }

    /// Creates the folder `dir` (outermost first) under the owner's folder on the server: how
    /// an empty folder of an uploaded tree is kept. Returns it as the server sanitised it.
    pub async fn mkdir(&mut self, dir: &[String]) -> Result<String, ClientError> {
        let dir = dir.to_vec();
        match self
            .connection()
            .await?
            .request(|req| Frame::Mkdir { req, dir })
            .await?
        {
            Frame::Made { dir, .. } => Ok(dir),
            other => Err(ClientError::Protocol(format!(
                "expected made, got {}",
                other.kind()
            ))),
        }
    }

    /// Discards an unfinished upload on the server.
    pub async fn abort(&mut self, upload_id: &str) -> Result<(), ClientError> {
        let id = upload_id.to_owned();
        match self
            .connection()
            .await?
            .request(|req| Frame::Abort { req, upload_id: id })
            .await?
        {
            Frame::Aborted { .. } => Ok(()),
            other => Err(ClientError::Protocol(format!(
                "expected aborted, got {}",
                other.kind()
            ))),
        }
    }

    /// What the resume journal is keyed by: the service id the server announced (the same on
    /// every node of a service sharing one store, so an upload begun through one node resumes
    /// through another), or the server's address if it announced none. Connects if needed.
    pub async fn scope(&mut self) -> Result<String, ClientError> {
        let service = self.connection().await?.service.clone();
        Ok(match service.is_empty() {
            true => self.opts.target.server.clone(),
            false => format!("service:{service}"),
        })
    }

    /// The journal's upload id for a local file, if a run of it was interrupted.
    pub async fn journal_entry(
        &mut self,
        path: &std::path::Path,
    ) -> Result<Option<journal::Entry>, ClientError> {
        let scope = self.scope().await?;
        Ok(journal::FileKey::of(&scope, path)
            .ok()
            .and_then(|key| self.journal.get(&key)))
    }

    /// Forgets the journal's record of `path` (after its upload was aborted or is gone).
    pub async fn forget(&mut self, path: &std::path::Path) -> Result<(), ClientError> {
        let scope = self.scope().await?;
        if let Ok(key) = journal::FileKey::of(&scope, path) {
            self.journal.remove(&key);
        }
        Ok(())
    }

    /// Closes the connection and waits (at most a second) until the server was told, so it
    /// frees the connection's place at once instead of at its idle timeout.
    pub async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.close();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        }
    }

    fn drop_connection(&mut self) {
        self.conn = None;
    }
}

/// The open connection in `slot`, connecting first if there is none. A free function so that
/// callers can borrow other fields of `Client` at the same time.
/// The wait before each reconnect: 250 ms, doubling to 5 s while attempts fail, back to 250 ms
/// after a connection that got `welcome` (a server that restarts often is rejoined at once each
/// time, not after the longest wait).
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) const FIRST: Duration = Duration::from_millis(250);
    pub(crate) const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Self(Self::FIRST)
    }

    /// The wait before the next attempt, then doubled.
    pub(crate) fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        wait
    }

    /// The connection got `welcome`: the next loss waits the shortest time again.
    pub(crate) fn welcomed(&mut self) {
        self.0 = Self::FIRST;
    }
}

pub(crate) async fn connected<'a>(
    slot: &'a mut Option<Connection>,
    endpoint: &Endpoint,
    target: &Target,
) -> Result<&'a mut Connection, ClientError> {
    if let Some(old) = slot.take_if(|c| c.quic().close_reason().is_some()) {
        // A revoked token is said as such, not hidden behind a new connection's
        // `unauthorized`.
        if let e @ ClientError::Server {
            code: ErrorCode::TokenRevoked,
            ..
        } = old.lost()
        {
            return Err(e);
        }
    }
    if slot.is_none() {
        *slot = Some(endpoint.connect(target).await?);
    }
    Ok(slot.as_mut().expect("just set"))
}

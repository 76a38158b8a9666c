//! HTTP/1.1 connections of the TCP listeners (the web listener, the admin listener): how many
//! may be open, from where, for how long, and how much of a request head each may make the
//! server hold. Both listeners serve through [`serve`].
//!
//! A connection is **waiting** from its accept until its first complete request head (for the
//! web listener the TLS handshake is part of that), and **active** after. Waiting connections
//! have a budget of their own, like QUIC logins (`guard::PendingPool`): when it is full, a new
//! connection evicts the oldest waiting one — of its own address first — so idle or trickling
//! connections (slowloris) only ever push each other out, never a client that sends its request
//! promptly. Active connections are capped in total and per address; past the cap a request is
//! answered `503` and the connection closed. A request head may be at most `max_head` bytes
//! (more is `431`), and must arrive within `head_timeout`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::guard::{ConnLimiter, ConnSlot, PendingPool, PendingSlot};

/// The bounds of one listener's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections still waiting for their first request head, in total and per address.
    pub waiting: usize,
    pub waiting_per_ip: usize,
    /// Connections past their first request head, in total and per address.
    pub active: usize,
    pub active_per_ip: usize,
    /// Time for the TLS handshake, and for each request head once the connection waits for one.
    pub head_timeout: Duration,
    /// Longest a connection may stay open, if bounded (the web listener's are not: an upload's
    /// body may take hours; it is bounded by its stall timeout instead).
    pub life: Option<Duration>,
    /// Longest a connection may stay open with no request in progress.
    pub idle: Duration,
    /// Largest request head (and read buffer), in bytes.
    pub max_head: usize,
}

impl Limits {
    /// The web listener's: pages, `/webtransport.json`, and uploads over HTTP.
    pub(crate) const WEB: Self = Self {
        waiting: 64,
        waiting_per_ip: 8,
        active: 256,
        active_per_ip: 16,
        head_timeout: Duration::from_secs(10),
        life: None,
        idle: Duration::from_secs(60),
        max_head: 64 << 10,
    };
    /// The admin listener's: a few small requests from the machine room.
    pub(crate) const ADMIN: Self = Self {
        waiting: 16,
        waiting_per_ip: 4,
        active: 32,
        active_per_ip: 8,
        head_timeout: Duration::from_secs(10),
        life: Some(Duration::from_secs(60)),
        idle: Duration::from_secs(60),
        max_head: 16 << 10,
    };

    /// File descriptors the listener may hold open at once.
    pub(crate) fn descriptors(&self) -> usize {
        self.waiting + self.active
    }
}

/// One listener's budgets.
pub(crate) struct Gate {
    limits: Limits,
    waiting: Arc<PendingPool>,
    active: Arc<ConnLimiter>,
    /// Names the listener in logs.
    name: &'static str,
}

impl Gate {
    pub(crate) fn new(name: &'static str, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            waiting: PendingPool::new(limits.waiting, limits.waiting_per_ip),
            active: ConnLimiter::new(limits.active, limits.active_per_ip),
            name,
        })
    }
}

/// Where a connection stands in its listener's budgets.
enum Place {
    Waiting(#[allow(dead_code)] PendingSlot),
    Active(#[allow(dead_code)] ConnSlot),
    /// Over the active cap: every request is answered 503.
    Refused,
}

/// Accepts connections on `listener` and serves each (over TLS with `tls`) with `handler`,
/// within `gate`'s bounds, until the task is aborted.
pub(crate) async fn serve<F, Fut, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gate: Arc<Gate>,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Bounded by the process: each turn accepts one connection; the waiting budget (with
    // eviction) and the active cap bound how many are open.
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait for some to close.
                warn!(error = %e, listener = gate.name, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = gate.waiting.admit(peer.ip());
        let evicted = slot.evicted.clone();
        let place = Arc::new(Mutex::new(Place::Waiting(slot)));
        let (gate, tls, handler) = (gate.clone(), tls.clone(), handler.clone());
        tokio::spawn(async move {
            let limits = gate.limits;
            let activity = Arc::new(Activity::default());
            let serving = connection(
                stream,
                peer,
                tls,
                gate.clone(),
                place,
                handler,
                activity.clone(),
            );
            let life = limits.life.unwrap_or(Duration::MAX);
            tokio::select! {
                // Only a waiting connection is ever evicted (it leaves the pool when active).
                () = evicted.notified() => debug!(%peer, listener = gate.name, "evicted while waiting for a request"),
                ended = tokio::time::timeout(life, serving) => {
                    if ended.is_err() {
                        debug!(%peer, listener = gate.name, "connection closed at its time limit");
                    }
                }
                () = activity.idle_for(limits.idle) => debug!(%peer, listener = gate.name, "idle connection closed"),
            }
        });
    }
}

/// One connection: the TLS handshake (if any), then HTTP/1.1 until it ends.
async fn connection<F, Fut, B>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    gate: Arc<Gate>,
    place: Arc<Mutex<Place>>,
    handler: F,
    activity: Arc<Activity>,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = gate.limits;
    let service = {
        let gate = gate.clone();
        hyper::service::service_fn(move |req| {
            let admitted = admit(&gate, &place, peer);
            let handler = handler.clone();
            let busy = activity.busy();
            async move {
                let _busy = busy;
                Ok::<_, std::convert::Infallible>(match admitted {
                    true => handler(req, peer).await.map(Either::Left),
                    false => refused().map(Either::Right),
                })
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head.max(8192));
    let result = match tls {
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.head_timeout, acceptor.accept(stream));
            let Ok(Ok(stream)) = handshake.await else {
                return debug!(%peer, listener = gate.name, "TLS handshake failed or timed out");
            };
            let io = hyper_util::rt::TokioIo::new(stream);
            http.serve_connection(io, service).await
        }
        None => {
            let io = hyper_util::rt::TokioIo::new(stream);
            http.serve_connection(io, service).await
        }
    };
    if let Err(e) = result {
        debug!(%peer, listener = gate.name, error = %e, "connection ended");
    }
}

/// Whether a connection is handling a request, and since when it has not been.
#[derive(Default)]
struct Activity {
    /// Requests in progress, and when the last one ended.
    state: Mutex<(usize, Option<tokio::time::Instant>)>,
}

/// A request in progress; ends on drop.
struct Busy(Arc<Activity>);

impl Activity {
    fn busy(self: &Arc<Self>) -> Busy {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 += 1;
        Busy(self.clone())
    }

    /// Resolves once no request has been in progress for `idle`.
    async fn idle_for(&self, idle: Duration) {
        // Bounded by the connection: the caller drops this future when it ends.
        loop {
            let (busy, since) = *self.state.lock().unwrap_or_else(|p| p.into_inner());
            let since = since.unwrap_or_else(tokio::time::Instant::now);
            if busy == 0 && since.elapsed() >= idle {
                return;
            }
            let wait = if busy > 0 {
                idle
            } else {
                idle - since.elapsed()
            };
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 -= 1;
        state.1 = Some(tokio::time::Instant::now());
    }
}

/// At each request: a waiting connection becomes active if the active cap allows (once).
fn admit(gate: &Gate, place: &Mutex<Place>, peer: SocketAddr) -> bool {
    let mut place = place.lock().unwrap_or_else(|p| p.into_inner());
    match &*place {
        Place::Active(_) => true,
        Place::Refused => false,
        Place::Waiting(_) => match gate.active.acquire(peer.ip()) {
            Ok(slot) => {
                *place = Place::Active(slot);
                true
            }
            Err(why) => {
                info!(%peer, listener = gate.name, why, "refused a connection: too many");
                *place = Place::Refused;
                false
            }
        },
    }
}

/// The answer past the active cap.
fn refused() -> Response<http_body_util::Full<Bytes>> {
    let mut response = Response::new(http_body_util::Full::new(Bytes::from_static(
        b"too many connections; try again shortly\n",
    )));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    headers.insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    response
}

/// The handler's body or the refusal's.
type Either<L, R> = http_body_util::Either<L, R>;

/// Raises the soft limit of open files to the hard one (systemd's default soft limit is 1 024)
/// and returns the limit now in force, so the listeners' caps leave descriptors for the QUIC
/// path (staging files, the database, hooks).
pub(crate) fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

//! One client connection: the `hello` exchange and login (`mod.rs`), the control stream's
//! requests and replies (`requests.rs`), and one task per chunk stream that streams the
//! payload to disk while hashing it (`chunks.rs`).

mod chunks;
pub(crate) mod peer;
mod requests;

use std::collections::HashSet;
use std::future::{Future, IntoFuture};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::{ErrorCode, Frame, PROTOCOL_VERSION};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::auth::{Auth, Login};
use crate::guard::{ConnLimiter, PendingPool, PendingSlot};
use crate::notice::Notices;
use crate::outbox::{Drain, Outbox, OUTBOX_FRAMES};
use crate::store::UploadId;
use crate::transport::CONNECTION_WINDOW;
use crate::uploads::{Principal, Uploads};
use crate::wire::{read_frame, write_frame};
use peer::{Peer, Send};

/// What the QUIC front end needs of the server: the upload service, logins, notices, its own
/// connection budgets and timeouts, and what a browser's session is checked against.
pub(crate) struct Context {
    pub uploads: Arc<Uploads>,
    pub auth: Arc<Auth>,
    pub notices: Arc<Notices>,
    /// Logged-in connections, in total and per address.
    pub limiter: Arc<ConnLimiter>,
    /// Connections still logging in.
    pub pending: Arc<PendingPool>,
    /// The TLS handshake, a browser's CONNECT and `hello`, together.
    pub handshake_timeout: Duration,
    /// A started frame or a chunk payload that stalls this long is cut off.
    pub stream_timeout: Duration,
    /// Chunk streams one connection may have open.
    pub max_streams: u64,
    /// What a browser's WebTransport session is checked against (origins, the session path).
    pub web: crate::web::Origins,
}

/// State of one authenticated connection.
struct Conn {
    ctx: Arc<Context>,
    peer: Peer,
    /// Who the connection is: its owner, its upload link if not a token, its id.
    who: Principal,
    /// Frames for the control stream, written in order by one writer task; bounded.
    events: Outbox,
    /// Uploads this connection created or resumed; detached when it closes.
    attached: Mutex<HashSet<UploadId>>,
    /// Separate pieces its chunk streams read out of order hold right now (each stream adds
    /// and takes back its own), bounded by `chunks::MAX_PIECES_PER_CONNECTION`.
    pieces: std::sync::atomic::AtomicUsize,
    /// One `read` stream at a time.
    reading: Arc<tokio::sync::Semaphore>,
}

/// Why the login phase ended without a logged-in connection.
enum Stop {
    /// The handshake and `hello` together took longer than the handshake timeout.
    Timeout,
    /// A newer connection took this one's place in the login budget.
    Evicted,
}

/// Runs one step of the login phase within the deadline, unless the connection is evicted.
async fn step<T>(
    deadline: Instant,
    evicted: &Notify,
    fut: impl Future<Output = T>,
) -> Result<T, Stop> {
    tokio::select! {
        out = tokio::time::timeout_at(deadline, fut) => out.map_err(|_| Stop::Timeout),
        () = evicted.notified() => Err(Stop::Evicted),
    }
}

/// Serves one connection (`ferry/1`, or a browser's WebTransport session over `h3`).
/// `pending` is its place in the login budget until `welcome`; then it needs a place under the
/// logged-in connection limits. Until then no chunk stream is read (a `ferry/1` client's are
/// stopped), the connection window is [`PRELOGIN_WINDOW`] (`transport::server`), and the TLS
/// handshake (and a browser's CONNECT) plus `hello` must be done within one handshake timeout.
pub async fn serve(ctx: Arc<Context>, incoming: quinn::Incoming, id: u64, pending: PendingSlot) {
    let config = &ctx;
    let deadline = Instant::now() + config.handshake_timeout;
    let evicted = pending.evicted.clone();
    let connection = match step(deadline, &evicted, incoming.into_future()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return debug!(error = %e, "handshake failed"),
        Err(_) => return debug!("handshake timed out or evicted"),
    };
    let remote = connection.remote_address();
    // A browser (ALPN `h3`) first opens a WebTransport session; the protocol runs inside it.
    let peer = if crate::web::is_h3(&connection) {
        match step(
            deadline,
            &evicted,
            crate::web::session(&ctx.web, &connection),
        )
        .await
        {
            Ok(Some(session)) => Peer::Web(Box::new(session), connection),
            Ok(None) => return,
            Err(stop) => {
                let (code, reason) = stop.close(config.handshake_timeout);
                return Peer::Quic(connection).close(code, &reason);
            }
        }
    } else {
        Peer::Quic(connection)
    };
    // The handshake grants every connection the three unidirectional streams HTTP/3 needs; a
    // `ferry/1` client must not open any before `welcome`, and those it does are stopped at
    // once, so their data is dropped instead of held until the login ends.
    let early = match &peer {
        Peer::Quic(c) => Some(AbortOnDrop(tokio::spawn(stop_early_streams(c.clone())))),
        Peer::Web(..) => None,
    };
    let streams = step(deadline, &evicted, peer.accept_bi()).await;
    let (mut send, mut recv) = match streams {
        Ok(Some(streams)) => streams,
        Ok(None) => return,
        Err(stop) => {
            let (code, reason) = stop.close(config.handshake_timeout);
            return peer.close(code, &reason);
        }
    };
    // The whole frame must arrive by the deadline, and only the deadline decides: the read's
    // own stall limit is set past it (a timer that fired in the same tick as the deadline could
    // otherwise answer `stream_timeout`), so a stalled `hello` is `not_authenticated` like a
    // missing one.
    let past_deadline = config.handshake_timeout * 2 + Duration::from_secs(1);
    let hello = step(
        deadline,
        &evicted,
        read_frame(&mut recv, past_deadline, false),
    );
    let Login {
        owner,
        credential,
        link,
    } = match hello.await {
        Ok(Ok(Some(Frame::Hello { version, token }))) => {
            if version != PROTOCOL_VERSION {
                let msg = format!("protocol version {version} is not supported, this server speaks {PROTOCOL_VERSION}; upgrade the client");
                return refuse(&peer, send, &evicted, ErrorCode::UnsupportedVersion, &msg).await;
            }
            match ctx.auth.login(&token).await {
                Ok(Ok(login)) if login.link.as_ref().is_some_and(|l| l.read.is_some()) => {
                    let msg =
                        "a read link reads its upload over HTTPS (GET); it cannot log in here";
                    return refuse(&peer, send, &evicted, ErrorCode::Unauthorized, msg).await;
                }
                Ok(Ok(login)) => login,
                Ok(Err(what)) => {
                    // Each failure from the same address waits longer before its answer; the
                    // wait still holds a place in the login budget, so it can be evicted.
                    let delay = ctx.auth.failed(remote.ip());
                    info!(%remote, delay_ms = delay.as_millis() as u64, what, "refused a login");
                    let far = Instant::now() + delay + Duration::from_secs(1);
                    let _ = step(far, &evicted, tokio::time::sleep(delay)).await;
                    return refuse(&peer, send, &evicted, ErrorCode::Unauthorized, what).await;
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cannot read tokens or links");
                    let message = "server cannot check tokens";
                    return refuse(&peer, send, &evicted, ErrorCode::Internal, message).await;
                }
            }
        }
        Ok(Ok(Some(other))) => {
            let msg = format!("expected hello, got {}", other.kind());
            return refuse(&peer, send, &evicted, ErrorCode::NotAuthenticated, &msg).await;
        }
        Ok(Err(e)) => match e.code() {
            Some((code, msg)) => return refuse(&peer, send, &evicted, code, &msg).await,
            None => return,
        },
        Ok(Ok(None)) => {
            let msg = "the control stream ended before hello";
            return refuse(&peer, send, &evicted, ErrorCode::NotAuthenticated, msg).await;
        }
        Err(stop) => {
            let (code, reason) = stop.close(config.handshake_timeout);
            return refuse(&peer, send, &evicted, code, &reason).await;
        }
    };
    drop(pending);
    drop(early);
    let _slot = match ctx.limiter.acquire(remote.ip()) {
        Ok(slot) => slot,
        Err(message) => {
            info!(%remote, message, "refused: too many connections");
            return refuse(
                &peer,
                send,
                &evicted,
                ErrorCode::TooManyConnections,
                &message,
            )
            .await;
        }
    };
    // Logged in: the credit a client needs to upload (for a browser, on top of the three
    // streams HTTP/3 keeps open for itself).
    let housekeeping = match peer {
        Peer::Quic(_) => 0,
        Peer::Web(..) => crate::web::H3_UNI_STREAMS,
    };
    let quic = peer.quic();
    quic.set_max_concurrent_uni_streams(
        quinn::VarInt::from_u64(config.max_streams + housekeeping).unwrap_or(quinn::VarInt::MAX),
    );
    quic.set_receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW));
    // Registered before `welcome` is written, so a revocation from now on closes it; the write
    // is bounded by the login deadline (a client that grants no credit for it cannot park a
    // welcome past a revocation), and the credential is checked again once it is written.
    let closer = {
        let peer = peer.clone();
        Arc::new(move |code: ErrorCode, reason: &str| peer.close(code, reason))
    };
    let _live = ctx.auth.register(id, credential.clone(), closer);
    let _counted = Counted::connection();
    let welcome = Frame::Welcome {
        version: PROTOCOL_VERSION,
        owner: owner.clone(),
        limits: ctx.uploads.limits(),
        server: concat!("ferryd ", env!("CARGO_PKG_VERSION")).to_owned(),
        notice: ctx.notices.current(),
        service: ctx.uploads.service_id().to_owned(),
    };
    match tokio::time::timeout_at(deadline, write_frame(&mut send, &welcome)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return,
        Err(_) => {
            let message = format!(
                "welcome was not read within {} s of connecting",
                config.handshake_timeout.as_secs()
            );
            info!(%remote, "closed: welcome not read in time");
            return peer.close(ErrorCode::NotAuthenticated, &message);
        }
    }
    if !ctx.auth.still_valid(&credential) {
        info!(%remote, owner, "token or upload link revoked during login");
        return peer.close(ErrorCode::TokenRevoked, "token revoked");
    }
    tracing::Span::current().record("owner", owner.as_str());
    info!(%remote, owner, conn = id, "connected");

    let (events, drain) = Outbox::new();
    let Drain { mut frames, full } = drain;
    let writer = tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            if write_frame(&mut send, &frame).await.is_err() {
                break;
            }
        }
        // Give the peer a moment to read the last frames (an error) before the close.
        send.finish(Duration::from_secs(2)).await;
    });
    let conn = Arc::new(Conn {
        ctx: ctx.clone(),
        peer: peer.clone(),
        who: Principal {
            owner,
            link,
            conn: id,
            frontend: match peer {
                Peer::Quic(_) => crate::uploads::Frontend::Quic,
                Peer::Web(..) => crate::uploads::Frontend::WebTransport,
            },
        },
        events,
        attached: Default::default(),
        pieces: Default::default(),
        reading: Arc::new(tokio::sync::Semaphore::new(1)),
    });
    let chunk_streams = tokio::spawn(tracing::Instrument::in_current_span(
        chunks::accept_chunk_streams(conn.clone()),
    ));
    // Notices the operator sets while this connection lives, pushed like acks.
    let notices = {
        let mut rx = conn.ctx.notices.subscribe();
        let events = conn.events.clone();
        tokio::spawn(async move {
            // Bounded by the connection: the task is aborted when it ends.
            loop {
                match rx.recv().await {
                    Ok(text) => events.push(Frame::Notice { text }),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    };

    let stall = conn.ctx.stream_timeout;
    let close = loop {
        // Biased: once the outbox overflowed, no further request is read, however many wait.
        tokio::select! {
            biased;
            () = full.notified() => {
                let message = format!(
                    "the client left {OUTBOX_FRAMES} frames unread on the control stream for up to {} s",
                    stall.as_secs()
                );
                info!(conn = id, "closed: control stream not read");
                break Some((ErrorCode::ControlStreamFull, message));
            }
            read = read_frame(&mut recv, stall, true) => match read {
                Ok(Some(frame)) => conn.request(frame).await,
                Ok(None) => break None,
                Err(e) => break e.code(),
            },
        }
    };
    chunk_streams.abort();
    notices.abort();
    conn.detach_all();
    let reason = match (&close, peer.close_reason()) {
        (Some((code, message)), _) => format!("{code}: {message}"),
        (None, Some(why)) => why,
        (None, None) => "the client ended the control stream".to_owned(),
    };
    info!(conn = id, reason, "disconnected");
    if let Some((code, message)) = close {
        // Best effort: the outbox may be full, and the close carries the code anyway.
        conn.events.push(Frame::Error {
            req: None,
            code,
            message: message.clone(),
        });
        drop(conn);
        if code == ErrorCode::ControlStreamFull {
            writer.abort();
        } else {
            let _ = writer.await;
        }
        peer.close(code, &message);
    } else {
        drop(conn);
        let _ = writer.await;
    }
    debug!(conn = id, "connection done");
}

impl Stop {
    /// The code and reason to close with.
    fn close(self, limit: Duration) -> (ErrorCode, String) {
        match self {
            Self::Timeout => (
                ErrorCode::NotAuthenticated,
                format!("no hello within {} s of connecting", limit.as_secs()),
            ),
            Self::Evicted => (
                ErrorCode::TooManyConnections,
                "too many connections are logging in; this one, the oldest, was dropped".into(),
            ),
        }
    }
}

/// Stops every unidirectional stream a `ferry/1` client opens before `welcome`
/// (`not_authenticated`); aborted at `welcome`, when chunk streams are accepted.
async fn stop_early_streams(connection: quinn::Connection) {
    while let Ok(mut stream) = connection.accept_uni().await {
        let code = quinn::VarInt::from_u32(ErrorCode::NotAuthenticated.quic_code());
        let _ = stream.stop(code);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A logged-in connection, counted in `ferry_connections_active` while it lives.
struct Counted;

impl Counted {
    fn connection() -> Self {
        crate::metrics::metrics().connections_active.inc();
        Self
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        crate::metrics::metrics().connections_active.dec();
    }
}

/// How long a refused browser has to close its session itself once it holds the error frame.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Sends an error frame on the control stream, then closes the connection with its code: once
/// the client has the frame, and for a browser once its page closed the session (at most
/// [`REFUSAL_LINGER`], and not at all once a newer login evicts this one).
async fn refuse(peer: &Peer, mut send: Send, evicted: &Notify, code: ErrorCode, message: &str) {
    let frame = Frame::Error {
        req: None,
        code,
        message: message.to_owned(),
    };
    if write_frame(&mut send, &frame).await.is_ok() {
        send.finish(Duration::from_secs(2)).await;
        peer.close_once_read(code, message, REFUSAL_LINGER, evicted)
            .await;
    } else {
        peer.close(code, message);
    }
}

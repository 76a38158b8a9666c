//! One authenticated QUIC connection to a Ferry server: the `hello` exchange, requests with
//! their replies matched by `req`, and a channel of the frames the server pushes (acks,
//! rejections, takeover notices). The endpoint that makes connections is `endpoint.rs`; which
//! address it dials, `route.rs`.

mod endpoint;
mod route;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::{ErrorCode, Frame, Limits, UploadInfo, UploadSummary, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot};

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

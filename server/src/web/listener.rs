//! The web listener (`--web-listen`, off by default): the upload page over HTTPS on TCP, with
//! the server's certificate. Every answer carries `Alt-Svc` naming the QUIC port.
//!
//! - `GET /`, `GET /u/<grant>` and `…/index.html`: the page (`web/index.html`); it reads the
//!   grant from its URL (the path, or the fragment: `index.html#<grant>`).
//! - `GET …/ferry.js`, `…/app.js`, `…/tus.js`, `…/style.css` (any folder: the page links them relatively):
//!   the page's modules and style, built into ferryd.
//! - under `--upload-path` (`/files/`): uploads over HTTP, tus and the IETF draft
//!   (`crate::http`).
//! - `GET /webtransport.json`: where and how to open the session: `{"port": QUIC port,
//!   "path": "/ferry", "certificate_hashes": [hex SHA-256, …]}` — the hashes of the browser
//!   certificates (`certs.rs`), empty when the server has a CA certificate (`--cert`) — and
//!   `"peers"`, the other nodes' web listeners (`--web-peer`). Sent with CORS for the allowed
//!   origins, so a page served elsewhere can ask for it.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::certs::BrowserCerts;
use super::Origins;

/// What the web listener serves from.
pub(crate) struct Context {
    /// The UDP port browsers open their WebTransport sessions on (`Alt-Svc`).
    pub quic_port: u16,
    /// The short-lived certificates browsers accept by hash (none with a CA certificate).
    pub browser_certs: Option<Arc<BrowserCerts>>,
    pub origins: Origins,
    /// The other nodes' web listeners, for the page to move to (`--web-peer`).
    pub peers: Vec<String>,
    /// The HTTP upload front end (tus, the IETF draft).
    pub http: crate::http::Context,
}

/// The page's files, built into the binary.
const FILES: &[(&str, &str, &str)] = &[
    ("/index.html", "text/html; charset=utf-8", INDEX),
    (
        "/ferry.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/ferry.js"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/app.js"),
    ),
    (
        "/tus.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/tus.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/style.css"),
    ),
];
const INDEX: &str = include_str!("../../../web/index.html");

/// Serves the web listener until the task is aborted, within `httpconn::Limits::WEB`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<Context>,
) {
    let gate = crate::httpconn::Gate::new("web", crate::httpconn::Limits::WEB);
    let handler = move |req: Request<Incoming>, peer| {
        let ctx = ctx.clone();
        async move {
            let mut response = if ctx.http.serves(req.uri().path()) {
                crate::http::handle(&ctx.http, req, peer).await
            } else {
                handle(&req, &ctx).map(crate::http::boxed)
            };
            common_headers(&mut response, &ctx);
            response
        }
    };
    crate::httpconn::serve(listener, Some(TlsAcceptor::from(tls)), gate, handler).await;
}

fn handle(req: &Request<Incoming>, ctx: &Context) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let file = FILES
        .iter()
        .find(|(p, _, _)| path.rsplit('/').next() == p.strip_prefix('/'));
    let response = if req.method() != Method::GET && req.method() != Method::HEAD {
        reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n")
    } else if let Some((_, kind, body)) = file {
        // By the last segment: the page links its files relatively, and is at `/u/<grant>`.
        reply(StatusCode::OK, kind, *body)
    } else if path == "/" || path.starts_with("/u/") {
        reply(StatusCode::OK, "text/html; charset=utf-8", INDEX)
    } else if path == "/webtransport.json" {
        let mut response = reply(StatusCode::OK, "application/json", session_info(ctx));
        cors(req, ctx, &mut response);
        response
    } else {
        reply(StatusCode::NOT_FOUND, "text/plain", "not found\n")
    };
    response
}

/// Headers of every answer of the web listener.
fn common_headers<B>(response: &mut Response<B>, ctx: &Context) {
    let headers = response.headers_mut();
    let port = ctx.quic_port;
    if let Ok(value) = HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")) {
        headers.insert("alt-svc", value);
    }
    // The grant is in the page's URL: no Referer may carry it elsewhere.
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// What the page needs to open its session.
fn session_info(ctx: &Context) -> String {
    let hashes: Vec<String> = match &ctx.browser_certs {
        Some(certs) => certs.hashes().iter().map(hex::encode).collect(),
        None => Vec::new(),
    };
    serde_json::json!({
        "port": ctx.quic_port,
        "path": super::SESSION_PATH,
        "certificate_hashes": hashes,
        "peers": ctx.peers,
    })
    .to_string()
}

/// Lets a page of an allowed origin read the answer (a page served by another web server).
fn cors(req: &Request<Incoming>, ctx: &Context, response: &mut Response<Full<Bytes>>) {
    let Some(origin) = req.headers().get("origin").and_then(|v| v.to_str().ok()) else {
        return;
    };
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host))
        .unwrap_or_default();
    if ctx.origins.allows(Some(origin), host) {
        if let Ok(value) = HeaderValue::from_str(origin) {
            let headers = response.headers_mut();
            headers.insert("access-control-allow-origin", value);
            headers.insert("vary", HeaderValue::from_static("origin"));
        }
    }
}

fn reply(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = kind.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

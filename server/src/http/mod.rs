//! The HTTP front end on the web listener: tus 1.0 (`tus.rs`) and the IETF resumable-upload
//! draft (`ietf.rs`) under `--upload-path` (default `/files/`), on the same upload service as
//! `ferry/1` (`crate::uploads`). A request carrying `Upload-Draft-Interop-Version` speaks the
//! draft; any other speaks tus.
//!
//! Here: routing, authentication (`Authorization: Bearer` with a token or an upload link's
//! grant), CORS for the allowed origins, request bodies as a [`ByteSource`] with a stall
//! timeout and revocation, and the mapping of the service's errors to status codes.

// Errors here are answers, built once per request: their size does not matter.
#![allow(clippy::result_large_err)]

mod ietf;
mod read;
mod tus;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::ErrorCode;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::auth::{Auth, Live};
use crate::driver::WireError;
use crate::uploads::append::ByteSource;
use crate::uploads::{Frontend, Principal, Uploads};
use crate::web::Origins;

/// Chunk size of uploads created over HTTP (the server chooses; within the configured bounds).
const HTTP_CHUNK_SIZE: u64 = 8 << 20;

/// Request headers a page of another origin may send (CORS).
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Content-Disposition, Range, Upload-Length, Upload-Offset, Tus-Resumable, Upload-Metadata, Upload-Defer-Length, Upload-Concat, Upload-Checksum, Upload-Complete, Upload-Incomplete, Upload-Draft-Interop-Version, X-HTTP-Method-Override, X-Requested-With";
/// Response headers a page of another origin may read (CORS).
const EXPOSE_HEADERS: &str = "Location, WWW-Authenticate, Ferry-File-Name, Ferry-Durable-Offset, Ferry-Complete, Content-Range, Accept-Ranges, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Defer-Length, Upload-Concat, Upload-Expires, Upload-Complete, Upload-Incomplete, Upload-Limit, Upload-Draft-Interop-Version, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm";
const ALLOW_METHODS: &str = "POST, HEAD, PATCH, DELETE, OPTIONS, GET";

/// What the HTTP front end serves from.
pub(crate) struct Context {
    pub uploads: Arc<Uploads>,
    pub auth: Arc<Auth>,
    /// `--upload-path`: `/files/`.
    pub path: String,
    pub origins: Origins,
    /// How long a request body may stall (`--stream-timeout`).
    pub stall: Duration,
}

impl Context {
    pub(crate) fn new(
        uploads: Arc<Uploads>,
        auth: Arc<Auth>,
        config: &crate::Config,
        origins: Origins,
    ) -> Self {
        Self {
            path: config.upload_path.clone(),
            stall: config.stream_timeout,
            uploads,
            auth,
            origins,
        }
    }

    /// Whether `path` is the endpoint or an upload under it.
    pub(crate) fn serves(&self, path: &str) -> bool {
        path.starts_with(&self.path) || path == self.path.trim_end_matches('/')
    }
}

/// The answers of this front end: small bodies, built whole.
pub(crate) type Answer = Response<BoxBody<Bytes, std::io::Error>>;

/// A whole body, as the front end's answers carry them.
pub(crate) fn boxed(body: Full<Bytes>) -> BoxBody<Bytes, std::io::Error> {
    body.map_err(|never| match never {}).boxed()
}

/// A body held whole in memory.
pub(crate) fn full(bytes: impl Into<Bytes>) -> BoxBody<Bytes, std::io::Error> {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// One request to the upload endpoint.
pub(crate) async fn handle(ctx: &Context, req: Request<Incoming>, peer: SocketAddr) -> Answer {
    let origin = req
        .headers()
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let host = host_of(req.headers());
    if !ctx.origins.allows(origin.as_deref(), &host) {
        info!(
            origin,
            "refused an upload request: origin not allowed (--web-origin)"
        );
        return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let mut answer = route(ctx, req, peer).await;
    if let Some(origin) = origin {
        let headers = answer.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&origin) {
            headers.insert("access-control-allow-origin", value);
            headers.insert("vary", HeaderValue::from_static("origin"));
            headers.insert(
                "access-control-expose-headers",
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }
    answer
}

async fn route(ctx: &Context, req: Request<Incoming>, peer: SocketAddr) -> Answer {
    tracing::debug!(%peer, method = %req.method(), path = req.uri().path(), "upload request");
    // A CORS preflight: answered for any path under the endpoint, without credentials.
    if req.method() == Method::OPTIONS
        && req.headers().contains_key("access-control-request-method")
    {
        let mut answer = empty(StatusCode::NO_CONTENT);
        let headers = answer.headers_mut();
        headers.insert(
            "access-control-allow-methods",
            HeaderValue::from_static(ALLOW_METHODS),
        );
        headers.insert(
            "access-control-allow-headers",
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert("access-control-max-age", HeaderValue::from_static("86400"));
        return answer;
    }
    let rest = req
        .uri()
        .path()
        .strip_prefix(ctx.path.as_str())
        .unwrap_or("")
        .to_owned();
    let target = match rest.as_str() {
        "" => Target::Endpoint,
        id if !id.contains('/') => Target::Upload(id.to_owned()),
        _ => return plain(StatusCode::NOT_FOUND, "no such upload\n"),
    };
    // `X-HTTP-Method-Override` (tus): for clients that can only send POST.
    let mut method = req.method().clone();
    if method == Method::POST {
        if let Some(over) = req
            .headers()
            .get("x-http-method-override")
            .and_then(|v| v.to_str().ok())
        {
            match Method::from_bytes(over.as_bytes()) {
                Ok(m) => method = m,
                Err(_) => return plain(StatusCode::BAD_REQUEST, "bad X-HTTP-Method-Override\n"),
            }
        }
    }
    if method == Method::GET {
        if let Target::Upload(id) = &target {
            return read::get(ctx, req.headers(), req.uri().query(), peer, id).await;
        }
    }
    match ietf::version(req.headers()) {
        Ok(Some(version)) => ietf::handle(ctx, req, method, target, peer, version).await,
        Ok(None) => tus::handle(ctx, req, method, target, peer).await,
        Err(answer) => answer,
    }
}

/// What a request addresses.
pub(crate) enum Target {
    /// The endpoint itself: create (POST), discover (OPTIONS).
    Endpoint,
    /// One upload: its id.
    Upload(String),
}

/// A logged-in request: who it is, and its registration for revocation.
pub(crate) struct Caller {
    pub who: Principal,
    /// Set when the credential is revoked meanwhile: its request bodies stop.
    pub revoked: Arc<Revoked>,
    _live: Live,
}

#[derive(Default)]
pub(crate) struct Revoked {
    flag: AtomicBool,
    notify: Notify,
}

impl Revoked {
    fn set(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

/// Authenticates a request by its `Authorization: Bearer` token or upload link grant. The
/// `Err` is the answer: `401` (after the throttle's delay for a wrong credential).
/// A read link (`ferryd link --read`) is refused here: it reads its upload (`read.rs`), nothing
/// else.
pub(crate) async fn login(
    ctx: &Context,
    headers: &HeaderMap,
    peer: SocketAddr,
    frontend: Frontend,
) -> Result<Caller, Answer> {
    let caller = login_with(ctx, bearer(headers), peer, frontend)
        .await
        .map_err(|(status, e)| refusal(status, &e))?;
    if caller.who.link.as_ref().is_some_and(|l| l.read.is_some()) {
        return Err(error(
            StatusCode::FORBIDDEN,
            &WireError::new(
                ErrorCode::Refused,
                "a read link only reads its upload (GET); it cannot upload",
            ),
        ));
    }
    Ok(caller)
}

/// The answer to a failed login. A `401` carries its challenge (RFC 6750 §3): `Bearer` when no
/// credential came, and for a wrong one `error="invalid_token"` with the reason as
/// `error_description`, so a client that cannot read the body (a `HEAD`) still learns why.
pub(crate) fn refusal(status: StatusCode, e: &WireError) -> Answer {
    let mut answer = error(status, e);
    if status == StatusCode::UNAUTHORIZED {
        let challenge = match e.code {
            ErrorCode::Unauthorized => format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                e.message.replace(['"', '\\'], "'")
            ),
            _ => "Bearer".to_owned(),
        };
        set(&mut answer, "www-authenticate", challenge);
    }
    answer
}

/// The `Authorization: Bearer` credential, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

/// Authenticates `token` (a token, an upload link's grant or a read link's).
pub(crate) async fn login_with(
    ctx: &Context,
    token: Option<&str>,
    peer: SocketAddr,
    frontend: Frontend,
) -> Result<Caller, (StatusCode, WireError)> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err((
            StatusCode::UNAUTHORIZED,
            WireError::new(
                ErrorCode::NotAuthenticated,
                "send Authorization: Bearer <token or upload link grant>",
            ),
        ));
    };
    let login = match ctx.auth.login(token).await {
        Ok(Ok(login)) => login,
        Ok(Err(what)) => {
            let delay = ctx.auth.failed(peer.ip());
            info!(%peer, delay_ms = delay.as_millis() as u64, what, "refused an upload request");
            tokio::time::sleep(delay).await;
            return Err((
                StatusCode::UNAUTHORIZED,
                WireError::new(ErrorCode::Unauthorized, what),
            ));
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "cannot read tokens or links");
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                WireError::new(ErrorCode::Internal, "server cannot check tokens"),
            ));
        }
    };
    let id = crate::session_id();
    let revoked = Arc::new(Revoked::default());
    let live = {
        let revoked = revoked.clone();
        ctx.auth.register(
            id,
            login.credential.clone(),
            Arc::new(move |_code: ErrorCode, _reason: &str| revoked.set()),
        )
    };
    Ok(Caller {
        who: Principal {
            owner: login.owner,
            link: login.link,
            conn: id,
            frontend,
        },
        revoked,
        _live: live,
    })
}

/// A request body for the upload service: pieces as they arrive, an error after a stall of
/// `stall`, a break, or a revocation of the caller's credential.
pub(crate) struct Body {
    body: Incoming,
    stall: Duration,
    revoked: Arc<Revoked>,
}

impl Body {
    pub(crate) fn new(body: Incoming, stall: Duration, revoked: Arc<Revoked>) -> Self {
        Self {
            body,
            stall,
            revoked,
        }
    }
}

impl ByteSource for Body {
    async fn next(&mut self) -> Option<Result<Bytes, String>> {
        // Bounded by the body: each turn reads one frame; trailers are skipped.
        loop {
            if self.revoked.is_set() {
                return Some(Err("token revoked".into()));
            }
            let frame = tokio::select! {
                frame = tokio::time::timeout(self.stall, self.body.frame()) => frame,
                () = self.revoked.notify.notified() => continue,
            };
            match frame {
                Err(_) => return Some(Err(format!("no data for {} s", self.stall.as_secs()))),
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some(Err(e.to_string())),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Some(Ok(data)),
                    Err(_) => continue,
                },
            }
        }
    }
}

/// The status a service error is answered with.
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode as E;
    match code {
        E::NotFound => StatusCode::NOT_FOUND,
        E::Expired => StatusCode::GONE,
        E::NotAuthenticated | E::Unauthorized | E::TokenRevoked => StatusCode::UNAUTHORIZED,
        E::Refused => StatusCode::FORBIDDEN,
        E::FileTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        E::QuotaExceeded => StatusCode::FORBIDDEN,
        E::TooManyUploads => StatusCode::TOO_MANY_REQUESTS,
        E::InsufficientStorage | E::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        E::BadField | E::InvalidName | E::BadChunkSize | E::BadDigest => StatusCode::BAD_REQUEST,
        E::AlreadyExists | E::NameExhausted | E::TakenOver | E::Incomplete => StatusCode::CONFLICT,
        // In flight elsewhere: retry shortly (tus clients retry 423).
        E::BadState | E::ChunkInProgress => StatusCode::LOCKED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answer: `{"code": …, "message": …}`.
pub(crate) fn error(status: StatusCode, e: &WireError) -> Answer {
    let body = serde_json::json!({"code": e.code.as_str(), "message": e.message}).to_string();
    let mut answer = Response::new(full(body));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}

/// An error answer with the status its code maps to.
pub(crate) fn wire_error(e: &WireError) -> Answer {
    error(status_of(e.code), e)
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Answer {
    let mut answer = Response::new(full(Bytes::from_static(text.as_bytes())));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    answer
}

pub(crate) fn empty(status: StatusCode) -> Answer {
    let mut answer = Response::new(full(Bytes::new()));
    *answer.status_mut() = status;
    answer
}

/// Sets a header whose value is built at run time (ASCII by construction; skipped if not).
pub(crate) fn set(answer: &mut Answer, name: &'static str, value: impl AsRef<str>) {
    if let Ok(value) = HeaderValue::from_str(value.as_ref()) {
        answer
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }
}

/// A header as text, if present and visible ASCII.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// A header that must be a decimal u64, if present; `Err` if malformed.
pub(crate) fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ()> {
    match header(headers, name) {
        None => Ok(None),
        Some(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse().map(Some).map_err(|_| ())
        }
        Some(_) => Err(()),
    }
}

/// The host the client dialled (for the own-origin check and absolute `Location`s).
pub(crate) fn host_of(headers: &HeaderMap) -> String {
    let host = header(headers, "host").unwrap_or_default();
    match host.find(']') {
        // `[::1]:8443`
        Some(end) => host[..=end].to_owned(),
        None => host.split(':').next().unwrap_or_default().to_owned(),
    }
}

/// The absolute URL of an upload: `https://HOST[:PORT]/files/<id>`.
pub(crate) fn location(ctx: &Context, headers: &HeaderMap, id: &str) -> String {
    let host = header(headers, "host").unwrap_or("localhost");
    format!("https://{host}{}{id}", ctx.path)
}

/// `Ferry-File-Name`: the published path under the owner's folder (percent-encoded UTF-8),
/// on the answer whose bytes completed the upload.
pub(crate) fn say_published(answer: &mut Answer, finished: &crate::uploads::Finished) {
    let mut encoded = String::with_capacity(finished.file_name.len());
    for byte in finished.file_name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/ ()".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    set(answer, "ferry-file-name", encoded);
}

/// The chunk size of a new upload over HTTP.
pub(crate) fn chunk_size(ctx: &Context) -> u64 {
    let config = ctx.uploads.config();
    HTTP_CHUNK_SIZE.clamp(config.min_chunk_size, config.max_chunk_size)
}

/// When an unfinished upload expires without progress, as an HTTP date (`Upload-Expires`).
pub(crate) fn expires(ctx: &Context, updated_at: u64) -> Option<String> {
    let after = ctx.uploads.tunable().expire_after.as_secs();
    (after > 0).then(|| {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(updated_at.saturating_add(after));
        httpdate::fmt_http_date(at)
    })
}

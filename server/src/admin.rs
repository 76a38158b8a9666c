//! The admin listener (`--admin-listen`, off by default): plain HTTP/1.1 for the machine room —
//! health, metrics, uploads in progress. Bind it to loopback or a management network; with
//! `--admin-token` every path but `/healthz` needs `Authorization: Bearer TOKEN`.
//!
//! - `GET /healthz`: `200 ok` while the server serves; `503` with the reason when the
//!   database is closed after a write failure, the disk is below the reserve, or (`--store s3`)
//!   the object store does not answer.
//! - `GET /metrics`: Prometheus text (see `crate::metrics`).
//! - `GET /uploads`: JSON array of every unfinished upload, all owners, with progress.
//! - `PUT /notice` (body: the text, UTF-8, at most 1 024 bytes) sets the operator's notice:
//!   pushed to every connected client and sent in `welcome` until cleared; `DELETE /notice`
//!   clears it; `GET /notice` shows it.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::metrics::metrics;
use crate::notice::Notices;
use crate::uploads::Uploads;

/// What the admin listener serves from.
pub(crate) struct Context {
    pub uploads: Arc<Uploads>,
    pub notices: Arc<Notices>,
    /// Bearer token every path but `/healthz` needs; `None`: none.
    pub token: Option<String>,
}

/// One unfinished upload, as `GET /uploads` lists it.
#[derive(Debug, Serialize)]
pub struct UploadProgress {
    pub upload_id: String,
    pub owner: String,
    pub file_name: String,
    pub size: u64,
    pub durable_bytes: u64,
    pub created_at: u64,
    pub updated_at: u64,
    /// Being received or finished now (a connection drives it).
    pub active: bool,
}

/// Serves the admin listener until the task is aborted, within `httpconn::Limits::ADMIN`: a
/// flood of idle connections evicts its own oldest, never takes the descriptors the QUIC path
/// needs, and never keeps a prompt request out.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    let gate = crate::httpconn::Gate::new("admin", crate::httpconn::Limits::ADMIN);
    let handler = move |req: Request<Incoming>, _peer| {
        let ctx = ctx.clone();
        async move { handle(req, &ctx).await }
    };
    crate::httpconn::serve(listener, None, gate, handler).await;
}

fn reply(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = kind.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

async fn handle(req: Request<Incoming>, ctx: &Arc<Context>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = req.uri().path().to_owned();
    let path = path.as_str();
    if path != "/healthz" && !authorized(&req, ctx.token.as_deref()) {
        return reply(
            StatusCode::UNAUTHORIZED,
            TEXT,
            "missing or wrong Authorization: Bearer token (--admin-token)\n",
        );
    }
    if path == "/notice" {
        return notice(req, ctx).await;
    }
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only here\n");
    }
    match path {
        "/healthz" => match health(ctx) {
            Ok(()) => reply(StatusCode::OK, TEXT, "ok\n"),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
        },
        "/metrics" => {
            refresh(ctx);
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics().encode(),
            )
        }
        "/uploads" => {
            let ctx = ctx.clone();
            let listed = tokio::task::spawn_blocking(move || uploads(&ctx)).await;
            match listed {
                Ok(Ok(list)) => reply(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_vec(&list).unwrap_or_default(),
                ),
                Ok(Err(e)) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("cannot list uploads: {e:#}\n"),
                ),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "no such path; try /healthz, /metrics, /uploads\n",
        ),
    }
}

/// `/notice`: GET shows it, PUT sets it (the body), DELETE clears it.
async fn notice(req: Request<Incoming>, ctx: &Arc<Context>) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    const TEXT: &str = "text/plain; charset=utf-8";
    let text = match *req.method() {
        Method::GET => {
            return reply(
                StatusCode::OK,
                TEXT,
                ctx.notices.current().unwrap_or_default(),
            );
        }
        Method::DELETE => None,
        Method::PUT | Method::POST => {
            let limited = http_body_util::Limited::new(req.into_body(), crate::notice::MAX_NOTICE);
            let body = match limited.collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => {
                    return reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        TEXT,
                        format!("a notice is at most {} bytes\n", crate::notice::MAX_NOTICE),
                    )
                }
            };
            let Ok(text) = String::from_utf8(body.to_vec()) else {
                return reply(StatusCode::BAD_REQUEST, TEXT, "a notice is UTF-8 text\n");
            };
            let text = text.trim().to_owned();
            if text.is_empty() {
                return reply(
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    "an empty notice; DELETE /notice clears it\n",
                );
            }
            Some(text)
        }
        _ => return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET, PUT or DELETE\n"),
    };
    let notices = ctx.notices.clone();
    match tokio::task::spawn_blocking(move || notices.set(text)).await {
        Ok(Ok(())) => reply(StatusCode::OK, TEXT, "ok\n"),
        Ok(Err(e)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("cannot keep the notice: {e:#}\n"),
        ),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
    }
}

fn authorized(req: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// Why the server cannot take uploads now, if it cannot.
fn health(ctx: &Context) -> Result<(), String> {
    let store = ctx.uploads.store();
    if !store.is_open() {
        return Err(
            "database closed after a write failure (it reopens when a write succeeds)".into(),
        );
    }
    if let Some((since, why)) = ctx.uploads.backend().bucket().and_then(|b| b.outage()) {
        return Err(format!(
            "the object store has not answered for {} s (commits wait for it): {why}",
            since.as_secs()
        ));
    }
    store
        .check_space()
        .map_err(|e| format!("disk below the reserve: {e}"))
}

/// The gauges read at scrape time.
fn refresh(ctx: &Context) {
    let m = metrics();
    m.uploads_active
        .set(ctx.uploads.registry().running() as i64);
    let free = crate::store::free_space(ctx.uploads.store().data_dir()).unwrap_or(0);
    m.disk_free.set(i64::try_from(free).unwrap_or(i64::MAX));
}

fn uploads(ctx: &Context) -> anyhow::Result<Vec<UploadProgress>> {
    let mut out = Vec::new();
    for (id, record, durable_bytes) in ctx.uploads.store().in_progress()? {
        out.push(UploadProgress {
            upload_id: id.to_string(),
            owner: record.owner,
            file_name: record.file_name,
            size: record.size,
            durable_bytes,
            created_at: record.created_at,
            updated_at: record.updated_at,
            active: ctx.uploads.registry().get(id).is_some(),
        });
    }
    out.sort_by_key(|u| std::cmp::Reverse(u.updated_at));
    Ok(out)
}

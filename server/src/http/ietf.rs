//! The IETF draft "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload), interop
//! versions 3 to 8 (`Upload-Draft-Interop-Version`): upload creation by `POST` to the endpoint
//! with the body, offset retrieval by `HEAD`, appends by `PATCH`, cancellation by `DELETE`,
//! limits in `Upload-Limit`. Version 3 (iOS 17's `URLSession`) says `Upload-Incomplete: ?1`
//! where later versions say `Upload-Complete: ?0`; from version 6 on an append's body is
//! `application/partial-upload`; from version 5 on an offset mismatch is answered with a
//! problem document. The interim `104 (Upload Resumption Supported)` response is not sent
//! (hyper has no server API for it): a client learns the upload's URL from the final response
//! (`docs/protocol.md` §11 says what that costs).

use std::net::SocketAddr;

use ferry_proto::{ErrorCode, OnExists};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};

use super::{
    empty, error, header, location, login, number, plain, say_published, set, wire_error, Answer,
    Body, Caller, Context, Target,
};
use crate::driver::WireError;
use crate::uploads::append::{Append, AppendError};
use crate::uploads::{Extra, Frontend, NewUpload};

/// The interop versions taken.
const VERSIONS: std::ops::RangeInclusive<u8> = 3..=8;
/// The media type of an append's body from version 6 on.
const PARTIAL_UPLOAD: &str = "application/partial-upload";

/// The request's interop version: `None` if it sends none (a tus request), `Err` (the answer)
/// for one not taken.
pub(super) fn version(headers: &HeaderMap) -> Result<Option<u8>, Answer> {
    let Some(text) = header(headers, "upload-draft-interop-version") else {
        return Ok(None);
    };
    match text.parse::<u8>() {
        Ok(v) if VERSIONS.contains(&v) => Ok(Some(v)),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            &WireError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "Upload-Draft-Interop-Version {text:.10} is not supported; this server takes {} to {}",
                    VERSIONS.start(),
                    VERSIONS.end()
                ),
            ),
        )),
    }
}

pub(super) async fn handle(
    ctx: &Context,
    req: Request<Incoming>,
    method: Method,
    target: Target,
    peer: SocketAddr,
    version: u8,
) -> Answer {
    let mut answer = match (method, target) {
        (Method::OPTIONS, _) => {
            let mut answer = empty(StatusCode::NO_CONTENT);
            set(&mut answer, "upload-limit", limit(ctx));
            answer
        }
        (Method::POST, Target::Endpoint) => create(ctx, req, peer, version).await,
        (Method::HEAD, Target::Upload(id)) => head(ctx, req.headers(), peer, &id, version).await,
        (Method::PATCH, Target::Upload(id)) => patch(ctx, req, peer, &id, version).await,
        (Method::DELETE, Target::Upload(id)) => match caller(ctx, req.headers(), peer).await {
            Ok(caller) => match ctx.uploads.abort(&caller.who, &id).await {
                Ok(_) => empty(StatusCode::NO_CONTENT),
                Err(e) if e.code == ErrorCode::BadState => error(StatusCode::CONFLICT, &e),
                Err(e) => wire_error(&e),
            },
            Err(answer) => answer,
        },
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "not allowed here\n"),
    };
    set(
        &mut answer,
        "upload-draft-interop-version",
        version.to_string(),
    );
    answer
}

/// `Upload-Limit`: the largest upload.
fn limit(ctx: &Context) -> String {
    format!("max-size={}", ctx.uploads.config().max_file_size)
}

async fn caller(ctx: &Context, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller, Answer> {
    login(ctx, headers, peer, Frontend::Ietf).await
}

/// Whether the request's body ends the upload: `Upload-Complete: ?1` (version 3:
/// `Upload-Incomplete: ?0`); a request that says neither does not.
fn completes(headers: &HeaderMap, version: u8) -> Result<bool, Answer> {
    let (name, complete) = if version == 3 {
        ("upload-incomplete", "?0")
    } else {
        ("upload-complete", "?1")
    };
    match header(headers, name) {
        None => Ok(version == 3),
        Some(v) if v == "?0" || v == "?1" => Ok(v == complete),
        Some(_) => Err(bad_request(format!("{name} is ?0 or ?1"))),
    }
}

/// Says whether the upload is complete, in the version's words.
fn say_complete(answer: &mut Answer, version: u8, complete: bool) {
    if version == 3 {
        set(
            answer,
            "upload-incomplete",
            if complete { "?0" } else { "?1" },
        );
    } else {
        set(
            answer,
            "upload-complete",
            if complete { "?1" } else { "?0" },
        );
    }
}

fn bad_request(message: impl Into<String>) -> Answer {
    error(
        StatusCode::BAD_REQUEST,
        &WireError::new(ErrorCode::BadField, message),
    )
}

/// `POST` to the endpoint: a new upload with its body. The length is `Upload-Length`, or
/// with a complete body its `Content-Length`; otherwise it is declared when a request
/// completes the upload.
async fn create(ctx: &Context, req: Request<Incoming>, peer: SocketAddr, version: u8) -> Answer {
    let headers = req.headers();
    let last = match completes(headers, version) {
        Ok(last) => last,
        Err(answer) => return answer,
    };
    let declared = match number(headers, "upload-length") {
        Ok(n) => n,
        Err(()) => return bad_request("Upload-Length is not a number"),
    };
    let content_length = number(headers, "content-length").ok().flatten();
    let length = match (declared, last.then_some(content_length).flatten()) {
        (Some(a), Some(b)) if a != b => {
            return bad_request("Upload-Length and Content-Length of a complete upload differ")
        }
        (Some(n), _) | (None, Some(n)) => Some(n),
        (None, None) => None,
    };
    if length.is_none() && !ctx.uploads.can_concatenate() {
        return bad_request(
            "uploads of unknown length are not available on this server (its uploads are stored in a shared bucket): send Upload-Length",
        );
    }
    let file_name = header(headers, "content-disposition")
        .and_then(disposition_filename)
        .unwrap_or_else(super::tus::generated_name);
    let desc = header(headers, "content-type")
        .map(|t| format!("content-type={t}"))
        .unwrap_or_default();
    let caller = match caller(ctx, headers, peer).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let new = NewUpload {
        file_name,
        dir: Vec::new(),
        size: length.unwrap_or(0),
        chunk_size: super::chunk_size(ctx),
        desc,
        on_exists: OnExists::Rename,
        extra: Extra {
            deferred: length.is_none(),
            ..Default::default()
        },
    };
    let (id, _) = match ctx.uploads.create(&caller.who, new).await {
        Ok(created) => created,
        Err(e) => return wire_error(&e),
    };
    let url = location(ctx, headers, &id.to_string());
    let body = Body::new(req.into_body(), ctx.stall, caller.revoked.clone());
    let append = Append {
        at: 0,
        body,
        length: None,
        last,
        checksum: None,
    };
    let mut answer = match ctx
        .uploads
        .append(&caller.who, &id.to_string(), append)
        .await
    {
        Ok(appended) => {
            let mut answer = empty(StatusCode::CREATED);
            set(&mut answer, "upload-offset", appended.offset.to_string());
            say_complete(&mut answer, version, appended.finished.is_some());
            if let Some(finished) = &appended.finished {
                say_published(&mut answer, finished);
            }
            answer
        }
        Err(e) => append_error(e, 0, version),
    };
    set(&mut answer, "location", url);
    set(&mut answer, "upload-limit", limit(ctx));
    answer
}

/// `HEAD`: the durable offset and whether the upload is complete.
async fn head(
    ctx: &Context,
    headers: &HeaderMap,
    peer: SocketAddr,
    id: &str,
    version: u8,
) -> Answer {
    let caller = match caller(ctx, headers, peer).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let at = match ctx.uploads.offset(&caller.who, id).await {
        Ok(at) => at,
        Err(e) => return wire_error(&e),
    };
    let mut answer = empty(StatusCode::NO_CONTENT);
    set(&mut answer, "cache-control", "no-store");
    set(&mut answer, "upload-offset", at.offset.to_string());
    say_complete(&mut answer, version, at.complete());
    if let Some(length) = at.length() {
        set(&mut answer, "upload-length", length.to_string());
    }
    set(&mut answer, "upload-limit", limit(ctx));
    answer
}

/// `PATCH`: bytes at the offset; `Upload-Complete: ?1` ends the upload.
async fn patch(
    ctx: &Context,
    req: Request<Incoming>,
    peer: SocketAddr,
    id: &str,
    version: u8,
) -> Answer {
    let headers = req.headers();
    if version >= 6 && header(headers, "content-type") != Some(PARTIAL_UPLOAD) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &WireError::new(
                ErrorCode::BadField,
                format!("an append's body is Content-Type: {PARTIAL_UPLOAD}"),
            ),
        );
    }
    let at = match number(headers, "upload-offset") {
        Ok(Some(at)) => at,
        _ => return bad_request("send Upload-Offset: the offset the body starts at"),
    };
    let last = match completes(headers, version) {
        Ok(last) => last,
        Err(answer) => return answer,
    };
    let length = match number(headers, "upload-length") {
        Ok(n) => n,
        Err(()) => return bad_request("Upload-Length is not a number"),
    };
    let caller = match caller(ctx, headers, peer).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let body = Body::new(req.into_body(), ctx.stall, caller.revoked.clone());
    let append = Append {
        at,
        body,
        length,
        last,
        checksum: None,
    };
    match ctx.uploads.append(&caller.who, id, append).await {
        Ok(appended) => {
            let mut answer = empty(StatusCode::NO_CONTENT);
            set(&mut answer, "upload-offset", appended.offset.to_string());
            let complete = appended.finished.is_some() || appended.length == Some(appended.offset);
            say_complete(&mut answer, version, complete);
            if let Some(finished) = &appended.finished {
                say_published(&mut answer, finished);
            }
            answer
        }
        Err(e) => append_error(e, at, version),
    }
}

/// An append that kept nothing; from version 5 on, an offset mismatch as a problem document
/// naming both offsets.
fn append_error(e: AppendError, at: u64, version: u8) -> Answer {
    match e {
        AppendError::Conflict { offset } if version >= 5 => {
            let body = serde_json::json!({
                "type": "https://iana.org/assignments/http-problem-types#mismatching-upload-offset",
                "title": "offset from request does not match offset of resource",
                "expected-offset": offset,
                "provided-offset": at,
            })
            .to_string();
            let mut answer = hyper::Response::new(super::full(body));
            *answer.status_mut() = StatusCode::CONFLICT;
            set(&mut answer, "content-type", "application/problem+json");
            set(&mut answer, "upload-offset", offset.to_string());
            answer
        }
        other => super::tus::append_error(other, at),
    }
}

/// The `filename` parameter of a `Content-Disposition` header (quoted or not).
fn disposition_filename(text: &str) -> Option<String> {
    text.split(';').map(str::trim).find_map(|param| {
        let (key, value) = param.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("filename") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty()).then(|| value.replace("\\\"", "\""))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn filename_from_content_disposition() {
        let f = super::disposition_filename;
        assert_eq!(
            f("attachment; filename=\"clip.mov\"").as_deref(),
            Some("clip.mov")
        );
        assert_eq!(f("inline;filename=a.txt").as_deref(), Some("a.txt"));
        assert_eq!(f("attachment"), None);
    }
}

//! tus 1.0.0 (<https://tus.io/protocols/resumable-upload>): core, creation,
//! creation-with-upload, creation-defer-length, expiration, termination, checksum and
//! concatenation, on the upload service. `docs/protocol.md` §10 has the whole contract.

use std::net::SocketAddr;

use base64::Engine as _;
use ferry_proto::{ErrorCode, OnExists};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};

use super::{
    empty, error, expires, header, location, login, number, say_published, set, wire_error, Answer,
    Body, Caller, Context, Target,
};
use crate::driver::WireError;
use crate::uploads::append::{Append, AppendError, Checksum, CHECKSUM_ALGORITHMS};
use crate::uploads::{Extra, Frontend, NewUpload};

const VERSION: &str = "1.0.0";
/// The media type of a PATCH body (and of a creation-with-upload body).
const OFFSET_STREAM: &str = "application/offset+octet-stream";
/// tus's status for a body that does not match its `Upload-Checksum`.
const CHECKSUM_MISMATCH: u16 = 460;

pub(super) async fn handle(
    ctx: &Context,
    req: Request<Incoming>,
    method: Method,
    target: Target,
    peer: SocketAddr,
) -> Answer {
    let mut answer = if method == Method::OPTIONS {
        options(ctx)
    } else if method != Method::HEAD && header(req.headers(), "tus-resumable") != Some(VERSION) {
        // Every request but OPTIONS (and HEAD, which browsers may send bare) says the version.
        let mut answer = error(
            StatusCode::PRECONDITION_FAILED,
            &WireError::new(
                ErrorCode::UnsupportedVersion,
                "this endpoint speaks tus 1.0.0 (send Tus-Resumable: 1.0.0), or the IETF resumable-upload draft (send Upload-Draft-Interop-Version)",
            ),
        );
        set(&mut answer, "tus-version", VERSION);
        answer
    } else {
        match (method, target) {
            (Method::POST, Target::Endpoint) => create(ctx, req, peer).await,
            (Method::HEAD, Target::Upload(id)) => head(ctx, req.headers(), peer, &id).await,
            (Method::PATCH, Target::Upload(id)) => patch(ctx, req, peer, &id).await,
            (Method::DELETE, Target::Upload(id)) => delete(ctx, req.headers(), peer, &id).await,
            (_, Target::Endpoint) => not_allowed("POST, OPTIONS"),
            (_, Target::Upload(_)) => not_allowed("GET, HEAD, PATCH, DELETE, OPTIONS"),
        }
    };
    set(&mut answer, "tus-resumable", VERSION);
    answer
}

/// Discovery: the version, extensions, the largest file and the checksum algorithms.
fn options(ctx: &Context) -> Answer {
    let mut answer = empty(StatusCode::NO_CONTENT);
    set(&mut answer, "tus-version", VERSION);
    set(&mut answer, "tus-extension", extensions(ctx));
    set(
        &mut answer,
        "tus-max-size",
        ctx.uploads.config().max_file_size.to_string(),
    );
    set(
        &mut answer,
        "tus-checksum-algorithm",
        CHECKSUM_ALGORITHMS.join(","),
    );
    answer
}

/// The extensions this server offers: with a shared bucket as the store, neither deferred
/// lengths nor concatenation (both need the upload's bytes in files here).
fn extensions(ctx: &Context) -> String {
    let mut list = vec![
        "creation",
        "creation-with-upload",
        "expiration",
        "termination",
        "checksum",
    ];
    if ctx.uploads.can_concatenate() {
        list.extend(["creation-defer-length", "concatenation"]);
    }
    list.join(",")
}

fn not_allowed(allow: &'static str) -> Answer {
    let mut answer = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &WireError::new(ErrorCode::BadField, format!("allowed here: {allow}")),
    );
    set(&mut answer, "allow", allow);
    answer
}

fn bad_request(message: impl Into<String>) -> Answer {
    error(
        StatusCode::BAD_REQUEST,
        &WireError::new(ErrorCode::BadField, message),
    )
}

async fn caller(ctx: &Context, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller, Answer> {
    login(ctx, headers, peer, Frontend::Tus).await
}

/// `POST` to the endpoint: a new upload (with its first bytes, or as the concatenation of
/// partial ones).
async fn create(ctx: &Context, req: Request<Incoming>, peer: SocketAddr) -> Answer {
    let headers = req.headers();
    let concat = match header(headers, "upload-concat") {
        None => Concat::None,
        Some("partial") => Concat::Partial,
        Some(text) => match text.strip_prefix("final;") {
            Some(urls) => Concat::Final(
                urls.split_ascii_whitespace()
                    .map(|url| upload_id_of(ctx, url))
                    .collect(),
            ),
            None => return bad_request("Upload-Concat is `partial` or `final;URL URL …`"),
        },
    };
    let with_upload = header(headers, "content-type").is_some_and(|t| t == OFFSET_STREAM);
    let length = match (
        number(headers, "upload-length"),
        header(headers, "upload-defer-length"),
    ) {
        (Err(()), _) => return bad_request("Upload-Length is not a number"),
        (Ok(Some(n)), None) => Some(n),
        (Ok(None), Some("1")) => None,
        (Ok(None), None) if matches!(concat, Concat::Final(_)) => Some(0),
        (Ok(Some(_)), Some(_)) => {
            return bad_request("send Upload-Length or Upload-Defer-Length: 1, not both")
        }
        (Ok(None), Some(_)) => return bad_request("Upload-Defer-Length must be 1"),
        (Ok(None), None) => return bad_request("send Upload-Length (or Upload-Defer-Length: 1)"),
    };
    if length.is_none() && !ctx.uploads.can_concatenate() {
        return bad_request(
            "creation-defer-length is not available on this server: its uploads are stored in a shared bucket",
        );
    }
    let raw_metadata = header(headers, "upload-metadata").map(str::to_owned);
    let metadata = match parse_metadata(raw_metadata.as_deref().unwrap_or("")) {
        Ok(m) => m,
        Err(e) => return bad_request(e),
    };
    let (file_name, dir, desc) = match describe(&metadata) {
        Ok(described) => described,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let checksum = match checksum_of(headers) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let caller = match caller(ctx, headers, peer).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let new = NewUpload {
        file_name,
        dir,
        size: length.unwrap_or(0),
        chunk_size: super::chunk_size(ctx),
        desc,
        // tus has no such choice: a taken name is numbered, as for an upload link.
        on_exists: OnExists::Rename,
        extra: Extra {
            deferred: length.is_none(),
            partial: matches!(concat, Concat::Partial),
            metadata: raw_metadata,
        },
    };
    if let Concat::Final(parts) = concat {
        if with_upload {
            return bad_request("a final upload takes no body");
        }
        let Some(parts) = parts.into_iter().collect::<Option<Vec<_>>>() else {
            return bad_request("Upload-Concat names an upload that is not under this endpoint");
        };
        return match ctx.uploads.concat(&caller.who, &parts, new).await {
            Ok(finished) => {
                let mut answer = empty(StatusCode::CREATED);
                set(
                    &mut answer,
                    "location",
                    location(ctx, headers, &finished.upload_id),
                );
                answer
            }
            Err(e) => wire_error(&e),
        };
    }
    let (id, record) = match ctx.uploads.create(&caller.who, new).await {
        Ok(created) => created,
        Err(e) => return wire_error(&e),
    };
    let url = location(ctx, headers, &id.to_string());
    let mut answer = if with_upload {
        let body = Body::new(req.into_body(), ctx.stall, caller.revoked.clone());
        let append = Append {
            at: 0,
            body,
            length: None,
            last: false,
            checksum,
        };
        match ctx
            .uploads
            .append(&caller.who, &id.to_string(), append)
            .await
        {
            Ok(appended) => {
                let mut answer = empty(StatusCode::CREATED);
                set(&mut answer, "upload-offset", appended.offset.to_string());
                if let Some(finished) = &appended.finished {
                    say_published(&mut answer, finished);
                }
                answer
            }
            Err(e) => append_error(e, 0),
        }
    } else if record.size == 0 && !record.deferred && !record.partial {
        // An empty file is complete at its creation.
        match ctx.uploads.finish_empty(&caller.who, id, &record).await {
            Ok(finished) => {
                let mut answer = empty(StatusCode::CREATED);
                say_published(&mut answer, &finished);
                answer
            }
            Err(e) => wire_error(&e),
        }
    } else {
        empty(StatusCode::CREATED)
    };
    set(&mut answer, "location", url);
    if let Some(at) = expires(ctx, record.updated_at) {
        set(&mut answer, "upload-expires", at);
    }
    answer
}

/// `HEAD`: the durable offset, the length, the metadata.
async fn head(ctx: &Context, headers: &HeaderMap, peer: SocketAddr, id: &str) -> Answer {
    let caller = match caller(ctx, headers, peer).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let at = match ctx.uploads.offset(&caller.who, id).await {
        Ok(at) => at,
        Err(e) => return wire_error(&e),
    };
    let mut answer = empty(StatusCode::OK);
    set(&mut answer, "cache-control", "no-store");
    set(&mut answer, "upload-offset", at.offset.to_string());
    match at.length() {
        Some(length) => set(&mut answer, "upload-length", length.to_string()),
        None => set(&mut answer, "upload-defer-length", "1"),
    }
    if let Some(metadata) = &at.record.metadata {
        set(&mut answer, "upload-metadata", metadata);
    }
    if at.record.partial {
        set(&mut answer, "upload-concat", "partial");
    }
    if !at.complete() {
        if let Some(when) = expires(ctx, at.record.updated_at) {
            set(&mut answer, "upload-expires", when);
        }
    }
    answer
}

/// `PATCH`: bytes at the offset.
async fn patch(ctx: &Context, req: Request<Incoming>, peer: SocketAddr, id: &str) -> Answer {
    let headers = req.headers();
    if header(headers, "content-type") != Some(OFFSET_STREAM) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &WireError::new(
                ErrorCode::BadField,
                format!("a PATCH body is Content-Type: {OFFSET_STREAM}"),
            ),
        );
    }
    let at = match number(headers, "upload-offset") {
        Ok(Some(at)) => at,
        _ => return bad_request("send Upload-Offset: the offset the body starts at"),
    };
    let length = match number(headers, "upload-length") {
        Ok(length) => length,
        Err(()) => return bad_request("Upload-Length is not a number"),
    };
    let checksum = match checksum_of(headers) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let caller = match caller(ctx, headers, peer).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    // A body announced past the upload's end is refused before any of it is read.
    if let Ok(Some(body_length)) = number(headers, "content-length") {
        let end = match length {
            Some(length) => Some(length),
            None => ctx
                .uploads
                .offset(&caller.who, id)
                .await
                .ok()
                .and_then(|o| o.length()),
        };
        if let Some(end) = end.filter(|end| at.saturating_add(body_length) > *end) {
            return append_error(AppendError::TooLarge { limit: end }, at);
        }
    }
    let body = Body::new(req.into_body(), ctx.stall, caller.revoked.clone());
    let append = Append {
        at,
        body,
        length,
        last: false,
        checksum,
    };
    match ctx.uploads.append(&caller.who, id, append).await {
        Ok(appended) => {
            let mut answer = empty(StatusCode::NO_CONTENT);
            set(&mut answer, "upload-offset", appended.offset.to_string());
            match &appended.finished {
                Some(finished) => say_published(&mut answer, finished),
                None => {
                    if let Some(when) = expires(ctx, crate::store::unix_now()) {
                        set(&mut answer, "upload-expires", when);
                    }
                }
            }
            answer
        }
        Err(e) => append_error(e, at),
    }
}

/// `DELETE`: an unfinished upload removed (termination).
async fn delete(ctx: &Context, headers: &HeaderMap, peer: SocketAddr, id: &str) -> Answer {
    let caller = match caller(ctx, headers, peer).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    match ctx.uploads.abort(&caller.who, id).await {
        Ok(_) => empty(StatusCode::NO_CONTENT),
        Err(e) if e.code == ErrorCode::BadState => error(StatusCode::CONFLICT, &e),
        Err(e) => wire_error(&e),
    }
}

/// The answer to an append that kept nothing.
pub(super) fn append_error(e: AppendError, at: u64) -> Answer {
    match e {
        AppendError::Conflict { offset } => {
            let mut answer = error(
                StatusCode::CONFLICT,
                &WireError::new(
                    ErrorCode::BadState,
                    format!("Upload-Offset is {at}, the upload's offset is {offset}"),
                ),
            );
            set(&mut answer, "upload-offset", offset.to_string());
            answer
        }
        AppendError::ChecksumMismatch { algorithm } => error(
            StatusCode::from_u16(CHECKSUM_MISMATCH).unwrap_or(StatusCode::BAD_REQUEST),
            &WireError::new(
                ErrorCode::DigestMismatch,
                format!("the body does not match its {algorithm} Upload-Checksum; nothing of it was kept"),
            ),
        ),
        AppendError::TooLarge { limit } => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &WireError::new(
                ErrorCode::FileTooLarge,
                format!("the body goes past offset {limit}, the upload's end (its length, the largest file, or the quota)"),
            ),
        ),
        AppendError::TakenOver => error(
            StatusCode::CONFLICT,
            &WireError::new(
                ErrorCode::TakenOver,
                "another request took this upload over",
            ),
        ),
        AppendError::Wire(e) => wire_error(&e),
    }
}

/// `Upload-Checksum: <algorithm> <base64>`, if sent.
fn checksum_of(headers: &HeaderMap) -> Result<Option<Checksum>, Answer> {
    let Some(text) = header(headers, "upload-checksum") else {
        return Ok(None);
    };
    let Some((algorithm, value)) = text.split_once(' ') else {
        return Err(bad_request("Upload-Checksum is `<algorithm> <base64>`"));
    };
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(value.trim()) else {
        return Err(bad_request("Upload-Checksum's value is not base64"));
    };
    Checksum::new(algorithm, expected).map(Some).ok_or_else(|| {
        bad_request(format!(
            "checksum algorithm {algorithm:.20} is not supported; these are: {}",
            CHECKSUM_ALGORITHMS.join(", ")
        ))
    })
}

enum Concat {
    None,
    Partial,
    /// The partial uploads' ids, in order (`None` for a URL not under the endpoint).
    Final(Vec<Option<String>>),
}

/// The upload id in `url` (absolute, or a path), if it is under this endpoint.
fn upload_id_of(ctx: &Context, url: &str) -> Option<String> {
    let path = match url.split_once("://") {
        Some((_, rest)) => &rest[rest.find('/')?..],
        None => url,
    };
    let id = path.strip_prefix(ctx.path.as_str())?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
}

/// `Upload-Metadata`: `key base64,key base64,key` — keys unique, values base64.
pub(super) fn parse_metadata(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("Upload-Metadata key {key:.40?} is not plain ASCII"));
        }
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| format!("Upload-Metadata value of {key:.40} is not base64"))?;
        let value = String::from_utf8(value)
            .map_err(|_| format!("Upload-Metadata value of {key:.40} is not UTF-8"))?;
        if out.iter().any(|(k, _)| k == key) {
            return Err(format!("Upload-Metadata names {key:.40} twice"));
        }
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// The name, folder and description an upload's metadata gives: `filename` (or `name`, as
/// Uppy sends) is the name; `relativePath`'s folders (Uppy's folder uploads) the folder; every
/// other key is kept in the description as `key=value` lines.
fn describe(metadata: &[(String, String)]) -> Result<(String, Vec<String>, String), WireError> {
    let get = |key: &str| {
        metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let file_name = get("filename")
        .or_else(|| get("name"))
        .filter(|n| !n.is_empty())
        .map_or_else(generated_name, str::to_owned);
    let dir = match get("relativePath").filter(|p| !p.is_empty() && *p != "null") {
        Some(path) => {
            let mut parts: Vec<String> = path
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_owned)
                .collect();
            // The path ends with the file's own name.
            parts.pop();
            parts
        }
        None => Vec::new(),
    };
    let desc = metadata
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "filename" | "name" | "relativePath"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok((file_name, dir, desc))
}

/// The name of an upload whose client gave none: `upload-YYYYMMDD-HHMMSS`.
pub(super) fn generated_name() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "upload-{:04}{:02}{:02}-{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_as_tus_clients_send_it() {
        let m = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .unwrap();
        assert_eq!(
            m,
            vec![
                ("filename".into(), "world_domination_plan.pdf".into()),
                ("is_confidential".into(), String::new())
            ]
        );
        assert!(parse_metadata("a YQ==,a YQ==").is_err(), "a key twice");
        assert!(parse_metadata("a !!!").is_err(), "not base64");
        let (name, dir, desc) = describe(&[
            ("name".into(), "clip.mov".into()),
            ("relativePath".into(), "card/day 1/clip.mov".into()),
            ("filetype".into(), "video/quicktime".into()),
        ])
        .unwrap();
        assert_eq!(name, "clip.mov");
        assert_eq!(dir, vec!["card".to_owned(), "day 1".to_owned()]);
        assert_eq!(desc, "filetype=video/quicktime");
        let (name, ..) = describe(&[]).unwrap();
        assert!(name.starts_with("upload-"), "{name}");
    }
}

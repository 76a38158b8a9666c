//! `GET <upload-path><id>`: an upload's acknowledged bytes, read back while it arrives (and
//! after), with its owner's token. Only the contiguous durable prefix is served — bytes the
//! server verified and synced — so a reader never sees a byte the uploader was not told is
//! safe. One range (`Range: bytes=A-B`, `A-`, `-N`) within that prefix is answered `206`;
//! without a range the whole prefix, `200`. `Ferry-Durable-Offset` says how long the prefix is
//! now, `Ferry-Complete` whether it is the whole file.

use http_body_util::BodyExt;
use hyper::header::HeaderMap;
use hyper::{Response, StatusCode};

use super::{login_with, set, wire_error, Answer, Context};
use crate::uploads::Frontend;

/// Bytes read from the file per piece of the body: what a response holds in memory.
const PIECE: usize = 256 * 1024;

pub(super) async fn get(
    ctx: &Context,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: std::net::SocketAddr,
    id: &str,
) -> Answer {
    // The credential: `Authorization: Bearer`, or a read link's `?grant=` (for players and
    // editors that take a URL and no header).
    let granted = query.and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("grant="))
            .filter(|g| g.starts_with(crate::links::GRANT_PREFIX))
    });
    let token = super::bearer(headers).or(granted);
    let caller = match login_with(ctx, token, peer, Frontend::Tus).await {
        Ok(caller) => caller,
        Err((status, e)) => return super::refusal(status, &e),
    };
    let view = match ctx.uploads.read_view(&caller.who, id).await {
        Ok(view) => view,
        Err(e) => return wire_error(&e),
    };
    let durable = view.durable;
    let range = match super::header(headers, "range") {
        None => None,
        Some(text) => match parse_range(text, durable) {
            Ok(range) => range,
            Err(()) => {
                let mut answer = super::plain(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "the range is not within the acknowledged bytes\n",
                );
                set(&mut answer, "content-range", format!("bytes */{durable}"));
                set(&mut answer, "ferry-durable-offset", durable.to_string());
                return answer;
            }
        },
    };
    let (start, end) = range.unwrap_or((0, durable));
    let file = match std::fs::File::open(&view.path) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(path = %view.path.display(), error = %e, "cannot open an upload to read it");
            return wire_error(&crate::driver::WireError::new(
                ferry_proto::ErrorCode::StorageError,
                "the upload's bytes cannot be read",
            ));
        }
    };
    let body = crate::filebody::FileBody::new(std::sync::Arc::new(file), start, end - start, PIECE);
    let mut answer = Response::new(body.boxed());
    *answer.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    set(&mut answer, "content-type", "application/octet-stream");
    set(&mut answer, "content-length", (end - start).to_string());
    set(&mut answer, "accept-ranges", "bytes");
    if range.is_some() {
        set(
            &mut answer,
            "content-range",
            format!(
                "bytes {start}-{}/{}",
                end - 1,
                total(durable, view.complete)
            ),
        );
    }
    set(&mut answer, "ferry-durable-offset", durable.to_string());
    set(
        &mut answer,
        "ferry-complete",
        if view.complete { "?1" } else { "?0" },
    );
    answer
}

/// The complete length in `Content-Range`: `*` while the upload is still arriving.
fn total(durable: u64, complete: bool) -> String {
    if complete {
        durable.to_string()
    } else {
        "*".to_owned()
    }
}

/// One byte range within the first `durable` bytes, as `[start, end)`. `Ok(None)`: a range
/// this server does not take apart (several ranges, another unit) — the whole prefix is
/// served, as RFC 9110 allows. `Err`: a range starting at or past `durable`.
fn parse_range(text: &str, durable: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // The last N bytes of what is there.
        let n: u64 = last.parse().map_err(drop)?;
        if n == 0 || durable == 0 {
            return Err(());
        }
        (durable - n.min(durable), durable)
    } else {
        let start: u64 = first.parse().map_err(drop)?;
        let end = match last {
            "" => durable,
            last => last
                .parse::<u64>()
                .map_err(drop)?
                .saturating_add(1)
                .min(durable),
        };
        if start >= durable || end <= start {
            return Err(());
        }
        (start, end)
    };
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_stay_within_the_acknowledged_bytes() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok(Some((0, 100))));
        assert_eq!(parse_range("bytes=900-", 1000), Ok(Some((900, 1000))));
        assert_eq!(parse_range("bytes=900-5000", 1000), Ok(Some((900, 1000))));
        assert_eq!(parse_range("bytes=-100", 1000), Ok(Some((900, 1000))));
        assert_eq!(parse_range("bytes=-5000", 1000), Ok(Some((0, 1000))));
        assert_eq!(parse_range("bytes=1000-", 1000), Err(()));
        assert_eq!(parse_range("bytes=5-2", 1000), Err(()));
        assert_eq!(parse_range("bytes=0-", 0), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(parse_range("items=0-1", 1000), Ok(None));
        assert_eq!(parse_range("bytes=x-1", 1000), Err(()));
    }
}

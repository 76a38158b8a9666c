//! Browsers. A browser speaks the same protocol inside a WebTransport session (HTTP/3, ALPN
//! `h3`) on the QUIC port; this module opens that session and checks the page's origin
//! (`mod.rs`), keeps the short-lived certificate browsers accept without a CA (`certs.rs`), and
//! serves the upload page over HTTPS on TCP (`listener.rs`).

pub(crate) mod certs;
pub(crate) mod listener;

use tracing::{debug, info};
use web_transport_quinn::http::StatusCode;

/// The ALPN of HTTP/3, which WebTransport runs on.
pub(crate) const H3_ALPN: &[u8] = b"h3";
/// Unidirectional streams an HTTP/3 client keeps open for itself (control, QPACK encoder and
/// decoder): granted at the handshake, and on top of `max_streams` once logged in.
pub(crate) const H3_UNI_STREAMS: u64 = 3;
/// The path of the WebTransport session: `https://HOST:PORT/ferry`.
pub(crate) const SESSION_PATH: &str = "/ferry";

/// Whether the connection negotiated HTTP/3 (a browser) rather than `ferry/1`.
pub(crate) fn is_h3(connection: &quinn::Connection) -> bool {
    connection
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == H3_ALPN)
}

/// Which pages may use the server from a browser: `--web-origin`'s list, or the web listener's
/// own origin (`--web-url`'s, and the host the browser dialled on the web listener's port).
#[derive(Clone, Debug, Default)]
pub(crate) struct Origins {
    /// `--web-origin`; empty: the web listener's own origin. `*` allows any.
    pub allowed: Vec<String>,
    /// `--web-url`.
    pub web_url: Option<String>,
    /// The web listener's TCP port, if it is on.
    pub web_port: Option<u16>,
}

/// Opens the WebTransport session of a browser's connection: the HTTP/3 settings, then the
/// CONNECT request, answered 404 for another path and 403 for a page of an origin not allowed.
/// `None` when refused or failed (logged here).
pub(crate) async fn session(
    origins: &Origins,
    connection: &quinn::Connection,
) -> Option<web_transport_quinn::Session> {
    let request = match web_transport_quinn::Request::accept(connection.clone()).await {
        Ok(request) => request,
        Err(e) => {
            debug!(error = %e, "no WebTransport session");
            return None;
        }
    };
    if request.url.path() != SESSION_PATH {
        info!(
            path = request.url.path(),
            "refused a WebTransport session: unknown path"
        );
        let _ = request.reject(StatusCode::NOT_FOUND).await;
        linger(connection).await;
        return None;
    }
    let origin = request
        .headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let host = request.url.host_str().unwrap_or_default().to_owned();
    if !origins.allows(origin.as_deref(), &host) {
        info!(
            origin,
            "refused a WebTransport session: origin not allowed (--web-origin)"
        );
        let _ = request.reject(StatusCode::FORBIDDEN).await;
        linger(connection).await;
        return None;
    }
    match request.ok().await {
        Ok(session) => Some(session),
        Err(e) => {
            debug!(error = %e, "WebTransport session failed");
            None
        }
    }
}

/// Gives the client a moment to read a refusal and close; closing at once could lose it.
async fn linger(connection: &quinn::Connection) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), connection.closed()).await;
}

impl Origins {
    /// Whether a page of `origin` may use the server. `--web-origin` lists the allowed
    /// origins (`*`: any); without it, the web listener's own origin is allowed: `--web-url`'s,
    /// and `https://HOST:PORT` with the host the browser dialled and the web listener's port. A
    /// request without `Origin` is not from a browser's page and is allowed: the check keeps
    /// other sites' pages out, it does not authenticate (`hello`, or a bearer token, does).
    pub(crate) fn allows(&self, origin: Option<&str>, host: &str) -> bool {
        origin_allowed(self, origin, host)
    }
}

fn origin_allowed(config: &Origins, origin: Option<&str>, host: &str) -> bool {
    let web_port = config.web_port;
    let Some(origin) = origin else {
        return true;
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if !config.allowed.is_empty() {
        return config
            .allowed
            .iter()
            .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(&origin));
    }
    let own_url = config
        .web_url
        .as_deref()
        .and_then(url_origin)
        .is_some_and(|o| o == origin);
    let own_listener = web_port.is_some_and(|port| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_ascii_lowercase()
        };
        origin == format!("https://{host}:{port}")
    });
    own_url || own_listener
}

/// The origin (`scheme://host[:port]`, lower case, no path) of a URL.
pub(crate) fn url_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page built into the server speaks the server's protocol version: a bump that
    /// forgets `web/ferry.js` would send every browser to the tus fallback.
    #[test]
    fn the_page_speaks_this_protocol_version() {
        let page = include_str!("../../../web/ferry.js");
        let line = format!(
            "export const PROTOCOL_VERSION = {};",
            ferry_proto::PROTOCOL_VERSION
        );
        assert!(page.lines().any(|l| l == line), "web/ferry.js lacks {line}");
    }

    fn config(origins: &[&str], url: Option<&str>) -> Origins {
        Origins {
            allowed: origins.iter().map(|o| o.to_string()).collect(),
            web_url: url.map(str::to_owned),
            web_port: Some(8443),
        }
    }

    #[test]
    fn own_origin_is_the_dialled_host_on_the_web_port() {
        let c = config(&[], None);
        assert!(origin_allowed(
            &c,
            Some("https://files.lan:8443"),
            "files.lan"
        ));
        assert!(origin_allowed(
            &c,
            Some("https://127.0.0.1:8443"),
            "127.0.0.1"
        ));
        assert!(origin_allowed(&c, Some("https://[::1]:8443"), "[::1]"));
        assert!(!origin_allowed(
            &c,
            Some("https://evil.example:8443"),
            "files.lan"
        ));
        assert!(!origin_allowed(
            &c,
            Some("https://files.lan:9999"),
            "files.lan"
        ));
        assert!(!origin_allowed(
            &c,
            Some("http://files.lan:8443"),
            "files.lan"
        ));
        assert!(origin_allowed(&c, None, "files.lan"), "not a page");
    }

    #[test]
    fn web_url_and_the_list_decide() {
        let c = config(&[], Some("https://Files.Example.com/"));
        assert!(origin_allowed(
            &c,
            Some("https://files.example.com"),
            "quic.example.com"
        ));
        let c = config(&["https://a.example", "https://b.example:444"], None);
        assert!(origin_allowed(&c, Some("https://b.example:444"), "x"));
        assert!(
            !origin_allowed(&c, Some("https://x:8443"), "x"),
            "the list replaces the default"
        );
        let c = config(&["*"], None);
        assert!(origin_allowed(&c, Some("https://anything.example"), "x"));
    }
}

//! A plain HTTP/1.1 client over TLS for the tests of the HTTP front end: one request per
//! connection, pinned to the server's certificate, so a test sends exactly the headers and
//! bytes it means to (and can stop a body half way, as a client whose connection breaks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer: the status, the headers (names lower case) and the body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body as bytes (binary bodies: `GET` of an upload).
    pub bytes: Vec<u8>,
}

impl Reply {
    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Upload-Offset` as a number.
    pub fn offset(&self) -> u64 {
        self.header("upload-offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Upload-Offset in {self:?}"))
    }

    /// The upload id at the end of `Location`.
    pub fn upload_id(&self) -> String {
        let location = self
            .header("location")
            .unwrap_or_else(|| panic!("no Location in {self:?}"));
        location.rsplit('/').next().unwrap().to_owned()
    }
}

/// A TLS connector that trusts exactly the certificate whose fingerprint is `fingerprint` (the
/// server's identity, which its web listener presents), as `ferry` does.
pub fn pinned_connector(fingerprint: &str) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ferry_client::trust::PinVerifier::new(
            Some(fingerprint.to_owned()),
            provider,
        )))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
}

/// The web listener at `addr`, trusted by its certificate's fingerprint.
#[derive(Clone)]
pub struct Https {
    pub addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
}

impl Https {
    pub fn new(addr: SocketAddr, fingerprint: &str) -> Self {
        Self {
            addr,
            connector: pinned_connector(fingerprint),
        }
    }

    /// One request with `headers` and the whole `body` (with its Content-Length); its answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        self.try_send(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Like `send`; `Err` when the server cannot be reached or gave no answer (it died).
    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply, String> {
        self.exchange(method, path, headers, body.len() as u64, body, true)
            .await?
            .ok_or_else(|| "no answer".to_owned())
    }

    /// A request that announces `length` body bytes and sends only `body`, then closes the
    /// connection: a client whose connection broke. Waits until the server closed its side.
    pub async fn send_broken(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        length: u64,
        body: &[u8],
    ) {
        let _ = self
            .exchange(method, path, headers, length, body, false)
            .await;
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        length: u64,
        body: &[u8],
        whole: bool,
    ) -> Result<Option<Reply>, String> {
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut stream = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let mut head = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
                self.addr.port()
            );
            if method != "GET" && method != "HEAD" && method != "OPTIONS" || length > 0 {
                head.push_str(&format!("Content-Length: {length}\r\n"));
            }
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            stream
                .write_all(head.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let _ = stream.write_all(body).await;
            let _ = stream.flush().await;
            if !whole {
                // The connection breaks: the TLS stream closed, the rest never sent.
                let _ = stream.shutdown().await;
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
                return Ok::<_, String>(None);
            }
            let mut raw = Vec::new();
            let _ = stream.read_to_end(&mut raw).await;
            Ok(Some(raw))
        };
        let Some(raw) = tokio::time::timeout(Duration::from_secs(60), exchange)
            .await
            .map_err(|_| "no answer within 60 s".to_owned())??
        else {
            return Ok(None);
        };
        let bytes = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or_else(Vec::new, |at| raw[at + 4..].to_vec());
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line in {text:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(Some(Reply {
            status,
            headers,
            body: body.to_owned(),
            bytes,
        }))
    }
}

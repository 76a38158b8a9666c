//! A WebTransport client for tests: the protocol as a browser carries it (HTTP/3, a session at
//! `/ferry`, the control stream a bidirectional WebTransport stream, one unidirectional stream
//! per chunk), without a browser, so a test can check the mapping and its limits exactly.

use std::path::Path;
use std::time::Duration;

use ferry_proto::{Frame, PROTOCOL_VERSION};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::TestServer;

/// SHA-256 of the browser certificates the server keeps (`DATA/tls/web.json`): what the web
/// listener gives pages for `serverCertificateHashes`.
pub fn browser_cert_hashes(data: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(data.join("tls").join("web.json")).expect("web.json");
    let pair: serde_json::Value = serde_json::from_str(&text).unwrap();
    ["current", "next"]
        .iter()
        .map(|which| {
            let pem = pair[which]["cert_pem"].as_str().unwrap();
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            Sha256::digest(der.as_ref()).to_vec()
        })
        .collect()
}

/// A WebTransport session's control stream.
pub struct WebRaw {
    pub session: web_transport_quinn::Session,
    pub send: web_transport_quinn::SendStream,
    pub recv: web_transport_quinn::RecvStream,
}

impl WebRaw {
    /// A session to `https://127.0.0.1:PORT/ferry` (or `path`), trusting the browser
    /// certificates by hash as a page does, with `origin` as the page's origin.
    pub async fn open(
        server: &TestServer,
        path: &str,
        origin: Option<&str>,
    ) -> Result<Self, String> {
        let client = web_transport_quinn::ClientBuilder::new()
            .with_server_certificate_hashes(browser_cert_hashes(server.data()))
            .map_err(|e| e.to_string())?;
        let url: url::Url = format!("https://127.0.0.1:{}{path}", server.addr.port())
            .parse()
            .unwrap();
        let mut request = web_transport_quinn::proto::ConnectRequest::new(url);
        if let Some(origin) = origin {
            request.headers.insert("origin", origin.parse().unwrap());
        }
        let session = client.connect(request).await.map_err(|e| e.to_string())?;
        let (send, recv) = session.open_bi().await.map_err(|e| e.to_string())?;
        Ok(Self {
            session,
            send,
            recv,
        })
    }

    /// A session logged in with `token` (a token or an upload link's grant).
    pub async fn login(server: &TestServer, token: &str) -> Self {
        let mut web = Self::open(server, "/ferry", None).await.expect("a session");
        web.frame(&Frame::Hello {
            version: PROTOCOL_VERSION,
            token: token.into(),
        })
        .await;
        match web.next().await {
            Some(Frame::Welcome { .. }) => web,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    pub async fn frame(&mut self, frame: &Frame) {
        self.send.write_all(&frame.to_bytes()).await.unwrap();
    }

    /// The next frame from the server, `None` when the control stream ends.
    pub async fn next(&mut self) -> Option<Frame> {
        crate::raw::next_frame(&mut self.recv).await
    }

    /// One chunk on its own unidirectional stream: header, payload, `chunk_end`, FIN.
    pub async fn chunk(&self, upload_id: &str, index: u64, payload: &[u8]) {
        let mut stream = self.session.open_uni().await.unwrap();
        let header = Frame::Chunk {
            upload_id: upload_id.into(),
            index,
            size: payload.len() as u64,
        };
        let end = Frame::ChunkEnd {
            sha256: hex::encode(Sha256::digest(payload)),
        };
        let _ = stream.write_all(&header.to_bytes()).await;
        let _ = stream.write_all(payload).await;
        let _ = stream.write_all(&end.to_bytes()).await;
        let _ = stream.finish();
    }
}

/// An HTTPS GET to the web listener at `addr`, pinned to `fingerprint` (the server's identity,
/// which the web listener presents): the status, the headers (names lower case) and the body.
pub async fn https_get(
    addr: std::net::SocketAddr,
    fingerprint: &str,
    path: &str,
    extra_headers: &str,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = crate::http::pinned_connector(fingerprint);
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n{extra_headers}\r\n",
            addr.port()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10 s");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

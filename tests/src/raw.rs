//! A raw QUIC client for tests: the control stream and nothing of the client library, so a
//! test can send what broken and hostile clients send.

use std::sync::Arc;
use std::time::Duration;

use ferry_client::trust::PinVerifier;
use ferry_proto::{ErrorCode, Frame, PROTOCOL_VERSION};
use quinn::crypto::rustls::QuicClientConfig;

use crate::TestServer;

/// A raw connection: the control stream and nothing of the client library.
pub struct Raw {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    _endpoint: quinn::Endpoint,
}

/// How a raw connection is made: from which local address, with which transport settings.
#[derive(Default)]
pub struct Dial {
    /// Local address to bind; 127.0.0.1:0 if unset. Any 127.x.y.z works on Linux loopback.
    pub bind: Option<std::net::SocketAddr>,
    /// Transport settings (e.g. a tiny receive window); quinn's defaults if unset.
    pub transport: Option<quinn::TransportConfig>,
}

/// A QUIC connection to `addr` pinned to `fingerprint`, with `alpn`.
pub async fn quic(
    addr: std::net::SocketAddr,
    fingerprint: &str,
    alpn: &[u8],
    dial: Dial,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier::new(
            Some(fingerprint.to_owned()),
            provider,
        )))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    if let Some(transport) = dial.transport {
        config.transport_config(Arc::new(transport));
    }
    let bind = dial.bind.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(addr, "localhost")
        .unwrap()
        .await
        .map_err(|e| e.to_string())?;
    Ok((endpoint, conn))
}

/// The next frame on a stream (a QUIC or a WebTransport one), `None` when it ends; at most 15 s.
pub async fn next_frame(recv: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Frame> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut prefix = [0u8; 4];
        recv.read_exact(&mut prefix).await.ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
        recv.read_exact(&mut body).await.ok()?;
        Frame::decode_body(&body).ok()
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("a frame within 15 s")
}

/// The QUIC close code a connection ended with, if the server closed it within `within`.
pub async fn close_code(conn: &quinn::Connection, within: Duration) -> Option<ErrorCode> {
    let reason = tokio::time::timeout(within, conn.closed()).await.ok()?;
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| u64::from(c.quic_code()) == close.error_code.into_inner()),
        _ => None,
    }
}

/// A `create` request with defaults for what it does not name.
pub fn create(req: u64, name: &str, size: u64, chunk_size: u64) -> Frame {
    Frame::Create {
        req,
        file_name: name.into(),
        size,
        chunk_size,
        desc: String::new(),
        dir: Vec::new(),
        on_exists: Default::default(),
        deferred: false,
    }
}

impl Raw {
    /// Connected, control stream open, nothing sent yet.
    pub async fn open(server: &TestServer) -> Self {
        Self::dial(server.addr, &server.fingerprint, Dial::default())
            .await
            .expect("connects")
    }

    /// Like `open`, to any server, as `dial` says.
    pub async fn dial(
        addr: std::net::SocketAddr,
        fingerprint: &str,
        dial: Dial,
    ) -> Result<Self, String> {
        let (endpoint, conn) = quic(addr, fingerprint, ferry_proto::ALPN, dial).await?;
        let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        Ok(Self {
            conn,
            send,
            recv,
            _endpoint: endpoint,
        })
    }

    /// Connected and authenticated as `token`.
    pub async fn hello(server: &TestServer, token: &str) -> Self {
        Self::login(server.addr, &server.fingerprint, token, Dial::default()).await
    }

    /// Like `hello`, to any server, as `dial` says.
    pub async fn login(
        addr: std::net::SocketAddr,
        fingerprint: &str,
        token: &str,
        dial: Dial,
    ) -> Self {
        let mut raw = Self::dial(addr, fingerprint, dial).await.expect("connects");
        raw.frame(&Frame::Hello {
            version: PROTOCOL_VERSION,
            token: token.into(),
        })
        .await;
        assert!(matches!(raw.next().await, Some(Frame::Welcome { .. })));
        raw
    }

    pub async fn bytes(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    pub async fn frame(&mut self, frame: &Frame) {
        self.bytes(&frame.to_bytes()).await;
    }

    /// The next frame from the server, `None` when the control stream ends.
    pub async fn next(&mut self) -> Option<Frame> {
        next_frame(&mut self.recv).await
    }

    /// The next `error` or `reject` frame's code, skipping acks.
    pub async fn code(&mut self) -> ErrorCode {
        loop {
            match self.next().await {
                Some(Frame::Error { code, .. } | Frame::Reject { code, .. }) => return code,
                Some(Frame::Ack { .. }) => continue,
                other => panic!("expected an error, got {other:?}"),
            }
        }
    }

    pub async fn create(&mut self, name: &str, size: u64) -> String {
        self.create_upload(name, size).await.upload_id
    }

    /// `create` of `name` (64 KiB chunks asked for; the server may choose others), its
    /// `created.upload`.
    pub async fn create_upload(&mut self, name: &str, size: u64) -> ferry_proto::UploadInfo {
        self.frame(&create(1, name, size, 64 << 10)).await;
        match self.next().await {
            Some(Frame::Created { upload, .. }) => upload,
            other => panic!("expected created, got {other:?}"),
        }
    }

    /// A chunk stream: the header claiming `size`, then `payload`, then `chunk_end` claiming
    /// `digest`, then FIN.
    pub async fn chunk(
        &self,
        upload_id: &str,
        index: u64,
        size: u64,
        digest: &str,
        payload: &[u8],
    ) {
        let end = Frame::ChunkEnd {
            sha256: digest.into(),
        };
        let tail = [payload, &end.to_bytes()].concat();
        self.chunk_raw(upload_id, index, size, &tail).await;
    }

    /// A chunk stream: the header claiming `size`, then `tail` as it is, then FIN.
    pub async fn chunk_raw(&self, upload_id: &str, index: u64, size: u64, tail: &[u8]) {
        let mut stream = self.conn.open_uni().await.unwrap();
        let header = Frame::Chunk {
            upload_id: upload_id.into(),
            index,
            size,
        };
        let _ = stream.write_all(&header.to_bytes()).await;
        let _ = stream.write_all(tail).await;
        let _ = stream.finish();
    }

    /// The connection was closed by the server.
    pub async fn closed(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(10), self.conn.closed())
            .await
            .is_ok()
    }
}

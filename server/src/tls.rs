//! The server's identity: a self-signed certificate generated on first start (rcgen) and
//! kept under `DATA/tls/`, its SHA-256 fingerprint for clients to pin, and the stateless-reset
//! key that lets a restarted server tell clients at once that their old connection is gone.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Certificate chain and key in the form rustls takes.
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Loads `DATA/tls/cert.pem` and `key.pem`, generating them first if absent.
    /// Returns whether they were generated now.
    pub fn load_or_generate(data_dir: &Path, listen: SocketAddr) -> Result<(Self, bool)> {
        let dir = data_dir.join("tls");
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        let generated = !cert_path.exists();
        if generated {
            crate::fsutil::create_dir_durable(&dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
            let certified = rcgen::generate_simple_self_signed(names(listen))
                .context("failed to generate a certificate")?;
            crate::fsutil::write_private(
                &key_path,
                certified.signing_key.serialize_pem().as_bytes(),
            )?;
            crate::fsutil::write_atomic(&cert_path, certified.cert.pem().as_bytes())?;
        }
        Ok((Self::load(&cert_path, &key_path)?, generated))
    }

    /// Loads a PEM certificate chain and private key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let certs = CertificateDer::pem_file_iter(cert_path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("failed to read certificate {}", cert_path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "no certificate in {}",
            cert_path.display()
        );
        let key = PrivateKeyDer::from_pem_file(key_path)
            .with_context(|| format!("failed to read private key {}", key_path.display()))?;
        Ok(Self { certs, key })
    }

    /// `sha256:<hex>` of the end-entity certificate's DER bytes.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.certs[0])
    }
}

/// The names a generated certificate carries: `localhost`, the host name, the listen IP.
pub(crate) fn names(listen: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    if let Some(host) = host_name().filter(|h| h != "localhost") {
        names.push(host);
    }
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names
}

/// This machine's host name, if it has one.
pub fn host_name() -> Option<String> {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|h| !h.is_empty())
}

/// `sha256:<hex>` of a certificate's DER bytes; what clients pin.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert.as_ref())))
}

/// The fingerprint of the first (end-entity) certificate of a PEM file, as `--cert` gives it.
pub fn certificate_fingerprint(path: &Path) -> Result<String> {
    let cert = CertificateDer::from_pem_file(path)
        .with_context(|| format!("failed to read certificate {}", path.display()))?;
    Ok(fingerprint(&cert))
}

/// The fingerprint of the certificate in `DATA/tls/cert.pem`, without generating one.
pub fn stored_fingerprint(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("tls").join("cert.pem");
    let cert = CertificateDer::from_pem_file(&path).with_context(|| {
        format!(
            "failed to read certificate {} (has `ferryd serve` run once?)",
            path.display()
        )
    })?;
    Ok(fingerprint(&cert))
}

/// The stateless-reset key and the connection-id key, both derived from `DATA/tls/reset.key`
/// so that a restarted server recognises the connection ids of the process before it and
/// resets those connections: the client learns at once that it must reconnect instead of
/// waiting for its idle timeout.
pub fn reset_keys(data_dir: &Path) -> Result<(Arc<ring::hmac::Key>, u64)> {
    let path = data_dir.join("tls").join("reset.key");
    let secret = match fs::read(&path) {
        Ok(bytes) if bytes.len() == 64 => bytes,
        _ => {
            let mut bytes = vec![0u8; 64];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            crate::fsutil::write_private(&path, &bytes)?;
            bytes
        }
    };
    let cid_key = Sha256::new()
        .chain_update(b"ferry connection ids")
        .chain_update(&secret)
        .finalize();
    let cid_key = u64::from_le_bytes(
        cid_key[..8]
            .try_into()
            .expect("a SHA-256 digest has 8 bytes"),
    );
    Ok((
        Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret)),
        cid_key,
    ))
}

/// rustls server configuration for the QUIC port: TLS 1.3 only, ring, ALPN `ferry/1` (Ferry's
/// client) and `h3` (browsers, WebTransport). Browsers get the short-lived browser certificate
/// when there is one (`web::certs`), everyone else `identity`.
pub(crate) fn server_crypto(
    identity: Identity,
    browser: Option<Arc<crate::web::certs::BrowserCerts>>,
) -> Result<quinn::crypto::rustls::QuicServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = crate::web::certs::Resolver {
        identity: crate::web::certs::certified(identity.certs, identity.key)?,
        browser,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not available")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ferry_proto::ALPN.to_vec(), crate::web::H3_ALPN.to_vec()];
    quinn::crypto::rustls::QuicServerConfig::try_from(config)
        .context("TLS configuration unusable for QUIC")
}

/// rustls server configuration for the web listener (HTTPS on TCP): the server's identity,
/// TLS 1.2 and 1.3, HTTP/1.1.
pub(crate) fn web_crypto(identity: &Identity) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS is not available")?
        .with_no_client_auth()
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .context("the certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

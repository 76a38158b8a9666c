//! Deciding whether to trust the server's certificate. Ferry servers usually present a
//! self-signed certificate, so the client pins its SHA-256 fingerprint: given with
//! `--fingerprint`, or learnt on first use and kept in a known-servers file (like ssh's
//! `known_hosts`). A certificate that does not match is refused, loudly.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of a certificate's DER bytes.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert.as_ref())))
}

/// Normalises a user-given fingerprint: `sha256:` prefix optional, hex case and `:` separators
/// ignored.
pub fn parse_fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|&c| c != ':')
        .collect();
    let hex = hex.to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
}

/// Accepts exactly one certificate fingerprint, or (trust on first use) any, remembering what
/// it saw. Handshake signatures are still verified against the presented certificate.
#[derive(Debug)]
pub struct PinVerifier {
    expected: Option<String>,
    seen: Mutex<Option<String>>,
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    pub fn new(expected: Option<String>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            expected,
            seen: Mutex::new(None),
            provider,
        }
    }

    /// The fingerprint of the last certificate presented.
    pub fn seen(&self) -> Option<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn expected(&self) -> Option<&str> {
        self.expected.as_deref()
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint(end_entity);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(presented.clone());
        match &self.expected {
            Some(expected) if *expected != presented => Err(rustls::Error::General(format!(
                "server certificate {presented} does not match the pinned {expected}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The known-servers file: one `host:port sha256:<hex>` line per server.
pub struct KnownServers {
    path: PathBuf,
}

impl KnownServers {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded fingerprint of `server`.
    pub fn get(&self, server: &str) -> Option<String> {
        let text = fs::read_to_string(&self.path).ok()?;
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(s, _)| *s == server)
            .and_then(|(_, fp)| parse_fingerprint(fp))
    }

    /// Records `server`'s fingerprint (first use).
    pub fn add(&self, server: &str, fingerprint: &str) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut text = fs::read_to_string(&self.path).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{server} {fingerprint}\n"));
        crate::journal::write_atomic(&self.path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_normalise() {
        let hex = "AB".repeat(32);
        let want = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parse_fingerprint(&hex).as_deref(), Some(want.as_str()));
        assert_eq!(
            parse_fingerprint(&format!("sha256:{hex}")).as_deref(),
            Some(want.as_str())
        );
        assert_eq!(parse_fingerprint("sha256:abc"), None);
    }

    #[test]
    fn known_servers_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownServers::new(dir.path().join("known_servers"));
        let fp = format!("sha256:{}", "cd".repeat(32));
        assert_eq!(known.get("h:1"), None);
        known.add("h:1", &fp).unwrap();
        known
            .add("h:2", &format!("sha256:{}", "ef".repeat(32)))
            .unwrap();
        assert_eq!(known.get("h:1"), Some(fp));
    }
}

//! The certificate browsers accept without a CA. A page may open a WebTransport session to a
//! server whose certificate it knows by hash (`serverCertificateHashes`), but only for an
//! ECDSA P-256 certificate valid for at most 14 days. With the self-signed default identity,
//! ferryd therefore keeps two such certificates in `DATA/tls/web.json`: the **current** one,
//! presented to `h3` connections, and the **next** one; every [`ROTATE_AFTER`] the next becomes
//! current and a new next is made. The web listener hands pages the hashes of both, so a page
//! loaded before a switch still connects after it. `ferry/1` clients keep the long-lived
//! identity they pin.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::store::unix_now;

/// How long a browser certificate is valid: Chromium accepts at most 14 days.
pub(crate) const LIFETIME: Duration = Duration::from_secs(13 * 24 * 3600);
/// How long a certificate is current before the next one takes over. A certificate is made
/// one period before it becomes current and is current for one period: it is at most
/// 2 × 5 = 10 days old when replaced, inside its 13 days.
pub(crate) const ROTATE_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);
/// Made valid from this long before now, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);
/// How often the rotation is looked at.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// One browser certificate as kept on disk.
#[derive(Serialize, Deserialize, Clone)]
struct Stored {
    cert_pem: String,
    key_pem: String,
    /// Unix seconds it was made (valid from an hour before, for [`LIFETIME`]).
    made_at: u64,
    /// Unix seconds it became current, or 0 while it is the next one.
    current_since: u64,
}

#[derive(Serialize, Deserialize)]
struct Pair {
    current: Stored,
    next: Stored,
}

/// A certificate ready for rustls, with the SHA-256 of its DER bytes.
struct Loaded {
    key: Arc<CertifiedKey>,
    hash: [u8; 32],
}

/// The current and next browser certificates.
pub(crate) struct BrowserCerts {
    path: PathBuf,
    names: Vec<String>,
    state: RwLock<State>,
}

/// The pair as stored, and both certificates ready for rustls.
struct State {
    pair: Pair,
    current: Loaded,
    next: Loaded,
}

impl State {
    fn of(pair: Pair) -> Result<Self> {
        Ok(Self {
            current: load(&pair.current)?,
            next: load(&pair.next)?,
            pair,
        })
    }
}

impl std::fmt::Debug for BrowserCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserCerts")
            .field("path", &self.path)
            .finish()
    }
}

impl BrowserCerts {
    /// Loads `DATA/tls/web.json`, making the certificates first if absent or unreadable, and
    /// rotates them if due.
    pub(crate) fn open(data_dir: &Path, names: Vec<String>) -> Result<Self> {
        let path = data_dir.join("tls").join("web.json");
        let now = unix_now();
        let stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Pair>(&bytes)
                .map_err(anyhow::Error::from)
                .and_then(State::of)
                .map_err(|e| warn!(path = %path.display(), error = %format!("{e:#}"), "unreadable browser certificates; making new ones"))
                .ok(),
            Err(_) => None,
        };
        let state = match stored {
            Some(state) => state,
            None => State::of(fresh_pair(&names, now)?)?,
        };
        let certs = Self {
            path,
            names,
            state: RwLock::new(state),
        };
        if !certs.rotate_if_due(now)? {
            certs.save(&certs.state.read().unwrap_or_else(|p| p.into_inner()).pair)?;
        }
        Ok(certs)
    }

    /// Makes the next certificate current (and a new next) once the current one has been
    /// current for [`ROTATE_AFTER`]. Returns whether it rotated.
    pub(crate) fn rotate_if_due(&self, now: u64) -> Result<bool> {
        let mut current = {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            if now < state.pair.current.current_since + ROTATE_AFTER.as_secs() {
                return Ok(false);
            }
            state.pair.next.clone()
        };
        let next_age = now.saturating_sub(current.made_at);
        // A next certificate too old to serve a whole period (the server was off for days)
        // is replaced too.
        if next_age + ROTATE_AFTER.as_secs() + BACKDATE.as_secs() > LIFETIME.as_secs() {
            current = make(&self.names, now)?;
        }
        current.current_since = now;
        let state = State::of(Pair {
            current,
            next: make(&self.names, now)?,
        })?;
        self.save(&state.pair)?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        info!(
            current = hex::encode(self.hashes()[0]),
            "rotated the browser certificate"
        );
        Ok(true)
    }

    /// The certificate `h3` connections get.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .key
            .clone()
    }

    /// SHA-256 of the current and the next certificate, for `serverCertificateHashes`.
    pub(crate) fn hashes(&self) -> [[u8; 32]; 2] {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        [state.current.hash, state.next.hash]
    }

    fn save(&self, pair: &Pair) -> Result<()> {
        crate::fsutil::write_private(&self.path, &serde_json::to_vec_pretty(pair)?)
    }
}

fn fresh_pair(names: &[String], now: u64) -> Result<Pair> {
    let mut current = make(names, now)?;
    current.current_since = now;
    Ok(Pair {
        current,
        next: make(names, now)?,
    })
}

/// A new ECDSA P-256 certificate for `names`, valid from an hour ago for [`LIFETIME`].
fn make(names: &[String], now: u64) -> Result<Stored> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("failed to make a key")?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    let start = now.saturating_sub(BACKDATE.as_secs()) as i64;
    params.not_before = time::OffsetDateTime::from_unix_timestamp(start)?;
    params.not_after =
        time::OffsetDateTime::from_unix_timestamp(start + LIFETIME.as_secs() as i64)?;
    let cert = params
        .self_signed(&key)
        .context("failed to make a certificate")?;
    Ok(Stored {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        made_at: now,
        current_since: 0,
    })
}

fn load(stored: &Stored) -> Result<Loaded> {
    let cert = CertificateDer::from_pem_slice(stored.cert_pem.as_bytes())
        .context("bad browser certificate")?;
    let key = PrivateKeyDer::from_pem_slice(stored.key_pem.as_bytes())
        .context("bad browser certificate key")?;
    let hash = Sha256::digest(cert.as_ref()).into();
    Ok(Loaded {
        key: certified(vec![cert], key)?,
        hash,
    })
}

/// A certificate chain and its key for rustls, checked to belong together.
pub(crate) fn certified(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>> {
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(certs, key, &provider)
        .context("the certificate and key do not fit together")?;
    Ok(Arc::new(key))
}

/// Picks the certificate per connection: browsers (`h3`) get the current browser certificate
/// when there is one, everyone else the server's identity.
#[derive(Debug)]
pub(crate) struct Resolver {
    pub(crate) identity: Arc<CertifiedKey>,
    pub(crate) browser: Option<Arc<BrowserCerts>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let h3 = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == super::H3_ALPN));
        match &self.browser {
            Some(browser) if h3 => Some(browser.current()),
            _ => Some(self.identity.clone()),
        }
    }
}

/// Looks at the rotation every [`CHECK_EVERY`].
pub(crate) async fn rotate_forever(certs: Arc<BrowserCerts>) {
    // Bounded by the process.
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let certs = certs.clone();
        let rotated = tokio::task::spawn_blocking(move || certs.rotate_if_due(unix_now())).await;
        if let Ok(Err(e)) = rotated {
            warn!(error = %format!("{e:#}"), "failed to rotate the browser certificate");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_promotes_the_next_certificate_and_keeps_both_hashes_served() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned()];
        let certs = BrowserCerts::open(dir.path(), names.clone()).unwrap();
        let [current, next] = certs.hashes();
        assert_ne!(current, next);
        let now = unix_now();
        assert!(!certs.rotate_if_due(now + 3600).unwrap(), "not yet due");
        assert!(certs
            .rotate_if_due(now + ROTATE_AFTER.as_secs() + 1)
            .unwrap());
        let [current2, next2] = certs.hashes();
        assert_eq!(current2, next, "a page that had both hashes still connects");
        assert_ne!(next2, next);
        // Kept across restarts.
        let again = BrowserCerts::open(dir.path(), names).unwrap();
        assert_eq!(again.hashes(), [current2, next2]);
    }

    #[test]
    fn a_next_certificate_too_old_for_a_whole_period_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let certs = BrowserCerts::open(dir.path(), vec!["localhost".to_owned()]).unwrap();
        let [_, next] = certs.hashes();
        // Off for 12 days: the next certificate would expire a day into its period.
        assert!(certs.rotate_if_due(unix_now() + 12 * 24 * 3600).unwrap());
        let [current, _] = certs.hashes();
        assert_ne!(current, next);
        let key = rcgen::KeyPair::from_pem(&make(&["x".into()], 0).unwrap().key_pem).unwrap();
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }
}

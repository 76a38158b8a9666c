//! Bearer tokens. `DATA/tokens` holds one `name sha256-hex` line per token; the token itself is
//! printed once by `ferryd token add` and never stored. The server re-reads the file when it
//! changes, so tokens added or revoked while it runs take effect at the next connection.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The token file of one data directory.
pub struct Tokens {
    path: PathBuf,
    /// The entries of the last valid read: what logins use while the file is invalid (a
    /// hand edit in progress), so a bad edit refuses nobody who was accepted before it.
    good: std::sync::Mutex<Option<Vec<Entry>>>,
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    hash: [u8; 32],
}

impl Tokens {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("tokens"),
            good: Default::default(),
        }
    }

    /// The entries to log in with: the file's, or, while it is unreadable or invalid, those of
    /// its last valid read (the problem is logged). `Err` only if it was never valid.
    pub fn usable(&self) -> Result<Vec<Entry>> {
        let mut good = self.good.lock().unwrap_or_else(|p| p.into_inner());
        match (self.entries(), good.as_ref()) {
            (Ok(entries), _) => {
                *good = Some(entries.clone());
                Ok(entries)
            }
            (Err(e), Some(last)) => {
                tracing::warn!(error = %format!("{e:#}"), "the tokens file is invalid; its last valid version is used until it is fixed");
                Ok(last.clone())
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Every entry, in file order. A missing file means no tokens.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("failed to read {}", self.path.display()))
            }
        };
        let mut entries = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let parsed = line.split_once(' ').and_then(|(name, hex_hash)| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(hex_hash.trim(), &mut hash).ok()?;
                Some(Entry {
                    name: name.to_owned(),
                    hash,
                })
            });
            match parsed {
                // A name read back becomes a directory under `files/`: a hand-edited
                // `../../x` must never get that far.
                Some(entry) => {
                    validate_name(&entry.name)
                        .with_context(|| format!("{} line {}", self.path.display(), n + 1))?;
                    entries.push(entry)
                }
                None => bail!(
                    "{} line {}: expected `NAME SHA256HEX`",
                    self.path.display(),
                    n + 1
                ),
            }
        }
        Ok(entries)
    }

    /// Creates a token for `name` and returns it. The name becomes the owner of every upload
    /// made with the token.
    pub fn add(&self, name: &str) -> Result<String> {
        validate_name(name)?;
        let mut entries = self.entries()?;
        if entries.iter().any(|e| e.name == name) {
            bail!("a token named {name:?} exists already; revoke it first");
        }
        let mut secret = [0u8; 24];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let token = format!("fy_{}", hex::encode(secret));
        entries.push(Entry {
            name: name.to_owned(),
            hash: Sha256::digest(token.as_bytes()).into(),
        });
        self.save(&entries)?;
        Ok(token)
    }

    /// Removes the token named `name`. Uploads it made stay on disk.
    pub fn revoke(&self, name: &str) -> Result<()> {
        let mut entries = self.entries()?;
        let before = entries.len();
        entries.retain(|e| e.name != name);
        if entries.len() == before {
            bail!("no token named {name:?}");
        }
        self.save(&entries)
    }

    /// The owner name of `token`, if it is valid. Compares every entry in constant time.
    /// While the file is invalid, the last valid version of it decides ([`Tokens::usable`]).
    pub fn verify(&self, token: &str) -> Result<Option<String>> {
        Ok(Self::find(&self.usable()?, &hash(token)))
    }

    /// The owner of the token with SHA-256 `hash` among `entries`, in constant time per entry.
    pub fn find(entries: &[Entry], hash: &[u8; 32]) -> Option<String> {
        let mut found = None;
        for entry in entries {
            if bool::from(entry.hash.ct_eq(hash)) {
                found = Some(entry.name.clone());
            }
        }
        found
    }

    /// Replaces the file with `bytes` (the bucket's copy, `--store s3`) if they differ;
    /// returns whether it changed.
    pub(crate) fn replace(&self, bytes: &[u8]) -> Result<bool> {
        if self.bytes() == bytes {
            return Ok(false);
        }
        crate::fsutil::write_private(&self.path, bytes)?;
        Ok(true)
    }

    /// The file's raw bytes (empty if it does not exist).
    pub fn bytes(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap_or_default()
    }

    /// The file's identity and raw bytes (empty if it does not exist), to notice a change
    /// cheaply: every write replaces the file, so even a change back to the same bytes shows in
    /// its inode and change time.
    pub fn snapshot(&self) -> Snapshot {
        snapshot(&self.path)
    }

    fn save(&self, entries: &[Entry]) -> Result<()> {
        let text: String = entries
            .iter()
            .map(|e| format!("{} {}\n", e.name, hex::encode(e.hash)))
            .collect();
        crate::fsutil::write_private(&self.path, text.as_bytes())
    }
}

/// A file as [`Tokens::snapshot`] sees it: inode, change time (ns), bytes.
pub type Snapshot = (u64, i128, Vec<u8>);

/// `path`'s inode, change time and bytes; zeros and nothing if it does not exist.
pub(crate) fn snapshot(path: &Path) -> Snapshot {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).ok();
    let (ino, ctime) = meta.map_or((0, 0), |m| {
        (
            m.ino(),
            i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        )
    });
    (ino, ctime, fs::read(path).unwrap_or_default())
}

/// The SHA-256 of a presented token: what the file stores and connections remember.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Token names become directory names under `files/`, so they are kept plain.
fn validate_name(name: &str) -> Result<()> {
    validate_owner("token name", name)
}

/// An owner's name (a folder under `files/`): `what` names it in the error.
pub(crate) fn validate_owner(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!(
            "{what} {name:?} must be 1-64 characters of A-Z a-z 0-9 - _ . and not start with a dot"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path());
        let alice = tokens.add("alice").unwrap();
        let bob = tokens.add("bob").unwrap();
        assert_ne!(alice, bob);
        assert_eq!(tokens.verify(&alice).unwrap().as_deref(), Some("alice"));
        assert_eq!(tokens.verify("fy_nonsense").unwrap(), None);
        assert!(
            !fs::read_to_string(dir.path().join("tokens"))
                .unwrap()
                .contains(&alice),
            "only hashes are stored"
        );
        assert!(tokens.add("alice").is_err());
        tokens.revoke("alice").unwrap();
        assert_eq!(tokens.verify(&alice).unwrap(), None);
        assert_eq!(tokens.verify(&bob).unwrap().as_deref(), Some("bob"));
        assert!(tokens.add("../evil").is_err());
    }

    /// Regression (issue 8): the file was written through a fixed temp name, so a file or link
    /// placed there first was written through. The temp file is fresh (O_EXCL, random name).
    #[test]
    fn a_planted_temp_file_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(".tokens.tmp")).unwrap();
        let tokens = Tokens::new(dir.path());
        tokens.add("alice").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        let mode = fs::metadata(dir.path().join("tokens"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    /// Regression (issue 8): names read back were not validated, so a hand-edited line could
    /// publish files outside the data directory.
    #[test]
    fn hand_edited_bad_name_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path());
        tokens.add("alice").unwrap();
        let good = fs::read_to_string(dir.path().join("tokens")).unwrap();
        let bad = format!("{good}../../x {}\n", "ab".repeat(32));
        fs::write(dir.path().join("tokens"), bad).unwrap();
        let err = format!("{:#}", tokens.entries().unwrap_err());
        assert!(
            err.contains("tokens line 2: token name \"../../x\""),
            "{err}"
        );
    }
}

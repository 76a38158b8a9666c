//! The local resume journal: which upload id a file has on a server. The key is the server,
//! the file's canonical path, its size and its modification time, so an edited file starts a
//! new upload instead of resuming into the old one. One small JSON file per key, written
//! atomically, so concurrent `ferry` processes do not trample each other.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digests::ChunkDigests;

/// What identifies a local file for resuming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKey {
    pub server: String,
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: u128,
}

impl FileKey {
    /// Reads size and mtime of `path` (made canonical).
    pub fn of(server: &str, path: &Path) -> std::io::Result<Self> {
        let path = fs::canonicalize(path)?;
        let meta = fs::metadata(&path)?;
        let mtime_ns = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            server: server.to_owned(),
            path,
            size: meta.len(),
            mtime_ns,
        })
    }

    fn stem(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.server.as_bytes());
        h.update([0]);
        h.update(self.path.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(self.size.to_be_bytes());
        h.update(self.mtime_ns.to_be_bytes());
        hex::encode(&h.finalize()[..16])
    }
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub upload_id: String,
    pub server: String,
    pub path: PathBuf,
    pub size: u64,
    pub chunk_size: u64,
    /// Set when the server said `finished`: a re-run of the same file (same server, path,
    /// size and mtime) asks the server to confirm it and sends nothing, without reading the
    /// file again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<Completed>,
}

/// A completed upload as the journal remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completed {
    /// The name the server published it under.
    pub file_name: String,
    /// The digest sent in `finish`: the content hash (entries written by ferry 0.1 with
    /// protocol 3 hold the plain SHA-256, which the server recorded for those uploads).
    pub sha256: String,
}

pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("journal"),
        }
    }

    /// The entry for `key`, if one was saved and is readable.
    pub fn get(&self, key: &FileKey) -> Option<Entry> {
        let text = fs::read(self.entry_path(key)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn put(&self, key: &FileKey, entry: &Entry) -> std::io::Result<()> {
        let json = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        write_atomic(&self.entry_path(key), &json)
    }

    /// The chunk digests of `key`'s upload of `count` chunks, as far as this machine kept them.
    pub fn digests(&self, key: &FileKey, count: u64) -> ChunkDigests {
        ChunkDigests::open(self.digests_path(key), count)
    }

    pub fn remove(&self, key: &FileKey) {
        let _ = fs::remove_file(self.entry_path(key));
        let _ = fs::remove_file(self.digests_path(key));
    }

    fn entry_path(&self, key: &FileKey) -> PathBuf {
        self.dir.join(format!("{}.json", key.stem()))
    }

    fn digests_path(&self, key: &FileKey) -> PathBuf {
        self.dir.join(format!("{}.digests", key.stem()))
    }
}

/// Replaces `path` atomically (temp file in the same directory, then rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_follows_the_file_identity() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.bin");
        fs::write(&file, b"hello").unwrap();
        let journal = Journal::new(dir.path());
        let key = FileKey::of("srv:1", &file).unwrap();
        let entry = Entry {
            upload_id: "x".into(),
            server: "srv:1".into(),
            path: key.path.clone(),
            size: 5,
            chunk_size: 4,
            complete: None,
        };
        journal.put(&key, &entry).unwrap();
        assert_eq!(journal.get(&key), Some(entry));
        assert_eq!(journal.get(&FileKey::of("other:1", &file).unwrap()), None);
        fs::write(&file, b"hello world").unwrap();
        assert_eq!(
            journal.get(&FileKey::of("srv:1", &file).unwrap()),
            None,
            "a changed file is a new upload"
        );
        journal.remove(&key);
        assert_eq!(journal.get(&key), None);
    }
}

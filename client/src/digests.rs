//! The chunk digests of one upload, as this machine computed them from the bytes it sent: the
//! content hash sent in `finish` is SHA-256 over them, so finishing needs no second pass over
//! the file. They are kept beside the resume journal entry (32 bytes per chunk at offset
//! `index × 32`, zeros for "not known"), so a resumed upload knows the digests of what the
//! server already holds without reading those chunks again. The file is not synced: a digest
//! lost in a crash is recomputed from the file at `finish` (one read of that chunk only).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use ferry_proto::{ChunkLayout, ContentHasher, Digest};
use sha2::{Digest as _, Sha256};

const UNKNOWN: [u8; 32] = [0; 32];

pub struct ChunkDigests {
    known: Vec<[u8; 32]>,
    /// The file beside the journal entry; `None` when it cannot be written (the digests then
    /// live for this run only).
    file: Option<File>,
}

impl ChunkDigests {
    /// The digests recorded at `path` for an upload of `count` chunks; a file of another
    /// length is not this upload's and starts afresh.
    pub fn open(path: PathBuf, count: u64) -> Self {
        let len = count as usize * 32;
        let file = path
            .parent()
            .and_then(|dir| std::fs::create_dir_all(dir).ok())
            .and_then(|()| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .ok()
            });
        let mut known = vec![UNKNOWN; count as usize];
        if let Some(f) = &file {
            let mut raw = vec![0u8; len];
            let fits = f.metadata().is_ok_and(|m| m.len() == len as u64);
            if fits && f.read_exact_at(&mut raw, 0).is_ok() {
                for (slot, bytes) in known.iter_mut().zip(raw.chunks_exact(32)) {
                    slot.copy_from_slice(bytes);
                }
            } else {
                let _ = f.set_len(0).and_then(|()| f.set_len(len as u64));
            }
        }
        Self { known, file }
    }

    /// Digests for this run only (no upload to keep them for).
    pub fn in_memory(count: u64) -> Self {
        Self {
            known: vec![UNKNOWN; count as usize],
            file: None,
        }
    }

    /// Records the digest of chunk `index` as sent.
    pub fn record(&mut self, index: u64, digest: Digest) {
        let Some(slot) = self.known.get_mut(index as usize) else {
            return;
        };
        if *slot == *digest.as_bytes() {
            return;
        }
        *slot = *digest.as_bytes();
        if let Some(f) = &self.file {
            // Losing it costs one read of the chunk at finish, nothing more.
            let _ = f.write_all_at(digest.as_bytes(), index * 32);
        }
    }

    /// Chunks whose digest is not known here.
    pub fn missing(&self) -> u64 {
        self.known.iter().filter(|d| **d == UNKNOWN).count() as u64
    }

    /// The content hash of the upload. Digests not known here (lost with the journal, or the
    /// chunk reached the server in a run whose record did not survive) are computed from
    /// `source` first; returns the hash and the bytes read for that.
    pub fn content_hash(
        &mut self,
        source: &File,
        layout: &ChunkLayout,
    ) -> std::io::Result<(Digest, u64)> {
        let mut read = 0;
        let mut buf = Vec::new();
        for index in 0..layout.count() {
            if self.known[index as usize] != UNKNOWN {
                continue;
            }
            let span = layout.span(layout.index(index).expect("index below the count"));
            buf.resize(span.len as usize, 0);
            source.read_exact_at(&mut buf, span.offset)?;
            read += span.len;
            self.record(index, Digest::from(Sha256::new_with_prefix(&buf)));
        }
        let mut hasher = ContentHasher::new();
        for digest in &self.known {
            hasher.push(&Digest::from_bytes(*digest));
        }
        Ok((hasher.finish(), read))
    }
}

/// The content hash and the plain SHA-256 of the first `size` bytes of `file`, in one read:
/// what `ferry hash` prints and what `--dedup` offers.
pub fn hash_file(file: &File, size: u64, chunk_size: u64) -> std::io::Result<(Digest, Digest)> {
    let mut plain = Sha256::new();
    let mut content = ContentHasher::new();
    let mut chunk = Sha256::new();
    let mut in_chunk = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        plain.update(&buf[..n]);
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let take = (chunk_size - in_chunk).min(rest.len() as u64) as usize;
            chunk.update(&rest[..take]);
            in_chunk += take as u64;
            rest = &rest[take..];
            if in_chunk == chunk_size {
                content.push(&Digest::from(std::mem::take(&mut chunk)));
                in_chunk = 0;
            }
        }
        offset += n as u64;
    }
    if in_chunk > 0 {
        content.push(&Digest::from(chunk));
    }
    Ok((content.finish(), plain.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_file_gives_both_digests_in_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let (content, plain) = hash_file(&file, data.len() as u64, 1 << 20).unwrap();
        assert_eq!(plain, Digest::of(&data));
        assert_eq!(content, ContentHasher::of(&data, 1 << 20));
        let (empty, _) = hash_file(&file, 0, 1 << 20).unwrap();
        assert_eq!(empty, Digest::of(b""));
    }

    #[test]
    fn digests_survive_a_reopen_and_missing_ones_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let data: Vec<u8> = (0..10u8).collect();
        std::fs::write(&src, &data).unwrap();
        let layout = ChunkLayout::new(10, 4).unwrap();
        let path = dir.path().join("j/x.digests");
        let mut digests = ChunkDigests::open(path.clone(), 3);
        digests.record(0, Digest::of(&data[..4]));
        digests.record(2, Digest::of(&data[8..]));
        drop(digests);
        let mut again = ChunkDigests::open(path.clone(), 3);
        assert_eq!(again.missing(), 1);
        let source = File::open(&src).unwrap();
        let (hash, read) = again.content_hash(&source, &layout).unwrap();
        assert_eq!(hash, ContentHasher::of(&data, 4));
        assert_eq!(read, 4, "only the chunk without a digest is read");
        assert_eq!(
            ChunkDigests::open(path, 4).missing(),
            4,
            "another layout starts afresh"
        );
    }
}

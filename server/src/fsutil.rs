//! Small file-system helpers that get durability right: atomic replace, private files,
//! directories whose creation survives a crash, directory sync.
//!
//! The rule they follow is the strict one a power cut enforces: a create, rename, link or unlink
//! is durable only after an fsync of the directory holding the entry, and a file's bytes and
//! size only after an fsync (or fdatasync) of the file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Replaces `path` with `data` atomically (temp file, fsync, rename, fsync the directory).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_with_mode(path, data, 0o644)
}

/// Like [`write_atomic`], readable by the owner only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    write_with_mode(path, data, 0o600)
}

fn write_with_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    create_dir_durable(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    // A fresh temp file (O_EXCL, random name): never one that someone placed there first, which
    // could be a link to elsewhere or carry other permissions.
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        hex::encode(nonce)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("failed to write {}", path.display()))
}

/// Creates `dir` and its missing parents like `create_dir_all`, and fsyncs the parent of each
/// directory it created, so the new directories survive a crash.
pub fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        // Another thread may have created it a moment ago; its sync may not have run yet,
        // so sync here as well.
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    sync_dir(parent.unwrap_or(Path::new(".")))
}

/// Creates the folders `parts` below `root` (an existing folder) where missing, then fsyncs
/// `root` and every folder of the path but the last, existing or new: each entry of the path is
/// durable when this returns, also one another thread created a moment ago and has not synced
/// yet (`create_dir_durable` returns at once for a folder that exists). Returns how many
/// folders it created. The caller syncs the last folder after adding its own entry to it.
pub fn create_path_synced(root: &Path, parts: &[&str]) -> std::io::Result<u64> {
    let mut created = 0;
    let mut dir = root.to_path_buf();
    let mut parents = vec![root.to_path_buf()];
    for part in parts {
        dir.push(part);
        match fs::create_dir(&dir) {
            Ok(()) => created += 1,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
        parents.push(dir.clone());
    }
    parents.pop();
    for parent in parents.iter().rev() {
        sync_dir(parent)?;
    }
    Ok(created)
}

/// fsyncs a directory so a create, rename, link or unlink inside it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes `path` and makes the removal durable; a missing file is not an error.
pub fn remove_file_durable(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
    }
}

/// Frees the blocks of `[offset, offset + len)` of `file`, keeping its size: a spool's chunk
/// once the bucket holds it. Best effort: a file system without hole punching keeps the bytes
/// until the spool is removed.
pub fn punch_hole(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for writing for the duration of the call.
    unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
}

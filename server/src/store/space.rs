//! Disk space: what the file system has free, the error when it is not enough, and the full
//! reservation of a staging file at create.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};

/// Not enough disk space: for a file of `needed` bytes (at create), or for the database
/// (`needed` 0, before a commit). `free` is what the file system has; `reserve` is the part of
/// it kept for the database (`--min-free-space`).
#[derive(Debug)]
pub struct NoSpace {
    pub needed: u64,
    pub free: u64,
    pub reserve: u64,
}

impl std::fmt::Display for NoSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ferry_proto::units::human;
        if self.needed > 0 {
            write!(f, "the file needs {}; ", human(self.needed))?;
        }
        write!(f, "the server has {} free", human(self.free))?;
        if self.reserve > 0 {
            let reserve = human(self.reserve);
            write!(f, " and keeps {reserve} in reserve (--min-free-space)")?;
        }
        Ok(())
    }
}

impl std::error::Error for NoSpace {}

/// Too few free inodes: the file system holding the data directory has `free` left, and
/// `reserve` of them are kept for the server's own files (`--min-free-inodes`).
#[derive(Debug)]
pub struct NoInodes {
    pub free: u64,
    pub reserve: u64,
}

impl std::fmt::Display for NoInodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's file system has {} free inodes (files and folders) and keeps {} in reserve (--min-free-inodes)",
            self.free, self.reserve
        )
    }
}

impl std::error::Error for NoInodes {}

/// Inodes (files and folders) unprivileged writers can still create on the file system holding
/// `path`; `None` for a file system without a fixed number (btrfs reports none).
pub fn free_inodes(path: &Path) -> std::io::Result<Option<u64>> {
    let stat = statvfs(path)?;
    Ok((stat.f_files > 0).then_some(stat.f_favail as u64))
}

fn statvfs(path: &Path) -> std::io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat)
}

/// Bytes available to unprivileged writers on the file system holding `path`.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let stat = statvfs(path)?;
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Allocates every block of the staging file now, so a full disk shows at create and never
/// in the middle of an upload.
pub(super) fn reserve(file: &File, size: u64, dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    if size == 0 {
        return Ok(());
    }
    let len = libc::off_t::try_from(size).context("file size does not fit off_t")?;
    // SAFETY: the descriptor is open for writing for the duration of the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        libc::ENOSPC => Err(NoSpace {
            needed: size,
            free: free_space(dir).unwrap_or(0),
            reserve: 0,
        }
        .into()),
        // File systems without fallocate: fall back to a sparse file of the right size.
        libc::EOPNOTSUPP => file
            .set_len(size)
            .context("failed to size the staging file"),
        errno => Err(std::io::Error::from_raw_os_error(errno))
            .context("failed to reserve space for the staging file"),
    }
}

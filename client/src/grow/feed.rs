//! Where a growing upload's bytes come from: a followed file (its length, inotify's events,
//! the end game's re-hash) or standard input (read by a thread, kept in the spool until
//! acknowledged).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_proto::Digest;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::ClientError;

use super::{State, LOOK_EVERY};

/// Where a chunk's bytes are read from.
pub(super) enum Feed {
    File {
        file: Arc<File>,
        path: PathBuf,
        idle: Duration,
        watch: Option<inotify::Inotify>,
        /// The length last seen (`u64::MAX` before the first look), when the file was last
        /// written, and whether the writer closed it since.
        len: u64,
        changed: Instant,
        closed: bool,
    },
    Stdin {
        rx: mpsc::Receiver<std::io::Result<Bytes>>,
        /// Chunks read and not yet acknowledged, by index (also in the spool).
        held: BTreeMap<u64, Bytes>,
        /// Chunks read so far (the next index), and their bytes.
        read: u64,
        bytes: u64,
        eof: bool,
        spool: Spool,
    },
}

impl Feed {
    pub(super) fn follow(
        path: &Path,
        idle: Duration,
        ignore_close: bool,
    ) -> Result<Self, ClientError> {
        let file = File::open(path)
            .map_err(|e| ClientError::local(format!("cannot read {}", path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| ClientError::local(format!("cannot read {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(ClientError::Usage(format!(
                "{} is not a regular file: --follow reads a file that grows; for a pipe use `ferry upload - --name NAME`",
                path.display()
            )));
        }
        // Without inotify (another OS, no watches left) the idle time alone ends the upload.
        let watch = (!ignore_close)
            .then(inotify::Inotify::init)
            .and_then(Result::ok)
            .and_then(|watch| {
                watch
                    .watches()
                    .add(
                        path,
                        inotify::WatchMask::CLOSE_WRITE | inotify::WatchMask::MODIFY,
                    )
                    .ok()
                    .map(|_| watch)
            });
        Ok(Self::File {
            file: Arc::new(file),
            path: path.to_owned(),
            idle,
            watch,
            len: u64::MAX,
            // A file last written longer ago than `idle` (a recording that ended before this
            // run) ends at once; one written since is followed.
            changed: last_write(&meta),
            closed: false,
        })
    }

    pub(super) fn stdin(spool: Spool, chunk_size: u64) -> Self {
        let (tx, rx) = mpsc::channel(1);
        // A thread, not a task: reading a pipe blocks. It ends at the end of input, or when the
        // upload is gone (the receiver dropped).
        std::thread::spawn(move || {
            let mut input = std::io::stdin().lock();
            loop {
                let mut buf = vec![0u8; chunk_size as usize];
                let mut filled = 0;
                while filled < buf.len() {
                    match input.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e));
                            return;
                        }
                    }
                }
                if filled == 0 {
                    return;
                }
                buf.truncate(filled);
                let short = filled < chunk_size as usize;
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() || short {
                    return;
                }
            }
        });
        Self::Stdin {
            rx,
            held: BTreeMap::new(),
            read: 0,
            bytes: 0,
            eof: false,
            spool,
        }
    }

    /// Takes in what the source holds now: new whole chunks become `todo`, and the end is set
    /// once the source ended.
    pub(super) async fn look(&mut self, state: &mut State) -> Result<(), ClientError> {
        match self {
            Self::File {
                file,
                path,
                idle,
                watch,
                len,
                changed,
                closed,
            } => {
                if state.end.is_some() {
                    return Ok(());
                }
                if let Some(watch) = watch {
                    let mut buf = [0u8; 4096];
                    // In order: a write (also one in place, that does not grow the file)
                    // cancels an earlier close; a close after the last write ends the file.
                    if let Ok(events) = watch.read_events(&mut buf) {
                        for event in events {
                            if event.mask.contains(inotify::EventMask::MODIFY) {
                                *changed = Instant::now();
                                *closed = false;
                            }
                            if event.mask.contains(inotify::EventMask::CLOSE_WRITE) {
                                *closed = true;
                            }
                        }
                    }
                }
                let now = file
                    .metadata()
                    .map_err(|e| ClientError::local(format!("cannot read {}", path.display()), e))?
                    .len();
                if now != *len {
                    // The first look (`len` not known yet) keeps the file's own last write.
                    if *len != u64::MAX {
                        if now < *len {
                            tracing::info!(from = *len, to = now, "the followed file shrank");
                        }
                        // Growth seen here may be the last write before a close read above:
                        // the close stands (inotify's own order, above, cancels a close that
                        // a later write follows).
                        *changed = Instant::now();
                    }
                    *len = now;
                    let whole = now / state.cs;
                    for index in 0..whole {
                        if !state.acked.contains(index) && !state.unacked.contains(&index) {
                            state.todo.insert(index);
                        }
                    }
                    // Chunks past a shrunken end are no longer the file's.
                    state.todo.retain(|&i| i < whole);
                }
                // Ended: closed by its writer with no growth since (the close event comes after
                // the last write), or idle for `idle`.
                let quiet = changed.elapsed();
                if (*closed && quiet >= LOOK_EVERY) || quiet >= *idle {
                    state.end = Some(*len);
                    let whole = *len / state.cs;
                    for index in 0..whole {
                        if !state.acked.contains(index) && !state.unacked.contains(&index) {
                            state.todo.insert(index);
                        }
                    }
                }
                Ok(())
            }
            Self::Stdin { bytes, eof, .. } => {
                if *eof && state.end.is_none() {
                    state.end = Some(*bytes);
                }
                Ok(())
            }
        }
    }

    /// Standard input's next chunk, if there is room for it: `None` from a file, at the end of
    /// input, and while `window` chunks are held unacknowledged.
    pub(super) fn wants(
        &mut self,
        window: usize,
    ) -> Option<&mut mpsc::Receiver<std::io::Result<Bytes>>> {
        match self {
            Self::Stdin {
                rx,
                held,
                eof: false,
                ..
            } if held.len() < window => Some(rx),
            _ => None,
        }
    }

    /// Takes in a chunk read from standard input (spooled first), or its end.
    pub(super) fn take(
        &mut self,
        next: Option<std::io::Result<Bytes>>,
        state: &mut State,
    ) -> Result<(), ClientError> {
        let Self::Stdin {
            held,
            read,
            bytes,
            eof,
            spool,
            ..
        } = self
        else {
            return Ok(());
        };
        match next {
            Some(Ok(data)) => {
                let index = *read;
                spool.put(index, &data)?;
                *bytes += data.len() as u64;
                *read += 1;
                let short = (data.len() as u64) < state.cs;
                held.insert(index, data);
                if short {
                    // The last chunk: it waits for the length to be declared.
                    *eof = true;
                } else {
                    state.todo.insert(index);
                }
                Ok(())
            }
            Some(Err(e)) => Err(ClientError::local("cannot read standard input", e)),
            None => {
                *eof = true;
                Ok(())
            }
        }
    }

    /// The bytes of chunk `index`: `len` bytes from `offset`.
    pub(super) async fn chunk(
        &self,
        index: u64,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, ClientError> {
        match self {
            Self::File { file, path, .. } => {
                let (file, path) = (file.clone(), path.clone());
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; len as usize];
                    file.read_exact_at(&mut buf, offset)
                        .map(|()| Bytes::from(buf))
                        .map_err(|e| {
                            ClientError::local(
                                format!(
                                    "cannot read chunk {index} of {} (did it shrink?)",
                                    path.display()
                                ),
                                e,
                            )
                        })
                })
                .await
                .map_err(|e| ClientError::Local(e.to_string()))?
            }
            Self::Stdin { held, .. } => held.get(&index).cloned().ok_or_else(|| {
                ClientError::Local(format!("chunk {index} of standard input is not held"))
            }),
        }
    }

    /// Bytes the source has given so far, and what to call it in a progress line.
    pub(super) fn read_so_far(&self) -> (u64, String) {
        match self {
            Self::File { len, path, .. } => (
                if *len == u64::MAX { 0 } else { *len },
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            Self::Stdin { bytes, .. } => (*bytes, "standard input".to_owned()),
        }
    }

    /// Chunk `index` is durable on the server: a spooled copy is no longer needed.
    pub(super) fn acked(&mut self, index: u64) {
        if let Self::Stdin { held, spool, .. } = self {
            if held.remove(&index).is_some() {
                spool.remove(index);
            }
        }
    }
}

/// When the file was last written, as an `Instant` (now, for a time in the future or unknown).
fn last_write(meta: &std::fs::Metadata) -> Instant {
    let ago = meta
        .modified()
        .ok()
        .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

/// The chunks among `held` (all below `whole` are whole in the file) whose bytes in `file` no
/// longer match the digests sent, and every held chunk at or past `whole` (no longer whole).
/// Hashes on the blocking pool, two threads.
pub(super) async fn changed_chunks(
    file: &Arc<File>,
    state: &State,
    held: &[u64],
    whole: u64,
) -> Result<Vec<u64>, ClientError> {
    let known: Vec<(u64, Option<Digest>)> = {
        let digests = state.digests.lock().unwrap_or_else(|p| p.into_inner());
        held.iter().map(|i| (*i, digests.get(i).copied())).collect()
    };
    let (file, cs) = (file.clone(), state.cs);
    tokio::task::spawn_blocking(move || {
        let check = |part: &[(u64, Option<Digest>)]| -> std::io::Result<Vec<u64>> {
            let mut out = Vec::new();
            let mut buf = vec![0u8; cs as usize];
            for (index, digest) in part {
                if *index >= whole {
                    out.push(*index);
                    continue;
                }
                file.read_exact_at(&mut buf, index * cs)?;
                if Some(Digest::from(Sha256::new_with_prefix(&buf))) != *digest {
                    out.push(*index);
                }
            }
            Ok(out)
        };
        let (a, b) = known.split_at(known.len() / 2);
        let (a, b) = std::thread::scope(|s| {
            let other = s.spawn(|| check(b));
            (check(a), other.join().unwrap_or_else(|_| Ok(Vec::new())))
        });
        let mut out = a?;
        out.extend(b?);
        Ok::<_, std::io::Error>(out)
    })
    .await
    .map_err(|e| ClientError::Local(e.to_string()))?
    .map_err(|e| ClientError::local("cannot read the followed file", e))
}

/// Unacknowledged chunks of standard input, one file each, in a folder of their own.
pub(super) struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub(super) fn open(base: &Path, stem: &str) -> Result<Self, ClientError> {
        let dir = base.join(stem);
        std::fs::create_dir_all(&dir).map_err(|e| {
            ClientError::local(format!("cannot make the spool folder {}", dir.display()), e)
        })?;
        Ok(Self { dir })
    }

    /// An empty spool for a new stream.
    pub(super) fn fresh(base: &Path, stem: &str) -> Result<Self, ClientError> {
        let _ = std::fs::remove_dir_all(base.join(stem));
        Self::open(base, stem)
    }

    pub(super) fn put(&self, index: u64, data: &[u8]) -> Result<(), ClientError> {
        let path = self.dir.join(index.to_string());
        std::fs::write(&path, data).map_err(|e| {
            ClientError::local(format!("cannot write the spool file {}", path.display()), e)
        })
    }

    pub(super) fn remove(&self, index: u64) {
        let _ = std::fs::remove_file(self.dir.join(index.to_string()));
    }

    /// Every chunk the spool holds (an earlier run's).
    pub(super) fn load(&self) -> Vec<(u64, Bytes)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let index = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok());
            if let (Some(index), Ok(data)) = (index, std::fs::read(entry.path())) {
                out.push((index, Bytes::from(data)));
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out
    }

    pub(super) fn remove_all(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

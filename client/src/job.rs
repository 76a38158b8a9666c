//! The files and folders of one `ferry upload` command: what to send and in which order, and
//! running it. A folder argument is uploaded as a tree, like `scp -r DIR host:`: its name kept,
//! regular files only, in name order, empty folders kept, symbolic links skipped with a note
//! unless followed.
//!
//! Files start in that order, up to `files` of them at once, each on its own connection of
//! one shared UDP socket; together they keep at most `parallel` chunk streams sending (one
//! window, first come first served). So a small file never waits behind a huge one for the
//! whole run, and the job as a whole sends as fast as one file would.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use ferry_proto::ErrorCode;

use crate::{Client, ClientError, Options, Report, Shared};

/// Deepest folder tree walked (the server's limit on a folder path is the same).
pub const MAX_DEPTH: usize = ferry_proto::name::MAX_DIR_DEPTH;

/// One thing to do on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Upload `path` into the folders `dir` under the owner's folder.
    File { path: PathBuf, dir: Vec<String> },
    /// Create the folder `dir`, which holds nothing to upload.
    EmptyDir { dir: Vec<String> },
}

impl Item {
    /// Bytes of the file (0 for a folder, or if it cannot be read now).
    pub fn size(&self) -> u64 {
        match self {
            Item::File { path, .. } => std::fs::metadata(path).map_or(0, |m| m.len()),
            Item::EmptyDir { .. } => 0,
        }
    }
}

/// How one item of a job ended.
pub enum Outcome {
    File(Report),
    Folder(String),
}

/// What one command will do, and what it leaves out.
#[derive(Debug, Default)]
pub struct Job {
    pub items: Vec<Item>,
    /// Symbolic links (and other non-regular files) left out, for a note each.
    pub left_out: Vec<PathBuf>,
    /// Files and folders in folders left out by an `--exclude` pattern (or a default one).
    pub excluded: Vec<PathBuf>,
}

/// Names left out of folders: macOS's `.DS_Store` and the `._*` AppleDouble files camera
/// cards carry, unless `--no-default-excludes`.
pub const DEFAULT_EXCLUDES: &[&str] = &[".DS_Store", "._*"];

/// Glob patterns (`*`, `?`, `[…]`) matched against the name of each file and folder inside the
/// folders of a job (never against a file named on the command line: it was asked for).
#[derive(Debug, Clone)]
pub struct Excludes {
    set: globset::GlobSet,
    /// The patterns as given, for messages.
    pub patterns: Vec<String>,
}

impl Excludes {
    /// `patterns`, plus [`DEFAULT_EXCLUDES`] with `defaults`.
    pub fn new(patterns: &[String], defaults: bool) -> Result<Self, ClientError> {
        let mut all: Vec<String> = Vec::new();
        if defaults {
            all.extend(DEFAULT_EXCLUDES.iter().map(|p| p.to_string()));
        }
        all.extend(patterns.iter().cloned());
        let mut set = globset::GlobSetBuilder::new();
        for pattern in &all {
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| ClientError::Usage(format!("--exclude {pattern:?}: {e}")))?;
            set.add(glob);
        }
        let set = set
            .build()
            .map_err(|e| ClientError::Usage(format!("--exclude: {e}")))?;
        Ok(Self { set, patterns: all })
    }

    /// Nothing left out.
    pub fn none() -> Self {
        Self {
            set: globset::GlobSet::empty(),
            patterns: Vec::new(),
        }
    }

    fn matches(&self, path: &Path) -> bool {
        path.file_name().is_some_and(|name| self.set.is_match(name))
    }
}

/// The job for these command-line paths, in their order; a folder's contents in name order.
pub fn plan(
    paths: &[PathBuf],
    follow_links: bool,
    excludes: &Excludes,
) -> Result<Job, ClientError> {
    let mut job = Job::default();
    for path in paths {
        let meta = std::fs::metadata(path)
            .map_err(|e| ClientError::local(format!("cannot read {}", path.display()), e))?;
        if meta.is_dir() {
            let name = component(path);
            walk(path, vec![name], (follow_links, excludes), &mut job)?;
        } else if !meta.is_file() {
            // A pipe would hang waiting for a writer, a device would never end or read as
            // empty: neither is a file to publish.
            return Err(ClientError::Usage(format!(
                "cannot upload {}: it is {}, not a regular file (ferry uploads files and folders; to send a stream, pipe it in: `ferry upload - --name NAME < {}`)",
                path.display(),
                kind_of(&meta),
                path.display()
            )));
        } else {
            // A file named on the command line is uploaded even through a link: it was asked for.
            job.items.push(Item::File {
                path: path.clone(),
                dir: Vec::new(),
            });
        }
    }
    Ok(job)
}

/// What a file that is neither a regular file nor a folder is, for a message.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_fifo() {
        "a named pipe (FIFO)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

fn walk(
    dir: &Path,
    at: Vec<String>,
    (follow, excludes): (bool, &Excludes),
    job: &mut Job,
) -> Result<(), ClientError> {
    if at.len() > MAX_DEPTH {
        return Err(ClientError::Local(format!(
            "{} is more than {MAX_DEPTH} folders deep",
            dir.display()
        )));
    }
    let unreadable = |e| ClientError::local(format!("cannot read {}", dir.display()), e);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    entries.sort();
    let before = job.items.len();
    for path in entries {
        if excludes.matches(&path) {
            job.excluded.push(path);
            continue;
        }
        let link = std::fs::symlink_metadata(&path).map_err(unreadable)?;
        let meta = if link.file_type().is_symlink() && follow {
            std::fs::metadata(&path).ok()
        } else {
            Some(link)
        };
        match meta {
            Some(m) if m.is_dir() => {
                let mut inner = at.clone();
                inner.push(component(&path));
                walk(&path, inner, (follow, excludes), job)?;
            }
            Some(m) if m.is_file() => job.items.push(Item::File {
                path,
                dir: at.clone(),
            }),
            _ => job.left_out.push(path),
        }
    }
    if job.items.len() == before {
        job.items.push(Item::EmptyDir { dir: at });
    }
    Ok(())
}

/// Runs `items` with at most `files` of them at once, calling `done` for each as it ends, or,
/// with `ordered`, in the job's order (a file that ends early waits for those before it, so
/// output for scripts is stable). Stops starting new items after an error that ends the run (exit code 1:
/// the server is gone) or when `cancel` turns true (Ctrl-C); items in flight then stop at
/// once, their acknowledged chunks safe on the server. The first connection is made before
/// anything else, so an unreachable server fails once, fast.
pub async fn run(
    opts: Options,
    items: Vec<Item>,
    how: How,
    shared: Shared,
    mut cancel: watch::Receiver<bool>,
    mut done: impl FnMut(&Item, Result<Outcome, ClientError>),
) -> Result<(), ClientError> {
    let How {
        files,
        desc,
        ordered,
    } = how;
    let window = opts.parallel.max(1);
    let shared = Shared {
        window: Some(
            shared
                .window
                .unwrap_or_else(|| Arc::new(crate::Window::new(window))),
        ),
        ..shared
    };
    let endpoint = Client::endpoint_for(&opts)?;
    let mut first = Client::with(opts.clone(), endpoint.clone(), shared.clone());
    let max_uploads = tokio::select! {
        r = first.connection() => r?.limits.max_uploads,
        _ = cancel.wait_for(|c| *c) => return Err(ClientError::Interrupted),
    };
    let file_count = items
        .iter()
        .filter(|i| matches!(i, Item::File { .. }))
        .count();
    // No more files at once than the server lets this token have uploads in progress.
    let allowed = match max_uploads {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let workers = files.min(allowed).clamp(1, file_count.max(1));
    if workers < files.min(file_count) {
        shared.tracker.note(&format!(
            "ferry: the server allows {allowed} uploads in progress per token; sending {workers} files at once"
        ));
    }
    let total = items.len();
    let queue = Arc::new(Mutex::new(
        items.into_iter().enumerate().collect::<VecDeque<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(Busy::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    let mut first = Some(first);
    for _ in 0..workers {
        let client = first
            .take()
            .unwrap_or_else(|| Client::with(opts.clone(), endpoint.clone(), shared.clone()));
        let worker = Worker {
            queue: queue.clone(),
            stop: stop.clone(),
            results: tx.clone(),
            cancel: cancel.clone(),
            desc: desc.clone(),
            busy: busy.clone(),
            tracker: shared.tracker.clone(),
        };
        tasks.spawn(worker.run(client));
    }
    drop(tx);
    let mut ended = std::collections::BTreeMap::new();
    let mut next = 0;
    let mut reported = 0;
    while let Some((n, item, result)) = rx.recv().await {
        reported += 1;
        if !ordered {
            done(&item, result);
            continue;
        }
        ended.insert(n, (item, result));
        while let Some((item, result)) = ended.remove(&next) {
            done(&item, result);
            next += 1;
        }
    }
    // After a stop, items never started leave gaps: the rest in order.
    for (item, result) in ended.into_values() {
        done(&item, result);
    }
    // Every worker closed its connection before dropping its sender; this only reaps them.
    while tasks.join_next().await.is_some() {}
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    // Ctrl-C after the last item ended (while closing) interrupted nothing.
    if *cancel.borrow() && reported < total {
        return Err(ClientError::Interrupted);
    }
    Ok(())
}

/// How a job runs.
pub struct How {
    /// Files in flight at once.
    pub files: usize,
    /// Description stored with each upload.
    pub desc: String,
    /// Report results in the job's order rather than as they end.
    pub ordered: bool,
}

/// One of the job's connections: takes the next item until none is left.
struct Worker {
    queue: Arc<Mutex<VecDeque<(usize, Item)>>>,
    stop: Arc<AtomicBool>,
    results: mpsc::UnboundedSender<(usize, Item, Result<Outcome, ClientError>)>,
    cancel: watch::Receiver<bool>,
    desc: String,
    /// Files of this job being uploaded right now, over every worker.
    busy: Arc<Busy>,
    tracker: Arc<crate::progress::Tracker>,
}

impl Worker {
    async fn run(mut self, mut client: Client) {
        // Bounded by the queue: each turn takes one item off it.
        loop {
            if self.stop.load(Ordering::Relaxed) || *self.cancel.borrow() {
                break;
            }
            let Some((n, item)) = self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
            else {
                break;
            };
            let result = loop {
                let work = async {
                    match &item {
                        Item::File { path, dir } => client
                            .upload_in(path, dir, &self.desc)
                            .await
                            .map(Outcome::File),
                        Item::EmptyDir { dir } => client.mkdir(dir).await.map(Outcome::Folder),
                    }
                };
                self.busy.count.fetch_add(1, Ordering::SeqCst);
                let result = tokio::select! {
                    r = work => Some(r),
                    _ = self.cancel.wait_for(|c| *c) => None,
                };
                self.busy.count.fetch_sub(1, Ordering::SeqCst);
                self.busy.ended.notify_waiters();
                let Some(result) = result else { break None };
                // The server's limit of uploads in progress, reached by this job's own other files:
                // this file waits for one of them to end and is tried again, so the job runs as
                // many files at once as the server allows and finishes. Reached by uploads
                // elsewhere (no other file of this job in flight), it is the file's error.
                let limited = matches!(
                    &result,
                    Err(ClientError::Server {
                        code: ErrorCode::TooManyUploads,
                        ..
                    })
                );
                if !limited || self.busy.count.load(Ordering::SeqCst) == 0 {
                    break Some(result);
                }
                if !self.busy.said.swap(true, Ordering::Relaxed) {
                    self.tracker.note(
                        "ferry: the server's limit of uploads in progress is reached; the other files wait for a place",
                    );
                }
                let ended = self.busy.ended.notified();
                if self.busy.count.load(Ordering::SeqCst) > 0 {
                    let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
                }
            };
            let Some(result) = result else { break };
            if matches!(&result, Err(e) if e.exit_code() == 1) {
                self.stop.store(true, Ordering::Relaxed);
            }
            let _ = self.results.send((n, item, result));
        }
        client.close().await;
    }
}

/// This job's files in flight, and a signal each time one ends.
#[derive(Default)]
struct Busy {
    count: std::sync::atomic::AtomicUsize,
    ended: tokio::sync::Notify,
    /// The wait was said once.
    said: AtomicBool,
}

fn component(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_in_name_order_with_empty_folders_and_links_left_out() {
        let root = tempfile::tempdir().unwrap();
        let top = root.path().join("card");
        std::fs::create_dir_all(top.join("b/deep")).unwrap();
        std::fs::create_dir_all(top.join("empty")).unwrap();
        std::fs::write(top.join("b/2.mov"), b"2").unwrap();
        std::fs::write(top.join("a.mov"), b"1").unwrap();
        std::os::unix::fs::symlink(top.join("a.mov"), top.join("link.mov")).unwrap();
        let job = plan(std::slice::from_ref(&top), false, &Excludes::none()).unwrap();
        let dir = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            job.items,
            vec![
                Item::File {
                    path: top.join("a.mov"),
                    dir: dir(&["card"])
                },
                Item::File {
                    path: top.join("b/2.mov"),
                    dir: dir(&["card", "b"])
                },
                Item::EmptyDir {
                    dir: dir(&["card", "b", "deep"])
                },
                Item::EmptyDir {
                    dir: dir(&["card", "empty"])
                },
            ]
        );
        assert_eq!(job.left_out, vec![top.join("link.mov")]);
        let followed = plan(std::slice::from_ref(&top), true, &Excludes::none()).unwrap();
        assert!(followed.left_out.is_empty());
        assert_eq!(followed.items.len(), 5);
    }
}

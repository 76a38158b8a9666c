//! `ferry upload` and `ferry pick`: a job of files, its progress, its lines and summary.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_client::job::{Item, Outcome};
use ferry_client::progress::{self, Tracker};
use ferry_client::{Client, ClientError, Options, Report, Shared};
use ferry_proto::units::human;

use crate::cli::UploadArgs;
use crate::report;

pub(crate) async fn upload_files(
    opts: Options,
    paths: &[PathBuf],
    args: &UploadArgs,
    files: usize,
    tracker: Arc<Tracker>,
) -> u8 {
    let job = match excludes_of(args)
        .and_then(|excludes| ferry_client::job::plan(paths, args.follow_links, &excludes))
    {
        Ok(job) => job,
        Err(e) => return report("cannot upload", &e),
    };
    for path in &job.left_out {
        tracker.note(&format!(
            "ferry: leaving out {} (not a regular file; --follow-links follows links)",
            path.display()
        ));
    }
    if !job.excluded.is_empty() {
        let names: Vec<String> = job
            .excluded
            .iter()
            .take(5)
            .map(|p| p.display().to_string())
            .collect();
        let more = job.excluded.len().saturating_sub(names.len());
        tracker.note(&format!(
            "ferry: left out {} by --exclude ({}): {}{}",
            count(job.excluded.len(), "file or folder", "files and folders"),
            args.exclude_patterns().join(", "),
            names.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    run_job(opts, job.items, args, files, tracker).await
}

/// Runs the items as one job: progress, a line per file, Ctrl-C, the summary. Returns the exit
/// code: the worst of the files' (0 when every one is on the server).
pub(crate) async fn run_job(
    opts: Options,
    items: Vec<Item>,
    args: &UploadArgs,
    files: usize,
    tracker: Arc<Tracker>,
) -> u8 {
    let file_items: Vec<&Item> = items
        .iter()
        .filter(|i| matches!(i, Item::File { .. }))
        .collect();
    let several = items.len() > 1;
    tracker.set_job(
        file_items.len() as u64,
        file_items.iter().map(|i| i.size()).sum(),
    );
    let shared = Shared {
        window: None,
        limiter: opts
            .limit_rate
            .map(|r| Arc::new(ferry_client::rate::RateLimiter::new(r))),
        tracker: tracker.clone(),
    };
    let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
    // Ctrl-C (SIGINT) and SIGTERM (a service manager, `kill`) stop the job the same way: what
    // is in flight is given a moment, the resume hint is printed, and the exit code says which
    // (130 or 143). A second signal while closing exits at once.
    let stopped_by = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let by = stopped_by.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        let code = tokio::select! {
            _ = int.recv() => 130,
            _ = term.recv() => 143,
        };
        by.store(code, std::sync::atomic::Ordering::Relaxed);
        let _ = cancel_tx.send(true);
        tokio::select! {
            _ = int.recv() => std::process::exit(130),
            _ = term.recv() => std::process::exit(143),
        }
    });
    let started = Instant::now();
    let _showing = (!args.json)
        .then(|| tracker.show(Duration::from_secs(args.progress_interval)))
        .flatten();
    let mut summary = Summary {
        files: file_items.len() as u64,
        ..Summary::default()
    };
    let mut code = 0;
    let outcome = ferry_client::job::run(
        opts,
        items,
        ferry_client::job::How {
            files,
            desc: args.desc.clone(),
            ordered: args.json,
        },
        shared,
        cancel,
        |item, result| match result {
            Ok(Outcome::File(r)) => {
                summary.add(&r);
                if args.json {
                    out!("{}", serde_json::to_string(&r).unwrap_or_default());
                } else {
                    tracker.note(&human_line(item, &r));
                }
            }
            Ok(Outcome::Folder(dir)) => tracker.event(&format!("ferry: created folder {dir}")),
            Err(ClientError::Interrupted) => {}
            Err(e) => {
                summary.failed += 1;
                let (path, what) = match item {
                    Item::File { path, .. } => (
                        path.display().to_string(),
                        format!("upload of {} failed", path.display()),
                    ),
                    Item::EmptyDir { dir } => (
                        dir.join("/"),
                        format!("cannot create folder {}", dir.join("/")),
                    ),
                };
                if args.json {
                    let line = serde_json::json!({
                        "status": "failed",
                        "path": path,
                        "error": e.to_string(),
                    });
                    out!("{line}");
                }
                tracker.error(&format!("ferry: {what}: {e}"));
                code = code.max(e.exit_code());
            }
        },
    )
    .await;
    drop(_showing);
    if let Err(e) = outcome {
        let signal = stopped_by.load(std::sync::atomic::Ordering::Relaxed);
        code = code.max(match (&e, signal) {
            (ClientError::Interrupted, 143) => {
                report("stopped by SIGTERM", &e);
                143
            }
            (ClientError::Interrupted, _) => report("stopped", &e),
            _ => report("cannot upload", &e),
        });
    }
    summary.elapsed = started.elapsed();
    // Files stopped midway sent bytes too.
    summary.bytes_sent = summary.bytes_sent.max(tracker.sent());
    if args.json && several {
        out!("{}", summary.json());
    } else if several {
        tracker.note(&summary.human());
    }
    code
}

/// `video.mp4: 40.0 MiB in 2.1 s (19.0 MiB/s), 24.0 MiB were already on the server`
pub(crate) fn human_line(item: &Item, r: &Report) -> String {
    let shown = match item {
        Item::File { path, dir } if !dir.is_empty() => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            format!("{}/{name}", dir.join("/"))
        }
        Item::File { path, .. } => path.display().to_string(),
        Item::EmptyDir { dir } => dir.join("/"),
    };
    let published = |name: &str| {
        if shown.ends_with(name) {
            String::new()
        } else {
            format!(" as {name:?}")
        }
    };
    match r.status {
        "skipped" => match r.reason.as_deref() {
            Some(reason) => format!("ferry: {shown}: skipped: {reason}"),
            None => format!(
                "ferry: {shown}: already on the server{}, skipped (uploaded by an earlier run)",
                published(&r.file_name),
            ),
        },
        "deduplicated" => format!(
            "ferry: {shown}: {} published{} from the same content already on the server, nothing sent",
            human(r.size),
            published(&r.file_name),
        ),
        _ => {
            let secs = (r.elapsed_ms as f64 / 1000.0).max(0.001);
            let mut line = format!(
                "ferry: {shown}: {} in {} ({}/s)",
                human(r.bytes_sent),
                progress::duration(Duration::from_millis(r.elapsed_ms)),
                human((r.bytes_sent as f64 / secs) as u64),
            );
            if r.bytes_skipped > 0 {
                line.push_str(&format!(
                    ", {} were already on the server",
                    human(r.bytes_skipped)
                ));
            }
            line.push_str(&published(&r.file_name));
            line
        }
    }
}

/// Totals of one `ferry upload` command, for its last line.
#[derive(Default)]
pub(crate) struct Summary {
    /// Files in the job.
    pub(crate) files: u64,
    pub(crate) complete: u64,
    pub(crate) skipped: u64,
    pub(crate) deduplicated: u64,
    pub(crate) failed: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_skipped: u64,
    pub(crate) elapsed: Duration,
}

impl Summary {
    fn add(&mut self, r: &ferry_client::upload::Report) {
        match r.status {
            "skipped" => self.skipped += 1,
            "deduplicated" => self.deduplicated += 1,
            _ => self.complete += 1,
        }
        self.bytes_sent += r.bytes_sent;
        self.bytes_skipped += r.bytes_skipped;
    }

    /// Files neither uploaded, skipped nor failed: the job stopped before they ended.
    fn unfinished(&self) -> u64 {
        self.files
            .saturating_sub(self.complete + self.skipped + self.deduplicated + self.failed)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "status": "summary",
            "files": self.files,
            "unfinished": self.unfinished(),
            "complete": self.complete,
            "skipped": self.skipped,
            "deduplicated": self.deduplicated,
            "failed": self.failed,
            "bytes_sent": self.bytes_sent,
            "bytes_skipped": self.bytes_skipped,
            "elapsed_ms": self.elapsed.as_millis() as u64,
        })
    }

    /// `ferry: 40 files: 38 complete, 2 skipped, 0 failed; 1.2 GiB sent in 42.0 s (29.3 MiB/s)`
    fn human(&self) -> String {
        let files = self.files;
        let secs = self.elapsed.as_secs_f64().max(0.001);
        let mut line = format!(
            "ferry: {files} files: {} complete, {} skipped",
            self.complete, self.skipped
        );
        if self.deduplicated > 0 {
            line.push_str(&format!(", {} deduplicated", self.deduplicated));
        }
        line.push_str(&format!(", {} failed", self.failed));
        if self.unfinished() > 0 {
            line.push_str(&format!(", {} unfinished", self.unfinished()));
        }
        line.push_str(&format!(
            "; {} sent in {} ({}/s)",
            human(self.bytes_sent),
            progress::duration(self.elapsed),
            human((self.bytes_sent as f64 / secs) as u64)
        ));
        line
    }
}

pub(crate) async fn pick(
    opts: Options,
    dir: &Path,
    args: &UploadArgs,
    files: usize,
    tracker: Arc<Tracker>,
) -> u8 {
    let excludes = match excludes_of(args) {
        Ok(excludes) => excludes,
        Err(e) => return report("cannot pick", &e),
    };
    let mut lister = match Client::new(opts.clone()) {
        Ok(c) => c,
        Err(e) => return report("cannot start", &e),
    };
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    // The menu goes to stderr, so that stdout holds only the --json lines.
    let mut worst = 0;
    // Bounded: one round per line of input.
    let code = loop {
        // The folder as `upload DIR` would send it: its files in sub-folders too, each to be
        // published in the same place (`DIR/sub/name`), excluded names left out.
        let local: Vec<(PathBuf, Vec<String>, u64)> =
            match ferry_client::job::plan(&[dir.to_path_buf()], args.follow_links, &excludes) {
                Ok(job) => job
                    .items
                    .into_iter()
                    .filter_map(|item| match item {
                        Item::File { path, dir } => {
                            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                            Some((path, dir, size))
                        }
                        Item::EmptyDir { .. } => None,
                    })
                    .collect(),
                Err(e) => break worst.max(report(&format!("cannot list {}", dir.display()), &e)),
            };
        if local.is_empty() {
            let e = ClientError::Usage(format!("{} has no files", dir.display()));
            break worst.max(report("nothing to pick", &e));
        }
        // Marked: a completed upload of this token published at the same path, same size.
        let on_server: std::collections::HashSet<(String, u64)> = match lister.list().await {
            Ok(uploads) => uploads
                .into_iter()
                .filter(|u| u.state == "complete")
                .map(|u| (u.file_name, u.size))
                .collect(),
            Err(e) => break worst.max(report("cannot list the server's uploads", &e)),
        };
        let published_as = |path: &Path, at: &[String]| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            at.iter().map(|d| format!("{d}/")).collect::<String>() + &name
        };
        for (n, (path, at, size)) in local.iter().enumerate() {
            let published = published_as(path, at);
            let mark = if on_server.contains(&(published.clone(), *size)) {
                "  (on the server)"
            } else {
                ""
            };
            // Shown relative to the folder picked from.
            let shown = published
                .split_once('/')
                .map_or(published.as_str(), |(_, rest)| rest);
            say!("{:>3}  {:>12}  {shown}{mark}", n + 1, human(*size));
        }
        eprint!(
            "Upload which? [e.g. 1,3,5-7; a for all; q to quit; 1-{}]: ",
            local.len()
        );
        let _ = std::io::stderr().flush();
        let Some(Ok(line)) = lines.next() else {
            say!("");
            break worst;
        };
        let answer = line.trim();
        if answer.eq_ignore_ascii_case("q") {
            break worst;
        }
        let chosen = match parse_selection(answer, local.len()) {
            Ok(chosen) => chosen,
            Err(why) => {
                say!("ferry: {why}");
                continue;
            }
        };
        let items = chosen
            .into_iter()
            .map(|n| Item::File {
                path: local[n - 1].0.clone(),
                dir: local[n - 1].1.clone(),
            })
            .collect();
        let ran = run_job(opts.clone(), items, args, files, tracker.clone()).await;
        worst = worst.max(ran);
        if ran == 1 || ran == 130 {
            break worst;
        }
    };
    lister.close().await;
    code
}

/// The exclude patterns of `args`: `--exclude` (and the config file's), with the defaults
/// unless `--no-default-excludes`.
fn excludes_of(args: &UploadArgs) -> Result<ferry_client::job::Excludes, ClientError> {
    ferry_client::job::Excludes::new(&args.exclude, !args.no_default_excludes)
}

/// `1 file`, `3 files`.
fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// The numbers of `1,3,5-7` (or every one for `a`), each in `1..=count`, in order, once.
pub(crate) fn parse_selection(answer: &str, count: usize) -> Result<Vec<usize>, String> {
    if answer.eq_ignore_ascii_case("a") {
        return Ok((1..=count).collect());
    }
    let mut chosen = std::collections::BTreeSet::new();
    for part in answer.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |t: &str| {
            t.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=count).contains(n))
                .ok_or_else(|| {
                    format!("{t:?} is not a number from 1 to {count}; enter e.g. 1,3,5-7, a or q")
                })
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(format!("{part:?} runs backwards; write {b}-{a}"));
                }
                chosen.extend(a..=b);
            }
            None => {
                chosen.insert(number(part)?);
            }
        }
    }
    if chosen.is_empty() {
        return Err(format!(
            "nothing chosen; enter numbers from 1 to {count}, a or q"
        ));
    }
    Ok(chosen.into_iter().collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn selections() {
        use super::parse_selection as p;
        assert_eq!(p("1,3,5-7", 9), Ok(vec![1, 3, 5, 6, 7]));
        assert_eq!(p("a", 3), Ok(vec![1, 2, 3]));
        assert_eq!(p(" 2 , 2,1 ", 3), Ok(vec![1, 2]));
        assert!(p("0", 3).unwrap_err().contains("from 1 to 3"));
        assert!(p("4", 3).is_err());
        assert!(p("3-1", 3).unwrap_err().contains("backwards"));
        assert!(p("x", 3).is_err());
        assert!(p(",", 3).is_err());
    }
}

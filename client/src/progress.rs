//! Progress of one command, all its files together: on a terminal one status line redrawn
//! five times a second and fitted to the terminal's width; elsewhere (nohup, a log file, a
//! service) one plain line every interval; nothing with `--json` or `-q`.
//!
//! The share done, the rate and the ETA come from bytes written to the network (plus what the
//! server held already); what the server acknowledged is shown apart, as "safe on server".

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proto::units::human;

/// How much the client says on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Verbosity {
    /// Errors only (`-q`).
    Quiet,
    /// Progress, one line per file, notes.
    #[default]
    Normal,
    /// Also connection events (`-v`).
    Verbose,
}

/// One file of the job, as the uploader reports it.
#[derive(Debug)]
pub struct FileProgress {
    pub name: String,
    pub size: u64,
    /// Payload bytes written to chunk streams in this run.
    pub sent: Arc<AtomicU64>,
    /// Bytes the server held when this run started.
    held: AtomicU64,
    /// Bytes the server acknowledged (durable), `held` included.
    safe: AtomicU64,
    done: AtomicBool,
}

impl FileProgress {
    pub fn set_held(&self, bytes: u64) {
        self.held.store(bytes, Ordering::Relaxed);
        self.safe.fetch_max(bytes, Ordering::Relaxed);
    }

    pub fn set_safe(&self, bytes: u64) {
        self.safe.store(bytes, Ordering::Relaxed);
    }

    /// The file is on the server (uploaded, skipped or failed: it no longer moves).
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// Bytes covered: held at the start plus sent since, at most the size.
    fn position(&self) -> u64 {
        let sent = self.sent.load(Ordering::Relaxed);
        (self.held.load(Ordering::Relaxed) + sent).min(self.size)
    }
}

/// The progress of a command: its files, what it may print, and the status line.
#[derive(Debug)]
pub struct Tracker {
    verbosity: Verbosity,
    /// Bytes of every file of the job, and their count.
    total: AtomicU64,
    files_total: AtomicU64,
    /// Files in flight; a finished one is folded into `settled` at the next snapshot, so a job
    /// of many files keeps only those in flight here.
    files: Mutex<Vec<Arc<FileProgress>>>,
    settled: Mutex<Settled>,
    /// Whether a status line is on the terminal (notes clear it first).
    drawn: AtomicBool,
    /// Serialises writes to stderr between notes and the status line.
    out: Mutex<()>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new(Verbosity::Normal)
    }
}

impl Tracker {
    pub fn new(verbosity: Verbosity) -> Self {
        Self {
            verbosity,
            total: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
            files: Mutex::new(Vec::new()),
            settled: Mutex::new(Settled::default()),
            drawn: AtomicBool::new(false),
            out: Mutex::new(()),
        }
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// The job's size: `files` files of `bytes` in all (for `n/N` and the percentage).
    pub fn set_job(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        self.total.store(bytes, Ordering::Relaxed);
    }

    /// Starts tracking one file.
    pub fn file(&self, name: &str, size: u64) -> Arc<FileProgress> {
        let file = Arc::new(FileProgress {
            name: name.to_owned(),
            size,
            sent: Arc::default(),
            held: AtomicU64::new(0),
            safe: AtomicU64::new(0),
            done: AtomicBool::new(false),
        });
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(file.clone());
        file
    }

    /// A line for the user (normal verbosity and up), above the status line.
    pub fn note(&self, line: &str) {
        if self.verbosity >= Verbosity::Normal {
            self.print(line);
        }
    }

    /// A connection event (`-v` only).
    pub fn event(&self, line: &str) {
        if self.verbosity >= Verbosity::Verbose {
            self.print(line);
        }
    }

    /// An error: always printed.
    pub fn error(&self, line: &str) {
        self.print(line);
    }

    fn print(&self, line: &str) {
        let _out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = std::io::stderr().lock();
        if self.drawn.swap(false, Ordering::Relaxed) {
            let _ = err.write_all(b"\r\x1b[K");
        }
        let _ = writeln!(err, "{line}");
    }

    /// Payload bytes written to chunk streams so far, every file of the command together.
    pub fn sent(&self) -> u64 {
        self.snapshot().sent
    }

    /// Totals now. Finished files move from `files` into `settled`.
    fn snapshot(&self) -> Snapshot {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
        files.retain(|f| {
            let done = f.done.load(Ordering::Relaxed);
            if done {
                settled.files += 1;
                settled.bytes += f.size;
                settled.sent += f.sent.load(Ordering::Relaxed);
            }
            !done
        });
        let mut s = Snapshot {
            total: self.total.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            files_done: settled.files,
            position: settled.bytes,
            safe: settled.bytes,
            sent: settled.sent,
            current: Vec::new(),
        };
        for f in files.iter() {
            s.sent += f.sent.load(Ordering::Relaxed);
            s.position += f.position();
            s.safe += f.safe.load(Ordering::Relaxed).min(f.size);
            s.current.push(f.name.clone());
        }
        // A job of unknown size (library use): what was started.
        let started: u64 = files.iter().map(|f| f.size).sum();
        s.total = s.total.max(settled.bytes + started);
        s.files_total = s.files_total.max(settled.files + files.len() as u64);
        s
    }

    /// Draws the status line every 200 ms on a terminal, or prints a plain line every
    /// `interval` elsewhere, until the returned handle is dropped. Nothing when quiet.
    pub fn show(self: &Arc<Self>, interval: Duration) -> Option<Showing> {
        if self.verbosity == Verbosity::Quiet {
            return None;
        }
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let every = if tty {
            Duration::from_millis(200)
        } else {
            interval
        };
        let tracker = self.clone();
        let task = tokio::spawn(async move {
            let mut rate = Rate::default();
            rate.sample(tracker.snapshot().sent);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let snap = tracker.snapshot();
                let per_sec = rate.sample(snap.sent);
                // Between files, or done and closing: nothing moves, nothing to say.
                if snap.current.is_empty() {
                    continue;
                }
                if tty {
                    let line = fit(&snap.line(per_sec), terminal_width());
                    let _out = tracker.out.lock().unwrap_or_else(|p| p.into_inner());
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r{line}\x1b[K");
                    let _ = err.flush();
                    tracker.drawn.store(true, Ordering::Relaxed);
                } else {
                    tracker.print(&format!("ferry: {}", snap.line(per_sec)));
                }
            }
        });
        Some(Showing {
            task,
            tracker: self.clone(),
        })
    }
}

/// What the finished files of a command add up to.
#[derive(Debug, Default)]
struct Settled {
    files: u64,
    bytes: u64,
    sent: u64,
}

/// The status line's task; stops it and clears the line when dropped.
pub struct Showing {
    task: tokio::task::JoinHandle<()>,
    tracker: Arc<Tracker>,
}

impl Drop for Showing {
    fn drop(&mut self) {
        self.task.abort();
        let _out = self.tracker.out.lock().unwrap_or_else(|p| p.into_inner());
        if self.tracker.drawn.swap(false, Ordering::Relaxed) {
            let _ = std::io::stderr().write_all(b"\r\x1b[K");
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Snapshot {
    total: u64,
    position: u64,
    safe: u64,
    sent: u64,
    files_total: u64,
    files_done: u64,
    /// Names of the files in flight, in the order they started.
    current: Vec<String>,
}

impl Snapshot {
    /// `[2/40] A002.mov +1  42% 1.2 GiB/2.8 GiB  1.1 GiB safe on server  38.2 MiB/s  ETA 42 s`
    fn line(&self, rate: Option<f64>) -> String {
        let pct = (self.position * 100).checked_div(self.total).unwrap_or(100);
        let mut line = String::new();
        if self.files_total > 1 {
            let n = (self.files_done + 1).min(self.files_total);
            line.push_str(&format!("[{n}/{}] ", self.files_total));
        }
        match self.current.as_slice() {
            [] => {}
            [one] => line.push_str(&format!("{one}  ")),
            [first, rest @ ..] => line.push_str(&format!("{first} +{}  ", rest.len())),
        }
        line.push_str(&format!(
            "{pct}% {}/{}  {} safe on server",
            human(self.position),
            human(self.total),
            human(self.safe)
        ));
        match rate {
            // No rate until there is one.
            Some(r) if r >= 1.0 => {
                let left = self.total.saturating_sub(self.position) as f64 / r;
                line.push_str(&format!(
                    "  {}/s  ETA {}",
                    human(r as u64),
                    duration(Duration::from_secs_f64(left.min(1e7)))
                ));
            }
            _ => line.push_str("  -- /s"),
        }
        line
    }
}

/// Send rate over the last few seconds, from samples of the bytes sent.
#[derive(Default)]
struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    const SPAN: Duration = Duration::from_secs(5);

    /// Records `sent` now; the rate over the span, once a second of sending is seen.
    fn sample(&mut self, sent: u64) -> Option<f64> {
        let now = Instant::now();
        self.samples.push_back((now, sent));
        while self.samples.len() > 2 && now - self.samples[0].0 > Self::SPAN {
            self.samples.pop_front();
        }
        let (t0, s0) = *self.samples.front()?;
        let dt = (now - t0).as_secs_f64();
        (dt >= 0.9 && sent > s0).then(|| (sent - s0) as f64 / dt)
    }
}

/// `42 s`, `3 min 5 s`, `2 h 07 min`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1} s", d.as_secs_f64()),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
    }
}

/// The line cut to `width` columns (one column per char: names are the only wide part).
fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Columns of the terminal on stderr (80 if unknown).
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a `winsize` and touches nothing else.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_counts_sent_and_safe_apart() {
        let snap = Snapshot {
            total: 100 << 20,
            position: 42 << 20,
            safe: 30 << 20,
            sent: 18 << 20,
            files_total: 3,
            files_done: 1,
            current: vec!["b.mov".into(), "c.mov".into()],
        };
        let line = snap.line(None);
        assert_eq!(
            line,
            "[2/3] b.mov +1  42% 42.0 MiB/100.0 MiB  30.0 MiB safe on server  -- /s"
        );
        let line = snap.line(Some((2 << 20) as f64));
        assert!(line.ends_with("2.0 MiB/s  ETA 29.0 s"), "{line}");
    }

    #[test]
    fn fitted_to_the_width() {
        assert_eq!(fit("abcdef", 10), "abcdef");
        assert_eq!(fit("abcdef", 4), "abc…");
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(duration(Duration::from_millis(2100)), "2.1 s");
        assert_eq!(duration(Duration::from_secs(185)), "3 min 5 s");
        assert_eq!(duration(Duration::from_secs(7620)), "2 h 07 min");
    }
}

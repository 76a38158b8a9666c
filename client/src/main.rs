//! `ferry`: parses arguments, sets up logging, runs one command, maps the outcome to an exit
//! code (0 complete, 1 interrupted but resumable, 2 usage, auth or permanent error).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry_client::{Client, ClientError, Options, Target};
use ferry_proto::units::human;
use ferry_proto::UploadSummary;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Resumable uploads of large files to a Ferry server over QUIC"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Server address, HOST:PORT.
    #[arg(
        long,
        env = "FERRY_SERVER",
        global = true,
        default_value = "127.0.0.1:4433"
    )]
    server: String,
    /// Bearer token from `ferryd token add`.
    #[arg(long, env = "FERRY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Pin the server certificate: sha256:HEX as printed by `ferryd fingerprint`. Without it
    /// the first certificate seen is trusted and recorded in the known-servers file.
    #[arg(long, env = "FERRY_FINGERPRINT", global = true, conflicts_with = "ca")]
    fingerprint: Option<String>,
    /// Trust a CA-signed server certificate: PEM file of the CA(s); the server's name (the HOST
    /// of --server) must match the certificate.
    #[arg(long, env = "FERRY_CA", global = true)]
    ca: Option<PathBuf>,
    /// Directory of the resume journal [default: $XDG_STATE_HOME/ferry or ~/.local/state/ferry].
    #[arg(long, env = "FERRY_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// Known-servers file for trust on first use [default: $XDG_CONFIG_HOME/ferry/known_servers].
    #[arg(long, env = "FERRY_KNOWN_SERVERS", global = true)]
    known_servers: Option<PathBuf>,
    /// After a connection loss, keep reconnecting this many seconds without progress.
    #[arg(long, default_value_t = 300, global = true)]
    reconnect_for: u64,
    /// Congestion controller for the upload: cubic, bbr or newreno.
    #[arg(long, global = true, default_value_t = ferry_proto::Congestion::default())]
    congestion: ferry_proto::Congestion,
    /// Seconds without any packet from the server before a connection counts as lost.
    #[arg(long, default_value_t = 15, global = true)]
    idle_timeout: u64,
    /// Seconds a connection attempt waits for the server's answer; a server never reached
    /// fails after one attempt.
    #[arg(long, default_value_t = 5, global = true)]
    connect_timeout: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Upload files; running the same command again resumes an interrupted upload.
    Upload {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        upload: UploadArgs,
    },
    /// Number the files of a folder, ask which to upload, upload it, repeat.
    Pick {
        dir: PathBuf,
        #[command(flatten)]
        upload: UploadArgs,
    },
    /// List this token's uploads on the server: those in progress and the last 20 completed.
    List {
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Every upload the server has on record, not only the last 20 completed.
        #[arg(long)]
        all: bool,
    },
    /// Show one upload, by id or by local file (via the resume journal); all unfinished ones
    /// without an argument.
    Status {
        target: Option<String>,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Discard an unfinished upload on the server, by id or by local file; the local resume
    /// record of the file is forgotten too.
    Abort { target: String },
}

#[derive(Args)]
struct UploadArgs {
    /// Description stored with the upload.
    #[arg(long, default_value = "")]
    desc: String,
    /// Chunk size of a new upload (e.g. 4MiB, 512k).
    #[arg(long, default_value = "4MiB", value_parser = ferry_client::rate::parse_size)]
    chunk_size: u64,
    /// Chunks in flight (sent, not yet acknowledged) at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    parallel: u16,
    /// Cap the upload rate, bytes per second (e.g. 10M).
    #[arg(long, value_parser = ferry_client::rate::parse_size)]
    limit_rate: Option<u64>,
    /// Print one JSON summary line per file on stdout instead of a progress bar.
    #[arg(long)]
    json: bool,
    /// In a folder, follow symbolic links (to files and folders) instead of leaving them out.
    #[arg(long)]
    follow_links: bool,
    /// When stderr is not a terminal, print a progress line every this many seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    progress_interval: u64,
}

fn main() -> ExitCode {
    // Fewer glibc heap arenas: the blocking pool's threads read 256 KiB pieces, and one arena
    // per thread kept freed pieces resident (the server measured -30 MiB RSS and less CPU).
    // SAFETY: called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail("cannot start", &ClientError::Local(e.to_string())),
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let g = &cli.global;
    let Some(token) = g.token.clone() else {
        return fail(
            "missing token",
            &ClientError::Usage("pass --token or set FERRY_TOKEN".into()),
        );
    };
    let fingerprint = match &g.fingerprint {
        None => None,
        Some(text) => match ferry_client::trust::parse_fingerprint(text) {
            Some(fp) => Some(fp),
            None => {
                return fail(
                    "bad --fingerprint",
                    &ClientError::Usage(format!("{text:?} is not sha256:<64 hex digits>")),
                )
            }
        },
    };
    let state_dir = g
        .state_dir
        .clone()
        .unwrap_or_else(|| default_dir(dirs::state_dir(), ".local/state").join("ferry"));
    let known_servers = g.known_servers.clone().unwrap_or_else(|| {
        default_dir(dirs::config_dir(), ".config")
            .join("ferry")
            .join("known_servers")
    });
    let target = Target {
        server: g.server.clone(),
        token,
        fingerprint,
        known_servers,
        idle_timeout: Duration::from_secs(g.idle_timeout.max(1)),
        congestion: g.congestion,
        ca: g.ca.clone(),
    };
    let mut opts = Options::new(target, state_dir);
    opts.reconnect_for = Duration::from_secs(g.reconnect_for);
    opts.connect_timeout = Duration::from_secs(g.connect_timeout.max(1));
    let code = match cli.command {
        Command::Upload { files, upload } => upload_files(opts, &files, &upload).await,
        Command::Pick { dir, upload } => pick(opts, &dir, &upload).await,
        Command::List { json, all } => with_client(opts, |c| Box::pin(list(c, json, all))).await,
        Command::Status { target, json } => {
            with_client(opts, |c| Box::pin(status(c, target, json))).await
        }
        Command::Abort { target } => with_client(opts, |c| Box::pin(abort(c, target))).await,
    };
    ExitCode::from(code)
}

type BoxFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), (String, ClientError)>> + 'a>>;

async fn with_client(opts: Options, f: impl for<'a> FnOnce(&'a mut Client) -> BoxFuture<'a>) -> u8 {
    let mut client = match Client::new(opts) {
        Ok(c) => c,
        Err(e) => return report("cannot start", &e),
    };
    let result = f(&mut client).await;
    client.close().await;
    match result {
        Ok(()) => 0,
        Err((what, e)) => report(&what, &e),
    }
}

fn apply(opts: &mut Options, args: &UploadArgs) {
    opts.chunk_size = args.chunk_size;
    opts.parallel = args.parallel.into();
    opts.limit_rate = args.limit_rate;
    opts.progress = !args.json;
    opts.progress_interval = Duration::from_secs(args.progress_interval);
}

async fn upload_files(mut opts: Options, files: &[PathBuf], args: &UploadArgs) -> u8 {
    apply(&mut opts, args);
    let mut client = match Client::new(opts) {
        Ok(c) => c,
        Err(e) => return report("cannot start", &e),
    };
    let job = match ferry_client::job::plan(files, args.follow_links) {
        Ok(job) => job,
        Err(e) => return report("cannot upload", &e),
    };
    for path in &job.left_out {
        eprintln!(
            "ferry: leaving out {} (not a regular file; --follow-links follows links)",
            path.display()
        );
    }
    let mut code = 0;
    let mut summary = Summary::default();
    let several = job.items.len() > 1;
    for item in &job.items {
        let (file, dir) = match item {
            ferry_client::job::Item::File { path, dir } => (path, dir),
            ferry_client::job::Item::EmptyDir { dir } => {
                if let Err(e) = client.mkdir(dir).await {
                    code = code.max(report(
                        &format!("cannot create folder {}", dir.join("/")),
                        &e,
                    ));
                    summary.failed += 1;
                }
                continue;
            }
        };
        match upload_one(&mut client, file, dir, args).await {
            Ok(report) => summary.add(&report),
            Err(ClientError::Interrupted) => {
                // A second Ctrl-C while closing exits at once.
                tokio::spawn(async {
                    let _ = tokio::signal::ctrl_c().await;
                    std::process::exit(130);
                });
                code = report("stopped", &ClientError::Interrupted);
                break;
            }
            Err(e) => {
                summary.failed += 1;
                if args.json {
                    let line = serde_json::json!({
                        "status": "failed",
                        "path": file.display().to_string(),
                        "error": e.to_string(),
                    });
                    println!("{line}");
                }
                code = code.max(report(&format!("upload of {} failed", file.display()), &e));
                if e.exit_code() == 1 {
                    break;
                }
            }
        }
    }
    if args.json && several {
        println!("{}", summary.json());
    }
    client.close().await;
    code
}

/// Totals of one `ferry upload` command, for its last `--json` line.
#[derive(Default)]
struct Summary {
    complete: u64,
    skipped: u64,
    failed: u64,
    bytes_sent: u64,
    bytes_skipped: u64,
}

impl Summary {
    fn add(&mut self, r: &ferry_client::upload::Report) {
        match r.status {
            "skipped" => self.skipped += 1,
            _ => self.complete += 1,
        }
        self.bytes_sent += r.bytes_sent;
        self.bytes_skipped += r.bytes_skipped;
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "status": "summary",
            "complete": self.complete,
            "skipped": self.skipped,
            "failed": self.failed,
            "bytes_sent": self.bytes_sent,
            "bytes_skipped": self.bytes_skipped,
        })
    }
}

async fn upload_one(
    client: &mut Client,
    file: &Path,
    dir: &[String],
    args: &UploadArgs,
) -> Result<ferry_client::upload::Report, ClientError> {
    let r = tokio::select! {
        r = client.upload_in(file, dir, &args.desc) => r?,
        _ = tokio::signal::ctrl_c() => return Err(ClientError::Interrupted),
    };
    if args.json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else if r.status == "skipped" {
        eprintln!(
            "ferry: {} is already on the server as {:?} (skipped, nothing sent)",
            file.display(),
            r.file_name
        );
    } else {
        let rate = r.bytes_sent as f64 / (r.elapsed_ms.max(1) as f64 / 1000.0) / (1 << 20) as f64;
        eprintln!(
            "ferry: {} uploaded as {:?}: {} bytes, sha256 {}, {:.1} MiB/s{}",
            file.display(),
            r.file_name,
            r.size,
            r.sha256,
            rate,
            if r.bytes_skipped > 0 {
                format!(", {} bytes were already on the server", r.bytes_skipped)
            } else {
                String::new()
            },
        );
    }
    Ok(r)
}

async fn pick(mut opts: Options, dir: &Path, args: &UploadArgs) -> u8 {
    apply(&mut opts, args);
    let mut client = match Client::new(opts) {
        Ok(c) => c,
        Err(e) => return report("cannot start", &e),
    };
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    // Bounded: one upload per line of input.
    let code = loop {
        let files = match list_dir(dir) {
            Ok(files) => files,
            Err(e) => break report(&format!("cannot list {}", dir.display()), &e),
        };
        if files.is_empty() {
            break report(
                "nothing to pick",
                &ClientError::Usage(format!("{} has no files", dir.display())),
            );
        }
        for (n, (path, size)) in files.iter().enumerate() {
            println!(
                "{:>3}  {:>12}  {}",
                n + 1,
                human(*size),
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            );
        }
        print!("Upload which file? [1-{}, q to quit]: ", files.len());
        let _ = std::io::stdout().flush();
        let Some(Ok(line)) = lines.next() else {
            println!();
            break 0;
        };
        let answer = line.trim();
        if answer.eq_ignore_ascii_case("q") {
            break 0;
        }
        let choice = match answer.parse::<usize>() {
            Ok(n) if (1..=files.len()).contains(&n) => n,
            Ok(n) => {
                eprintln!(
                    "ferry: {n} is out of range; enter a number from 1 to {} or q",
                    files.len()
                );
                continue;
            }
            Err(_) => {
                eprintln!(
                    "ferry: {answer:?} is not a number; enter a number from 1 to {} or q",
                    files.len()
                );
                continue;
            }
        };
        let path = &files[choice - 1].0;
        if let Err(e) = upload_one(&mut client, path, &[], args).await {
            let code = report(&format!("upload of {} failed", path.display()), &e);
            if code == 1 {
                break code;
            }
        }
    };
    client.close().await;
    code
}

/// Regular files of `dir`, sorted by name, with their sizes.
fn list_dir(dir: &Path) -> Result<Vec<(PathBuf, u64)>, ClientError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ClientError::Local(e.to_string()))?;
    let mut files: Vec<(PathBuf, u64)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| (e.path(), meta.len()))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Completed uploads `ferry list` shows without `--all`.
const RECENT_COMPLETE: usize = 20;

async fn list(client: &mut Client, json: bool, all: bool) -> Result<(), (String, ClientError)> {
    let mut uploads = client
        .list()
        .await
        .map_err(|e| ("list failed".to_owned(), e))?;
    if !all {
        let mut complete: Vec<&UploadSummary> =
            uploads.iter().filter(|u| u.state == "complete").collect();
        complete.sort_by_key(|u| std::cmp::Reverse(u.updated_at));
        let recent: std::collections::HashSet<String> = complete
            .iter()
            .take(RECENT_COMPLETE)
            .map(|u| u.upload_id.clone())
            .collect();
        uploads.retain(|u| u.state != "complete" || recent.contains(&u.upload_id));
    }
    print_uploads(&uploads, json);
    Ok(())
}

async fn status(
    client: &mut Client,
    target: Option<String>,
    json: bool,
) -> Result<(), (String, ClientError)> {
    let uploads = client
        .list()
        .await
        .map_err(|e| ("status failed".to_owned(), e))?;
    let wanted: Option<String> = match &target {
        None => None,
        Some(t) if Path::new(t).exists() => match client.journal_entry(Path::new(t)) {
            Some(entry) => Some(entry.upload_id),
            None => {
                println!(
                    "{t}: no upload of this file to {} on record here",
                    client.options().target.server
                );
                return Ok(());
            }
        },
        Some(t) => Some(t.clone()),
    };
    let shown: Vec<UploadSummary> = uploads
        .into_iter()
        .filter(|u| match &wanted {
            Some(id) => &u.upload_id == id,
            None => u.state != "complete",
        })
        .collect();
    match (&wanted, shown.is_empty()) {
        (Some(id), true) => {
            return Err((
                "status failed".into(),
                ClientError::Usage(format!("no upload {id} on the server")),
            ))
        }
        (None, true) if !json => println!("nothing in progress"),
        _ => print_uploads(&shown, json),
    }
    Ok(())
}

async fn abort(client: &mut Client, target: String) -> Result<(), (String, ClientError)> {
    let path = Path::new(&target);
    let upload_id = if path.exists() {
        match client.journal_entry(path) {
            Some(entry) if entry.complete.is_none() => entry.upload_id,
            Some(_) => {
                let e = ClientError::Usage(format!(
                    "{target} was uploaded completely; nothing to abort"
                ));
                return Err(("abort failed".into(), e));
            }
            None => {
                let e = ClientError::Usage(format!("no upload of {target} on record here"));
                return Err(("abort failed".into(), e));
            }
        }
    } else {
        target.clone()
    };
    match client.abort(&upload_id).await {
        Ok(()) => println!("aborted {upload_id}"),
        // Gone from the server already: only the local record was left to forget.
        Err(ClientError::Server {
            code: ferry_proto::ErrorCode::NotFound | ferry_proto::ErrorCode::Expired,
            ..
        }) if path.exists() => println!("{upload_id} is no longer on the server"),
        Err(e) => return Err((format!("abort of {upload_id} failed"), e)),
    }
    if path.exists() {
        client.forget(path);
    }
    Ok(())
}

fn print_uploads(uploads: &[UploadSummary], json: bool) {
    if json {
        for u in uploads {
            println!("{}", serde_json::to_string(u).unwrap_or_default());
        }
        return;
    }
    println!(
        "{:<32}  {:<9}  {:>6}  {:>10}  {:<16}  NAME",
        "ID", "STATE", "DONE", "SIZE", "UPDATED (UTC)"
    );
    for u in uploads {
        println!("{}", line(u));
    }
}

fn line(u: &UploadSummary) -> String {
    let pct = if u.size == 0 {
        100.0
    } else {
        u.durable_bytes as f64 * 100.0 / u.size as f64
    };
    let expiry = match u.expires_at {
        0 => String::new(),
        at => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!(
                "  (expires in {} h without progress)",
                at.saturating_sub(now).div_ceil(3600)
            )
        }
    };
    format!(
        "{}  {:<9}  {:>5.1}%  {:>10}  {:<16}  {}{expiry}",
        u.upload_id,
        u.state,
        pct,
        human(u.size),
        utc(u.updated_at),
        u.file_name
    )
}

/// `YYYY-MM-DD HH:MM` of a Unix time, UTC (days to civil date: Howard Hinnant's algorithm).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (hour, minute) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}")
}

fn default_dir(base: Option<PathBuf>, fallback: &str) -> PathBuf {
    base.or_else(|| dirs::home_dir().map(|h| h.join(fallback)))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Prints `ferry: <what>: <cause>` once and returns the exit code.
fn report(what: &str, e: &ClientError) -> u8 {
    eprintln!("ferry: {what}: {e}");
    e.exit_code()
}

fn fail(what: &str, e: &ClientError) -> ExitCode {
    ExitCode::from(report(what, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(super::utc(1_795_984_200), "2026-11-29 20:30");
    }
}

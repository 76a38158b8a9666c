//! `ferry`: parses arguments, sets up logging, runs one command, maps the outcome to an exit
//! code (0 complete, 1 interrupted but resumable, 2 usage, auth or permanent error).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;
use std::time::Instant;

use clap::{Args, CommandFactory, Parser, Subcommand};
use ferry_client::config::FileConfig;
use ferry_client::job::{Item, Outcome};
use ferry_client::progress::{self, Tracker, Verbosity};
use ferry_client::{Client, ClientError, Options, Report, Shared, Target};
use ferry_proto::units::{human, parse_size};
use ferry_proto::{Frame, UploadSummary};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Resumable uploads of large files to a Ferry server over QUIC",
    after_help = "Settings also come from FERRY_* environment variables and the config file \
                  (~/.config/ferry/config.toml); a flag beats the environment, which beats the file."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Server address, HOST:PORT [default: 127.0.0.1:4433].
    #[arg(long, env = "FERRY_SERVER", global = true)]
    server: Option<String>,
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
    /// Config file [default: $XDG_CONFIG_HOME/ferry/config.toml, if it exists].
    #[arg(long, env = "FERRY_CONFIG", global = true)]
    config: Option<PathBuf>,
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
    /// fails after one attempt [default: 5].
    #[arg(long, global = true)]
    connect_timeout: Option<u64>,
    /// Print errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Also print connection events.
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Upload files and folders; running the same command again resumes what was interrupted
    /// and skips what is complete.
    Upload {
        /// Files and folders to upload.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        upload: UploadArgs,
    },
    /// Number the files of a folder, ask which to upload (e.g. 1,3,5-7 or a), upload them,
    /// repeat. Files already on the server are marked.
    Pick {
        dir: PathBuf,
        #[command(flatten)]
        upload: UploadArgs,
    },
    /// List this token's uploads on the server: those in progress and the last 20 completed.
    List {
        /// Print one JSON object per line.
        #[arg(short, long)]
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
        #[arg(short, long)]
        json: bool,
    },
    /// Discard an unfinished upload on the server, by id or by local file; the local resume
    /// record of the file is forgotten too.
    Abort { target: String },
    /// Check the way to the server: handshake time, round trips, server version and limits,
    /// and whether the token is accepted.
    Ping {
        /// Round trips to measure.
        #[arg(short = 'c', long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
        /// Print one JSON object instead.
        #[arg(short, long)]
        json: bool,
    },
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (ferry.1, ferry-upload.1, …) into a folder.
    Man { dir: PathBuf },
}

#[derive(Args)]
struct UploadArgs {
    /// Description stored with the upload.
    #[arg(long, default_value = "")]
    desc: String,
    /// Chunk size of a new upload, e.g. 4MiB or 512k; k, M, G are powers of 1024 (4MB = 4MiB)
    /// [default: 4MiB].
    #[arg(long, value_parser = ferry_client::rate::parse_size)]
    chunk_size: Option<u64>,
    /// Chunk streams sending at once, all files together [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    parallel: Option<u16>,
    /// Files in flight at once, each on its own connection, sharing the --parallel streams
    /// [default: 4].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=16))]
    files: Option<u16>,
    /// Cap the upload rate, bytes per second (e.g. 10M).
    #[arg(long, value_parser = ferry_client::rate::parse_size)]
    limit_rate: Option<u64>,
    /// Print one JSON line per file and a summary line on stdout instead of progress.
    #[arg(short, long)]
    json: bool,
    /// In a folder, follow symbolic links (to files and folders) instead of leaving them out.
    #[arg(long)]
    follow_links: bool,
    /// When stderr is not a terminal, print a progress line every this many seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    progress_interval: u64,
    /// Hash each new file before sending anything and, if the server holds the same content
    /// for this token, publish it by link without sending it; otherwise upload it, reusing
    /// that digest (the hash pass then comes before the upload instead of beside it).
    #[arg(long)]
    dedup: bool,
    /// When a file of the same name exists on the server: rename (publish as "name (1)"),
    /// skip, or fail [default: rename].
    #[arg(long)]
    on_exists: Option<ferry_proto::OnExists>,
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
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "ferry", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man { dir } => {
            return match clap_mangen::generate_to(Cli::command(), dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(
                    "cannot write the manual pages",
                    &ClientError::local(dir.display(), e),
                ),
            };
        }
        _ => {}
    }
    let default_filter = if cli.global.verbose { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail("cannot start", &ClientError::Local(e.to_string())),
    };
    runtime.block_on(run(cli))
}

/// Settings after flags, environment and config file are merged.
struct Settings {
    opts: Options,
    files: usize,
    verbosity: Verbosity,
}

fn settings(g: &Global, upload: Option<&UploadArgs>) -> Result<Settings, ClientError> {
    let (config_path, required) = match &g.config {
        Some(path) => (path.clone(), true),
        None => (config_dir().join("config.toml"), false),
    };
    let file = FileConfig::load(&config_path, required)?;
    let token = g.token.clone().or(file.token).ok_or_else(|| {
        ClientError::Usage(
            "pass --token, set FERRY_TOKEN or put token = \"…\" in the config file".into(),
        )
    })?;
    let fingerprint = match g.fingerprint.clone().or(file.fingerprint) {
        None => None,
        Some(text) => Some(
            ferry_client::trust::parse_fingerprint(&text).ok_or_else(|| {
                ClientError::Usage(format!(
                    "bad --fingerprint: {text:?} is not sha256:<64 hex digits>"
                ))
            })?,
        ),
    };
    let state_dir = g
        .state_dir
        .clone()
        .unwrap_or_else(|| default_dir(dirs::state_dir(), ".local/state").join("ferry"));
    let known_servers = g
        .known_servers
        .clone()
        .unwrap_or_else(|| config_dir().join("known_servers"));
    let target = Target {
        server: g
            .server
            .clone()
            .or(file.server)
            .unwrap_or_else(|| "127.0.0.1:4433".into()),
        token,
        fingerprint,
        known_servers,
        idle_timeout: Duration::from_secs(g.idle_timeout.max(1)),
        congestion: g.congestion,
        ca: g.ca.clone().or(file.ca),
    };
    let mut opts = Options::new(target, state_dir);
    opts.reconnect_for = Duration::from_secs(g.reconnect_for);
    let connect_timeout = g.connect_timeout.or(file.connect_timeout).unwrap_or(5);
    opts.connect_timeout = Duration::from_secs(connect_timeout.max(1));
    let size = |v: &Option<String>| v.as_deref().map(|v| parse_size(v).unwrap_or(0));
    let mut files = 4;
    if let Some(a) = upload {
        opts.chunk_size = a.chunk_size.or(size(&file.chunk_size)).unwrap_or(4 << 20);
        opts.parallel = a.parallel.or(file.parallel).unwrap_or(8).into();
        opts.limit_rate = a.limit_rate.or(size(&file.limit_rate));
        opts.on_exists = match a.on_exists {
            Some(v) => v,
            None => file
                .on_exists
                .as_deref()
                .unwrap_or("rename")
                .parse()
                .unwrap_or_default(),
        };
        opts.dedup = a.dedup;
        files = a.files.or(file.files).unwrap_or(4).into();
    }
    let verbosity = match (g.quiet, g.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    };
    Ok(Settings {
        opts,
        files,
        verbosity,
    })
}

async fn run(cli: Cli) -> ExitCode {
    let upload = match &cli.command {
        Command::Upload { upload, .. } | Command::Pick { upload, .. } => Some(upload),
        _ => None,
    };
    let Settings {
        opts,
        files,
        verbosity,
    } = match settings(&cli.global, upload) {
        Ok(s) => s,
        Err(e) => return fail("cannot start", &e),
    };
    let tracker = Arc::new(Tracker::new(verbosity));
    let code = match cli.command {
        Command::Upload { paths, upload } => {
            upload_files(opts, &paths, &upload, files, tracker).await
        }
        Command::Pick { dir, upload } => pick(opts, &dir, &upload, files, tracker).await,
        Command::List { json, all } => {
            with_client(opts, tracker, |c| Box::pin(list(c, json, all))).await
        }
        Command::Status { target, json } => {
            with_client(opts, tracker, |c| Box::pin(status(c, target, json))).await
        }
        Command::Abort { target } => {
            with_client(opts, tracker, |c| Box::pin(abort(c, target))).await
        }
        Command::Ping { count, json } => ping(opts, count, json).await,
        Command::Completions { .. } | Command::Man { .. } => 0,
    };
    ExitCode::from(code)
}

type BoxFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), (String, ClientError)>> + 'a>>;

async fn with_client(
    opts: Options,
    tracker: Arc<Tracker>,
    f: impl for<'a> FnOnce(&'a mut Client) -> BoxFuture<'a>,
) -> u8 {
    let endpoint = match Client::endpoint_for(&opts) {
        Ok(e) => e,
        Err(e) => return report("cannot start", &e),
    };
    let shared = Shared {
        tracker,
        ..Shared::default()
    };
    let mut client = Client::with(opts, endpoint, shared);
    let result = f(&mut client).await;
    client.close().await;
    match result {
        Ok(()) => 0,
        Err((what, e)) => report(&what, &e),
    }
}

async fn upload_files(
    opts: Options,
    paths: &[PathBuf],
    args: &UploadArgs,
    files: usize,
    tracker: Arc<Tracker>,
) -> u8 {
    let job = match ferry_client::job::plan(paths, args.follow_links) {
        Ok(job) => job,
        Err(e) => return report("cannot upload", &e),
    };
    for path in &job.left_out {
        tracker.note(&format!(
            "ferry: leaving out {} (not a regular file; --follow-links follows links)",
            path.display()
        ));
    }
    run_job(opts, job.items, args, files, tracker).await
}

/// Runs the items as one job: progress, a line per file, Ctrl-C, the summary. Returns the exit
/// code: the worst of the files' (0 when every one is on the server).
async fn run_job(
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
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = cancel_tx.send(true);
            // A second Ctrl-C while closing exits at once.
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
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
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
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
                    println!("{line}");
                }
                tracker.error(&format!("ferry: {what}: {e}"));
                code = code.max(e.exit_code());
            }
        },
    )
    .await;
    drop(_showing);
    if let Err(e) = outcome {
        code = code.max(report(
            if matches!(e, ClientError::Interrupted) {
                "stopped"
            } else {
                "cannot upload"
            },
            &e,
        ));
    }
    summary.elapsed = started.elapsed();
    // Files stopped midway sent bytes too.
    summary.bytes_sent = summary.bytes_sent.max(tracker.sent());
    if args.json && several {
        println!("{}", summary.json());
    } else if several {
        tracker.note(&summary.human());
    }
    code
}

/// `video.mp4: 40.0 MiB in 2.1 s (19.0 MiB/s), 24.0 MiB were already on the server`
fn human_line(item: &Item, r: &Report) -> String {
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
        "skipped" => format!(
            "ferry: {shown}: already on the server{}, skipped ({})",
            published(&r.file_name),
            r.reason.as_deref().unwrap_or("uploaded by an earlier run"),
        ),
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
struct Summary {
    /// Files in the job.
    files: u64,
    complete: u64,
    skipped: u64,
    deduplicated: u64,
    failed: u64,
    bytes_sent: u64,
    bytes_skipped: u64,
    elapsed: Duration,
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

/// `ferry ping`: connects (timing the handshake and login), then measures `count` round trips
/// with `ping` requests on the control stream.
async fn ping(opts: Options, count: u32, json: bool) -> u8 {
    let server = opts.target.server.clone();
    let endpoint = match Client::endpoint_for(&opts) {
        Ok(e) => e,
        Err(e) => return report("cannot start", &e),
    };
    let started = Instant::now();
    let conn = match endpoint.connect(&opts.target).await {
        Ok(c) => c,
        Err(e) => return report(&format!("ping {server}"), &e),
    };
    let handshake = started.elapsed();
    let mut rtts = Vec::new();
    for _ in 0..count {
        let sent = Instant::now();
        match conn.request(|req| Frame::Ping { req }).await {
            Ok(Frame::Pong { .. }) => rtts.push(sent.elapsed()),
            Ok(other) => {
                let e = ClientError::Protocol(format!("expected pong, got {}", other.kind()));
                return report(&format!("ping {server}"), &e);
            }
            Err(e) => return report(&format!("ping {server}"), &e),
        }
        if rtts.len() < count as usize {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    conn.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let min = rtts.iter().min().copied().unwrap_or_default();
    let max = rtts.iter().max().copied().unwrap_or_default();
    let avg = rtts.iter().sum::<Duration>() / rtts.len().max(1) as u32;
    let l = conn.limits;
    if json {
        let line = serde_json::json!({
            "server": server,
            "software": conn.server,
            "protocol": ferry_proto::PROTOCOL_VERSION,
            "owner": conn.owner,
            "token": "accepted",
            "handshake_ms": ms(handshake),
            "rtt_ms": {"min": ms(min), "avg": ms(avg), "max": ms(max), "count": rtts.len()},
            "quic_rtt_ms": ms(conn.quic().rtt()),
            "limits": l,
        });
        println!("{line}");
        return 0;
    }
    println!(
        "{server}: {} (protocol {}), token accepted for {:?}",
        if conn.server.is_empty() {
            "ferryd"
        } else {
            &conn.server
        },
        ferry_proto::PROTOCOL_VERSION,
        conn.owner
    );
    println!("connect + TLS + login: {:.1} ms", ms(handshake));
    println!(
        "round trips: {} probes, min {:.2} / avg {:.2} / max {:.2} ms",
        rtts.len(),
        ms(min),
        ms(avg),
        ms(max)
    );
    let or_none = |v: u64, f: &dyn Fn(u64) -> String| {
        if v == 0 {
            "none".to_owned()
        } else {
            f(v)
        }
    };
    println!(
        "limits: files up to {}, chunks {} to {}, {} chunk streams, {} uploads in progress, quota {}, expiry {}",
        human(l.max_file_size),
        human(l.min_chunk_size),
        human(l.max_chunk_size),
        l.max_streams,
        or_none(l.max_uploads, &|v| v.to_string()),
        or_none(l.quota, &human),
        or_none(l.expire_after, &|v| progress::duration(Duration::from_secs(v))),
    );
    0
}

async fn pick(
    opts: Options,
    dir: &Path,
    args: &UploadArgs,
    files: usize,
    tracker: Arc<Tracker>,
) -> u8 {
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
        let local = match list_dir(dir) {
            Ok(files) => files,
            Err(e) => break worst.max(report(&format!("cannot list {}", dir.display()), &e)),
        };
        if local.is_empty() {
            let e = ClientError::Usage(format!("{} has no files", dir.display()));
            break worst.max(report("nothing to pick", &e));
        }
        // Marked: a completed upload of this token with the same name and size.
        let on_server: std::collections::HashSet<(String, u64)> = match lister.list().await {
            Ok(uploads) => uploads
                .into_iter()
                .filter(|u| u.state == "complete")
                .map(|u| (u.file_name, u.size))
                .collect(),
            Err(e) => break worst.max(report("cannot list the server's uploads", &e)),
        };
        let name_of = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        for (n, (path, size)) in local.iter().enumerate() {
            let mark = if on_server.contains(&(name_of(path), *size)) {
                "  (on the server)"
            } else {
                ""
            };
            eprintln!(
                "{:>3}  {:>12}  {}{mark}",
                n + 1,
                human(*size),
                name_of(path)
            );
        }
        eprint!(
            "Upload which? [e.g. 1,3,5-7; a for all; q to quit; 1-{}]: ",
            local.len()
        );
        let _ = std::io::stderr().flush();
        let Some(Ok(line)) = lines.next() else {
            eprintln!();
            break worst;
        };
        let answer = line.trim();
        if answer.eq_ignore_ascii_case("q") {
            break worst;
        }
        let chosen = match parse_selection(answer, local.len()) {
            Ok(chosen) => chosen,
            Err(why) => {
                eprintln!("ferry: {why}");
                continue;
            }
        };
        let items = chosen
            .into_iter()
            .map(|n| Item::File {
                path: local[n - 1].0.clone(),
                dir: Vec::new(),
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

/// The numbers of `1,3,5-7` (or every one for `a`), each in `1..=count`, in order, once.
fn parse_selection(answer: &str, count: usize) -> Result<Vec<usize>, String> {
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

fn config_dir() -> PathBuf {
    default_dir(dirs::config_dir(), ".config").join("ferry")
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

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

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

//! `ferryd`: parses arguments (and the config file), sets up logging, calls the library.

mod config;

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferryd",
    version,
    about = "Ferry server: resumable chunked uploads over QUIC",
    args_override_self = true,
    disable_help_subcommand = true,
    after_help = "Every `serve` option can also be set in the config file (--config) under its \
                  long name, or in a FERRYD_* environment variable; a flag beats the \
                  environment, which beats the file."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the data directory is, for every subcommand: `--data`, else `FERRYD_DATA`, else the
/// config file's `data`, else `./ferry-data`.
#[derive(Args, Clone)]
struct DataArgs {
    /// Data directory: database, staging files, published files, certificate, tokens.
    #[arg(
        long,
        env = "FERRYD_DATA",
        default_value = "./ferry-data",
        global = true
    )]
    data: PathBuf,
    /// Config file (TOML, keys named like the long options of `ferryd serve`).
    #[arg(long, env = "FERRYD_CONFIG", global = true)]
    config: Option<PathBuf>,
}

/// How a command reaches a running server's admin listener (also from the config file).
#[derive(Args, Clone)]
struct AdminArgs {
    /// The server's admin listener (`serve --admin-listen`).
    #[arg(long, env = "FERRYD_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// The admin listener's token, if it has one.
    #[arg(long, env = "FERRYD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

impl AdminArgs {
    /// One request to the admin listener; the body of its 200 answer.
    fn call(&self, method: &str, path: &str, body: &str) -> Result<String> {
        let Some(addr) = self.admin_listen else {
            anyhow::bail!(
                "no admin listener given: pass --admin-listen ADDR (as the server's), set \
                 FERRYD_ADMIN_LISTEN, or --config the server's file"
            );
        };
        http(addr, method, path, self.admin_token.as_deref(), body)
    }
}

#[derive(Args, Clone)]
struct ServeArgs {
    #[command(flatten)]
    place: DataArgs,
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:4433", env = "FERRYD_LISTEN")]
    listen: SocketAddr,
    /// Close a connection silent this long (e.g. 30s).
    #[arg(long, default_value = "30s", env = "FERRYD_IDLE_TIMEOUT", value_parser = duration)]
    idle_timeout: Duration,
    /// Free disk space kept for the database (e.g. 64M): uploads that would eat into it are
    /// refused, and commits pause while free space is below it.
    #[arg(long, default_value = "64M", env = "FERRYD_MIN_FREE_SPACE", value_parser = ferry_proto::units::parse_size)]
    min_free_space: u64,
    /// Remove unfinished uploads that made no progress for this long (e.g. 7d, 12h; a unit is
    /// required; 0: never).
    #[arg(long, default_value = "7d", env = "FERRYD_EXPIRE_AFTER", value_parser = duration)]
    expire_after: Duration,
    /// Cut off a stream that stalls inside a frame or a chunk, or a client that leaves the
    /// server's replies unread, after this long (e.g. 30s).
    #[arg(long, default_value = "30s", env = "FERRYD_STREAM_TIMEOUT", value_parser = duration)]
    stream_timeout: Duration,
    /// After an unclean stop, re-verify staged chunks in the background at most this fast
    /// (bytes per second, e.g. 200M; 0: no limit). The server listens at once regardless.
    #[arg(long, default_value = "200M", env = "FERRYD_VERIFY_RATE", value_parser = parse_rate)]
    verify_rate: u64,
    /// Uploads in progress per token (0: no limit).
    #[arg(long, default_value_t = 16, env = "FERRYD_MAX_UPLOADS")]
    max_uploads: u64,
    /// Stored plus staged bytes per token, e.g. 500G (0: no quota).
    #[arg(long, default_value = "0", env = "FERRYD_QUOTA", value_parser = parse_rate)]
    quota: u64,
    /// Logged-in connections at once, in total.
    #[arg(long, default_value_t = 256, env = "FERRYD_MAX_CONNECTIONS")]
    max_connections: usize,
    /// Logged-in connections at once from one client IP address (`ferry upload` opens up to
    /// --files connections, 4 by default).
    #[arg(long, default_value_t = 16, env = "FERRYD_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: usize,
    /// Connections still logging in (handshake and hello), in total; when full, the oldest
    /// is dropped. A budget apart, so they never take logged-in connections' places.
    #[arg(long, default_value_t = 64, env = "FERRYD_MAX_PENDING_LOGINS")]
    max_pending_logins: usize,
    /// Connections still logging in from one client IP address.
    #[arg(long, default_value_t = 8, env = "FERRYD_MAX_PENDING_LOGINS_PER_IP")]
    max_pending_logins_per_ip: usize,
    /// Congestion controller: cubic, bbr or newreno.
    #[arg(long, default_value_t = ferry_proto::Congestion::default(), env = "FERRYD_CONGESTION")]
    congestion: ferry_proto::Congestion,
    /// Let `ferry upload --dedup` publish a file by linking to another token's file of the
    /// same content. Off by default: a match tells the client that someone has that content.
    #[arg(long, env = "FERRYD_DEDUP_ACROSS_OWNERS")]
    dedup_across_owners: bool,
    /// PEM certificate chain to present instead of the generated one (needs --key).
    #[arg(long, requires = "key", env = "FERRYD_CERT")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert", env = "FERRYD_KEY")]
    key: Option<PathBuf>,
    /// Serve health, metrics and uploads over HTTP on this address (e.g. 127.0.0.1:9433);
    /// off when unset. Keep it on loopback or a management network.
    #[arg(long, env = "FERRYD_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Bearer token the admin listener requires for /metrics and /uploads (/healthz stays
    /// open).
    #[arg(long, env = "FERRYD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Command run by `/bin/sh -c` after each upload is published, with FERRY_UPLOAD_ID,
    /// FERRY_OWNER, FERRY_PATH, FERRY_NAME, FERRY_SIZE, FERRY_SHA256, FERRY_DESC. Queued
    /// durably: a crash before it ran runs it after the restart (at least once).
    #[arg(long, env = "FERRYD_ON_COMPLETE")]
    on_complete: Option<String>,
    /// Command run before each upload is created, with FERRY_OWNER, FERRY_NAME, FERRY_DIR,
    /// FERRY_SIZE, FERRY_DESC; a non-zero exit refuses the upload, its first stdout line the
    /// message the client shows. At most 30 s.
    #[arg(long, env = "FERRYD_ON_CREATE")]
    on_create: Option<String>,
    /// --on-complete runs at once, at most.
    #[arg(long, default_value_t = 2, env = "FERRYD_HOOK_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=64))]
    hook_concurrency: u16,
    /// An --on-complete run still going after this long is killed (e.g. 5m).
    #[arg(long, default_value = "5m", env = "FERRYD_HOOK_TIMEOUT", value_parser = duration)]
    hook_timeout: Duration,
    /// Log filter, as RUST_LOG would give it (e.g. `debug,quinn=warn`); RUST_LOG, when set,
    /// wins. A reload (SIGHUP) applies a changed value.
    #[arg(
        long,
        default_value = "info,quinn=warn,sled=warn",
        env = "FERRYD_LOG_LEVEL"
    )]
    log_level: String,
    /// Log format on stderr: text (coloured only on a terminal; NO_COLOR turns colour off)
    /// or json (one object per line).
    #[arg(long, default_value = "text", env = "FERRYD_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print the effective configuration (config file, environment and flags merged) and
    /// exit: 0 if the server would start with it, 2 if not.
    CheckConfig(Box<ServeArgs>),
    /// Re-hash every staged durable chunk against its digest, with the server stopped, and
    /// forget those that no longer match (they are re-sent). Prints what it found.
    Verify {
        #[command(flatten)]
        place: DataArgs,
    },
    /// Print the SHA-256 fingerprint of the server's certificate, for clients to pin: the
    /// generated one in DATA/tls, or --cert's.
    Fingerprint {
        #[command(flatten)]
        place: DataArgs,
        /// The PEM certificate the server presents (as `serve --cert`).
        #[arg(long, env = "FERRYD_CERT")]
        cert: Option<PathBuf>,
    },
    /// Manage bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        place: DataArgs,
    },
    /// List the uploads in progress (every owner) from a running server's admin listener.
    Uploads {
        #[command(flatten)]
        place: DataArgs,
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the JSON array as the server sends it.
        #[arg(long)]
        json: bool,
    },
    /// Set the notice every connected client is shown (and new ones, in welcome) through a
    /// running server's admin listener; --clear removes it.
    Notice {
        /// The text (at most 1 024 bytes).
        #[arg(required_unless_present = "clear", conflicts_with = "clear")]
        text: Option<String>,
        /// Remove the notice.
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        place: DataArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Write the manual pages (ferryd.1, ferryd-serve.1, …) into a folder.
    Man { dir: PathBuf },
    /// Print help for ferryd or one of its commands.
    Help {
        /// The command to explain.
        command: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for NAME and print it (only its hash is stored).
    Add {
        name: String,
        /// Create the data directory if it holds no server state yet (a new installation).
        #[arg(long)]
        init: bool,
    },
    /// List token names.
    List,
    /// Remove NAME's token.
    Revoke { name: String },
}

/// Prints on stderr, ignoring a closed stderr (a service whose log pipe went away must not
/// panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    // glibc gives every thread that allocates its own heap arena; the blocking pool's threads
    // each hash and write 256 KiB buffers, and per-thread arenas kept tens of MiB of freed
    // buffers resident. Two arenas are plenty for this workload.
    // SAFETY: called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = match parse() {
        Ok(cli) => cli,
        Err(Parse::Clap(e)) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
        Err(Parse::Config(e)) => {
            say!("ferryd: {e}");
            return ExitCode::from(2);
        }
    };
    let (json, level) = match &cli.command {
        Command::Serve(a) => (a.log_format == "json", a.log_level.as_str()),
        _ => (false, "info,quinn=warn,sled=warn"),
    };
    let relog = match init_logging(json, level) {
        Ok(relog) => relog,
        Err(e) => {
            say!("ferryd: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cli, relog) {
        Ok(code) => code,
        Err(e) => {
            say!("ferryd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Parse {
    Clap(clap::Error),
    Config(config::ConfigError),
}

/// The command line with the config file's settings merged in: the file's flags go right
/// after the subcommand's name, before the command line's own, so that those win.
fn parse() -> Result<Cli, Parse> {
    let raw: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::try_parse_from(&raw).map_err(Parse::Clap)?;
    let place = match &cli.command {
        Command::Serve(a) | Command::CheckConfig(a) => &a.place,
        Command::Verify { place }
        | Command::Fingerprint { place, .. }
        | Command::Token { place, .. }
        | Command::Uploads { place, .. }
        | Command::Notice { place, .. } => place,
        Command::Help { .. } | Command::Man { .. } => return Ok(cli),
    };
    let Some(file) = place.config.clone() else {
        return Ok(cli);
    };
    let root = Cli::command();
    let serve = root
        .find_subcommand("serve")
        .expect("serve is a subcommand");
    let flags = config::flags_from_file(&file, serve).map_err(Parse::Config)?;
    let (name, sub) = match &cli.command {
        Command::Serve(_) => ("serve", serve.clone()),
        Command::CheckConfig(_) => ("check-config", serve.clone()),
        Command::Verify { .. } => (
            "verify",
            root.find_subcommand("verify").expect("verify").clone(),
        ),
        Command::Fingerprint { .. } => (
            "fingerprint",
            root.find_subcommand("fingerprint")
                .expect("fingerprint")
                .clone(),
        ),
        Command::Token { .. } => (
            "token",
            root.find_subcommand("token").expect("token").clone(),
        ),
        Command::Uploads { .. } => (
            "uploads",
            root.find_subcommand("uploads").expect("uploads").clone(),
        ),
        Command::Notice { .. } => (
            "notice",
            root.find_subcommand("notice").expect("notice").clone(),
        ),
        Command::Help { .. } | Command::Man { .. } => unreachable!("returned above"),
    };
    // Other subcommands take only the keys they have (data, cert): the rest is serve's.
    let flags: Vec<OsString> = flags
        .into_iter()
        .filter(|flag| {
            let text = flag.to_string_lossy();
            let long = text
                .trim_start_matches("--")
                .split('=')
                .next()
                .unwrap_or("");
            sub.get_arguments().any(|a| a.get_long() == Some(long))
        })
        .collect();
    // A bad value in the file is reported as the file's, not as a command-line error.
    let alone: Vec<OsString> = ["ferryd".into(), name.into()]
        .into_iter()
        .chain(flags.iter().cloned())
        .collect();
    if name != "token" {
        if let Err(e) = Cli::try_parse_from(&alone) {
            if e.use_stderr() {
                return Err(Parse::Config(config::ConfigError {
                    file: file.display().to_string(),
                    message: e
                        .render()
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim_start_matches("error: ")
                        .to_owned(),
                }));
            }
        }
    }
    let at = raw
        .iter()
        .position(|a| a == name)
        .expect("the subcommand was parsed from these arguments");
    let merged: Vec<OsString> = raw[..=at]
        .iter()
        .cloned()
        .chain(flags)
        .chain(raw[at + 1..].iter().cloned())
        .collect();
    Cli::try_parse_from(&merged).map_err(Parse::Clap)
}

/// Sets a new log filter (a reload's `log-level`).
type Relog = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;

/// Logs on stderr: text, coloured only when stderr is a terminal and `NO_COLOR` is unset, or
/// JSON lines. The filter is `RUST_LOG` if set, else `level` (`--log-level`); an invalid one is
/// an error, not silently ignored. Returns how to change the filter later (none under
/// `RUST_LOG`, which a running process cannot see change).
fn init_logging(json: bool, level: &str) -> Result<Relog> {
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var("RUST_LOG").ok();
    let filter = match &from_env {
        Some(text) => EnvFilter::try_new(text)
            .map_err(|e| anyhow::anyhow!("invalid RUST_LOG {text:?}: {e}"))?,
        None => EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("invalid --log-level {level:?}: {e}"))?,
    };
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // A failed write of a log line is dropped: tracing-subscriber's own report of it goes
    // through `eprintln!`, which panics when stderr is a closed pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .log_internal_errors(false);
    let set: Relog = if json {
        let builder = builder.json().with_filter_reloading();
        let handle = builder.reload_handle();
        builder.init();
        Box::new(move |level| {
            let filter = EnvFilter::try_new(level)?;
            Ok(handle.reload(filter)?)
        })
    } else {
        let builder = builder.with_filter_reloading();
        let handle = builder.reload_handle();
        builder.init();
        Box::new(move |level| {
            let filter = EnvFilter::try_new(level)?;
            Ok(handle.reload(filter)?)
        })
    };
    if from_env.is_some() {
        return Ok(Box::new(|_| {
            tracing::info!("RUST_LOG is set: the log filter stays as it was");
            Ok(())
        }));
    }
    Ok(set)
}

impl ServeArgs {
    fn config(&self) -> ferry_server::Config {
        let mut config = ferry_server::Config::new(self.place.data.clone(), self.listen);
        config.idle_timeout = self.idle_timeout.max(Duration::from_secs(1));
        config.cert = self.cert.clone().zip(self.key.clone());
        config.min_free_space = self.min_free_space;
        config.congestion = self.congestion;
        config.expire_after = self.expire_after;
        config.stream_timeout = self.stream_timeout.max(Duration::from_secs(1));
        config.verify_rate = self.verify_rate;
        config.max_uploads_per_owner = self.max_uploads;
        config.quota_per_owner = self.quota;
        config.max_connections = self.max_connections.max(1);
        config.max_connections_per_ip = self.max_connections_per_ip.max(1);
        config.max_pending_logins = self.max_pending_logins.max(1);
        config.max_pending_logins_per_ip = self.max_pending_logins_per_ip.max(1);
        config.dedup_across_owners = self.dedup_across_owners;
        config.admin_listen = self.admin_listen;
        config.admin_token = self.admin_token.clone();
        config.on_complete = self.on_complete.clone();
        config.on_create = self.on_create.clone();
        config.hook_concurrency = self.hook_concurrency.into();
        config.hook_timeout = self.hook_timeout.max(Duration::from_secs(1));
        config
    }

    /// The effective settings as config-file lines (`check-config`).
    fn effective(&self) -> String {
        let path = |p: &Option<PathBuf>| match p {
            Some(p) => format!("{:?}", p.display().to_string()),
            None => "\"\"  # none".to_owned(),
        };
        let secs = |d: Duration| format!("\"{}s\"", d.as_secs());
        let lines = [
            format!("data = {:?}", self.place.data.display().to_string()),
            format!("listen = \"{}\"", self.listen),
            format!("idle-timeout = {}", secs(self.idle_timeout)),
            format!("min-free-space = {}", self.min_free_space),
            format!("expire-after = {}", secs(self.expire_after)),
            format!("stream-timeout = {}", secs(self.stream_timeout)),
            format!("verify-rate = {}", self.verify_rate),
            format!("max-uploads = {}", self.max_uploads),
            format!("quota = {}", self.quota),
            format!("max-connections = {}", self.max_connections),
            format!("max-connections-per-ip = {}", self.max_connections_per_ip),
            format!("max-pending-logins = {}", self.max_pending_logins),
            format!(
                "max-pending-logins-per-ip = {}",
                self.max_pending_logins_per_ip
            ),
            format!("congestion = \"{}\"", self.congestion),
            format!("dedup-across-owners = {}", self.dedup_across_owners),
            format!("cert = {}", path(&self.cert)),
            format!("key = {}", path(&self.key)),
            format!(
                "admin-listen = {}",
                self.admin_listen
                    .map_or("\"\"  # off".to_owned(), |a| format!("\"{a}\""))
            ),
            format!(
                "admin-token = {}",
                if self.admin_token.is_some() {
                    "\"…\"  # set"
                } else {
                    "\"\"  # none"
                }
            ),
            format!(
                "on-complete = {:?}",
                self.on_complete.clone().unwrap_or_default()
            ),
            format!(
                "on-create = {:?}",
                self.on_create.clone().unwrap_or_default()
            ),
            format!("hook-concurrency = {}", self.hook_concurrency),
            format!("hook-timeout = {}", secs(self.hook_timeout)),
            format!("log-level = {:?}", self.log_level),
            format!("log-format = \"{}\"", self.log_format),
        ];
        lines.join("\n")
    }

    /// What would stop `serve` before it listens, found without starting it.
    fn check(&self) -> Result<()> {
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            ferry_server::tls::Identity::load(cert, key)?;
        }
        let data = &self.place.data;
        if data.exists() && !data.is_dir() {
            anyhow::bail!("data {} is not a directory", data.display());
        }
        if data.join("tokens").exists() {
            ferry_server::Tokens::new(data)
                .entries()
                .context("the tokens file is invalid")?;
        }
        Ok(())
    }
}

fn run(cli: Cli, relog: Relog) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.config();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let server = ferry_server::Server::bind(config)?;
                let reloader = server.reloader();
                let mut level = args.log_level.clone();
                tokio::spawn(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    let Ok(mut hup) = signal(SignalKind::hangup()) else {
                        return;
                    };
                    // Bounded by the process: one reload per SIGHUP.
                    while hup.recv().await.is_some() {
                        reload(&reloader, &relog, &mut level);
                    }
                });
                let report = server.open_report();
                let fixed = report.reconciled;
                if !report.clean || fixed.any() {
                    tracing::warn!(
                        clean = report.clean,
                        uploads_to_verify = report.to_verify.len(),
                        bytes_to_verify = report.to_verify.iter().map(|(_, b)| b).sum::<u64>(),
                        published = fixed.published,
                        rolled_back = fixed.rolled_back,
                        orphans_removed = fixed.orphans,
                        leftovers_removed = fixed.leftovers,
                        lost = fixed.lost,
                        "recovered from an unclean stop"
                    );
                }
                if let Some(admin) = server.admin_addr() {
                    say!("ferryd: admin listener on http://{admin}");
                }
                say!(
                    "ferryd: listening on {} (certificate {})",
                    server.local_addr()?,
                    server.fingerprint()
                );
                server.run(shutdown_signal()).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(args) => {
            println!("{}", args.effective());
            match args.check() {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    say!("ferryd: the server would not start: {e:#}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Verify { place } => {
            let data = existing_state(&place.data)?;
            let (store, _) = ferry_server::Store::open(data, 0).map_err(|e| in_use(e, data))?;
            let uploads = store.to_verify()?;
            let mut found = ferry_server::store::Verified::default();
            for (id, _) in &uploads {
                found += store.verify_upload(*id, |_| {})?;
            }
            // Everything staged was just verified: the next start need not do it again.
            store.mark_clean()?;
            println!(
                "verified {} uploads: {} chunks ({}); {} no longer matched and will be re-sent",
                uploads.len(),
                found.chunks,
                ferry_proto::units::human(found.bytes),
                found.mismatched
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Fingerprint { place, cert } => {
            let fingerprint = match cert {
                Some(cert) => ferry_server::tls::certificate_fingerprint(&cert)?,
                None => ferry_server::tls::stored_fingerprint(existing_state(&place.data)?)?,
            };
            println!("{fingerprint}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command, place } => {
            let init = matches!(command, TokenCommand::Add { init: true, .. });
            if !init {
                existing_state(&place.data)?;
            }
            // `add` creates the directory (durably) when it writes the tokens file.
            let tokens = ferry_server::Tokens::new(&place.data);
            match command {
                TokenCommand::Add { name, .. } => println!("{}", tokens.add(&name)?),
                TokenCommand::List => {
                    for entry in tokens.entries()? {
                        println!("{}", entry.name);
                    }
                }
                TokenCommand::Revoke { name } => tokens.revoke(&name)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Uploads { admin, json, .. } => {
            let body = admin.call("GET", "/uploads", "")?;
            if json {
                println!("{body}");
                return Ok(ExitCode::SUCCESS);
            }
            let uploads: Vec<serde_json::Value> =
                serde_json::from_str(&body).context("the admin listener sent something else")?;
            if uploads.is_empty() {
                println!("nothing in progress");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<32}  {:<16}  {:>6}  {:>10}  {:<6}  NAME",
                "ID", "OWNER", "DONE", "SIZE", "ACTIVE"
            );
            for u in uploads {
                let size = u["size"].as_u64().unwrap_or(0);
                let durable = u["durable_bytes"].as_u64().unwrap_or(0);
                let pct = if size == 0 {
                    100.0
                } else {
                    durable as f64 * 100.0 / size as f64
                };
                println!(
                    "{:<32}  {:<16}  {:>5.1}%  {:>10}  {:<6}  {}",
                    u["upload_id"].as_str().unwrap_or(""),
                    u["owner"].as_str().unwrap_or(""),
                    pct,
                    ferry_proto::units::human(size),
                    if u["active"].as_bool().unwrap_or(false) {
                        "yes"
                    } else {
                        "no"
                    },
                    u["file_name"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Notice { text, admin, .. } => {
            match text {
                Some(text) => admin.call("PUT", "/notice", &text)?,
                None => admin.call("DELETE", "/notice", "")?,
            };
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Help { command } => {
            let mut root = Cli::command();
            match command {
                None => root.print_help()?,
                Some(name) => match root.find_subcommand_mut(&name) {
                    Some(sub) => sub.print_help()?,
                    None => {
                        say!("ferryd: no command {name:?}; the commands are serve, check-config, verify, fingerprint, token, uploads, notice, man, help");
                        return Ok(ExitCode::from(2));
                    }
                },
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One request to the admin listener (plain HTTP/1.0 over TCP, 10 s at most), the response's
/// body if 200.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<String> {
    use std::io::Read;
    let limit = Duration::from_secs(10);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, limit)
        .with_context(|| format!("cannot reach the admin listener at {addr}"))?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("the admin listener sent no HTTP response")?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        anyhow::bail!("{addr}{path}: {status}: {}", body.trim());
    }
    Ok(body.to_owned())
}

/// `data` if it holds server state (a database, tokens or a certificate); otherwise an error
/// that says which directory was looked at and how to point at the right one — so that a
/// command run from another directory does not silently create a new, unused one.
fn existing_state(data: &Path) -> Result<&Path> {
    let state = ["db", "tokens", "tls"]
        .iter()
        .any(|n| data.join(n).exists());
    if state {
        return Ok(data);
    }
    anyhow::bail!(
        "{} holds no ferryd state (no db, tokens or tls inside); point at the server's data \
         directory with --data DIR, FERRYD_DATA or --config FILE (for a new installation: \
         `ferryd token add NAME --init`)",
        data.display()
    )
}

/// The database lock held by a running server, said as such.
fn in_use(e: anyhow::Error, data: &Path) -> anyhow::Error {
    let locked = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::WouldBlock)
            || c.to_string().contains("WouldBlock")
    });
    if locked {
        anyhow::anyhow!(
            "{} is in use by a running ferryd (its database is locked); stop it first",
            data.display()
        )
    } else {
        e.context(format!("cannot open {}", data.display()))
    }
}

/// SIGHUP: reads the command line, environment and config file again and applies what a
/// running server can change (limits, hooks, dedup, log level); never exits. A config that
/// does not parse is logged and changes nothing. Tokens need no reload: they are read at
/// every connection, and revocations apply within 100 ms.
fn reload(reloader: &ferry_server::Reloader, relog: &Relog, level: &mut String) {
    let args = match parse() {
        Ok(Cli {
            command: Command::Serve(args),
        }) => args,
        Ok(_) => return,
        Err(Parse::Config(e)) => {
            tracing::warn!(error = %e, "reload refused: the config file is invalid; nothing changed");
            return;
        }
        Err(Parse::Clap(e)) => {
            let first = e.render().to_string();
            let first = first.lines().next().unwrap_or("").to_owned();
            tracing::warn!(
                error = first,
                "reload refused: the settings are invalid; nothing changed"
            );
            return;
        }
    };
    reloader.reload(&args.config());
    if args.log_level != *level {
        match relog(&args.log_level) {
            Ok(()) => {
                tracing::info!(
                    from = level.as_str(),
                    to = args.log_level,
                    "log level changed"
                );
                *level = args.log_level.clone();
            }
            Err(e) => tracing::warn!(error = %e, "log level not changed"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A duration with its unit (`90s`, `30m`, `12h`, `7d`), or `0`. A bare number is refused:
/// `--expire-after 7` meant seven seconds, never what anyone wanted.
fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t != "0" && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("{t:?} has no unit; write {t}s, {t}m, {t}h or {t}d"));
    }
    ferry_proto::units::parse_duration(t)
}

/// A size per second or a size (`200M`, `500G`); `0` for none.
fn parse_rate(text: &str) -> Result<u64, String> {
    match text.trim() {
        "0" => Ok(0),
        other => ferry_proto::units::parse_size(other),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn durations_need_a_unit() {
        assert!(super::duration("7")
            .unwrap_err()
            .contains("write 7s, 7m, 7h or 7d"));
        assert_eq!(super::duration("7d").unwrap().as_secs(), 7 * 86400);
        assert_eq!(super::duration("0").unwrap().as_secs(), 0);
    }
}

//! `ferry`'s command line: the commands and options, and the settings they add up to with
//! the environment and the config file.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry_client::config::FileConfig;
use ferry_client::progress::Verbosity;
use ferry_client::{ClientError, Options, Target};
use ferry_proto::units::parse_size;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Resumable uploads of large files to a Ferry server over QUIC",
    after_help = "Settings also come from FERRY_* environment variables and the config file \
                  (~/.config/ferry/config.toml); a flag beats the environment, which beats the file.",
    after_long_help = "Settings also come from FERRY_* environment variables and the config file \
(~/.config/ferry/config.toml); a flag beats the environment, which beats the file. Keep the \
token there or in FERRY_TOKEN rather than on the command line, where `ps` shows it to others; \
a config file holding a token should be mode 600.

Exit status:
  0    every file is on the server (uploaded, resumed or skipped)
  1    interrupted but resumable: the connection was lost and reconnecting gave up, the
       server was never reached, another client took the upload over, the server is out of
       space; run the same command again to resume
  2    usage or config error, authentication or trust failure, a permanent refusal
       (file too large, invalid name, already_exists, ...)
  3    `ferry upload -`: an earlier run of the same stream died; what the server holds of it
       is said, the rest of that stream is lost (a pipe cannot be read again)
  130  stopped by Ctrl-C; run the same command again to resume
  143  stopped by SIGTERM; run the same command again to resume
A line of stdout cut short by a closed pipe (`| head -1`) is a normal end: exit 0.

Examples:
  Upload a file, trusting the server's certificate by its fingerprint:
    export FERRY_TOKEN=fy_...
    ferry --server files.example.com:4433 --fingerprint sha256:... upload rushes.mov
  Upload a camera card as a folder, leaving out more than .DS_Store and ._*:
    ferry upload --exclude '*.THM' /media/card/DCIM
  Run it again after an interruption, from this machine or another: it resumes, and sends
  nothing the server holds already.
  Upload a recording while it is being written, and a pipe:
    ferry upload --follow /media/obs/stream.mkv
    ffmpeg -i rtsp://camera/live -c copy -f mpegts - | ferry upload - --name cam/live.ts
  Read what has arrived so far (verified bytes only), as it grows:
    ferry cat --follow cam/live.ts | ffplay -
  Check the way to the server:
    ferry ping
  Scripts: one JSON line per file and a summary:
    ferry upload --json clips/ | jq -r .status"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Args)]
pub(crate) struct Global {
    /// Server address, HOST:PORT [default: 127.0.0.1:4433]. Repeat it (or separate with
    /// commas) for the nodes of one service: every address of every name is tried in turn,
    /// and a lost connection moves to the next.
    #[arg(long, env = "FERRY_SERVER", global = true, value_delimiter = ',')]
    pub(crate) server: Vec<String>,
    /// Bearer token from `ferryd token add`.
    #[arg(long, env = "FERRY_TOKEN", global = true, hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Pin the server certificate: sha256:HEX as printed by `ferryd fingerprint`. Without it
    /// the first certificate seen is trusted and recorded in the known-servers file.
    #[arg(long, env = "FERRY_FINGERPRINT", global = true, conflicts_with = "ca")]
    pub(crate) fingerprint: Option<String>,
    /// Trust a CA-signed server certificate: PEM file of the CA(s); the server's name (the HOST
    /// of --server) must match the certificate.
    #[arg(long, env = "FERRY_CA", global = true)]
    pub(crate) ca: Option<PathBuf>,
    /// Config file [default: $XDG_CONFIG_HOME/ferry/config.toml, if it exists].
    #[arg(long, env = "FERRY_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
    /// Directory of the resume journal [default: $XDG_STATE_HOME/ferry or ~/.local/state/ferry].
    #[arg(long, env = "FERRY_STATE_DIR", global = true)]
    pub(crate) state_dir: Option<PathBuf>,
    /// Known-servers file for trust on first use [default: $XDG_CONFIG_HOME/ferry/known_servers].
    #[arg(long, env = "FERRY_KNOWN_SERVERS", global = true)]
    pub(crate) known_servers: Option<PathBuf>,
    /// After a connection loss, keep reconnecting this many seconds without progress.
    #[arg(long, default_value_t = 300, global = true)]
    pub(crate) reconnect_for: u64,
    /// Congestion controller for the upload: delay (Ferry's: ignores random loss, yields to
    /// queueing delay), bbr, cubic or newreno.
    #[arg(long, global = true, default_value_t = ferry_proto::Congestion::Delay)]
    pub(crate) congestion: ferry_proto::Congestion,
    /// Seconds without any packet from the server before a connection counts as lost.
    #[arg(long, default_value_t = 15, global = true)]
    pub(crate) idle_timeout: u64,
    /// Seconds a connection attempt waits for the server's answer; a server never reached
    /// fails after one attempt [default: 5].
    #[arg(long, global = true)]
    pub(crate) connect_timeout: Option<u64>,
    /// Print errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Also print connection events.
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    /// Write an upload's acknowledged bytes to stdout (or --output): a complete upload, or the
    /// verified, durable start of one still arriving. TARGET is an upload id or the name it is
    /// published under.
    Cat {
        target: String,
        /// Keep reading as more is acknowledged, until the upload is complete.
        #[arg(short, long)]
        follow: bool,
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
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
    /// Print each file's content hash (SHA-256 over its chunks' SHA-256 digests, what uploads
    /// report and the server checks) in sha256sum's format; no server needed. One read.
    Hash {
        #[arg(required = true, value_name = "FILE")]
        paths: Vec<PathBuf>,
        /// The chunk size the upload used [default: 4MiB].
        #[arg(long, default_value = "4MiB", value_parser = ferry_client::rate::parse_size)]
        chunk_size: u64,
        /// Print the plain SHA-256 instead (what sha256sum prints).
        #[arg(long)]
        sha256: bool,
        /// Print one JSON object per file with both digests.
        #[arg(short, long)]
        json: bool,
    },
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (ferry.1, ferry-upload.1, …) into a folder.
    Man { dir: PathBuf },
}

#[derive(Args)]
pub(crate) struct UploadArgs {
    /// Description stored with the upload.
    #[arg(long, default_value = "")]
    pub(crate) desc: String,
    /// Chunk size of a new upload, e.g. 4MiB or 512k; k, M, G are powers of 1024 (4MB = 4MiB)
    /// [default: 4MiB].
    #[arg(long, value_parser = ferry_client::rate::parse_size)]
    pub(crate) chunk_size: Option<u64>,
    /// Chunk streams sending at once, all files together [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) parallel: Option<u16>,
    /// Files in flight at once, each on its own connection, sharing the --parallel streams
    /// [default: 4].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub(crate) files: Option<u16>,
    /// Cap the upload rate, bytes per second (e.g. 10M).
    #[arg(long, value_parser = ferry_client::rate::parse_size)]
    pub(crate) limit_rate: Option<u64>,
    /// Print one JSON line per file and a summary line on stdout instead of progress.
    #[arg(short, long)]
    pub(crate) json: bool,
    /// In a folder, follow symbolic links (to files and folders) instead of leaving them out.
    #[arg(long)]
    pub(crate) follow_links: bool,
    /// When stderr is not a terminal, print a progress line every this many seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) progress_interval: u64,
    /// Hash each new file before sending anything (one extra read) and, if the server holds
    /// the same content for this token (same size, chunk size and content hash), publish it by
    /// link without sending it; otherwise upload it.
    #[arg(long)]
    pub(crate) dedup: bool,
    /// Also compute each file's plain SHA-256 (sha256sum's) and report it (`--json` field
    /// "sha256"): a second read and hash pass of every file, beside the upload.
    #[arg(long)]
    pub(crate) sha256: bool,
    /// When a file of the same name exists on the server: rename (publish as "name (1)"),
    /// skip, or fail [default: rename].
    #[arg(long)]
    pub(crate) on_exists: Option<ferry_proto::OnExists>,
    /// Leave out files and folders (inside the folders uploaded) whose name matches GLOB
    /// (`*`, `?`, `[…]`); repeatable, also `exclude = [...]` in the config file. `.DS_Store`
    /// and `._*` are left out by default.
    #[arg(long, value_name = "GLOB")]
    pub(crate) exclude: Vec<String>,
    /// Upload `.DS_Store` and `._*` files too.
    #[arg(long)]
    pub(crate) no_default_excludes: bool,
    /// Upload one file while it is still being written (a recording, a render): send what is
    /// written, wait for more, and finish once the writer closed the file and it stopped
    /// growing, or after --idle without growth. Regions rewritten after they were sent (an
    /// MP4's header, a WAV's sizes) are sent again, so the published file equals the final one.
    #[arg(long)]
    pub(crate) follow: bool,
    /// With --follow: finish after this long without growth, e.g. 10s, 2m [default: 10s].
    #[arg(long, value_parser = ferry_proto::units::parse_duration, default_value = "10s")]
    pub(crate) idle: Duration,
    /// With --follow: ignore the writer closing the file (for writers that reopen it to append);
    /// only --idle ends the upload.
    #[arg(long)]
    pub(crate) idle_only: bool,
    /// The name to publish standard input under (`ferry upload - --name NAME`); may hold
    /// folders, `a/b/clip.ts`.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Folder for the chunks of standard input not yet acknowledged (at most --parallel
    /// chunks) [default: the state directory's spool/].
    #[arg(long, env = "FERRY_SPOOL")]
    pub(crate) spool: Option<PathBuf>,
}

impl UploadArgs {
    /// Every pattern in force, as the summary names them.
    pub(crate) fn exclude_patterns(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        if !self.no_default_excludes {
            all.extend(
                ferry_client::job::DEFAULT_EXCLUDES
                    .iter()
                    .map(|p| p.to_string()),
            );
        }
        all.extend(self.exclude.iter().cloned());
        all
    }
}

/// Settings after flags, environment and config file are merged.
pub(crate) struct Settings {
    pub(crate) opts: Options,
    pub(crate) files: usize,
    pub(crate) verbosity: Verbosity,
    /// The config file's `exclude` patterns (the command line's `--exclude` adds to them).
    pub(crate) exclude: Vec<String>,
}

pub(crate) fn settings(g: &Global, upload: Option<&UploadArgs>) -> Result<Settings, ClientError> {
    let (config_path, required) = match &g.config {
        Some(path) => (path.clone(), true),
        None => (config_dir().join("config.toml"), false),
    };
    let file = FileConfig::load(&config_path, required)?;
    if file.token.is_some() {
        warn_if_readable(&config_path);
    }
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
    let mut servers = match (g.server.is_empty(), file.server) {
        (false, _) => g.server.clone(),
        (true, Some(listed)) => listed.into_vec(),
        (true, None) => Vec::new(),
    };
    servers.retain(|s| !s.trim().is_empty());
    if servers.is_empty() {
        servers.push("127.0.0.1:4433".into());
    }
    let target = Target {
        server: servers.remove(0),
        alternates: servers,
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
        // A window the user fixed stays fixed; the default grows on a long, fast path.
        if a.parallel.or(file.parallel).is_some() {
            opts.max_parallel = opts.parallel;
        }
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
        opts.sha256 = a.sha256;
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
        exclude: file.exclude.clone().unwrap_or_default(),
        verbosity,
    })
}

pub(crate) fn config_dir() -> PathBuf {
    default_dir(dirs::config_dir(), ".config").join("ferry")
}

pub(crate) fn default_dir(base: Option<PathBuf>, fallback: &str) -> PathBuf {
    base.or_else(|| dirs::home_dir().map(|h| h.join(fallback)))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Warns on stderr when a config file that holds a token can be read by other users: the
/// token is as good as the user's password to the server.
fn warn_if_readable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        say!(
            "ferry: warning: {} holds a token and other users can read it (mode {mode:04o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

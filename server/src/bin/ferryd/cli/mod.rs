//! `ferryd`'s command line: every command and option, what `serve`'s options become (the
//! library's `Config`, in `serve.rs`), and the value parsers.

mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferryd",
    version,
    about = "Ferry server: resumable chunked uploads over QUIC",
    args_override_self = true,
    disable_help_subcommand = true,
    after_help = "Every `serve` option can also be set in the config file (--config) under its \
                  long name, or in a FERRYD_* environment variable; a flag beats the \
                  environment, which beats the file.",
    after_long_help = "Every `serve` option can also be set in the config file (--config) under its \
long name, or in a FERRYD_* environment variable; a flag beats the environment, which beats the \
file. Every command given --config reads the data directory from the file's `data` key.

Exit status:
  0    success (serve: a clean stop after SIGINT or SIGTERM)
  1    the command failed: printed once as `ferryd: <what failed>: <cause>` (a port in use, a
       data directory without server state, a store another ferryd holds, ...)
  2    usage error, a bad config file, or check-config finding that serve would not start
A line of stdout cut short by a closed pipe (`| head -1`) is a normal end: exit 0.

Examples:
  Run on the embedded defaults (./ferry-data, UDP 4433, a generated certificate):
    ferryd serve
  The packaged service's commands (the config names /var/lib/ferry):
    sudo -u ferry ferryd token add alice --config /etc/ferry/ferryd.toml
    sudo -u ferry ferryd fingerprint --config /etc/ferry/ferryd.toml
    sudo -u ferry ferryd link alice --expires 7d --config /etc/ferry/ferryd.toml
    ferryd check-config --config /etc/ferry/ferryd.toml
  Tell every connected client something:
    ferryd notice \"maintenance at 18:00 UTC\" --config /etc/ferry/ferryd.toml"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the data directory is, for every subcommand: `--data`, else `FERRYD_DATA`, else the
/// config file's `data`, else `./ferry-data`.
#[derive(Args, Clone)]
pub(crate) struct DataArgs {
    /// Data directory: database, staging files, published files, certificate, tokens.
    #[arg(
        long,
        env = "FERRYD_DATA",
        default_value = "./ferry-data",
        global = true
    )]
    pub(crate) data: PathBuf,
    /// Config file (TOML, keys named like the long options of `ferryd serve`).
    #[arg(long, env = "FERRYD_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
}

/// How a command reaches a running server's admin listener (also from the config file).
#[derive(Args, Clone)]
pub(crate) struct AdminArgs {
    /// The server's admin listener (`serve --admin-listen`).
    #[arg(long, env = "FERRYD_ADMIN_LISTEN")]
    pub(crate) admin_listen: Option<SocketAddr>,
    /// The admin listener's token, if it has one.
    #[arg(long, env = "FERRYD_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
}

/// Where uploads are stored: the data directory (`local`) or an S3 bucket shared by the
/// nodes of a service (`s3`). Also for `token` and `s3 gc`.
#[derive(Args, Clone, Debug)]
pub(crate) struct StoreArgs {
    /// Where finished files and upload state live: local (the data directory) or s3 (a
    /// bucket, see docs/scale-out.md).
    #[arg(long, global = true, default_value = "local", env = "FERRYD_STORE", value_parser = ["local", "s3"])]
    pub(crate) store: String,
    /// The S3 endpoint, e.g. http://127.0.0.1:8333 (default: AWS for --s3-region).
    #[arg(long, global = true, env = "FERRYD_S3_ENDPOINT")]
    pub(crate) s3_endpoint: Option<String>,
    /// The bucket (must exist).
    #[arg(long, global = true, env = "FERRYD_S3_BUCKET")]
    pub(crate) s3_bucket: Option<String>,
    /// Key prefix for everything Ferry writes, e.g. ferry/ (default: the bucket's root).
    #[arg(long, global = true, default_value = "", env = "FERRYD_S3_PREFIX")]
    pub(crate) s3_prefix: String,
    /// The bucket's region.
    #[arg(
        long,
        global = true,
        default_value = "us-east-1",
        env = "FERRYD_S3_REGION"
    )]
    pub(crate) s3_region: String,
    /// Address the bucket in the path (host/bucket/key), as most stores but AWS need.
    #[arg(long, global = true, env = "FERRYD_S3_PATH_STYLE")]
    pub(crate) s3_path_style: bool,
    /// The access key id (the standard AWS_ACCESS_KEY_ID variable works too).
    #[arg(long, global = true, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub(crate) s3_access_key_id: Option<String>,
    /// The secret access key (or AWS_SECRET_ACCESS_KEY).
    #[arg(
        long,
        global = true,
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub(crate) s3_secret_access_key: Option<String>,
}

impl StoreArgs {
    /// The bucket settings with `--store s3`; `None` with the local store.
    pub(crate) fn s3(&self) -> Result<Option<ferry_server::store::s3::S3Settings>> {
        if self.store != "s3" {
            return Ok(None);
        }
        let bucket = self
            .s3_bucket
            .clone()
            .context("--store s3 needs --s3-bucket (or s3-bucket in the config)")?;
        Ok(Some(ferry_server::store::s3::S3Settings {
            endpoint: self.s3_endpoint.clone(),
            bucket,
            prefix: self.s3_prefix.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
        }))
    }
}

#[derive(Args, Clone)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) place: DataArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:4433", env = "FERRYD_LISTEN")]
    pub(crate) listen: SocketAddr,
    /// Close a connection silent this long (e.g. 30s).
    #[arg(long, default_value = "30s", env = "FERRYD_IDLE_TIMEOUT", value_parser = duration)]
    pub(crate) idle_timeout: Duration,
    /// Free disk space kept for the database (e.g. 64M): uploads that would eat into it are
    /// refused, and commits pause while free space is below it.
    #[arg(long, default_value = "64M", env = "FERRYD_MIN_FREE_SPACE", value_parser = ferry_proto::units::parse_size)]
    pub(crate) min_free_space: u64,
    /// Remove unfinished uploads that made no progress for this long (e.g. 7d, 12h; a unit is
    /// required; 0: never).
    #[arg(long, default_value = "7d", env = "FERRYD_EXPIRE_AFTER", value_parser = duration)]
    pub(crate) expire_after: Duration,
    /// How often to look for uploads to expire (e.g. 10m).
    #[arg(long, default_value = "10m", env = "FERRYD_SWEEP_INTERVAL", value_parser = duration)]
    pub(crate) sweep_interval: Duration,
    /// Cut off a stream that stalls inside a frame or a chunk, or a client that leaves the
    /// server's replies unread, after this long (e.g. 30s).
    #[arg(long, default_value = "30s", env = "FERRYD_STREAM_TIMEOUT", value_parser = duration)]
    pub(crate) stream_timeout: Duration,
    /// After an unclean stop, re-verify staged chunks in the background at most this fast
    /// (bytes per second, e.g. 200M; 0: no limit). The server listens at once regardless.
    #[arg(long, default_value = "200M", env = "FERRYD_VERIFY_RATE", value_parser = parse_rate)]
    pub(crate) verify_rate: u64,
    /// Uploads in progress per token (0: no limit).
    #[arg(long, default_value_t = 16, env = "FERRYD_MAX_UPLOADS")]
    pub(crate) max_uploads: u64,
    /// Stored plus staged bytes per token, e.g. 500G (0: no quota).
    #[arg(long, default_value = "0", env = "FERRYD_QUOTA", value_parser = parse_rate)]
    pub(crate) quota: u64,
    /// Files and folders one token may make under its folder (published files and created
    /// folders; 0: no limit). Local store only.
    #[arg(long, default_value_t = 100_000, env = "FERRYD_MAX_ENTRIES")]
    pub(crate) max_entries: u64,
    /// Free inodes (files and folders) kept on the data directory's file system for the
    /// server's own files: creates and folders that would eat into them are refused (0: none).
    #[arg(long, default_value_t = 4096, env = "FERRYD_MIN_FREE_INODES")]
    pub(crate) min_free_inodes: u64,
    /// Logged-in connections at once, in total.
    #[arg(long, default_value_t = 256, env = "FERRYD_MAX_CONNECTIONS")]
    pub(crate) max_connections: usize,
    /// Logged-in connections at once from one client IP address (`ferry upload` opens up to
    /// --files connections, 4 by default).
    #[arg(long, default_value_t = 16, env = "FERRYD_MAX_CONNECTIONS_PER_IP")]
    pub(crate) max_connections_per_ip: usize,
    /// Connections still logging in (handshake and hello), in total; when full, the oldest
    /// is dropped. A budget apart, so they never take logged-in connections' places.
    #[arg(long, default_value_t = 64, env = "FERRYD_MAX_PENDING_LOGINS")]
    pub(crate) max_pending_logins: usize,
    /// Connections still logging in from one client IP address.
    #[arg(long, default_value_t = 8, env = "FERRYD_MAX_PENDING_LOGINS_PER_IP")]
    pub(crate) max_pending_logins_per_ip: usize,
    /// Congestion controller: cubic, bbr or newreno.
    #[arg(long, default_value_t = ferry_proto::Congestion::default(), env = "FERRYD_CONGESTION")]
    pub(crate) congestion: ferry_proto::Congestion,
    /// Let `ferry upload --dedup` publish a file by linking to another token's file of the
    /// same content. Off by default: a match tells the client that someone has that content.
    #[arg(long, env = "FERRYD_DEDUP_ACROSS_OWNERS")]
    pub(crate) dedup_across_owners: bool,
    /// PEM certificate chain to present instead of the generated one (needs --key).
    #[arg(long, requires = "key", env = "FERRYD_CERT")]
    pub(crate) cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert", env = "FERRYD_KEY")]
    pub(crate) key: Option<PathBuf>,
    /// Serve health, metrics and uploads over HTTP on this address (e.g. 127.0.0.1:9433);
    /// off when unset. Keep it on loopback or a management network.
    #[arg(long, env = "FERRYD_ADMIN_LISTEN")]
    pub(crate) admin_listen: Option<SocketAddr>,
    /// Bearer token the admin listener requires for /metrics and /uploads (/healthz stays
    /// open).
    #[arg(long, env = "FERRYD_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// Serve the upload page over HTTPS on this TCP address (e.g. 0.0.0.0:8443), with the
    /// server's certificate; browsers then upload over WebTransport on the QUIC port. Off
    /// when unset.
    #[arg(long, env = "FERRYD_WEB_LISTEN")]
    pub(crate) web_listen: Option<SocketAddr>,
    /// Origins whose pages may upload (comma-separated, e.g. https://files.example.com; `*`:
    /// any). Default: the web listener's own origin.
    #[arg(long, env = "FERRYD_WEB_ORIGIN", value_delimiter = ',')]
    pub(crate) web_origin: Vec<String>,
    /// The web listeners of the service's other nodes (comma-separated
    /// https://HOST:PORT): announced to the page, which moves to one of them when the node it
    /// uses is lost (docs/scale-out.md). Their --web-origin must allow this node's page.
    #[arg(long, env = "FERRYD_WEB_PEER", value_delimiter = ',')]
    pub(crate) web_peer: Vec<String>,
    /// The web listener's public address, as upload links give it (e.g.
    /// https://files.example.com:8443). Default: https://HOSTNAME:PORT of --web-listen.
    #[arg(long, env = "FERRYD_WEB_URL")]
    pub(crate) web_url: Option<String>,
    /// Where the web listener takes uploads over HTTP (tus 1.0 and the IETF resumable-upload
    /// draft): uploads are created by POST to it and live under it.
    #[arg(long, env = "FERRYD_UPLOAD_PATH", default_value = "/files/")]
    pub(crate) upload_path: String,
    /// Command run by `/bin/sh -c` after each upload is published, with FERRY_UPLOAD_ID,
    /// FERRY_OWNER, FERRY_PATH, FERRY_NAME, FERRY_SIZE, FERRY_CONTENT_HASH, FERRY_CHUNK_SIZE,
    /// FERRY_DESC. Queued
    /// durably: a crash before it ran runs it after the restart (at least once).
    #[arg(long, env = "FERRYD_ON_COMPLETE")]
    pub(crate) on_complete: Option<String>,
    /// Command run before each upload is created, with FERRY_OWNER, FERRY_NAME, FERRY_DIR,
    /// FERRY_SIZE, FERRY_DESC; a non-zero exit refuses the upload, its first stdout line the
    /// message the client shows. At most 30 s.
    #[arg(long, env = "FERRYD_ON_CREATE")]
    pub(crate) on_create: Option<String>,
    /// --on-complete runs at once, at most.
    #[arg(long, default_value_t = 2, env = "FERRYD_HOOK_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) hook_concurrency: u16,
    /// An --on-complete run still going after this long is killed (e.g. 5m).
    #[arg(long, default_value = "5m", env = "FERRYD_HOOK_TIMEOUT", value_parser = duration)]
    pub(crate) hook_timeout: Duration,
    /// Log filter, as RUST_LOG would give it (e.g. `debug,quinn=warn`); RUST_LOG, when set,
    /// wins. A reload (SIGHUP) applies a changed value.
    #[arg(
        long,
        default_value = "info,quinn=warn,sled=warn",
        env = "FERRYD_LOG_LEVEL"
    )]
    pub(crate) log_level: String,
    /// Log format on stderr: text (coloured only on a terminal; NO_COLOR turns colour off)
    /// or json (one object per line).
    #[arg(long, default_value = "text", env = "FERRYD_LOG_FORMAT", value_parser = ["text", "json"])]
    pub(crate) log_format: String,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    /// Manage bearer tokens (in the bucket with --store s3, for every node).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        place: DataArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Make an upload link: a URL that lets whoever holds it upload into OWNER's folder from
    /// a browser, within the bounds given, and do nothing else. Also --list and --revoke.
    Link(Box<LinkArgs>),
    /// Maintain the S3 bucket of --store s3.
    S3 {
        #[command(subcommand)]
        command: S3Command,
        #[command(flatten)]
        place: DataArgs,
        #[command(flatten)]
        store: StoreArgs,
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

#[derive(Args)]
pub(crate) struct LinkArgs {
    /// Whose folder the link uploads into (a token name's rules: A-Z a-z 0-9 - _ .).
    #[arg(required_unless_present_any = ["list", "revoke"])]
    pub(crate) owner: Option<String>,
    /// The link stops working after this long (e.g. 24h, 7d; 0: never).
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub(crate) expires: Duration,
    /// Bytes the link may upload in all, e.g. 50G (0: no bound).
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    pub(crate) max_size: u64,
    /// Files the link may upload in all (0: no bound).
    #[arg(long, default_value_t = 0)]
    pub(crate) max_files: u64,
    /// A read link instead: a URL that reads OWNER's upload UPLOAD_ID over HTTPS (`GET`, byte
    /// ranges) — its acknowledged bytes, as they arrive — and does nothing else.
    #[arg(long, value_name = "UPLOAD_ID", conflicts_with_all = ["max_size", "max_files"])]
    pub(crate) read: Option<String>,
    /// The upload path of the web listener (as `serve --upload-path`), for a read link's URL.
    #[arg(long, env = "FERRYD_UPLOAD_PATH", default_value = "/files/")]
    pub(crate) upload_path: String,
    /// List the links (id, owner, bounds, what each has used is on the server).
    #[arg(long, conflicts_with_all = ["owner", "revoke"])]
    pub(crate) list: bool,
    /// Remove a link, by its id or its URL; uploads it made stay, sessions using it close.
    #[arg(long, value_name = "ID|URL", conflicts_with = "owner")]
    pub(crate) revoke: Option<String>,
    /// The web listener's public address (as `serve --web-url`).
    #[arg(long, env = "FERRYD_WEB_URL")]
    pub(crate) web_url: Option<String>,
    /// The web listener's address (as `serve --web-listen`), for the default --web-url.
    #[arg(long, env = "FERRYD_WEB_LISTEN")]
    pub(crate) web_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub(crate) place: DataArgs,
    /// With --store s3 the links are the service's, in the bucket.
    #[command(flatten)]
    pub(crate) store: StoreArgs,
}

#[derive(Subcommand)]
pub(crate) enum S3Command {
    /// List, and abort, the multipart uploads under the prefix that no upload's manifest
    /// names (left by a node that died while creating one). Uploads with a manifest are
    /// expired by the servers themselves (--expire-after).
    Gc {
        /// Only multipart uploads begun this long ago or more (e.g. 1h, 2d).
        #[arg(long, default_value = "1h", value_parser = duration)]
        older_than: Duration,
        /// List them; abort nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
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

/// A duration with its unit (`90s`, `30m`, `12h`, `7d`), or `0`. A bare number is refused:
/// `--expire-after 7` meant seven seconds, never what anyone wanted.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
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

//! What `ferryd serve` can be told (`Config`), the part of it a reload changes (`Tunable`), and
//! the handle that applies a reload to a running server (`Reloader`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::{CommitPolicy, Limits, MAX_FRAME};
use tracing::{info, warn};

use crate::store;

/// Everything `ferryd serve` can be told.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Largest file accepted at create.
    pub max_file_size: u64,
    pub min_chunk_size: u64,
    pub max_chunk_size: u64,
    /// Chunk streams one connection may have open at once.
    pub max_streams: u64,
    /// A connection with no traffic (not even keep-alives) for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for the TLS handshake and the `hello` frame.
    pub handshake_timeout: Duration,
    pub commit: CommitPolicy,
    /// Use this certificate and key instead of the generated one.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// Free disk space kept for the database: uploads that would eat into it are refused at
    /// create, and commits stop (clients are told `storage_full` and retry) while free space
    /// is below it.
    pub min_free_space: u64,
    /// Congestion controller for what the server sends (acks and replies: little).
    pub congestion: ferry_proto::Congestion,
    /// Uploads in progress per owner; 0 for no limit.
    pub max_uploads_per_owner: u64,
    /// Stored plus staged bytes per owner; 0 for no limit.
    pub quota_per_owner: u64,
    /// Files and folders one owner may make under `files/` (published files, created folders);
    /// 0 for no limit. Local store only: the s3 store's objects cost no inode.
    pub max_entries_per_owner: u64,
    /// Free inodes kept for the server's own files: creates and folders that would eat into
    /// them are refused (`insufficient_storage`). 0: no reserve.
    pub min_free_inodes: u64,
    /// Connections at once, in total and from one IP address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Connections still logging in (handshake and `hello`), in total and from one address:
    /// a budget apart from the logged-in connections, the oldest evicted when it is full.
    pub max_pending_logins: usize,
    pub max_pending_logins_per_ip: usize,
    /// A stream that stops in the middle of a frame or a chunk payload for this long is cut
    /// off (`stream_timeout`), so a slow or stuck client cannot hold a slot forever.
    pub stream_timeout: Duration,
    /// Unfinished uploads without progress for this long are removed; zero for never.
    pub expire_after: Duration,
    /// How often the sweeper looks for expired uploads.
    pub sweep_interval: Duration,
    /// Bytes per second the background re-verification after an unclean stop may read; 0 for
    /// no limit. A client's `resume` of an upload not yet verified is served at once, unpaced.
    pub verify_rate: u64,
    /// `dedup` may link to another owner's file of the same content (off by default: it
    /// tells a client that some owner has that content).
    pub dedup_across_owners: bool,
    /// The admin HTTP listener (health, metrics, uploads); `None`: off.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin listener requires (except for `/healthz`); `None`: none.
    pub admin_token: Option<String>,
    /// Command run (by `/bin/sh -c`) after each upload is published; see `crate::hooks`.
    pub on_complete: Option<String>,
    /// Command run before each upload is created; a non-zero exit refuses it.
    pub on_create: Option<String>,
    /// `--on-complete` runs at once, at most.
    pub hook_concurrency: usize,
    /// An `--on-complete` run is killed after this long.
    pub hook_timeout: Duration,
    /// Store into this S3 bucket (`--store s3`); `None`: the local data directory.
    pub s3: Option<store::s3::S3Settings>,
    /// The web listener: the upload page over HTTPS on TCP (`--web-listen`); `None`: off.
    pub web_listen: Option<SocketAddr>,
    /// Origins whose pages may open WebTransport sessions (`--web-origin`); empty: the web
    /// listener's own origin (the host the browser dialled, on the web listener's port).
    /// `*` allows any.
    pub web_origins: Vec<String>,
    /// The web listeners of the service's other nodes (`https://HOST:PORT`), announced to the
    /// page so it moves to one of them when its node is lost (`--web-peer`).
    pub web_peers: Vec<String>,
    /// The web listener's public address as upload links give it (`--web-url`, e.g.
    /// `https://files.example.com:8443`).
    pub web_url: Option<String>,
    /// The web listener's HTTP upload endpoint (tus, the IETF draft): starts and ends with `/`.
    pub upload_path: String,
}

impl Config {
    /// `--upload-path` checked and given its slashes: an absolute path of plain segments
    /// (letters, digits, `-`, `_`, `.`), not `/` itself nor under `/u/` (the page's links).
    pub fn upload_path_from(text: &str) -> anyhow::Result<String> {
        let trimmed = text.trim_matches('/');
        let ok = !trimmed.is_empty()
            && trimmed.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
            && trimmed != "u"
            && !trimmed.starts_with("u/");
        anyhow::ensure!(
            ok,
            "upload-path {text:?} must be a path like /files/ (letters, digits, -, _ and . between slashes; not /u/)"
        );
        Ok(format!("/{trimmed}/"))
    }

    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            max_file_size: 1 << 40,
            min_chunk_size: 4 << 10,
            max_chunk_size: 64 << 20,
            max_streams: 32,
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            commit: CommitPolicy::default(),
            cert: None,
            min_free_space: 64 << 20,
            congestion: ferry_proto::Congestion::default(),
            max_uploads_per_owner: 16,
            quota_per_owner: 0,
            max_entries_per_owner: 100_000,
            min_free_inodes: 4096,
            max_connections: 256,
            max_connections_per_ip: 16,
            max_pending_logins: 64,
            max_pending_logins_per_ip: 8,
            stream_timeout: Duration::from_secs(30),
            expire_after: Duration::from_secs(7 * 24 * 3600),
            sweep_interval: Duration::from_secs(600),
            verify_rate: 200 << 20,
            dedup_across_owners: false,
            admin_listen: None,
            admin_token: None,
            on_complete: None,
            on_create: None,
            hook_concurrency: 2,
            hook_timeout: Duration::from_secs(300),
            s3: None,
            web_listen: None,
            web_origins: Vec::new(),
            web_peers: Vec::new(),
            web_url: None,
            upload_path: "/files/".into(),
        }
    }

    /// The settings SIGHUP can change without a restart.
    pub fn tunable(&self) -> Tunable {
        Tunable {
            max_uploads_per_owner: self.max_uploads_per_owner,
            quota_per_owner: self.quota_per_owner,
            max_entries_per_owner: self.max_entries_per_owner,
            expire_after: self.expire_after,
            dedup_across_owners: self.dedup_across_owners,
            on_complete: self.on_complete.clone(),
            on_create: self.on_create.clone(),
            hook_timeout: self.hook_timeout,
        }
    }

    /// The limits announced in `welcome`.
    pub fn limits(&self) -> Limits {
        Limits {
            max_file_size: self.max_file_size,
            min_chunk_size: self.min_chunk_size,
            max_chunk_size: self.max_chunk_size,
            max_streams: self.max_streams,
            max_frame: MAX_FRAME as u64,
            max_uploads: self.max_uploads_per_owner,
            quota: self.quota_per_owner,
            expire_after: self.expire_after.as_secs(),
        }
    }
}

/// The part of the configuration a reload (SIGHUP) changes in a running server; the rest
/// takes effect at the next start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunable {
    pub max_uploads_per_owner: u64,
    pub quota_per_owner: u64,
    pub max_entries_per_owner: u64,
    pub expire_after: Duration,
    pub dedup_across_owners: bool,
    pub on_complete: Option<String>,
    pub on_create: Option<String>,
    pub hook_timeout: Duration,
}

impl Tunable {
    /// `key: old → new` for every setting that differs, named like the options.
    fn changes(&self, new: &Self) -> Vec<String> {
        let mut out = Vec::new();
        let mut note = |key: &str, old: String, new: String| {
            if old != new {
                out.push(format!("{key}: {old} → {new}"));
            }
        };
        note(
            "max-uploads",
            self.max_uploads_per_owner.to_string(),
            new.max_uploads_per_owner.to_string(),
        );
        let size = |b: u64| match b {
            0 => "none".to_owned(),
            b => ferry_proto::units::human(b),
        };
        note(
            "quota",
            size(self.quota_per_owner),
            size(new.quota_per_owner),
        );
        note(
            "max-entries",
            self.max_entries_per_owner.to_string(),
            new.max_entries_per_owner.to_string(),
        );
        let span = |d: Duration| match d.as_secs() {
            0 => "never".to_owned(),
            s => ferry_proto::units::human_duration(s),
        };
        note(
            "expire-after",
            span(self.expire_after),
            span(new.expire_after),
        );
        note(
            "dedup-across-owners",
            self.dedup_across_owners.to_string(),
            new.dedup_across_owners.to_string(),
        );
        note(
            "on-complete",
            format!("{:?}", self.on_complete),
            format!("{:?}", new.on_complete),
        );
        note(
            "on-create",
            format!("{:?}", self.on_create),
            format!("{:?}", new.on_create),
        );
        note(
            "hook-timeout",
            span(self.hook_timeout),
            span(new.hook_timeout),
        );
        out
    }
}

/// Changes a running server's [`Tunable`] settings (what SIGHUP does in `ferryd`).
#[derive(Clone)]
pub struct Reloader(pub(crate) Arc<crate::uploads::Uploads>);

impl Reloader {
    /// Applies `config`'s tunable settings and returns what changed (`key: old → new`);
    /// logs it, and names the settings that differ but need a restart.
    pub fn reload(&self, config: &Config) -> Vec<String> {
        let new = config.tunable();
        let changed = self.0.set_tunable(new.clone()).changes(&new);
        self.0.store().set_queue_hooks(config.on_complete.is_some());
        let old = self.0.config();
        let mut fixed = Vec::new();
        if old.listen != config.listen {
            fixed.push("listen");
        }
        if old.data_dir != config.data_dir {
            fixed.push("data");
        }
        if old.min_free_inodes != config.min_free_inodes {
            fixed.push("min-free-inodes");
        }
        if old.cert != config.cert {
            fixed.push("cert/key");
        }
        if old.admin_listen != config.admin_listen || old.admin_token != config.admin_token {
            fixed.push("admin-listen/admin-token");
        }
        if old.max_connections != config.max_connections
            || old.max_connections_per_ip != config.max_connections_per_ip
        {
            fixed.push("max-connections");
        }
        if changed.is_empty() {
            info!("reloaded: no setting that a reload changes differs");
        } else {
            info!(changed = changed.join("; "), "reloaded");
        }
        if !fixed.is_empty() {
            warn!(
                settings = fixed.join(", "),
                "changed settings that take effect only at the next start"
            );
        }
        changed
    }
}

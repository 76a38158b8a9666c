//! The built binaries as separate processes, killed with SIGKILL mid-upload.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::*;

const SIZE: usize = 64 * 1024 * 1024;
const CHUNK: u64 = 1 << 20;
const PARALLEL: u64 = 8;

fn token(data: &std::path::Path) -> String {
    let out = Command::new(binary("ferryd"))
        .args(["token", "add", "alice", "--init", "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn upload_command(
    server: &ServerProcess,
    token: &str,
    state: &std::path::Path,
    file: &std::path::Path,
    rate: &str,
) -> Command {
    let mut cmd = Command::new(binary("ferry"));
    cmd.args([
        "--server",
        &server.addr.to_string(),
        "--token",
        token,
        "--fingerprint",
        &server.fingerprint,
    ])
    .arg("--state-dir")
    .arg(state)
    .args([
        "--idle-timeout",
        "5",
        "--reconnect-for",
        "60",
        "upload",
        "--json",
        "--chunk-size",
        "1MiB",
        "--parallel",
        "8",
    ])
    .args(["--limit-rate", rate])
    .arg(file)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    cmd
}

fn json_report(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no JSON line in {text:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_client_then_rerun_resumes() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let source = random_file(work.path(), "video.mp4", SIZE, 30);
    let state = work.path().join("state");

    let mut first = upload_command(&server, &token, &state, &source, "24M")
        .spawn()
        .unwrap();
    let reached = eventually(Duration::from_secs(60), async || {
        server.durable_bytes(&token, &state.join("probe")).await >= SIZE as u64 / 3
    })
    .await;
    assert!(reached, "a third acknowledged within 60 s");
    let _ = first.kill();
    let _ = first.wait();
    let held = server.durable_bytes(&token, &state.join("probe")).await;
    assert!(held < SIZE as u64, "the kill landed mid-transfer");

    let started = Instant::now();
    let out = upload_command(&server, &token, &state, &source, "1G")
        .output()
        .unwrap();
    assert!(out.status.success(), "re-run exit {:?}", out.status.code());
    let report = json_report(&out.stdout);
    let sent = report["bytes_sent"].as_u64().unwrap();
    let skipped = report["bytes_skipped"].as_u64().unwrap();
    eprintln!(
        "client kill: held {held} at kill, re-run sent {sent}, skipped {skipped}, took {:?}",
        started.elapsed()
    );
    assert_eq!(report["status"], "complete");
    assert_eq!(report["resumed"], true);
    assert!(
        sent <= SIZE as u64 - held + PARALLEL * CHUNK,
        "re-sent {sent} > missing {} + window",
        SIZE as u64 - held
    );
    // Everything missing is sent; beyond that only a chunk the old connection was still
    // finishing when the re-run asked for it (a race bounded by the window).
    assert!(sent + skipped >= SIZE as u64);
    assert!(
        sent + skipped <= SIZE as u64 + PARALLEL * CHUNK,
        "sent {sent} + skipped {skipped}"
    );
    assert_same_file(&source, &data.join("files").join("alice").join("video.mp4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_server_then_restart_and_the_client_completes() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let token = token(&data);
    let mut server = ServerProcess::start(&data, "127.0.0.1:0");
    let source = random_file(work.path(), "movie.mkv", SIZE, 31);
    let state = work.path().join("state");

    let mut client = upload_command(&server, &token, &state, &source, "32M")
        .spawn()
        .unwrap();
    let reached = eventually(Duration::from_secs(60), async || {
        server.durable_bytes(&token, &state.join("probe")).await >= SIZE as u64 / 3
    })
    .await;
    assert!(reached, "a third acknowledged within 60 s");
    let addr = server.addr.to_string();
    server.kill9();
    let restarted = ServerProcess::start(&data, &addr);
    assert_eq!(
        restarted.fingerprint, server.fingerprint,
        "the certificate survives a restart"
    );

    let status =
        wait_child(&mut client, Duration::from_secs(120)).expect("client finishes within 120 s");
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(client.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "client exit {:?}", status.code());
    let report = json_report(&stdout);
    eprintln!("server kill: {report}");
    assert_eq!(report["status"], "complete");
    assert!(report["reconnects"].as_u64().unwrap() >= 1);
    assert_same_file(&source, &data.join("files").join("alice").join("movie.mkv"));
    let log = std::fs::read_to_string(&restarted.log).unwrap();
    assert!(
        log.contains("recovered from an unclean stop"),
        "restart re-verified the store: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut server = ServerProcess::start(&data, "127.0.0.1:0");
    assert_eq!(server.terminate(), Some(0));
    let again = ServerProcess::start(&data, "127.0.0.1:0");
    let log = std::fs::read_to_string(&again.log).unwrap();
    assert!(!log.contains("unclean"), "a SIGTERM stop is clean: {log}");
}

#[test]
fn cli_usage_errors_exit_2() {
    let out = Command::new(binary("ferry"))
        .args(["upload", "x", "--parallel", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(binary("ferry"))
        .args(["--token", "t", "--fingerprint", "nope", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("ferry: cannot start: bad --fingerprint: \"nope\" is not sha256:"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pick_validates_answers_uploads_the_choice_and_quits() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let folder = work.path().join("videos");
    std::fs::create_dir_all(&folder).unwrap();
    random_file(&folder, "a.mp4", 1000, 40);
    let chosen = random_file(&folder, "b.mp4", 300_000, 41);

    let mut child = Command::new(binary("ferry"))
        .args([
            "--server",
            &server.addr.to_string(),
            "--token",
            &token,
            "--fingerprint",
            &server.fingerprint,
        ])
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .args(["pick", "--desc", "second take"])
        .arg(&folder)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"abc\n7\n2\nq\n")
        .unwrap();
    let status = wait_child(&mut child, Duration::from_secs(60)).expect("pick ends within 60 s");
    let mut stdout = String::new();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();

    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    // The menu is on stderr (stdout is kept for --json).
    assert_eq!(stdout, "", "nothing on stdout without --json");
    assert!(
        stderr.contains("  1 ") && stderr.contains("a.mp4") && stderr.contains("b.mp4"),
        "numbered list: {stderr}"
    );
    assert_eq!(
        stderr
            .matches("Upload which? [e.g. 1,3,5-7; a for all; q to quit; 1-2]")
            .count(),
        4,
        "asked once per answer: {stderr}"
    );
    assert!(
        stderr.contains("ferry: \"abc\" is not a number from 1 to 2; enter e.g. 1,3,5-7, a or q"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ferry: \"7\" is not a number from 1 to 2; enter e.g. 1,3,5-7, a or q"),
        "{stderr}"
    );
    // Published in the folder picked from, as `upload videos/` would.
    assert_same_file(&chosen, &data.join("files/alice/videos/b.mp4"));
    assert!(
        !data.join("files/alice/videos/a.mp4").exists(),
        "only the chosen file is uploaded"
    );
}

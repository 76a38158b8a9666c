//! Sources that grow while they upload (issue 24, protocol 9): `ferry upload --follow FILE`
//! (a recording still being written, rewritten at its start at the end), `ferry upload - --name
//! NAME` (a pipe, through a server killed mid-way, and a client killed mid-way), and reading an
//! upload back while it arrives (`ferry cat`, `GET` on the web listener): only acknowledged
//! bytes, a prefix of the source that only grows.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_tests::http::Https;
use ferry_tests::{
    assert_same_file, binary, eventually_blocking, random_file, wait_child, Deployment,
    ServerProcess,
};

/// `ferry` against the deployment, its journal and spool in `state`.
fn ferry(server: &ServerProcess, token: &str, state: &Path) -> Command {
    let mut cmd = Command::new(binary("ferry"));
    cmd.env("FERRY_SERVER", server.addr.to_string())
        .env("FERRY_TOKEN", token)
        .env("FERRY_FINGERPRINT", &server.fingerprint)
        .env("FERRY_STATE_DIR", state)
        .env_remove("FERRY_CONFIG")
        .args(["--idle-timeout", "5", "--reconnect-for", "60"]);
    cmd
}

/// Bytes that do not repeat (xorshift), `len` of them, from `seed`.
pub(crate) fn noise(len: usize, seed: &mut u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `path` as a recorder does: a 4 KiB header of zeros, then bursts of uneven size at
/// uneven intervals for `secs`, then the header rewritten with its real content (an MP4's
/// `moov` position, a WAV's sizes), then closed. Returns when closed, with the time it closed.
fn record(path: PathBuf, secs: f64, started: mpsc::Sender<()>) -> std::thread::JoinHandle<Instant> {
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&[0; 4096]).unwrap();
        let _ = started.send(());
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let end = Instant::now() + Duration::from_secs_f64(secs);
        // Bounded: one burst per turn, each turn at least 20 ms, for `secs`.
        while Instant::now() < end {
            let size = 100_000 + (seed % 3_000_000) as usize;
            file.write_all(&noise(size, &mut seed)).unwrap();
            std::thread::sleep(Duration::from_millis(20 + seed % 300));
        }
        use std::os::unix::fs::FileExt;
        file.write_all_at(&noise(4096, &mut seed), 0).unwrap();
        drop(file);
        Instant::now()
    })
}

/// The first test: a writer appends for 10 s in uneven bursts, rewrites its first
/// 4 KiB at the end and closes the file, while `ferry upload --follow` runs; the client is
/// killed (SIGKILL) in the middle and the same command run again completes it. The published
/// file equals the final source, and the second run resumed (it did not start over).
#[test]
fn a_followed_recording_rewritten_at_its_start_is_published_as_it_ended_across_a_kill() {
    let dep = Deployment::start(&[]);
    let state = dep.work.path().join("state");
    let src = dep.work.path().join("rec.mp4");
    let (tx, rx) = mpsc::channel();
    let writer = record(src.clone(), 10.0, tx);
    rx.recv_timeout(Duration::from_secs(10)).unwrap();

    let mut first = ferry(&dep.server, &dep.token, &state)
        .args(["upload", "--follow"])
        .arg(&src)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        first.try_wait().unwrap().is_none(),
        "still following the file"
    );
    first.kill().unwrap();
    first.wait().unwrap();

    let second = ferry(&dep.server, &dep.token, &state)
        .args(["upload", "--json", "--follow"])
        .arg(&src)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let closed = writer.join().unwrap();
    let out = output_within(second, Duration::from_secs(60));
    let published = Instant::now();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming upload"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(report["status"], "complete");
    assert_eq!(report["resumed"], true);
    assert!(
        report["bytes_skipped"].as_u64().unwrap() > 0,
        "the second run kept what the first sent: {report}"
    );
    assert_same_file(&src, &dep.data.join("files/alice/rec.mp4"));
    // Nothing the server held was sent again but the rewritten first chunk (and one chunk the
    // first run may have had in flight).
    let (size, sent, held) = (
        report["size"].as_u64().unwrap(),
        report["bytes_sent"].as_u64().unwrap(),
        report["bytes_skipped"].as_u64().unwrap(),
    );
    assert!(
        sent <= size - held + 2 * (4 << 20),
        "sent {sent} of {size}, {held} held"
    );
    eprintln!(
        "--follow: {} bytes; second run sent {}, found {} on the server; published {:.2} s after the writer closed the file",
        report["size"],
        report["bytes_sent"],
        report["bytes_skipped"],
        published.duration_since(closed).as_secs_f64()
    );
}

/// Runs to its end (bounded): stdout and stderr.
fn output_within(child: Child, limit: Duration) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("ferry did not end within {limit:?}");
        }
    }
}

/// Feeds `data` to `stdin` in 1 MiB pieces, pausing `pause` after each, and stops before byte
/// `hold_at` until told to go on (or for good, if the receiver goes).
fn feed(
    mut stdin: std::process::ChildStdin,
    data: Vec<u8>,
    pause: Duration,
    hold_at: usize,
    go_on: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for (i, piece) in data.chunks(1 << 20).enumerate() {
            if i * (1 << 20) == hold_at && go_on.recv().is_err() {
                return;
            }
            if stdin.write_all(piece).is_err() {
                return;
            }
            std::thread::sleep(pause);
        }
    })
}

/// `ferry upload - --name NAME` (and `extra`) with stdout and stderr piped, fed `data` by a
/// thread (`feed`) that holds before byte `hold_at` until `go` says so (or goes).
struct Piped {
    child: Child,
    feeder: std::thread::JoinHandle<()>,
    go: mpsc::Sender<()>,
}

fn pipe_into(
    dep: &Deployment,
    state: &Path,
    name: &str,
    extra: &[&str],
    data: Vec<u8>,
    pause: Duration,
    hold_at: usize,
) -> Piped {
    let mut child = ferry(&dep.server, &dep.token, state)
        .args(["upload", "-", "--name", name])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (go, go_on) = mpsc::channel();
    let feeder = feed(child.stdin.take().unwrap(), data, pause, hold_at, go_on);
    Piped { child, feeder, go }
}

/// The second test: `head -c 300M /dev/urandom | tee src | ferry upload - --name x.ts`,
/// with the server killed (SIGKILL) mid-way and started again: the client reconnects, sends
/// again what was not acknowledged from its spool, and the published file equals `src`.
#[test]
fn standard_input_survives_a_server_killed_mid_way() {
    let mut dep = Deployment::start(&[]);
    let state = dep.work.path().join("state");
    let src = random_file(dep.work.path(), "src", 300 << 20, 24);
    let data = std::fs::read(&src).unwrap();
    let Piped { child, feeder, go } = pipe_into(
        &dep,
        &state,
        "x.ts",
        &["--json"],
        data,
        Duration::ZERO,
        120 << 20,
    );
    // Some of it durable, then the server dies with chunks in flight.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let probe = state.join("probe");
    assert!(
        eventually_blocking(Duration::from_secs(60), || {
            runtime.block_on(dep.server.durable_bytes(&dep.token, &probe)) >= 64 << 20
        }),
        "the upload made progress"
    );
    let addr = dep.server.addr.to_string();
    dep.server.kill9();
    go.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    dep.server = ServerProcess::start(&dep.data, &addr);
    let out = output_within(child, Duration::from_secs(120));
    feeder.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["reconnects"].as_u64().unwrap() >= 1, "{report}");
    assert_same_file(&src, &dep.data.join("files/alice/x.ts"));
    // Only what was in flight was sent twice: at most the window (8 chunks of 4 MiB) and the
    // chunks that had arrived but were not committed when the server died.
    let extra = report["bytes_sent"].as_u64().unwrap() - (300 << 20);
    eprintln!("stdin through a server kill: {extra} bytes sent twice");
    assert!(extra <= 16 * (4 << 20), "sent {extra} bytes twice");
    assert!(
        std::fs::read_dir(state.join("spool"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "the spool is emptied once the upload is published"
    );
}

/// A client that dies cannot read its pipe again: the next `ferry upload -` of that name sends
/// what the spool kept, says how much of the stream the server holds and that the rest is lost,
/// exits 3 without reading its own input, and the kept part reads back (`ferry cat`) as the
/// stream's start.
#[test]
fn a_stream_whose_client_died_is_said_lost_with_what_is_kept() {
    let dep = Deployment::start(&[]);
    let state = dep.work.path().join("state");
    let src = random_file(dep.work.path(), "src", 40 << 20, 25);
    let data = std::fs::read(&src).unwrap();
    let Piped {
        mut child,
        feeder,
        go: _go,
    } = pipe_into(
        &dep,
        &state,
        "cut.ts",
        &[],
        data.clone(),
        Duration::ZERO,
        30 << 20,
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let probe = state.join("probe");
    assert!(eventually_blocking(Duration::from_secs(60), || {
        runtime.block_on(dep.server.durable_bytes(&dep.token, &probe)) >= 16 << 20
    }));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(feeder);

    let mut again = ferry(&dep.server, &dep.token, &state)
        .args(["upload", "-", "--name", "cut.ts"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    again
        .stdin
        .take()
        .unwrap()
        .write_all(b"another stream")
        .unwrap();
    let out = output_within(again, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("a pipe cannot be read again") && stderr.contains("is lost"),
        "{stderr}"
    );
    let id = stderr
        .split("unfinished upload ")
        .nth(1)
        .and_then(|rest| rest.get(..32))
        .unwrap_or_else(|| panic!("no upload id in {stderr}"))
        .to_owned();
    let kept = ferry(&dep.server, &dep.token, &state)
        .args(["cat", &id])
        .output()
        .unwrap();
    assert!(kept.status.success());
    assert!(
        kept.stdout.len() >= 16 << 20,
        "{} bytes kept",
        kept.stdout.len()
    );
    assert!(
        data.starts_with(&kept.stdout),
        "the kept part is the stream's start"
    );
    assert!(
        !dep.data.join("files/alice/cut.ts").exists(),
        "nothing is published from a cut stream"
    );
}

/// The third test: `ferry cat` during an upload returns a prefix of the source that
/// only grows, never a byte that was not acknowledged; `cat --follow` ends with the whole file.
/// The same over HTTPS: `GET` with the owner's token, a range within the acknowledged bytes
/// (`206`), a range past them (`416`), and an upload link refused (`403`).
#[test]
fn an_upload_reads_back_as_a_growing_prefix_of_its_source() {
    let dep = Deployment::start(&["--web-listen", "127.0.0.1:0"]);
    let state = dep.work.path().join("state");
    let src = random_file(dep.work.path(), "src", 48 << 20, 26);
    let data = std::fs::read(&src).unwrap();
    // The stream stops at 24 MiB until a reader has seen part of it: then the rest follows.
    let Piped {
        mut child,
        feeder,
        go,
    } = pipe_into(
        &dep,
        &state,
        "live.ts",
        &[],
        data.clone(),
        Duration::from_millis(20),
        24 << 20,
    );
    let mut go = Some(go);
    let web = Https::new(
        dep.server.web.expect("the web listener"),
        &dep.server.fingerprint,
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bearer = format!("Bearer {}", dep.token);
    let mut seen = 0;
    let mut growing = 0;
    let mut partial = false;
    let mut id = None;
    // Bounded: 200 looks, each at least 50 ms.
    for _ in 0..200 {
        let out = ferry(&dep.server, &dep.token, &state)
            .args(["cat", "live.ts"])
            .output()
            .unwrap();
        if out.status.success() {
            let got = out.stdout;
            assert!(
                data.starts_with(&got),
                "ferry cat gave a prefix of the source"
            );
            assert!(
                got.len() >= seen,
                "the prefix only grows: {} after {seen}",
                got.len()
            );
            if got.len() > seen {
                growing += 1;
            }
            seen = got.len();
            if seen > 0 && seen < data.len() {
                // Part of the stream read while the rest has not been written yet.
                partial = true;
                if let Some(go) = go.take() {
                    go.send(()).unwrap();
                }
            }
        }
        if id.is_none() && seen > 0 {
            id = Some(upload_id(&dep, &state));
        }
        if let Some(id) = &id {
            let path = format!("/files/{id}");
            let reply =
                runtime.block_on(web.send("GET", &path, &[("Authorization", &bearer)], b""));
            assert_eq!(reply.status, 200, "{:?}", reply.headers);
            let durable: usize = reply
                .header("ferry-durable-offset")
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(reply.bytes.len(), durable);
            assert!(
                data.starts_with(&reply.bytes),
                "GET gave a prefix of the source"
            );
            if durable > 1000 {
                let reply = runtime.block_on(web.send(
                    "GET",
                    &path,
                    &[("Authorization", &bearer), ("Range", "bytes=100-999")],
                    b"",
                ));
                assert_eq!(reply.status, 206);
                assert_eq!(reply.bytes, &data[100..1000]);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(go);
    feeder.join().unwrap();
    assert!(wait_child(&mut child, Duration::from_secs(60)).is_some_and(|s| s.success()));
    assert!(partial, "a prefix was read while the upload went on");
    eprintln!("ferry cat saw the prefix grow {growing} times");
    let whole = ferry(&dep.server, &dep.token, &state)
        .args(["cat", "--follow", "live.ts"])
        .output()
        .unwrap();
    assert!(whole.status.success());
    assert!(
        whole.stdout == data,
        "cat --follow gives the whole file at the end"
    );

    let id = id.expect("the upload was seen");
    let path = format!("/files/{id}");
    let past = runtime.block_on(web.send(
        "GET",
        &path,
        &[("Authorization", &bearer), ("Range", "bytes=60000000-")],
        b"",
    ));
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some("bytes */50331648"));
    let none = runtime.block_on(web.send("GET", &path, &[], b""));
    assert_eq!(none.status, 401);
    let links = ferry_server::links::Links::new(&dep.data);
    let (_, grant) = links.add("alice", 0, 0, 0).unwrap();
    let link = runtime.block_on(web.send(
        "GET",
        &path,
        &[("Authorization", &format!("Bearer {grant}"))],
        b"",
    ));
    assert_eq!(link.status, 403, "{}", link.body);
    assert!(link.body.contains("refused"), "{}", link.body);

    // A read link: its URL alone reads this upload (for players and editors that take a URL),
    // and it does nothing else.
    let web_addr = dep.server.web.unwrap();
    let out = Command::new(binary("ferryd"))
        .args(["link", "alice", "--read", &id, "--data"])
        .arg(&dep.data)
        .args([
            "--web-url",
            &format!("https://127.0.0.1:{}", web_addr.port()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let prefix = format!("https://127.0.0.1:{}/files/{id}?grant=fl_", web_addr.port());
    assert!(url.starts_with(&prefix), "{url}");
    let target = url
        .split_once(&format!(":{}", web_addr.port()))
        .unwrap()
        .1
        .to_owned();
    let grant = url.rsplit("grant=").next().unwrap().to_owned();
    let read = runtime.block_on(web.send("GET", &target, &[], b""));
    assert_eq!(read.status, 200, "{}", read.body);
    assert!(read.bytes == data, "the read link reads the whole upload");
    let reader = format!("Bearer {grant}");
    let other = runtime.block_on(web.send(
        "GET",
        &format!("/files/{}", "0".repeat(32)),
        &[("Authorization", &reader)],
        b"",
    ));
    assert_eq!(other.status, 404, "another upload: {}", other.body);
    let upload = runtime.block_on(web.send(
        "POST",
        "/files/",
        &[
            ("Authorization", &reader),
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Length", "10"),
        ],
        b"",
    ));
    assert_eq!(
        upload.status, 403,
        "a read link cannot upload: {}",
        upload.body
    );
    let quic = ferry(&dep.server, &grant, &state)
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(quic.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&quic.stderr).contains("a read link reads its upload over HTTPS"),
        "{}",
        String::from_utf8_lossy(&quic.stderr)
    );
    let out = Command::new(binary("ferryd"))
        .args(["link", "--revoke", &url, "--data"])
        .arg(&dep.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = runtime.block_on(web.send("GET", &target, &[], b""));
    assert_eq!(revoked.status, 401, "revoked by its URL");
}

/// The id of the owner's newest upload, from `ferry list --json`.
fn upload_id(dep: &Deployment, state: &Path) -> String {
    let out = ferry(&dep.server, &dep.token, state)
        .args(["list", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no uploads: {text}"));
    let upload: serde_json::Value = serde_json::from_str(line).unwrap();
    upload["upload_id"].as_str().unwrap().to_owned()
}

/// An upload of unknown length counts against nothing until its length is known, so the server
/// checks each chunk against the owner's free quota as it comes: a stream past it is refused
/// (`quota_exceeded`, exit 2) instead of filling the disk.
#[test]
fn a_stream_past_the_owners_quota_is_refused_as_it_arrives() {
    let dep = Deployment::start(&["--quota", "20M"]);
    let state = dep.work.path().join("state");
    let src = random_file(dep.work.path(), "src", 40 << 20, 27);
    let Piped {
        child,
        feeder,
        go: _go,
    } = pipe_into(
        &dep,
        &state,
        "big.ts",
        &[],
        std::fs::read(&src).unwrap(),
        Duration::ZERO,
        usize::MAX,
    );
    let out = output_within(child, Duration::from_secs(60));
    feeder.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("quota_exceeded"), "{stderr}");
    assert!(!dep.data.join("files/alice/big.ts").exists());
}

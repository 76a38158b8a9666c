//! Issue 22, first contact: the server — not one laptop's journal — decides what is uploaded
//! already; and the other findings of a new user's and an operator's first day.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::*;

use crate::jobs::json_lines;

/// `ferry upload --json` against `deployment` with the state (journal) folder `state`.
fn upload(
    deployment: &Deployment,
    state: &Path,
    args: &[&str],
    files: &[impl AsRef<std::ffi::OsStr>],
) -> Command {
    let mut cmd = Command::new(binary("ferry"));
    cmd.args(["--server", &deployment.server.addr.to_string()])
        .args(["--token", &deployment.token])
        .args(["--fingerprint", &deployment.server.fingerprint])
        .arg("--state-dir")
        .arg(state)
        .args(["upload", "--json", "--chunk-size", "1MiB"])
        .args(args)
        .args(files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The names under `files/alice/` (and its folders), sorted.
fn published(deployment: &Deployment) -> Vec<String> {
    let root = deployment.data.join("files").join("alice");
    let mut out = Vec::new();
    let mut todo = vec![root.clone()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Finding 4: a fresh resume journal (another laptop, a colleague with the same token, a
/// cleaned `~/.local/state`) re-sent a whole card (711.9 MiB) and published every file again
/// as `MVI_0006 (1).MP4`. Now the client asks the server (`lookup`) before it creates: the same
/// content complete is skipped with 0 bytes sent, an unfinished upload of the same bytes is
/// resumed, and a different file under the name follows `--on-exists`, said plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_journal_sends_nothing_the_server_holds_and_duplicates_nothing() {
    let deployment = Deployment::start(&[]);
    let work = deployment.work.path();
    let card = work.join("card");
    std::fs::create_dir_all(card.join("DCIM")).unwrap();
    random_file(&card, "MVI_0006.MP4", 3 << 20, 6);
    random_file(&card.join("DCIM"), "MVI_0007.MP4", 2 << 20, 7);
    let out = upload(&deployment, &work.join("laptop-a"), &[], &[&card])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = published(&deployment);
    assert_eq!(before, ["card/DCIM/MVI_0007.MP4", "card/MVI_0006.MP4"]);

    // Another laptop (a fresh journal): nothing sent, nothing published again.
    let out = upload(&deployment, &work.join("laptop-b"), &[], &[&card])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    for line in &lines[..2] {
        assert_eq!(line["status"], "skipped", "{line}");
        assert_eq!(line["bytes_sent"], 0, "{line}");
        assert!(
            line["reason"].as_str().is_some_and(
                |r| r.contains("already on the server as") && r.contains("the same content")
            ),
            "{line}"
        );
    }
    assert_eq!(published(&deployment), before, "no (1) copies");

    // A different file under one of the names: --on-exists skip says so, rename publishes a
    // numbered copy and says why.
    let other = work.join("other").join("card");
    std::fs::create_dir_all(&other).unwrap();
    let changed = random_file(&other, "MVI_0006.MP4", 3 << 20, 99);
    let out = upload(
        &deployment,
        &work.join("laptop-c"),
        &["--on-exists", "skip"],
        &[&other],
    )
    .output()
    .unwrap();
    let line = &json_lines(&out.stdout)[0];
    assert_eq!(line["status"], "skipped");
    assert_eq!(
        line["reason"],
        "a different file is on the server as card/MVI_0006.MP4 (--on-exists skip)"
    );
    let out = upload(&deployment, &work.join("laptop-d"), &[], &[&other])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("a different file is on the server as card/MVI_0006.MP4; this one is published under a new name"),
        "{said}"
    );
    assert_eq!(
        json_lines(&out.stdout)[0]["file_name"],
        "card/MVI_0006 (1).MP4"
    );
    assert_same_file(
        &changed,
        &deployment.data.join("files/alice/card/MVI_0006 (1).MP4"),
    );
}

/// Finding 4, an unfinished upload: laptop A is interrupted mid-file; laptop B (its own,
/// empty journal) resumes A's upload instead of starting another — it reads only the chunks
/// the server holds to check them, sends the rest, and one file is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_journal_resumes_an_upload_begun_elsewhere() {
    let deployment = Deployment::start(&[]);
    let work = deployment.work.path();
    let size = 24u64 << 20;
    let source = random_file(work, "interview.mov", size as usize, 11);
    let mut first = upload(
        &deployment,
        &work.join("laptop-a"),
        &["--limit-rate", "4M"],
        &[&source],
    )
    .spawn()
    .unwrap();
    let probe = work.join("probe");
    assert!(
        eventually(Duration::from_secs(60), async || {
            deployment
                .server
                .durable_bytes(&deployment.token, &probe)
                .await
                >= 6 << 20
        })
        .await,
        "a quarter durable within 60 s"
    );
    let _ = first.kill();
    let _ = first.wait();
    let held = deployment
        .server
        .durable_bytes(&deployment.token, &probe)
        .await;
    let out = upload(&deployment, &work.join("laptop-b"), &[], &[&source])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = &json_lines(&out.stdout)[0];
    eprintln!("fresh journal resume: {held} bytes held, then {line}");
    assert_eq!(line["status"], "complete");
    assert_eq!(line["resumed"], true, "{line}");
    let sent = line["bytes_sent"].as_u64().unwrap();
    assert!(
        sent <= size - held + (8 << 20),
        "sent {sent} with {held} held"
    );
    assert_eq!(published(&deployment), ["interview.mov"]);
    assert_same_file(&source, &deployment.data.join("files/alice/interview.mov"));
}

/// Finding 5 (`--dedup` from a fresh journal added another hard link each run: `a (2).bin`,
/// `a (3).bin`): when the asked name holds another file, the content is published once as
/// `a (1).bin`, and every later `dedup` of it under that name answers `existing` with that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_of_the_same_content_under_a_taken_name_publishes_once() {
    use ferry_proto::{ContentHasher, Frame};
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let other = random_file(local.path(), "a.bin", 7000, 1);
    let content = random_file(&local.path().join(""), "y.bin", 9000, 2);
    let mut client = server.client(&server.alice, local.path());
    client.upload(&other, "").await.unwrap();
    client.upload(&content, "").await.unwrap();
    let data = std::fs::read(&content).unwrap();
    let hash = ContentHasher::of(&data, 64 << 10).to_hex();
    let mut raw = ferry_tests::raw::Raw::hello(&server, &server.alice).await;
    let mut names = Vec::new();
    for req in 1..=3 {
        raw.frame(&Frame::Dedup {
            req,
            file_name: "a.bin".into(),
            size: data.len() as u64,
            chunk_size: 64 << 10,
            content_hash: hash.clone(),
            desc: String::new(),
            dir: Vec::new(),
            on_exists: Default::default(),
        })
        .await;
        match raw.next().await {
            Some(Frame::Deduped {
                file_name,
                existing,
                ..
            }) => names.push((file_name, existing)),
            other => panic!("expected deduped, got {other:?}"),
        }
    }
    assert_eq!(
        names,
        [
            ("a (1).bin".to_owned(), false),
            ("a (1).bin".to_owned(), true),
            ("a (1).bin".to_owned(), true)
        ]
    );
    assert!(!server.published("alice", "a (2).bin").exists());
}

/// Finding 10: `ferry upload fifo` hung silently and `ferry upload /dev/zero` published an empty
/// file with exit 0. What is not a regular file is refused at once, saying what it is (exit 2).
#[test]
fn what_is_not_a_regular_file_is_refused_at_once() {
    let deployment = Deployment::start(&[]);
    let work = deployment.work.path();
    let fifo = work.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    for (path, says) in [
        (
            fifo.clone(),
            "it is a named pipe (FIFO), not a regular file",
        ),
        (
            PathBuf::from("/dev/zero"),
            "it is a character device, not a regular file",
        ),
    ] {
        let mut child = upload(&deployment, &work.join("state"), &[], &[&path])
            .spawn()
            .unwrap();
        let status = wait_child(&mut child, Duration::from_secs(20)).expect("ends at once");
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    assert!(published(&deployment).is_empty(), "nothing published");
}

/// Finding 11: a card's `.DS_Store` and `._*` AppleDouble files were uploaded (as `DS_Store`).
/// They are left out by default, `--exclude GLOB` leaves out more, and the summary says what.
#[test]
fn camera_card_litter_is_left_out_and_said() {
    let deployment = Deployment::start(&[]);
    let work = deployment.work.path();
    let card = work.join("card");
    std::fs::create_dir_all(&card).unwrap();
    random_file(&card, "MVI_0001.MP4", 5000, 1);
    random_file(&card, "MVI_0001.THM", 100, 2);
    random_file(&card, ".DS_Store", 100, 3);
    random_file(&card, "._MVI_0001.MP4", 100, 4);
    let out = upload(
        &deployment,
        &work.join("state"),
        &["--exclude", "*.THM"],
        &[card],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(published(&deployment), ["card/MVI_0001.MP4"]);
    assert!(
        stderr.contains("left out 3 files and folders by --exclude (.DS_Store, ._*, *.THM)"),
        "{stderr}"
    );
}

/// Finding 12: `ferryd check-config | head -1` and `ferry hash … | head -1` panicked (exit 101);
/// `--log-format json` still wrote plain lines; SIGTERM ended the client silently (143).
#[test]
fn closed_pipes_json_logs_and_sigterm_behave() {
    let work = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..200)
        .map(|i| random_file(work.path(), &format!("f{i}"), 10, i))
        .collect();
    // A reader that goes away after one line.
    for (name, args) in [
        ("ferry", vec!["hash".to_owned()]),
        ("ferryd", vec!["check-config".to_owned()]),
    ] {
        let mut cmd = Command::new(binary(name));
        cmd.args(&args);
        if name == "ferry" {
            cmd.args(&files);
        } else {
            cmd.args([
                "--data",
                work.path().join("d").to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let status = wait_child(&mut child, Duration::from_secs(20)).expect("ends");
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(0), "{name} {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    let data = work.path().join("data");
    ferry_server::Tokens::new(&data).add("alice").unwrap();
    let mut serve = Command::new(binary("ferryd"));
    serve
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = serve.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = Vec::new();
    for line in lines.by_ref().take(10) {
        let line = line.unwrap();
        let json: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("a plain line in --log-format json: {line:?}"));
        let listening = json["fields"]["message"] == "listening";
        seen.push(json);
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let listening = seen.last().expect("some lines");
    assert_eq!(listening["fields"]["message"], "listening", "{seen:?}");
    assert!(listening["fields"]["certificate"]
        .as_str()
        .is_some_and(|c| c.starts_with("sha256:")));
}

/// Finding 12, the client: SIGTERM (a service manager, `kill`) prints the resume hint as Ctrl-C
/// does and exits 143.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_client_says_how_to_resume() {
    let deployment = Deployment::start(&[]);
    let work = deployment.work.path();
    let source = random_file(work, "long.mov", 16 << 20, 5);
    let mut child = upload(
        &deployment,
        &work.join("state"),
        &["--limit-rate", "1M"],
        &[source],
    )
    .spawn()
    .unwrap();
    let probe = work.join("probe");
    assert!(
        eventually(Duration::from_secs(30), async || {
            deployment
                .server
                .durable_bytes(&deployment.token, &probe)
                .await
                > 0
        })
        .await
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_child(&mut child, Duration::from_secs(20)).expect("ends");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("ferry: stopped by SIGTERM: interrupted; run the same command to resume"),
        "{stderr}"
    );
}

/// Finding 14: `check-config` passed while the port was taken, and `serve` then left an empty
/// `ferry-data/` behind. Both see the port now, and nothing is created before it is bound.
#[test]
fn a_port_in_use_is_found_before_anything_is_created() {
    let work = tempfile::tempdir().unwrap();
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().to_string();
    let data = work.path().join("ferry-data");
    let check = Command::new(binary("ferryd"))
        .args(["check-config", "--listen", &port, "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("cannot be bound"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let serve = Command::new(binary("ferryd"))
        .args(["serve", "--listen", &port, "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(1));
    assert!(!data.exists(), "serve left {} behind", data.display());
}

/// Finding 15: a config file holding a token, readable by others, is said to be.
#[test]
fn a_readable_config_file_with_a_token_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.toml");
    std::fs::write(&config, "token = \"fy_0000\"\nserver = \"127.0.0.1:9\"\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(binary("ferry"))
        .arg("--config")
        .arg(&config)
        .args(["--connect-timeout", "1", "list"])
        .env_remove("FERRY_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds a token and other users can read it (mode 0644)"),
        "{stderr}"
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(binary("ferry"))
        .arg("--config")
        .arg(&config)
        .args(["--connect-timeout", "1", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("other users can read it"));
}

/// Finding 7: a server `--max-uploads` below the client's `--files` failed files with
/// `too_many_uploads` (exit 2). The job now runs no more files at once than the server allows
/// (the limit comes in `welcome`), and a file that meets the limit anyway (another upload of
/// the token in progress) waits for one of the job's files to end instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_within_the_servers_upload_limit() {
    let deployment = Deployment::start(&["--max-uploads", "2"]);
    let work = deployment.work.path();
    // An unfinished upload of this token already holds one of the two places.
    let mut server_side = ferry_tests::raw::Raw::login(
        deployment.server.addr,
        &deployment.server.fingerprint,
        &deployment.token,
        Default::default(),
    )
    .await;
    server_side.create("elsewhere.bin", 1 << 20).await;
    let files: Vec<PathBuf> = (0..4)
        .map(|i| random_file(work, &format!("clip{i}.mov"), 1 << 20, i))
        .collect();
    let out = upload(&deployment, &work.join("state"), &["--files", "4"], &files)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("the server allows 2 uploads in progress per token; sending 2 files at once"),
        "{stderr}"
    );
    let lines = json_lines(&out.stdout);
    assert!(
        lines[..4].iter().all(|l| l["status"] == "complete"),
        "{lines:?}"
    );
    for f in &files {
        assert_same_file(
            f,
            &deployment
                .data
                .join("files/alice")
                .join(f.file_name().unwrap()),
        );
    }
}

//! Issue 22, first contact: the server — not one laptop's journal — decides what is uploaded
//! already; and the other findings of a new user's and an operator's first day.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::*;

use crate::jobs::json_lines;

/// `ferry upload --json` against `deployment` with the state (journal) folder `state`.
fn upload(deployment: &Deployment, state: &Path, args: &[&str], files: &[PathBuf]) -> Command {
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
    let out = upload(&deployment, &work.join("laptop-a"), &[], &[card.clone()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = published(&deployment);
    assert_eq!(before, ["card/DCIM/MVI_0007.MP4", "card/MVI_0006.MP4"]);

    // Another laptop (a fresh journal): nothing sent, nothing published again.
    let out = upload(&deployment, &work.join("laptop-b"), &[], &[card.clone()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    for line in &lines[..2] {
        assert_eq!(line["status"], "skipped", "{line}");
        assert_eq!(line["bytes_sent"], 0, "{line}");
        assert!(
            line["reason"]
                .as_str()
                .is_some_and(|r| r.contains("already on the server as") && r.contains("the same content")),
            "{line}"
        );
    }
    assert_eq!(published(&deployment), before, "no (1) copies");

    // A different file under one of the names: --on-exists skip says so, rename publishes a
    // numbered copy and says why.
    let other = work.join("other").join("card");
    std::fs::create_dir_all(&other).unwrap();
    let changed = random_file(&other, "MVI_0006.MP4", 3 << 20, 99);
    let out = upload(&deployment, &work.join("laptop-c"), &["--on-exists", "skip"], &[other.clone()])
        .output()
        .unwrap();
    let line = &json_lines(&out.stdout)[0];
    assert_eq!(line["status"], "skipped");
    assert_eq!(
        line["reason"],
        "a different file is on the server as card/MVI_0006.MP4 (--on-exists skip)"
    );
    let out = upload(&deployment, &work.join("laptop-d"), &[], &[other.clone()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("a different file is on the server as card/MVI_0006.MP4; this one is published under a new name"),
        "{said}"
    );
    assert_eq!(json_lines(&out.stdout)[0]["file_name"], "card/MVI_0006 (1).MP4");
    assert_same_file(&changed, &deployment.data.join("files/alice/card/MVI_0006 (1).MP4"));
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
    let mut first = upload(&deployment, &work.join("laptop-a"), &["--limit-rate", "4M"], &[source.clone()])
        .spawn()
        .unwrap();
    let probe = work.join("probe");
    assert!(
        eventually(Duration::from_secs(60), async || {
            deployment.server.durable_bytes(&deployment.token, &probe).await >= 6 << 20
        })
        .await,
        "a quarter durable within 60 s"
    );
    let _ = first.kill();
    let _ = first.wait();
    let held = deployment.server.durable_bytes(&deployment.token, &probe).await;
    let out = upload(&deployment, &work.join("laptop-b"), &[], &[source.clone()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = &json_lines(&out.stdout)[0];
    eprintln!("fresh journal resume: {held} bytes held, then {line}");
    assert_eq!(line["status"], "complete");
    assert_eq!(line["resumed"], true, "{line}");
    let sent = line["bytes_sent"].as_u64().unwrap();
    assert!(sent <= size - held + (8 << 20), "sent {sent} with {held} held");
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

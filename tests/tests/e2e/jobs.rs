//! Upload jobs as people run them (part of issue 9), with the built binaries: a command of
//! several files re-run after an interruption never sends a completed file again nor
//! publishes it twice; Ctrl-C says how to resume and exits 130.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::*;

/// A deployment and the job commands run against it.
pub(crate) struct Job(pub(crate) Deployment);

impl std::ops::Deref for Job {
    type Target = Deployment;
    fn deref(&self) -> &Deployment {
        &self.0
    }
}

impl Job {
    pub(crate) fn start() -> Self {
        Self(Deployment::start(&[]))
    }

    /// `ferry` with this job's server, token, fingerprint and state directory, then `args`.
    pub(crate) fn ferry(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary("ferry"));
        cmd.args(["--server", &self.server.addr.to_string()])
            .args(["--token", &self.token])
            .args(["--fingerprint", &self.server.fingerprint])
            .arg("--state-dir")
            .arg(self.work.path().join("state"))
            .args(args);
        cmd
    }

    /// `ferry upload --json FILES…` with the given extra upload options.
    pub(crate) fn upload(&self, files: &[PathBuf], extra: &[&str]) -> Command {
        let mut cmd = self.ferry(&["upload", "--json", "--chunk-size", "1MiB"]);
        cmd.args(extra)
            .args(files)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    pub(crate) fn published(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data.join("files").join("alice"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

pub(crate) fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

fn sources(dir: &Path) -> Vec<PathBuf> {
    vec![
        random_file(dir, "A001.mov", 2 << 20, 1),
        random_file(dir, "A002.mov", 3 << 20, 2),
        random_file(dir, "A003.mov", 24 << 20, 3),
    ]
}

/// Before: Ctrl-C during A003 and a re-run sent A001 and A002 again in full and published
/// them as `A001 (1).mov` and `A002 (1).mov`. Now the re-run skips them with 0 bytes sent
/// (the journal remembers them, the server confirms them), resumes A003, and a third run sends
/// nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_rerun_after_an_interruption_skips_what_is_done_and_duplicates_nothing() {
    let job = Job::start();
    let files = sources(job.work.path());
    // The three run at once (sharing one window), the small ones end first.
    let mut first = job.upload(&files, &["--limit-rate", "4M"]).spawn().unwrap();
    let probe = job.work.path().join("probe");
    let reached = eventually(Duration::from_secs(60), async || {
        job.published().len() == 2 && job.server.durable_bytes(&job.token, &probe).await >= 4 << 20
    })
    .await;
    assert!(
        reached,
        "A001 and A002 published and A003 under way within 60 s"
    );
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(job.published(), ["A001.mov", "A002.mov"]);

    let out = job.upload(&files, &[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 4, "a line per file and a summary: {lines:?}");
    for line in &lines[..2] {
        assert_eq!(line["status"], "skipped", "{line}");
        assert_eq!(line["bytes_sent"], 0, "{line}");
    }
    assert_eq!(lines[2]["status"], "complete");
    assert_eq!(lines[2]["resumed"], true);
    assert!(lines[2]["bytes_skipped"].as_u64().unwrap() >= 4 << 20);
    assert_eq!(lines[3]["status"], "summary");
    assert_eq!(
        (lines[3]["complete"].as_u64(), lines[3]["skipped"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(job.published(), ["A001.mov", "A002.mov", "A003.mov"]);
    for file in &files {
        let name = file.file_name().unwrap();
        assert_same_file(file, &job.data.join("files").join("alice").join(name));
    }

    let again = job.upload(&files, &[]).output().unwrap();
    assert!(again.status.success());
    let lines = json_lines(&again.stdout);
    assert_eq!(lines[3]["skipped"], 3, "{lines:?}");
    assert_eq!(lines[3]["bytes_sent"], 0, "{lines:?}");
    assert_eq!(job.published(), ["A001.mov", "A002.mov", "A003.mov"]);
}

/// Before: Ctrl-C printed "connection lost: interrupted" and exited 1. Now it says how to
/// resume and exits 130, like any program stopped by SIGINT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_says_how_to_resume_and_exits_130() {
    let job = Job::start();
    let files = sources(job.work.path());
    let mut child = job
        .upload(&files[2..], &["--limit-rate", "4M"])
        .spawn()
        .unwrap();
    let probe = job.work.path().join("probe");
    let started = eventually(Duration::from_secs(60), async || {
        job.server.durable_bytes(&job.token, &probe).await > 0
    })
    .await;
    assert!(started, "the upload started within 60 s");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = wait_child(&mut child, Duration::from_secs(20)).and_then(|s| s.code());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted; run the same command to resume"),
        "{stderr}"
    );
}

/// Before: a server that was not running cost 15 lines of "connection lost … reconnecting" and
/// 318 s before `ferry upload` gave up (`ferry list` 15 s). Now the first connect fails within
/// the connect timeout (5 s) with the address and a hint, exit 1, and nothing is called "lost".
#[test]
fn a_server_never_reached_fails_within_five_seconds_with_a_hint() {
    let work = tempfile::tempdir().unwrap();
    let file = random_file(work.path(), "clip.mov", 1 << 20, 4);
    // A port with nothing listening: bound, noted, released.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("127.0.0.1:{port}");
    for args in [vec!["list"], vec!["upload", file.to_str().unwrap()]] {
        let started = std::time::Instant::now();
        let out = Command::new(binary("ferry"))
            .args(["--server", &server, "--token", "fy_x", "--fingerprint"])
            .arg(format!("sha256:{}", "0".repeat(64)))
            .arg("--state-dir")
            .arg(work.path().join("state"))
            .args(&args)
            .output()
            .unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(took < Duration::from_secs(7), "{args:?} took {took:?}");
        assert!(
            stderr.contains(&format!(
                "no answer over UDP within 5 s; is ferryd running and UDP port {port} open?"
            )),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("lost"), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}

/// Before: `ferry upload videos/` failed with "Is a directory" and left a stuck upload. Now a
/// folder is uploaded as a tree under its own name, like `scp -r`: nested folders, Unicode
/// names and empty folders kept, a symbolic link left out with a note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_is_uploaded_as_a_tree_and_a_rerun_sends_nothing() {
    let job = Job::start();
    let top = job.work.path().join("卡 card");
    std::fs::create_dir_all(top.join("day 1/视频")).unwrap();
    std::fs::create_dir_all(top.join("empty/also empty")).unwrap();
    random_file(&top, "A001.mov", 300_000, 11);
    random_file(&top.join("day 1"), "A002.mov", 200_000, 12);
    random_file(&top.join("day 1/视频"), "第一集.mp4", 100_000, 13);
    std::os::unix::fs::symlink(top.join("A001.mov"), top.join("link.mov")).unwrap();

    let out = job
        .upload(std::slice::from_ref(&top), &[])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("leaving out") && stderr.contains("link.mov"),
        "{stderr}"
    );
    let lines = json_lines(&out.stdout);
    let names: Vec<&str> = lines[..3]
        .iter()
        .map(|l| l["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "卡 card/A001.mov",
            "卡 card/day 1/A002.mov",
            "卡 card/day 1/视频/第一集.mp4"
        ]
    );
    let published = job.data.join("files").join("alice").join("卡 card");
    for rel in ["A001.mov", "day 1/A002.mov", "day 1/视频/第一集.mp4"] {
        assert_same_file(&top.join(rel), &published.join(rel));
    }
    assert!(
        published.join("empty/also empty").is_dir(),
        "empty folders kept"
    );
    assert!(
        !published.join("link.mov").exists(),
        "the link was left out"
    );

    let again = job
        .upload(std::slice::from_ref(&top), &[])
        .output()
        .unwrap();
    let lines = json_lines(&again.stdout);
    let summary = lines.last().unwrap();
    assert_eq!(
        (summary["skipped"].as_u64(), summary["bytes_sent"].as_u64()),
        (Some(3), Some(0))
    );
    assert!(!published.join("A001 (1).mov").exists());
}

/// Before: with stderr not a terminal nothing was printed until the end, so a long job under
/// nohup showed no sign of life. Now one plain line every `--progress-interval` seconds: the
/// share sent, what is safe on the server, and the send rate once there is one; then the
/// file's line in human units; `-q` prints none of it.
#[test]
fn progress_lines_appear_when_stderr_is_not_a_terminal() {
    let job = Job::start();
    let file = random_file(job.work.path(), "long.mov", 6 << 20, 21);
    let out = job
        .ferry(&["upload", "--limit-rate", "2M", "--progress-interval", "1"])
        .arg(&file)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ferry: long.mov  ") && l.contains(" safe on server"))
        .collect();
    assert!(lines.len() >= 2, "{stderr}");
    assert!(lines.iter().all(|l| l.contains("% ")), "{stderr}");
    // Rate-limited to 2 MiB/s: the rate shown is the send rate, not acks.
    let rated: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("MiB/s  ETA "))
        .collect();
    assert!(!rated.is_empty(), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("long.mov: 6.0 MiB in ") && last.contains(" s (") && last.ends_with("/s)"),
        "{stderr}"
    );

    let quiet = random_file(job.work.path(), "quiet.mov", 3 << 20, 22);
    let out = job
        .ferry(&[
            "upload",
            "-q",
            "--limit-rate",
            "2M",
            "--progress-interval",
            "1",
        ])
        .arg(&quiet)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "-q prints errors only"
    );
}

/// `ferry list` has a header and dates; `ferry status` says "nothing in progress" when so;
/// `ferry abort FILE` finds the upload through the journal and forgets the local record, so
/// the next run starts afresh instead of resuming an upload that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_status_and_abort_by_file() {
    let job = Job::start();
    let files = sources(job.work.path());
    let ferry = |args: &[&str]| {
        let out = job.ferry(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(ferry(&["status"]), "nothing in progress\n");
    let mut first = job
        .upload(&files[2..], &["--limit-rate", "4M"])
        .spawn()
        .unwrap();
    let probe = job.work.path().join("probe");
    let reached = eventually(Duration::from_secs(60), async || {
        job.server.durable_bytes(&job.token, &probe).await > 0
    })
    .await;
    assert!(reached);
    let _ = first.kill();
    let _ = first.wait();

    let listed = ferry(&["list"]);
    let mut lines = listed.lines();
    assert!(lines.next().unwrap().starts_with("ID "), "{listed}");
    let row = lines.next().unwrap();
    assert!(
        row.contains("receiving") && row.contains("A003.mov"),
        "{listed}"
    );
    let file = files[2].to_str().unwrap();
    assert!(ferry(&["status", file]).contains("A003.mov"));
    assert!(ferry(&["abort", file]).starts_with("aborted "));
    assert_eq!(ferry(&["status"]), "nothing in progress\n");

    let out = job.upload(&files[2..], &[]).output().unwrap();
    let lines = json_lines(&out.stdout);
    assert_eq!(lines[0]["status"], "complete");
    assert_eq!(
        lines[0]["resumed"], false,
        "a fresh upload, not the aborted one"
    );
}

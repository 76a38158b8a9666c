//! `ferryd` hooks (issue 10): `--on-complete` once with its environment, also after a kill
//! -9 while it runs; the `--on-create` veto reaching the client.

use std::process::Command;
use std::time::Duration;

use ferry_tests::*;

use crate::operations::text;

/// `--on-complete` runs once per published upload with the documented environment; a kill -9
/// while it runs (so before it ended) does not lose it: it runs after the restart.
#[test]
fn on_complete_runs_once_also_after_a_kill() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let seen = work.path().join("seen");
    std::fs::create_dir_all(&seen).unwrap();
    let token = ferry_server::Tokens::new(&data).add("alice").unwrap();
    // The first server's hook never ends in time: it is still running when the server dies.
    let blocker = work.path().join("started");
    // `exec`: the sleep keeps the shell's PID, written first, so the test can stop it.
    let hang = format!("echo $$ > {}; exec sleep 60", blocker.display());
    let mut server = ServerProcess::start_with(&data, "127.0.0.1:0", &["--on-complete", &hang]);
    let file = random_file(work.path(), "clip one.mov", 1 << 20, 7);
    let upload = |server: &ServerProcess, file: &std::path::Path| {
        Command::new(binary("ferry"))
            .args(["--server", &server.addr.to_string(), "--token", &token])
            .args(["--fingerprint", &server.fingerprint])
            .arg("--state-dir")
            .arg(work.path().join("state"))
            .arg("upload")
            .arg("--json")
            .arg(file)
            .output()
            .unwrap()
    };
    let out = upload(&server, &file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first_id = line["upload_id"].as_str().unwrap().to_owned();
    assert!(
        eventually_blocking(Duration::from_secs(10), || std::fs::read_to_string(
            &blocker
        )
        .is_ok_and(|p| p.ends_with('\n'))),
        "the hook started"
    );
    server.kill9();
    // The hook outlives a SIGKILLed server (under systemd the unit's cgroup is killed with it).
    let pid = std::fs::read_to_string(&blocker).unwrap();
    let _ = Command::new("kill").args(["-9", pid.trim()]).status();

    // The restarted server has a hook that records what it was given.
    let record = format!(
        "env | grep ^FERRY_ | sort > {}/\"$FERRY_UPLOAD_ID\".env",
        seen.display()
    );
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", &["--on-complete", &record]);
    let second = random_file(work.path(), "two.mov", 1000, 8);
    let out = upload(&server, &second);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let both = eventually_blocking(Duration::from_secs(20), || {
        std::fs::read_dir(&seen).map_or(0, |d| d.count()) == 2
    });
    assert!(both, "both hooks ran after the restart");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        std::fs::read_dir(&seen).unwrap().count(),
        2,
        "each ran once"
    );

    let listed: Vec<_> = std::fs::read_dir(&seen)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let env = std::fs::read_to_string(seen.join(format!("{first_id}.env")))
        .unwrap_or_else(|e| panic!("{first_id}.env in {listed:?}: {e}"));
    let published = data.join("files/alice/clip one.mov");
    for line in [
        format!("FERRY_UPLOAD_ID={first_id}"),
        "FERRY_OWNER=alice".to_owned(),
        format!("FERRY_PATH={}", published.display()),
        "FERRY_NAME=clip one.mov".to_owned(),
        format!("FERRY_SIZE={}", 1 << 20),
        format!("FERRY_CONTENT_HASH={}", content_hash_file(&file, 4 << 20)),
        format!("FERRY_CHUNK_SIZE={}", 4 << 20),
        "FERRY_DESC=".to_owned(),
    ] {
        assert!(env.lines().any(|l| l == line), "{line:?} in\n{env}");
    }
}

/// `--on-create` can refuse an upload; the client shows the hook's message and exits 2, and
/// nothing is created.
#[test]
fn on_create_veto_reaches_the_client() {
    let hook =
        "case \"$FERRY_NAME\" in *.exe) echo \"no programs here, only video\"; exit 1;; esac";
    let job = Deployment::start(&["--on-create", hook]);
    let ferry = |file: &std::path::Path| {
        Command::new(binary("ferry"))
            .args([
                "--server",
                &job.server.addr.to_string(),
                "--token",
                &job.token,
            ])
            .args(["--fingerprint", &job.server.fingerprint])
            .arg("--state-dir")
            .arg(job.work.path().join("state"))
            .arg("upload")
            .arg(file)
            .output()
            .unwrap()
    };
    let exe = random_file(job.work.path(), "setup.exe", 1000, 1);
    let out = ferry(&exe);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused: no programs here, only video"),
        "{stderr}"
    );
    let video = random_file(job.work.path(), "clip.mov", 1000, 2);
    assert!(ferry(&video).status.success());
    let names: Vec<_> = std::fs::read_dir(job.data.join("files/alice"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["clip.mov"]);
}

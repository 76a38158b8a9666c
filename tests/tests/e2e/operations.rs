//! The operator's surface of `ferryd` (part of issue 10), with the built binaries: the config
//! file and its precedence, the data-directory guard of the token commands, logs without
//! colour codes in a file, and the traps found when running it as a service.

use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::*;

fn ferryd(args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("ferryd"));
    cmd.args(args).env_remove("RUST_LOG");
    cmd
}

/// A process killed (by PID) and reaped when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The config file's keys are the long options; a flag beats `FERRYD_*`, which beats the file;
/// an unknown key or a bad value is exit 2 naming it and the file; `check-config` prints the
/// effective settings.
#[test]
fn config_file_precedence_and_errors() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("ferryd.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7000\"\nmax-uploads = 5\nquota = \"2G\"\nexpire-after = \"12h\"\ndedup-across-owners = true\n",
    )
    .unwrap();
    let out = ferryd(&["check-config", "--max-uploads", "9"])
        .arg("--config")
        .arg(&file)
        .env("FERRYD_QUOTA", "1G")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for line in [
        "listen = \"127.0.0.1:7000\"", // from the file
        "max-uploads = 9",             // the flag beats the file
        "quota = 1073741824",          // the environment beats the file
        "expire-after = \"43200s\"",   // from the file
        "dedup-across-owners = true",  // a switch from the file
        "max-connections = 256",       // the default
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in\n{stdout}");
    }

    std::fs::write(&file, "listen = \"127.0.0.1:7000\"\nlisen = \"x\"\n").unwrap();
    let out = ferryd(&["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown key `lisen`") && stderr.contains("ferryd.toml"),
        "{stderr}"
    );

    std::fs::write(&file, "expire-after = \"7\"\n").unwrap();
    let out = ferryd(&["serve", "--config"]).arg(&file).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ferryd.toml")
            && stderr.contains("\"7\" has no unit; write 7s, 7m, 7h or 7d"),
        "{stderr}"
    );

    // A certificate that cannot be read: check-config says the server would not start.
    std::fs::write(
        &file,
        "cert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"\n",
    )
    .unwrap();
    let out = ferryd(&["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("would not start"),
        "{}",
        text(&out.stderr)
    );
}

/// Before: `ferryd token add bob` in another directory silently created `./ferry-data` and
/// printed a token the server never accepted. Now token commands refuse a directory without
/// server state (unless `--init`), and the config file's `data` points them at the right one.
#[test]
fn token_commands_refuse_a_directory_without_server_state() {
    let work = tempfile::tempdir().unwrap();
    let elsewhere = work.path().join("elsewhere");
    for args in [
        vec!["token", "add", "bob"],
        vec!["token", "list"],
        vec!["fingerprint"],
    ] {
        let out = ferryd(&args)
            .arg("--data")
            .arg(&elsewhere)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("holds no ferryd state"),
            "{args:?}: {stderr}"
        );
        assert!(!elsewhere.exists(), "{args:?} created the directory");
    }
    let out = ferryd(&["token", "add", "bob", "--init", "--data"])
        .arg(&elsewhere)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("fy_"));

    // The config file names the data directory for every subcommand.
    let file = work.path().join("ferryd.toml");
    std::fs::write(
        &file,
        format!("data = {:?}\nlisten = \"127.0.0.1:0\"\n", elsewhere),
    )
    .unwrap();
    let out = ferryd(&["token", "list", "--config"])
        .arg(&file)
        .current_dir(work.path())
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "bob\n", "{}", text(&out.stderr));
}

/// Logs written to a file carry no colour codes; an invalid `RUST_LOG` is refused; a port in
/// use does not mark the store unclean; a second server on the same data directory is told
/// so; SIGHUP does not stop the server; `--cert` fingerprints; `ferryd help --help` works.
#[test]
fn service_traps() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mut server = ServerProcess::start(&data, "127.0.0.1:0");
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("generated a self-signed certificate"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "no ANSI codes in a log file: {log:?}"
    );

    let out = ferryd(&["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(work.path().join("other"))
        .env("RUST_LOG", "info,=bogus=")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid RUST_LOG"),
        "{}",
        text(&out.stderr)
    );

    // The same port: refused before the store is touched.
    let out = ferryd(&["serve", "--listen", &server.addr.to_string(), "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("failed to bind UDP"),
        "{}",
        text(&out.stderr)
    );
    // Another port, the same data directory.
    let out = ferryd(&["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is in use by another ferryd (its database is locked)"),
        "{}",
        text(&out.stderr)
    );

    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP stopped the server"
    );
    assert_eq!(server.terminate(), Some(0));
    let again = ServerProcess::start(&data, "127.0.0.1:0");
    let log = std::fs::read_to_string(&again.log).unwrap();
    assert!(
        !log.contains("unclean"),
        "a clean stop, and no unclean mark from the refused starts: {log}"
    );

    let fingerprint = ferryd(&["fingerprint", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let by_cert = ferryd(&["fingerprint", "--cert"])
        .arg(data.join("tls/cert.pem"))
        .output()
        .unwrap();
    assert!(by_cert.status.success());
    assert_eq!(fingerprint.stdout, by_cert.stdout);
    assert_eq!(text(&by_cert.stdout).trim(), again.fingerprint);

    for args in [vec!["help", "--help"], vec!["help", "serve"], vec!["help"]] {
        let out = ferryd(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("Usage: "), "{args:?}");
    }
}

/// Before: with its stderr pipe closed (a log collector gone), ferryd panicked (exit 101) at
/// its next log line. Now it keeps serving.
#[test]
fn a_closed_stderr_does_not_stop_the_server() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let token = ferry_server::Tokens::new(&data).add("alice").unwrap();
    let mut child = KillOnDrop(
        ferryd(&["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut addr = String::new();
    for _ in 0..20 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        if let Some(rest) = line.strip_prefix("ferryd: listening on ") {
            addr = rest.split(' ').next().unwrap().to_owned();
            break;
        }
    }
    assert!(!addr.is_empty());
    drop(stderr);
    // A connection and a login make the server log.
    let file = random_file(work.path(), "a.mov", 100_000, 1);
    let out = Command::new(binary("ferry"))
        .args(["--server", &addr, "--token", &token, "--state-dir"])
        .arg(work.path().join("state"))
        .arg("--known-servers")
        .arg(work.path().join("ks"))
        .arg("upload")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        child.try_wait().unwrap().is_none(),
        "ferryd died with its stderr closed"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_child(child, Duration::from_secs(30)).expect("ferryd stops");
    assert_eq!(status.code(), Some(0));
}

/// `GET path` on the admin listener: (status code, body).
fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

/// The admin listener's address, from the server's log.
fn admin_addr(server: &ServerProcess) -> String {
    let log = std::fs::read_to_string(&server.log).unwrap();
    log.lines()
        .find_map(|l| l.strip_prefix("ferryd: admin listener on http://"))
        .expect("the admin listener's line")
        .to_owned()
}

/// One sample of `/metrics`, by its full name and labels.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
        .parse()
        .unwrap()
}

/// `/metrics` moves by the right amounts after a real upload (bytes, created, completed, and
/// the active gauges back to 0), a refused token counts as an auth failure, `/uploads` and
/// `ferryd uploads` list an interrupted upload, and `--admin-token` guards all but /healthz.
#[test]
fn admin_listener_metrics_uploads_and_token() {
    let job = Deployment::start(&["--admin-listen", "127.0.0.1:0", "--admin-token", "s3cret"]);
    let admin = admin_addr(&job.server);
    assert_eq!(get(&admin, "/healthz", None), (200, "ok\n".into()));
    assert_eq!(get(&admin, "/metrics", None).0, 401);
    assert_eq!(get(&admin, "/metrics", Some("wrong")).0, 401);
    let before = get(&admin, "/metrics", Some("s3cret")).1;
    assert_eq!(sample(&before, "ferry_uploads_completed_total"), 0.0);

    let ferry = |args: &[&str]| {
        let mut cmd = Command::new(binary("ferry"));
        cmd.args([
            "--server",
            &job.server.addr.to_string(),
            "--token",
            &job.token,
        ])
        .args(["--fingerprint", &job.server.fingerprint])
        .arg("--state-dir")
        .arg(job.work.path().join("state"))
        .args(args);
        cmd
    };
    let file = random_file(job.work.path(), "clip.mov", 3 << 20, 90);
    let out = ferry(&["upload"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = Command::new(binary("ferry"))
        .args([
            "--server",
            &job.server.addr.to_string(),
            "--token",
            "fy_unknown",
        ])
        .args(["--fingerprint", &job.server.fingerprint, "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unauthorized"),
        "{}",
        text(&out.stderr)
    );

    let settled = eventually_blocking(Duration::from_secs(10), || {
        let m = get(&admin, "/metrics", Some("s3cret")).1;
        sample(&m, "ferry_connections_active") == 0.0
    });
    assert!(settled, "connections_active back to 0");
    let after = get(&admin, "/metrics", Some("s3cret")).1;
    assert_eq!(
        sample(&after, "ferry_bytes_received_total"),
        (3 << 20) as f64
    );
    assert_eq!(sample(&after, "ferry_uploads_created_total"), 1.0);
    assert_eq!(sample(&after, "ferry_uploads_completed_total"), 1.0);
    assert_eq!(sample(&after, "ferry_uploads_active"), 0.0);
    assert_eq!(sample(&after, "ferry_auth_failures_total"), 1.0);
    assert!(sample(&after, "ferry_commit_duration_seconds_count") >= 1.0);
    assert!(sample(&after, "ferry_disk_free_bytes") > 0.0);

    // An interrupted upload is listed, with its owner and progress.
    let big = random_file(job.work.path(), "long.mov", 16 << 20, 91);
    let mut child = ferry(&["upload", "--limit-rate", "4M", "--chunk-size", "1MiB"])
        .arg(&big)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listed = eventually_blocking(Duration::from_secs(30), || {
        get(&admin, "/uploads", Some("s3cret"))
            .1
            .contains("\"durable_bytes\":1048576")
            || get(&admin, "/uploads", Some("s3cret"))
                .1
                .contains("\"durable_bytes\":2097152")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(listed, "{}", get(&admin, "/uploads", Some("s3cret")).1);
    let out = ferryd(&[
        "uploads",
        "--admin-listen",
        &admin,
        "--admin-token",
        "s3cret",
    ])
    .output()
    .unwrap();
    let table = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        table.starts_with("ID ") && table.contains("  alice  "),
        "{table}"
    );
    assert!(table.contains("long.mov"), "{table}");
}

/// `/healthz` is 503, with the reason, while the disk is below the reserve.
#[test]
fn healthz_is_503_below_the_disk_reserve() {
    let job = Deployment::start(&["--admin-listen", "127.0.0.1:0", "--min-free-space", "1000T"]);
    let admin = admin_addr(&job.server);
    let (code, body) = get(&admin, "/healthz", None);
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("disk below the reserve"), "{body}");
}

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
        format!("FERRY_SHA256={}", sha256_file(&file)),
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

/// The log of one upload, as JSON lines: connected (peer, owner), created, published (owner,
/// path, size, duration, rate) and disconnected (reason), in the connection's and the upload's
/// spans.
#[test]
fn one_upload_logs_its_life_in_json() {
    let job = Deployment::start(&["--log-format", "json"]);
    let file = random_file(job.work.path(), "clip.mov", 2 << 20, 5);
    let out = Command::new(binary("ferry"))
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
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let disconnected = eventually_blocking(Duration::from_secs(10), || {
        std::fs::read_to_string(&job.server.log).is_ok_and(|l| l.contains("disconnected"))
    });
    assert!(disconnected);
    let log = std::fs::read_to_string(&job.server.log).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let find = |message: &str| {
        events
            .iter()
            .find(|e| e["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("{message:?} in\n{log}"))
            .clone()
    };
    let connected = find("connected");
    assert_eq!(connected["level"], "INFO");
    assert_eq!(connected["fields"]["owner"], "alice");
    assert_eq!(connected["span"]["name"], "conn");
    let created = find("created");
    assert_eq!(created["fields"]["name"], "clip.mov");
    assert_eq!(created["span"]["owner"], "alice");
    let published = find("published");
    assert_eq!(published["fields"]["owner"], "alice");
    assert_eq!(published["fields"]["path"], "clip.mov");
    assert_eq!(published["fields"]["size"], 2 << 20);
    assert!(published["fields"]["upload_s"].is_u64());
    assert!(published["fields"]["rate_mib_s"].is_string());
    assert_eq!(published["span"]["name"], "upload");
    assert_eq!(published["span"]["name"].as_str(), Some("upload"));
    assert_eq!(published["span"]["id"].as_str().map(str::len), Some(32));
    let gone = find("disconnected");
    assert!(
        gone["fields"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{gone}"
    );
}

/// SIGHUP re-reads the config file: changed limits are applied and announced to new
/// connections, the change is logged, an invalid file changes nothing and stops nothing; a new
/// token works and a revoked one is refused.
#[test]
fn sighup_reloads_limits_and_tokens() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let file = work.path().join("ferryd.toml");
    std::fs::write(&file, "max-uploads = 16\n").unwrap();
    let alice = ferry_server::Tokens::new(&data).add("alice").unwrap();
    let config = file.to_str().unwrap().to_owned();
    let mut server = ServerProcess::start_with(&data, "127.0.0.1:0", &["--config", &config]);
    let ping = |token: &str| {
        Command::new(binary("ferry"))
            .args(["--server", &server.addr.to_string(), "--token", token])
            .args([
                "--fingerprint",
                &server.fingerprint,
                "ping",
                "-c",
                "1",
                "--json",
            ])
            .output()
            .unwrap()
    };
    let limits = |token: &str| -> serde_json::Value {
        let out = ping(token);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["limits"].clone()
    };
    assert_eq!(limits(&alice)["max_uploads"], 16);
    let hup = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    let log_has = |needle: &str| {
        eventually_blocking(Duration::from_secs(10), || {
            std::fs::read_to_string(&server.log).is_ok_and(|l| l.contains(needle))
        })
    };

    std::fs::write(
        &file,
        "max-uploads = 1\nexpire-after = \"12h\"\nlog-level = \"debug,quinn=warn,sled=warn\"\n",
    )
    .unwrap();
    hup(server.child.id());
    assert!(
        log_has("max-uploads: 16 → 1"),
        "{}",
        std::fs::read_to_string(&server.log).unwrap()
    );
    assert!(log_has("expire-after: 604800s → 43200s"));
    assert!(log_has("log level changed"));
    let now = limits(&alice);
    assert_eq!(
        (now["max_uploads"].as_u64(), now["expire_after"].as_u64()),
        (Some(1), Some(43200))
    );

    std::fs::write(&file, "max-uploads = \"many\"\n").unwrap();
    hup(server.child.id());
    assert!(log_has("reload refused"));
    assert_eq!(
        limits(&alice)["max_uploads"],
        1,
        "an invalid file changed nothing"
    );

    let tokens = ferry_server::Tokens::new(&data);
    let bob = tokens.add("bob").unwrap();
    tokens.revoke("alice").unwrap();
    hup(server.child.id());
    assert!(ping(&bob).status.success());
    let out = ping(&alice);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unauthorized"),
        "{}",
        text(&out.stderr)
    );
    assert!(server.child.try_wait().unwrap().is_none(), "still serving");
    assert_eq!(server.terminate(), Some(0));
}

/// `ferryd notice`: a client in the middle of an upload is shown the notice at once (once);
/// new connections get it in `welcome`, also after a restart, until `--clear`.
#[test]
fn operator_notices_reach_clients() {
    let mut job = Deployment::start(&["--admin-listen", "127.0.0.1:0"]);
    let admin = admin_addr(&job.server);
    let ferry = |server: &ServerProcess, args: &[&str]| {
        let mut cmd = Command::new(binary("ferry"));
        cmd.args(["--server", &server.addr.to_string(), "--token", &job.token])
            .args(["--fingerprint", &server.fingerprint])
            .arg("--state-dir")
            .arg(job.work.path().join("state"))
            .args(args);
        cmd
    };
    let file = random_file(job.work.path(), "long.mov", 4 << 20, 3);
    let mut upload = ferry(&job.server, &["upload", "--limit-rate", "2M"])
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let text_of = "maintenance tonight at 22:00 UTC; uploads resume after";
    let out = ferryd(&["notice", text_of, "--admin-listen", &admin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = wait_child(&mut upload, Duration::from_secs(60)).expect("the upload ends");
    let mut stderr = String::new();
    std::io::Read::read_to_string(upload.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let line = format!("ferry: notice from the server: {text_of}");
    assert_eq!(stderr.matches(&line).count(), 1, "{stderr}");
    assert_eq!(get(&admin, "/notice", None), (200, text_of.to_owned()));

    // Kept across a restart, sent in welcome.
    assert_eq!(job.server.terminate(), Some(0));
    job.server =
        ServerProcess::start_with(&job.data, "127.0.0.1:0", &["--admin-listen", "127.0.0.1:0"]);
    let out = ferry(&job.server, &["ping", "-c", "1"]).output().unwrap();
    assert!(text(&out.stderr).contains(&line), "{}", text(&out.stderr));
    let admin = admin_addr(&job.server);
    let out = ferryd(&["notice", "--clear", "--admin-listen", &admin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ferry(&job.server, &["ping", "-c", "1"]).output().unwrap();
    assert!(
        !text(&out.stderr).contains("notice"),
        "{}",
        text(&out.stderr)
    );
}

//! The operator's surface of `ferryd` (part of issue 10), with the built binaries: the config
//! file and its precedence, the data-directory guard of the token commands, logs without
//! colour codes in a file and one upload's JSON log, SIGHUP reloads, and the traps found when
//! running it as a service. The admin listener is in `admin.rs`, hooks in `hooks.rs`.

use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::*;

pub(crate) fn ferryd(args: &[&str]) -> Command {
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

pub(crate) fn text(bytes: &[u8]) -> String {
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
        "quota = \"1G\"",              // the environment beats the file
        "expire-after = \"12h\"",      // from the file
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
    assert!(log_has("expire-after: 7 d → 12 h"));
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

/// `ferryd link`: the URL from the config's `web-url` on stdout and nothing else; without a web
/// address a clear error (exit 1); `--list` shows it; `--revoke` by URL removes it; a bad owner
/// is refused.
#[test]
fn link_commands_make_list_and_revoke() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    ferry_server::Tokens::new(&data).add("alice").unwrap();
    let data_arg = data.to_str().unwrap();
    let out = ferryd(&["link", "alice", "--data", data_arg])
        .env_remove("FERRYD_WEB_URL")
        .env_remove("FERRYD_WEB_LISTEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("the link needs the web listener's address"),
        "{}",
        text(&out.stderr)
    );

    let config = work.path().join("ferryd.toml");
    std::fs::write(
        &config,
        format!("data = {data_arg:?}\nweb-url = \"https://files.example.com:8443/\"\n"),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let out = ferryd(&["link", "alice", "--max-files", "3", "--config", config_arg])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let url = text(&out.stdout);
    assert_eq!(url.lines().count(), 1, "only the URL on stdout: {url}");
    let url = url.trim();
    assert!(
        url.starts_with("https://files.example.com:8443/u/fl_"),
        "{url}"
    );

    let listed = ferryd(&["link", "--list", "--config", config_arg])
        .output()
        .unwrap();
    let listed = text(&listed.stdout);
    // Dates and sizes for people (issue 22, finding 13): no epoch seconds.
    assert!(
        listed.contains("alice  expires 2")
            && (listed.contains(" UTC (in 1 d), ") || listed.contains(" UTC (in 23 h 59 min), "))
            && listed.contains("no size bound, up to 3 files"),
        "{listed}"
    );
    let grant = url.rsplit('/').next().unwrap();
    assert!(!listed.contains(grant), "the grant is not stored");

    let revoked = ferryd(&["link", "--revoke", url, "--config", config_arg])
        .output()
        .unwrap();
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let listed = ferryd(&["link", "--list", "--config", config_arg])
        .output()
        .unwrap();
    assert!(text(&listed.stdout).is_empty());

    let bad = ferryd(&["link", "../etc", "--config", config_arg])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("must be 1-64 characters"),
        "{}",
        text(&bad.stderr)
    );
}

//! The admin listener (issue 10): `/metrics` after a real upload, `/uploads` and `ferryd
//! uploads`, `--admin-token`, `/healthz` below the disk reserve, `ferryd notice`.

use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::*;

use crate::operations::{ferryd, text};

/// `GET path` on the admin listener: (status code, body).
pub(crate) fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
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
pub(crate) fn admin_addr(server: &ServerProcess) -> String {
    let log = std::fs::read_to_string(&server.log).unwrap();
    log.lines()
        .find_map(|l| l.strip_prefix("ferryd: admin listener on http://"))
        .expect("the admin listener's line")
        .to_owned()
}

/// One sample of `/metrics`, by its full name and labels.
pub(crate) fn sample(metrics: &str, name: &str) -> f64 {
    // A metric with labels (`{frontend="quic"}`) is summed over them; a labelled family with no
    // sample yet is not listed at all, and is 0.
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.parse::<f64>().ok()
        })
        .sum()
}

/// One labelled sample, 0 if not there yet: `sample_of(m, "ferry_bytes_received_total",
/// "frontend=\"tus\"")`.
pub(crate) fn sample_of(metrics: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0.0)
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

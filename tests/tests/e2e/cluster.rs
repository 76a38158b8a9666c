//! Issue 25, one service however many nodes — when a node or the store fails: a client given
//! every node's address moves to another node when its own dies, without being restarted; a
//! store outage costs nothing sent again; two clients resuming one upload through two nodes
//! both end told why; a restarted node holds no phantom. What the nodes share (limits, tokens,
//! links, the store check) is in `cluster_shared.rs`.

use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::weed::{S3Server, Weed};
use ferry_tests::{binary, eventually, random_file, wait_child, ServerProcess};

use ferry_client::ClientError;

use crate::scaleout::{client, ferryd, node, object, second_node, stored_parts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_three_nodes_finishes_while_the_one_it_uses_is_killed() {
    let Some(weed) = Weed::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let datas: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let prefix = "failover/";
    let token = ferryd(&weed, prefix, &["token", "add", "alice"]);
    let first = node(&weed, prefix, datas[0].path(), &[]);
    let mut nodes: Vec<ServerProcess> = vec![first];
    for data in &datas[1..] {
        nodes.push(second_node(&weed, prefix, data.path(), datas[0].path()));
    }
    const SIZE: usize = 96 << 20;
    let source = random_file(work.path(), "take.mov", SIZE, 25);
    let stderr = work.path().join("stderr");
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let mut child = Command::new(binary("ferry"))
        .env("FERRY_TOKEN", token.trim())
        .env("FERRY_FINGERPRINT", &nodes[0].fingerprint)
        .env("FERRY_STATE_DIR", work.path().join("state"))
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_SERVER")
        .args([
            "--server", &addrs[0], "--server", &addrs[1], "--server", &addrs[2],
        ])
        .args(["-v", "--idle-timeout", "3", "--reconnect-for", "60"])
        .args(["upload", "--json", "--limit-rate", "16M", "--parallel", "8"])
        .arg(&source)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let s3 = weed.client(prefix).await;
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let started = eventually(Duration::from_secs(60), async || {
        stored_parts(&s3, prefix).await >= 2
    });
    assert!(
        started.await,
        "two parts stored within 60 s; client:\n{}",
        log()
    );
    // The node the client is connected to: the one its `-v` line names.
    let used = addrs
        .iter()
        .position(|a| log().contains(&format!("connected to {a}")))
        .unwrap_or_else(|| panic!("the client names its node:\n{}", log()));
    nodes[used].kill9();
    let status = wait_child(&mut child, Duration::from_secs(120)).expect("the upload ends");
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "exit {status:?}\n{out}\n{}", log());
    // It went on through another node, in the same process.
    let others: Vec<&String> = addrs
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != used)
        .map(|(_, a)| a)
        .collect();
    assert!(
        others
            .iter()
            .any(|a| log().contains(&format!("connected to {a}"))),
        "reconnected to a live node:\n{}",
        log()
    );
    let report: serde_json::Value = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["status"] == "complete")
        .unwrap_or_else(|| panic!("a complete line in {out}"));
    assert!(report["reconnects"].as_u64() >= Some(1), "{out}");
    // Sent again at most what the killed node had not acknowledged: the chunks in flight,
    // `--parallel 8` (a fixed window) of the server's 8 MiB.
    let sent = report["bytes_sent"].as_u64().unwrap();
    assert!(
        sent <= SIZE as u64 + (64 << 20),
        "{sent} bytes sent for {SIZE}"
    );
    eprintln!("sent {sent} bytes for {SIZE}, {} again", sent - SIZE as u64);
    let stored = object(&s3, prefix, "alice", "take.mov").await;
    assert!(
        stored == std::fs::read(&source).unwrap(),
        "the object differs from the source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_s_store_outage_costs_at_most_a_window_and_healthz_says_503() {
    let Some(mut weed) = Weed::start() else {
        return;
    };
    let (work, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prefix = "outage/";
    let token = ferryd(&weed, prefix, &["token", "add", "alice"]);
    let server = node(
        &weed,
        prefix,
        data.path(),
        &["--admin-listen", "127.0.0.1:0"],
    );
    let admin = crate::admin::admin_addr(&server);
    const SIZE: u64 = 192 << 20;
    let source = random_file(work.path(), "long.mov", SIZE as usize, 60);
    let mut opts = server.options(token.trim(), &work.path().join("state"));
    opts.limit_rate = Some(16 << 20);
    opts.parallel = 8;
    opts.max_parallel = 8;
    opts.reconnect_for = Duration::from_secs(240);
    let mut uploader = ferry_client::Client::new(opts).unwrap();
    let upload = {
        let source = source.clone();
        tokio::spawn(async move { uploader.upload(&source, "").await })
    };
    let s3 = weed.client(prefix).await;
    let started = eventually(Duration::from_secs(60), async || {
        stored_parts(&s3, prefix).await >= 2
    });
    assert!(started.await, "two parts stored within 60 s");
    assert_eq!(crate::admin::get(&admin, "/healthz", None).0, 200);
    weed.stop();
    let down = std::time::Instant::now();
    let mut said = None;
    // Bounded: 60 looks, one a second.
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (code, body) = crate::admin::get(&admin, "/healthz", None);
        if code == 503 && said.is_none() {
            said = Some((down.elapsed(), body));
        }
        if down.elapsed() >= Duration::from_secs(60) {
            break;
        }
    }
    weed.start_again();
    let report = tokio::time::timeout(Duration::from_secs(240), upload)
        .await
        .expect("the upload ends within 240 s of the store's return")
        .unwrap()
        .expect("the upload completes across the outage");
    eprintln!(
        "sent {} bytes for {SIZE}, {} again, {} reconnects",
        report.bytes_sent,
        report.bytes_sent.saturating_sub(SIZE),
        report.reconnects
    );
    let (after, body) = said.expect("/healthz said 503 during the outage");
    eprintln!("/healthz 503 after {after:?}: {body}");
    assert!(body.contains("object store"), "{body}");
    // At most one window sent again: 8 chunks of the server's 8 MiB.
    assert!(
        report.bytes_sent <= SIZE + (64 << 20),
        "{} bytes sent for {SIZE}",
        report.bytes_sent
    );
    let stored = object(&s3, prefix, "alice", "long.mov").await;
    assert!(
        stored == std::fs::read(&source).unwrap(),
        "the object differs from the source"
    );
    let healthy = eventually(Duration::from_secs(30), async || {
        crate::admin::get(&admin, "/healthz", None).0 == 200
    });
    assert!(
        healthy.await,
        "/healthz is 200 again once the store is back"
    );
}

/// Begins uploading `source` through `node` at 16 MiB/s with the journal in `state`, and stops
/// that client (as a closed laptop) once the bucket holds two of its parts.
async fn begun_then_stopped(
    node: &ServerProcess,
    token: &str,
    state: &std::path::Path,
    source: &std::path::Path,
    s3: &ferry_server::store::s3::S3,
    prefix: &str,
) {
    let mut opts = node.options(token, state);
    opts.limit_rate = Some(16 << 20);
    let mut first = ferry_client::Client::new(opts).unwrap();
    let begun = {
        let source = source.to_owned();
        tokio::spawn(async move { first.upload(&source, "").await })
    };
    let some = eventually(Duration::from_secs(60), async || {
        stored_parts(s3, prefix).await >= 2
    });
    assert!(some.await, "two parts stored within 60 s");
    begun.abort();
    let _ = begun.await;
}

/// Copies the files of `from` (a client's state folder: journal, known servers) into `to`.
fn copy_state(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_state(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_resuming_one_upload_through_two_nodes_both_end_told_why() {
    let Some(weed) = Weed::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prefix = "double/";
    let token = ferryd(&weed, prefix, &["token", "add", "alice"]);
    let a = node(&weed, prefix, data_a.path(), &[]);
    let b = second_node(&weed, prefix, data_b.path(), data_a.path());
    // Larger than the client's window (8 chunks of 8 MiB), so much is left when it stops.
    const SIZE: u64 = 256 << 20;
    let source = random_file(work.path(), "take.mov", SIZE as usize, 5);
    let (one, two) = (work.path().join("one"), work.path().join("two"));
    // Begun through A, interrupted after a few parts.
    let s3 = weed.client(prefix).await;
    begun_then_stopped(&a, token.trim(), &one, &source, &s3, prefix).await;
    copy_state(&one, &two);
    // The same journal resumed by two clients at once: a slow one through A, a fast one
    // through B, which finishes first.
    let mut opts = a.options(token.trim(), &one);
    opts.limit_rate = Some(4 << 20);
    opts.reconnect_for = Duration::from_secs(20);
    let mut slow = ferry_client::Client::new(opts).unwrap();
    let slow = {
        let source = source.clone();
        tokio::spawn(async move { slow.upload(&source, "").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut fast = client(&b, token.trim(), &two);
    let report = fast
        .upload(&source, "")
        .await
        .expect("the fast client finishes");
    eprintln!("fast client: {report:?}");
    assert_eq!(report.status, "complete");
    assert!(report.resumed);
    fast.close().await;
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(60), slow)
        .await
        .expect("the slow client ends within 60 s")
        .unwrap();
    eprintln!("slow client after {:?}: {outcome:?}", started.elapsed());
    match &outcome {
        Ok(report) => assert_eq!(report.status, "complete"),
        Err(ClientError::TakenOver(message)) => assert!(
            message.contains("was finished through another node (published as \"take.mov\")"),
            "{message}"
        ),
        Err(e) => panic!("the slow client is told complete or why, not: {e}"),
    }
    // The same command again through A: complete, nothing sent.
    let mut again = client(&a, token.trim(), &one);
    let report = again
        .upload(&source, "")
        .await
        .expect("the same command again ends");
    assert!(
        matches!(report.status, "complete" | "skipped"),
        "{}",
        report.status
    );
    assert_eq!(report.bytes_sent, 0);
    assert_eq!(report.file_name, "take.mov");
    again.close().await;
    let stored = object(&s3, prefix, "alice", "take.mov").await;
    assert!(
        stored == std::fs::read(&source).unwrap(),
        "the object differs from the source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_after_its_upload_finished_elsewhere_holds_no_phantom() {
    let Some(weed) = Weed::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prefix = "phantom/";
    let token = ferryd(&weed, prefix, &["token", "add", "alice"]);
    let limit = ["--max-uploads", "1"];
    let mut a = node(&weed, prefix, data_a.path(), &limit);
    let b = second_node(&weed, prefix, data_b.path(), data_a.path());
    const SIZE: u64 = 256 << 20;
    let source = random_file(work.path(), "take.mov", SIZE as usize, 6);
    let state = work.path().join("state");
    let s3 = weed.client(prefix).await;
    begun_then_stopped(&a, token.trim(), &state, &source, &s3, prefix).await;
    a.kill9();
    let spools = || {
        std::fs::read_dir(data_a.path().join("staging"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(spools(), 1, "node A died with the upload's spool");
    let mut on_b = client(&b, token.trim(), &state);
    let report = on_b.upload(&source, "").await.expect("finished through B");
    assert_eq!(report.status, "complete");
    on_b.close().await;
    // A again, on its data directory: the upload is settled from its manifest at start.
    let a = node(&weed, prefix, data_a.path(), &limit);
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    assert_eq!(
        spools(),
        0,
        "the spool of an upload finished elsewhere is gone; log:\n{log}"
    );
    let mut on_a = client(&a, token.trim(), &work.path().join("listing"));
    let listed = on_a.list().await.unwrap();
    let phantom: Vec<_> = listed.iter().filter(|u| u.state != "complete").collect();
    assert!(
        phantom.is_empty(),
        "no upload left receiving on A: {phantom:?}"
    );
    on_a.close().await;
    // The owner's one upload in progress is free again on A.
    std::fs::write(work.path().join("next.mov"), b"the next take").unwrap();
    let mut next = client(&a, token.trim(), &work.path().join("next"));
    let report = next
        .upload(&work.path().join("next.mov"), "")
        .await
        .expect("a new upload through A is not refused too_many_uploads");
    assert_eq!(report.status, "complete");
    next.close().await;
}

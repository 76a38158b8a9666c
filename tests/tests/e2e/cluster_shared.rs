//! Issue 25, what the nodes of one service share, in the bucket: the owner's limits and an
//! upload link's bounds across nodes, tokens and links made through any node, a store without
//! the features Ferry relies on refused at start — on SeaweedFS, and on MiniStack too.

use std::process::{Command, Stdio};

use ferry_client::ClientError;
use ferry_proto::ErrorCode;
use ferry_tests::weed::{S3Server, Weed};
use ferry_tests::{binary, eventually, ServerProcess};

use crate::scaleout::{client, ferryd, node};
use std::time::Duration;

/// `ferryd token add NAME` for each of `names`, all started at once against the bucket; their
/// outputs.
fn token_adds_at_once(
    weed: &impl S3Server,
    prefix: &str,
    names: &[String],
) -> Vec<std::process::Output> {
    let adds: Vec<_> = names
        .iter()
        .map(|name| {
            Command::new(binary("ferryd"))
                .args(["token", "add", name])
                .args(weed.serve_args(prefix))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    adds.into_iter()
        .map(|add| add.wait_with_output().unwrap())
        .collect()
}

/// `ferryd ARGS` against a careless S3 server (`tests/fakes/careless_s3.py`: it ignores
/// `If-None-Match` and `If-Match`, as Garage 2.5 does): its exit code and stderr.
fn against_careless_store(args: &[&str], data: &std::path::Path) -> (Option<i32>, String) {
    let mut fake = Command::new("python3")
        .arg(ferry_tests::py::script("fakes/careless_s3.py"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(fake.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", port.trim());
    let mut ferryd = Command::new(binary("ferryd"));
    ferryd
        .args(args)
        .arg("--data")
        .arg(data)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--store",
            "s3",
            "--s3-endpoint",
            &endpoint,
        ])
        .args(["--s3-bucket", "b", "--s3-path-style"])
        .args(["--s3-access-key-id", "k", "--s3-secret-access-key", "s"])
        .env_remove("FERRYD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = ferryd.spawn().unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = fake.kill();
    let _ = fake.wait();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_store_without_conditional_writes_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let lacks = "the object store lacks conditional writes (PUT with If-None-Match: *): a second PUT of an existing key with If-None-Match: * was accepted, not refused with 412";
    let (code, stderr) = against_careless_store(&["serve"], data.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(lacks), "{stderr}");
    // check-config says the same, as a reason serve would not start.
    let (code, stderr) = against_careless_store(&["check-config"], data.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("the server would not start"), "{stderr}");
    assert!(stderr.contains(lacks), "{stderr}");
}

/// Whether `token` (or a link's grant) logs in on `server`: it may list (a token), or it is told
/// `refused` (a link, which may only upload); `unauthorized` is no. Panics on anything else.
async fn logs_in(server: &ServerProcess, token: &str, state: &std::path::Path) -> bool {
    let mut c = client(server, token, state);
    let result = c.list().await;
    c.close().await;
    match result {
        Ok(_)
        | Err(ClientError::Server {
            code: ErrorCode::Refused,
            ..
        }) => true,
        Err(ClientError::Server {
            code: ErrorCode::Unauthorized,
            ..
        }) => false,
        Err(e) => panic!("login on {}: {e}", server.addr),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_links_are_the_services_and_concurrent_adds_all_work() {
    let Some(weed) = Weed::start() else { return };
    credentials_shared(&weed).await;
}

async fn credentials_shared(weed: &impl S3Server) {
    let work = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prefix = "credentials/";
    let s3 = weed.client(prefix).await;
    // A bucket of an older version: one token file, `P/tokens`. It is moved to one object per
    // token when the first node starts.
    let scratch = tempfile::tempdir().unwrap();
    let old = ferry_server::Tokens::new(scratch.path())
        .add("old")
        .unwrap();
    let legacy = std::fs::read(scratch.path().join("tokens")).unwrap();
    s3.put(&format!("{prefix}tokens"), legacy).await.unwrap();
    let a = node(weed, prefix, data_a.path(), &[]);
    let b = node(weed, prefix, data_b.path(), &[]);
    assert!(logs_in(&b, &old, &work.path().join("old")).await);
    assert!(s3.get(&format!("{prefix}tokens")).await.unwrap().is_none());

    // 20 `token add` at once, as two operators' scripts through two nodes would: every token
    // printed works, on either node.
    let names: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
    let mut tokens = Vec::new();
    for out in token_adds_at_once(weed, prefix, &names) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "token add failed: {err}");
        tokens.push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    }
    for (i, token) in tokens.iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        let state = work.path().join(format!("user{i}"));
        assert!(logs_in(node, token, &state).await, "user{i}'s token works");
    }
    let listed = ferryd(weed, prefix, &["token", "list"]);
    assert_eq!(listed.lines().count(), 21, "{listed}");

    // One name added four times at once: one token, three clear refusals that print none.
    let outs = token_adds_at_once(weed, prefix, &vec!["same".to_owned(); 4]);
    let won: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(won.len(), 1, "exactly one add of one name wins");
    for lost in outs.iter().filter(|o| !o.status.success()) {
        assert_eq!(lost.status.code(), Some(1));
        assert!(lost.stdout.is_empty(), "a refused add prints no token");
        let err = String::from_utf8_lossy(&lost.stderr);
        assert!(
            err.contains("a token named \"same\" exists already"),
            "{err}"
        );
    }

    // A link made through node A's configuration works on node B at its first use.
    let made = |data: &std::path::Path, args: &[&str]| {
        crate::scaleout::link(weed, prefix, data, "https://files.example", args)
    };
    let url = made(data_a.path(), &["alice", "--expires", "1h"]);
    let grant = url.trim().rsplit('/').next().unwrap().to_owned();
    assert!(
        logs_in(&b, &grant, &work.path().join("link")).await,
        "the link works on B"
    );
    // Listed through either node; revoked through B, refused by A within the mirror's period.
    let listed = made(data_b.path(), &["--list"]);
    assert!(listed.contains("alice"), "{listed}");
    made(data_b.path(), &["--revoke", url.trim()]);
    let refused = eventually(Duration::from_secs(10), async || {
        !logs_in(&a, &grant, &work.path().join("link-a")).await
    });
    assert!(refused.await, "node A refused the revoked link within 10 s");
}

/// Logged in on `node` as `token` with a raw client.
async fn raw_on(node: &ServerProcess, token: &str) -> ferry_tests::raw::Raw {
    let mut raw = ferry_tests::raw::Raw::dial(node.addr, &node.fingerprint, Default::default())
        .await
        .expect("connects");
    raw.frame(&ferry_proto::Frame::Hello {
        version: ferry_proto::PROTOCOL_VERSION,
        token: token.into(),
    })
    .await;
    match raw.next().await {
        Some(ferry_proto::Frame::Welcome { .. }) => raw,
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// `count` creates of `size` bytes at once, spread over `nodes` (one connection each); the
/// ids of those created and the codes of those refused.
async fn racing_creates(
    nodes: &[ServerProcess],
    token: &str,
    count: usize,
    size: u64,
) -> (Vec<String>, Vec<(ErrorCode, String)>) {
    let mut raws = Vec::new();
    for i in 0..count {
        raws.push(raw_on(&nodes[i % nodes.len()], token).await);
    }
    let mut creates = tokio::task::JoinSet::new();
    for (i, mut raw) in raws.into_iter().enumerate() {
        creates.spawn(async move {
            raw.frame(&ferry_tests::raw::create(
                1,
                &format!("f{i}.bin"),
                size,
                8 << 20,
            ))
            .await;
            let reply = raw.next().await;
            (raw, reply)
        });
    }
    let (mut created, mut refused) = (Vec::new(), Vec::new());
    // Bounded: one result per create.
    while let Some(done) = creates.join_next().await {
        let (_raw, reply) = done.unwrap();
        match reply {
            Some(ferry_proto::Frame::Created { upload, .. }) => created.push(upload.upload_id),
            Some(ferry_proto::Frame::Error { code, message, .. }) => refused.push((code, message)),
            other => panic!("expected created or error, got {other:?}"),
        }
    }
    (created, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_limits_hold_across_three_nodes() {
    let Some(weed) = Weed::start() else { return };
    limits_hold(&weed).await;
}

async fn limits_hold(weed: &impl S3Server) {
    let datas: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let prefix = "limits/";
    let alice = ferryd(weed, prefix, &["token", "add", "alice"]);
    let bob = ferryd(weed, prefix, &["token", "add", "bob"]);
    let limits = ["--max-uploads", "3", "--quota", "200M"];
    let nodes: Vec<ServerProcess> = datas
        .iter()
        .map(|d| node(weed, prefix, d.path(), &limits))
        .collect();
    // Nine creates at once through three nodes: three uploads in progress, not nine.
    let (created, refused) = racing_creates(&nodes, alice.trim(), 9, 1 << 20).await;
    eprintln!("alice: {} created, refused: {refused:?}", created.len());
    assert_eq!(created.len(), 3, "refused: {refused:?}");
    for (code, message) in &refused {
        assert_eq!(*code, ErrorCode::TooManyUploads, "{message}");
        assert!(
            message.contains("on every node of the service"),
            "{message}"
        );
    }
    // Six creates of 80 MiB at once: two fit in 200 MiB, the rest exceed it.
    let (big, refused) = racing_creates(&nodes, bob.trim(), 6, 80 << 20).await;
    eprintln!("bob: {} created, refused: {refused:?}", big.len());
    assert_eq!(big.len(), 2, "refused: {refused:?}");
    for (code, message) in &refused {
        assert_eq!(*code, ErrorCode::QuotaExceeded, "{message}");
    }
    // An abort through one node gives its place back to a create through another.
    let mut raw = raw_on(&nodes[0], alice.trim()).await;
    raw.frame(&ferry_proto::Frame::Abort {
        req: 2,
        upload_id: created[0].clone(),
    })
    .await;
    assert!(
        matches!(raw.next().await, Some(ferry_proto::Frame::Aborted { .. })),
        "aborted"
    );
    let (again, refused) = racing_creates(&nodes[1..], alice.trim(), 2, 1 << 20).await;
    assert_eq!(again.len(), 1, "one place came back: {refused:?}");
    // What the bucket says: alice's three and bob's two in progress, bob's 160 MiB reserved.
    let s3 = weed.client(prefix).await;
    assert_eq!(s3.usage("alice").await.unwrap().receiving.len(), 3);
    assert_eq!(s3.usage("bob").await.unwrap().used(), 160 << 20);
    // An upload link's bounds hold across the nodes too: a link for two files, three creates
    // through three nodes at once (within carol's own three uploads in progress).
    let url = crate::scaleout::link(
        weed,
        prefix,
        datas[0].path(),
        "https://files.example",
        &["carol", "--max-files", "2"],
    );
    let grant = url.trim().rsplit('/').next().unwrap().to_owned();
    let (through_link, refused) = racing_creates(&nodes, &grant, 3, 1 << 20).await;
    assert_eq!(through_link.len(), 2, "refused: {refused:?}");
    for (code, message) in &refused {
        assert_eq!(*code, ErrorCode::QuotaExceeded, "{message}");
        assert!(
            message.contains("this upload link allows 2 files"),
            "{message}"
        );
    }
}

/// A second S3 implementation beside SeaweedFS: MiniStack (PyPI) passes the start-up probe
/// (every node starts), and uploads, the service-wide limits (compare-and-swap with
/// `If-Match`) and the shared tokens and links (`If-None-Match: *`) work on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_ministack_uploads_limits_and_credentials_work() {
    let Some(ministack) = ferry_tests::ministack::MiniStack::start() else {
        return;
    };
    crate::scaleout::reads_back_equal_bytes(&ministack).await;
    limits_hold(&ministack).await;
    credentials_shared(&ministack).await;
}

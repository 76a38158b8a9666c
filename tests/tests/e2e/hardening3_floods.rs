//! Issue 21, the third outside review, its floods: a chunk in tiny scattered pieces, folders and
//! files without end, idle and trickling web connections, an admin listener flood — each a
//! scenario that failed before its fix, and the bound that holds now.

use std::time::{Duration, Instant};

use ferry_proto::{ErrorCode, Frame, PROTOCOL_VERSION};
use ferry_tests::raw::Raw;
use ferry_tests::relay::{Impairment, Relay};
use ferry_tests::*;

/// Finding 1: on a long path chunk streams are read out of order, and a client that sends each
/// payload as 1-byte pieces at every other offset made the server hold every piece (14 → 471
/// MiB in 50 s; stream credit refills as bytes are read, so nothing stopped it). Now each
/// stream and each connection may hold a bounded number of separate pieces; past it the stream
/// is stopped with `too_fragmented` and the chunk rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_sent_in_tiny_scattered_pieces_is_stopped_within_the_memory_bound() {
    let Some(aioquic) = py::package("aioquic", "1.7.2") else {
        return;
    };
    let deployment = Deployment::start(&[]);
    let server = &deployment.server;
    // 30 ms round trips: the server reads chunk streams out of order from 20 ms on.
    let delay = Impairment {
        delay: Duration::from_millis(15),
        ..Default::default()
    };
    let relay = Relay::start(server.addr, delay, delay, 21).await;
    let pid = server.child.id();
    let before = proc_kib(pid, "VmRSS");
    let started = Instant::now();
    let attack = tokio::process::Command::new("python3")
        .arg(py::script("attacks/fragments.py"))
        .args([
            "127.0.0.1",
            &relay.addr.port().to_string(),
            &deployment.token,
        ])
        .args(["--streams", "16", "--seconds", "60", "--version"])
        .arg(PROTOCOL_VERSION.to_string())
        .env("PYTHONPATH", &aioquic)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), attack)
        .await
        .expect("the attack ends within 120 s")
        .expect("python3 runs");
    let peak = proc_kib(pid, "VmHWM");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no report ({e}); stdout {stdout:?}, stderr {stderr}"));
    let stopped: Vec<u64> = report["stopped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .collect();
    eprintln!(
        "fragments: {} pieces sent in {:.1} s, {} of 16 streams stopped, server RSS {} → peak {} MiB",
        report["pieces"],
        started.elapsed().as_secs_f64(),
        stopped.len(),
        before / 1024,
        peak / 1024
    );
    let code = u64::from(ErrorCode::TooFragmented.quic_code());
    // Every stream is stopped with `too_fragmented` — or, rarely, quinn closes the whole
    // connection first with INTERNAL_ERROR (transport code 1, "too many gaps in stream
    // buffer"): a stream whose header the server has not yet handled is still read in order,
    // and quinn's own assembler refuses a 1 025th separate piece on it. Either way the
    // attacker is stopped within the bound (seen once in CI; docs/security.md).
    let closed_by_quinn = report["closed"] == 1
        && report["reason"]
            .as_str()
            .is_some_and(|r| r.contains("too many gaps"));
    assert!(
        stopped.len() == 16 || (closed_by_quinn && !stopped.is_empty()),
        "every stream stopped: {report}"
    );
    assert!(stopped.iter().all(|&c| c == code), "{report}");
    let rejects = report["rejects"].as_array().unwrap();
    assert!(
        rejects.iter().any(|c| c == "too_fragmented"),
        "the chunks were rejected with too_fragmented: {report}"
    );
    // docs/security.md: one logged-in connection holds at most 58 MiB (windows, read buffers,
    // the outbox and the pieces it is tracking).
    let grew = peak.saturating_sub(before) / 1024;
    assert!(grew <= 58, "the server grew by {grew} MiB");
}

/// Finding 5: with `--quota 1M` one token filled every inode of a small file system with
/// `mkdir` in 0.6 s, and another owner's create failed. Files and folders now count against a
/// per-owner limit (`--max-entries`), and an inode reserve (`--min-free-inodes`) is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_and_files_count_against_a_limit_and_an_inode_reserve() {
    let server = TestServer::start_with(|c| c.max_entries_per_owner = 5).await;
    let mut raw = Raw::hello(&server, &server.alice).await;
    let mkdir = async |raw: &mut Raw, dir: &[&str]| {
        raw.frame(&Frame::Mkdir {
            req: 9,
            dir: dir.iter().map(|d| d.to_string()).collect(),
        })
        .await;
        raw.next().await
    };
    // alice's folder, a, a/b: 3 entries; c: 4.
    assert!(matches!(
        mkdir(&mut raw, &["a", "b"]).await,
        Some(Frame::Made { .. })
    ));
    assert!(matches!(
        mkdir(&mut raw, &["c"]).await,
        Some(Frame::Made { .. })
    ));
    match mkdir(&mut raw, &["d", "e"]).await {
        Some(Frame::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::QuotaExceeded);
            assert!(
                message.contains("alice has 4 files and folders"),
                "{message}"
            );
            assert!(message.contains("limit of 5 (--max-entries)"), "{message}");
        }
        other => panic!("expected quota_exceeded, got {other:?}"),
    }
    // One file still fits; a second create would make six.
    raw.create("one.bin", 10).await;
    raw.frame(&ferry_tests::raw::create(2, "two.bin", 10, 4096))
        .await;
    assert_eq!(raw.code().await, ErrorCode::QuotaExceeded);
    // Another owner is not held back by alice's count.
    let mut bob = Raw::hello(&server, &server.bob).await;
    assert!(matches!(
        mkdir(&mut bob, &["x"]).await,
        Some(Frame::Made { .. })
    ));

    // The inode reserve: a file system with fewer free inodes than the reserve takes nothing.
    let server = TestServer::start_with(|c| c.min_free_inodes = u64::MAX / 2).await;
    let mut raw = Raw::hello(&server, &server.alice).await;
    match mkdir(&mut raw, &["x"]).await {
        Some(Frame::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::InsufficientStorage);
            assert!(message.contains("free inodes"), "{message}");
        }
        other => panic!("expected insufficient_storage, got {other:?}"),
    }
}

/// `n` TCP connections to `to` from `from`, that send `send` (perhaps nothing) and then
/// nothing more; kept open while held.
async fn idle_connections(
    to: std::net::SocketAddr,
    from: std::net::IpAddr,
    n: usize,
    send: &[u8],
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::new(from, 0)).unwrap();
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(2), socket.connect(to)).await
        else {
            continue;
        };
        if !send.is_empty() {
            let _ = tokio::time::timeout(Duration::from_millis(200), stream.write_all(send)).await;
        }
        held.push(stream);
    }
    held
}

/// Finding 6: 256 idle TCP connections delayed every page GET by 10 s, 2 000 from one address
/// timed GETs out, and 256 unfinished 390 KB request heads took the server from 13 to 116 MiB.
/// Connections waiting for their first request now have a budget of their own (64, 8 per
/// address, the oldest evicted), and a request head is at most 64 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_web_connections_keep_no_one_out() {
    let deployment = Deployment::start(&["--web-listen", "127.0.0.1:0"]);
    let server = &deployment.server;
    let web = server.web.expect("the web listener");
    let pid = server.child.id();
    let before = proc_kib(pid, "VmRSS");
    // 300 idle TCP connections from one address, 256 idle TLS connections from 16 others, and
    // 256 more from those that send the start of a 390 KB request head.
    let held = idle_connections(web, "127.0.0.2".parse().unwrap(), 300, b"").await;
    let mut trickling = Vec::new();
    for host in 3..19u8 {
        let from = std::net::IpAddr::from([127, 0, 0, host]);
        for n in 0..32 {
            let head = if n < 16 { 0 } else { 390 << 10 };
            let fingerprint = server.fingerprint.clone();
            trickling.push(tokio::spawn(partial_head(web, fingerprint, from, head)));
        }
    }
    let mut heads = Vec::new();
    for t in trickling {
        heads.extend(t.await.unwrap());
    }
    let peak = proc_kib(pid, "VmHWM");
    let started = Instant::now();
    let (status, _, body) = ferry_tests::web::https_get(web, &server.fingerprint, "/", "").await;
    let took = started.elapsed();
    eprintln!(
        "web flood: {} idle and {} trickling connections held, a GET answered in {took:?}, server RSS {} → peak {} MiB",
        held.len(),
        heads.len(),
        before / 1024,
        peak / 1024
    );
    assert_eq!(status, 200);
    assert!(body.contains("id=\"files\""), "the page");
    // Not a speed figure: before the fix the answer came only after the idle ones timed out.
    assert!(took < Duration::from_secs(2), "the GET waited {took:?}");
    // docs/security.md: 64 waiting connections × (64 KiB head + TLS state) and 256 active.
    let grew = peak.saturating_sub(before) / 1024;
    assert!(grew <= 24, "the server grew by {grew} MiB");
    drop((held, heads));
}

/// A TLS connection to the web listener from `from` that sends `len` bytes of a request head
/// that never ends (with 0, nothing at all); `None` if the server closed it first.
async fn partial_head(
    web: std::net::SocketAddr,
    fingerprint: String,
    from: std::net::IpAddr,
    len: usize,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(from, 0)).unwrap();
    let tcp = socket.connect(web).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connect = ferry_tests::http::pinned_connector(&fingerprint).connect(name, tcp);
    let mut stream = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .ok()?
        .ok()?;
    if len > 0 {
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        head.extend(std::iter::repeat_n(b'a', len));
        let _ = tokio::time::timeout(Duration::from_millis(500), stream.write_all(&head)).await;
    }
    Some(stream)
}

/// Finding 7: the admin listener had no connection cap: 4 000 idle connections took 3 385 file
/// descriptors, and with a 1 024-descriptor limit QUIC logins then failed (`internal`) and
/// creates failed (`storage_error`). It holds at most 48 connections now, the oldest waiting
/// ones evicted; `/healthz` and uploads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_listener_flood_takes_no_descriptors_from_uploads() {
    let deployment = Deployment::start(&["--admin-listen", "127.0.0.1:0"]);
    let server = &deployment.server;
    let admin = server.admin.expect("the admin listener");
    let pid = server.child.id();
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let before = fds();
    let mut held = Vec::new();
    for host in 2..6u8 {
        let from = std::net::IpAddr::from([127, 0, 0, host]);
        held.extend(idle_connections(admin, from, 1000, b"").await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = fds();
    eprintln!(
        "admin flood: {} connections held by the test, server descriptors {before} → {during}",
        held.len()
    );
    assert!(
        during <= before + 48 + 8,
        "the server holds {during} descriptors (was {before})"
    );
    // The machine room still gets its answer, and uploads go on.
    let health = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    })
    .await
    .expect("healthz within 5 s");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let work = tempfile::tempdir().unwrap();
    let file = random_file(work.path(), "during.bin", 1 << 20, 5);
    let mut client =
        ferry_client::Client::new(server.options(&deployment.token, work.path())).unwrap();
    let report = client
        .upload(&file, "")
        .await
        .expect("an upload during the flood");
    assert_eq!(report.status, "complete");
    drop(held);
}

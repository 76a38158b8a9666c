//! Issue 8, each finding of the outside review as a scenario that failed before its fix:
//! memory before and after login, lockout, limits under races, frames that always fit, revocation
//! that bites, throttling that only time forgives, the tokens file, the exact protocol answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_proto::{ErrorCode, Frame, PROTOCOL_VERSION};
use ferry_tests::raw::{close_code, Dial, Raw};
use ferry_tests::*;

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "VmRSS")
}

/// A connection that never logs in and pushes what it can before `hello`: the start of a
/// large frame on the control stream, and full chunk streams if it gets any credit.
async fn squatter(addr: SocketAddr, fingerprint: String, from: SocketAddr) -> Option<Raw> {
    let dial = Dial {
        bind: Some(from),
        transport: None,
    };
    let mut raw = Raw::dial(addr, &fingerprint, dial).await.ok()?;
    // A length prefix announcing 60 000 bytes, and half of them: the server waits for the rest.
    let _ = raw.send.write_all(&60_000u32.to_be_bytes()).await;
    let _ = raw.send.write_all(&[b' '; 30_000]).await;
    for _ in 0..4 {
        let opened = tokio::time::timeout(Duration::from_millis(100), raw.conn.open_uni()).await;
        let Ok(Ok(mut stream)) = opened else { break };
        let junk = vec![7u8; 1 << 20];
        for _ in 0..8 {
            let write = stream.write_all(&junk);
            if tokio::time::timeout(Duration::from_millis(200), write)
                .await
                .is_err()
            {
                break;
            }
        }
    }
    Some(raw)
}

/// Findings 1 and 3: 256 connections from 16 addresses that never log in. Before: each could
/// push a full window before `hello` (24 of them took the server from 7 to 129 MiB), and they
/// took every connection slot, so a valid user got `too_many_connections`. Now: no chunk-stream
/// credit and 128 KiB before login, a login budget of 64 with the oldest evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_neither_grows_memory_nor_locks_out_a_user() {
    // Bound whole: its temp dir must outlive the server.
    let deployment = Deployment::start(&[]);
    let (server, token) = (&deployment.server, deployment.token.clone());
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mut flood = Vec::new();
    for host in 2..=17u8 {
        for _ in 0..16 {
            let from: SocketAddr = format!("127.0.0.{host}:0").parse().unwrap();
            flood.push(tokio::spawn(squatter(
                server.addr,
                server.fingerprint.clone(),
                from,
            )));
        }
    }
    let mut held = Vec::new();
    for attacker in flood {
        if let Ok(Some(raw)) = attacker.await {
            held.push(raw);
        }
    }
    let during = rss_kib(pid);
    let grew_mib = during.saturating_sub(before) / 1024;
    eprintln!(
        "login flood: {} connections handshaken, server RSS {} → {} MiB",
        held.len(),
        before / 1024,
        during / 1024
    );
    // docs/security.md: at most 64 connections logging in, each at most 128 KiB of data plus
    // about 64 KiB of QUIC and TLS state: 12 MiB; twice that for the allocator's slack.
    assert!(
        grew_mib <= 24,
        "the flood grew the server by {grew_mib} MiB"
    );

    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut client = ferry_client::Client::new(server.options(&token, state.path())).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), client.list()).await;
    assert!(
        matches!(result, Ok(Ok(_))),
        "a valid user could not list during the flood: {result:?}"
    );
    eprintln!(
        "login flood: a valid user listed in {:?}",
        started.elapsed()
    );
    drop(held);
}

/// Finding 2: a logged-in client that grants the server little credit and sends 3 000 `list`
/// requests without reading. Before: the server queued every reply (10 → 206 MiB). Now: at
/// most 64 frames wait, the server stops reading requests, then closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_replies_is_cut_off_with_bounded_memory() {
    let deployment = Deployment::start(&["--stream-timeout", "2s"]);
    let (server, token) = (&deployment.server, deployment.token.clone());
    let pid = server.child.id();
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(4096));
    transport.receive_window(quinn::VarInt::from_u32(8192));
    let dial = Dial {
        bind: None,
        transport: Some(transport),
    };
    let mut raw = Raw::login(server.addr, &server.fingerprint, &token, dial).await;
    for i in 0..10 {
        raw.create(&format!("f{i}"), 1).await;
    }
    let before = rss_kib(pid);
    let requests: Vec<u8> = (0..3000)
        .flat_map(|req| Frame::List { req, cursor: None }.to_bytes())
        .collect();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.send.write_all(&requests)).await;
    let peak = rss_kib(pid);
    let code = close_code(&raw.conn, Duration::from_secs(15)).await;
    let grew_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "unread replies: closed with {code:?}; server RSS {} → {} MiB",
        before / 1024,
        peak / 1024
    );
    assert_eq!(code, Some(ErrorCode::ControlStreamFull));
    // 64 waiting frames of at most 64 KiB: 4 MiB, plus the 8 MiB control-stream window.
    assert!(grew_mib <= 16, "the server grew by {grew_mib} MiB");
}

/// Finding 4: twelve simultaneous creates. Before: all passed a check meant for one (720 MiB
/// reserved against a 100 MiB quota; 12 uploads against `--max-uploads 2`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_creates_cannot_overrun_the_quota_or_the_upload_limit() {
    let cases: [(u64, u64, usize, ErrorCode); 2] = [
        (100 << 20, 0, 1, ErrorCode::QuotaExceeded),
        (0, 2, 2, ErrorCode::TooManyUploads),
    ];
    for (quota, max_uploads, allowed, code) in cases {
        let server = TestServer::start_with(|c| {
            c.quota_per_owner = quota;
            c.max_uploads_per_owner = max_uploads;
        })
        .await;
        let mut raws = Vec::new();
        for _ in 0..12 {
            raws.push(Raw::hello(&server, &server.alice).await);
        }
        let creates = raws.into_iter().enumerate().map(|(i, mut raw)| {
            tokio::spawn(async move {
                raw.frame(&Frame::Create {
                    req: 1,
                    file_name: format!("f{i}.bin"),
                    size: 60 << 20,
                    chunk_size: 4 << 20,
                    desc: String::new(),
                    dir: Vec::new(),
                    on_exists: Default::default(),
                    deferred: false,
                })
                .await;
                raw.next().await
            })
        });
        let mut created = 0;
        for create in creates.collect::<Vec<_>>() {
            match create.await.unwrap() {
                Some(Frame::Created { .. }) => created += 1,
                Some(Frame::Error { code: c, .. }) => assert_eq!(c, code),
                other => panic!("expected created or {code}, got {other:?}"),
            }
        }
        assert_eq!(created, allowed, "quota {quota}, max uploads {max_uploads}");
    }
}

/// Finding 6: `listing` with 20 uploads of 4 KiB descriptions (24 KiB each as escaped JSON)
/// and `resumed` with thousands of isolated durable chunks. Before: one frame over 64 KiB, and
/// `ferry list` failed with "control stream closed". Now both are paged and read back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_listings_and_long_durable_lists_are_paged() {
    let server = TestServer::start_with(|c| {
        c.min_chunk_size = 1024;
        c.max_uploads_per_owner = 0;
    })
    .await;
    let mut raw = Raw::hello(&server, &server.alice).await;
    let desc: String = "\u{1}".repeat(4096);
    for i in 0..20 {
        raw.frame(&Frame::Create {
            req: i,
            file_name: format!("clip{i}.mov"),
            size: 1,
            chunk_size: 1024,
            desc: desc.clone(),
            dir: Vec::new(),
            on_exists: Default::default(),
            deferred: false,
        })
        .await;
        assert!(matches!(raw.next().await, Some(Frame::Created { .. })));
    }
    raw.frame(&Frame::List {
        req: 99,
        cursor: None,
    })
    .await;
    match raw.next().await {
        Some(Frame::Listing { uploads, next, .. }) => {
            assert!(
                uploads.len() < 20 && next.is_some(),
                "{} uploads",
                uploads.len()
            );
        }
        other => panic!("expected a listing page, got {other:?}"),
    }
    let local = tempfile::tempdir().unwrap();
    let mut client = server.client(&server.alice, local.path());
    let all = client.list().await.expect("the client reads every page");
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|u| u.desc == desc));

    // 6 000 isolated durable chunks of 1 KiB: `[11998,11999],` is 14 bytes, 84 KB of ranges.
    let isolated = 6000u64;
    raw.frame(&Frame::Create {
        req: 50,
        file_name: "holes.bin".into(),
        size: 2 * isolated * 1024,
        chunk_size: 1024,
        desc: String::new(),
        dir: Vec::new(),
        on_exists: Default::default(),
        deferred: false,
    })
    .await;
    let id = match raw.next().await {
        Some(Frame::Created { upload, .. }) => upload.upload_id,
        other => panic!("expected created, got {other:?}"),
    };
    let chunk = vec![5u8; 1024];
    let digest = ferry_proto::Digest::of(&chunk).to_hex();
    for i in 0..isolated {
        raw.chunk(&id, 2 * i, 1024, &digest, &chunk).await;
    }
    let mut acked = ferry_proto::ChunkSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < isolated && Instant::now() < deadline {
        if let Some(Frame::Ack { chunks, .. }) = raw.next().await {
            for [s, e] in chunks {
                acked.insert_range(s, e);
            }
        }
    }
    assert_eq!(acked.len(), isolated, "every chunk acknowledged");
    raw.frame(&Frame::Resume {
        req: 100,
        upload_id: id.clone(),
        from: 0,
    })
    .await;
    match raw.next().await {
        Some(Frame::Resumed { upload, .. }) => {
            assert_eq!(upload.durable.len(), ferry_proto::MAX_RANGES_PER_FRAME);
            assert_eq!(upload.durable_next, Some(2 * 1000));
        }
        other => panic!("expected resumed, got {other:?}"),
    }
    let conn = client.connection().await.unwrap();
    let info = conn.resume(&id).await.expect("the client reads every page");
    let durable = ferry_proto::ChunkSet::from_wire(&info.durable, 2 * isolated).unwrap();
    assert_eq!(durable, acked);
}

/// Finding 7: revoking a token left its live connections working (a revoked client created
/// and listed uploads 35 s later). Now they are closed within a second with `token_revoked`,
/// which the client reports as permanent (exit 2); other owners are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_cuts_its_live_connections_within_a_second() {
    let server = TestServer::start().await;
    let alice = Raw::hello(&server, &server.alice).await;
    let local = tempfile::tempdir().unwrap();
    let mut alice_client = server.client(&server.alice, local.path());
    alice_client.list().await.unwrap();
    let mut bob = server.client(&server.bob, local.path());
    bob.list().await.unwrap();
    let revoked = Instant::now();
    ferry_server::Tokens::new(server.data())
        .revoke("alice")
        .unwrap();
    let code = close_code(&alice.conn, Duration::from_secs(1)).await;
    let after = revoked.elapsed();
    assert_eq!(code, Some(ErrorCode::TokenRevoked), "after {after:?}");
    bob.list().await.expect("bob's connection is untouched");

    // The library client, logged in before: told `token_revoked`, a permanent error.
    let err = alice_client.list().await.unwrap_err();
    assert!(err.to_string().contains("token revoked"), "{err}");
    assert_eq!(err.exit_code(), 2, "{err}");
}

/// Finding 8: the auth-failure delay was reset by any success, so alternating wrong and right
/// tokens from one address was never slowed. Only time forgives now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_right_and_wrong_tokens_still_slows_down() {
    let server = TestServer::start().await;
    let mut last_wrong = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        let mut raw = Raw::open(&server).await;
        raw.frame(&Frame::Hello {
            version: PROTOCOL_VERSION,
            token: "fy_wrong".into(),
        })
        .await;
        assert_eq!(raw.code().await, ErrorCode::Unauthorized);
        last_wrong = started.elapsed();
        Raw::hello(&server, &server.alice).await;
    }
    // The third failure waits 500 ms although a success came between each.
    assert!(last_wrong >= Duration::from_millis(450), "{last_wrong:?}");
}

/// Finding 9: names read back from the tokens file were trusted; `../../x` published outside
/// the data directory. Now the server refuses to start and names the line.
#[test]
fn a_tokens_file_with_a_bad_name_stops_the_server_naming_the_line() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    ferry_server::Tokens::new(&data).add("alice").unwrap();
    let tokens = data.join("tokens");
    let text = std::fs::read_to_string(&tokens).unwrap();
    std::fs::write(&tokens, format!("{text}../../x {}\n", "ab".repeat(32))).unwrap();
    let out = std::process::Command::new(binary("ferryd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("tokens line 2") && stderr.contains("../../x"),
        "{stderr}"
    );
}

/// Finding 14: a `hello` that stalls after 2 bytes got `stream_timeout` while the docs promised
/// `not_authenticated`. One deadline covers the handshake and `hello`, and it answers
/// `not_authenticated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_hello_is_not_authenticated() {
    let server = TestServer::start_with(|c| c.handshake_timeout = Duration::from_secs(1)).await;
    let mut raw = Raw::open(&server).await;
    raw.bytes(&[0, 0]).await;
    let started = Instant::now();
    assert_eq!(raw.code().await, ErrorCode::NotAuthenticated);
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Protocol versions: a client of an older version (1 to 5) connects (same ALPN) and is told
/// to upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_client_is_told_the_versions_and_to_upgrade() {
    let server = TestServer::start().await;
    for version in 1..PROTOCOL_VERSION {
        let mut raw = Raw::open(&server).await;
        raw.frame(&Frame::Hello {
            version,
            token: server.alice.clone(),
        })
        .await;
        match raw.next().await {
            Some(Frame::Error { code, message, .. }) => {
                assert_eq!(code, ErrorCode::UnsupportedVersion);
                assert_eq!(
                    message,
                    format!(
                        "protocol version {version} is not supported, this server speaks {PROTOCOL_VERSION}; upgrade the client"
                    )
                );
            }
            other => panic!("expected unsupported_version, got {other:?}"),
        }
    }
}

/// Finding 12: a 255-byte name that collides got `storage_error` (its `(1)` form was 259 bytes)
/// and the client retried forever. The stem is shortened now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_colliding_255_byte_name_is_published_shortened() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let name = format!("{}.mov", "v".repeat(251));
    let path = random_file(local.path(), &name, 10_000, 3);
    let mut client = server.client(&server.alice, local.path());
    let first = client.upload(&path, "").await.unwrap();
    // Another file under the name (the same content would be found on the server and skipped).
    std::fs::create_dir_all(local.path().join("other")).unwrap();
    let path = random_file(&local.path().join("other"), &name, 10_000, 4);
    let mut client = server.client(&server.alice, &local.path().join("other"));
    let second = client.upload(&path, "").await.unwrap();
    assert_eq!(first.file_name, name);
    assert_eq!(second.file_name, format!("{} (1).mov", "v".repeat(247)));
    assert_same_file(&path, &server.published("alice", &second.file_name));
}

/// Memory under many idle streams: 4 logged-in connections each open their 32 chunk streams,
/// send a header and 1 MiB of an 8 MiB chunk, and stall. The server holds at most the read
/// buffer per stream and the windows (docs/security.md); chunk data goes to the staging file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stalled_chunk_streams_stay_within_the_memory_bound() {
    // Bound whole: its temp dir must outlive the server.
    let deployment = Deployment::start(&[]);
    let (server, token) = (&deployment.server, deployment.token.clone());
    let pid = server.child.id();
    let before = rss_kib(pid);
    let chunk = 8u64 << 20;
    let mut held = Vec::new();
    for c in 0..4 {
        let mut raw = Raw::login(server.addr, &server.fingerprint, &token, Dial::default()).await;
        raw.frame(&Frame::Create {
            req: 1,
            file_name: format!("idle{c}.bin"),
            size: 32 * chunk,
            chunk_size: chunk,
            desc: String::new(),
            dir: Vec::new(),
            on_exists: Default::default(),
            deferred: false,
        })
        .await;
        let Some(Frame::Created { upload, .. }) = raw.next().await else {
            panic!("create refused");
        };
        let mut streams = Vec::new();
        for index in 0..32 {
            let mut stream = raw.conn.open_uni().await.unwrap();
            let header = Frame::Chunk {
                upload_id: upload.upload_id.clone(),
                index,
                size: chunk,
            };
            stream.write_all(&header.to_bytes()).await.unwrap();
            stream.write_all(&vec![1u8; 1 << 20]).await.unwrap();
            streams.push(stream);
        }
        held.push((raw, streams));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(pid);
    let grew_mib = during.saturating_sub(before) / 1024;
    eprintln!(
        "stalled streams: 4 connections × 32 streams, server RSS {} → {} MiB",
        before / 1024,
        during / 1024
    );
    // The formula (docs/security.md): at most 48 MiB per logged-in connection, of which the
    // 32 read buffers are 8 MiB; the chunk data itself goes to the staging files.
    assert!(grew_mib <= 4 * 48, "the server grew by {grew_mib} MiB");
    drop(held);
}

/// Folder paths from the network stay inside the owner's folder: each component is sanitised
/// like a name (`..` alone is refused; a component with slashes keeps its last part), and
/// depth and length are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_paths_cannot_leave_the_owners_folder() {
    let server = TestServer::start().await;
    let mut raw = Raw::hello(&server, &server.alice).await;
    let cases: [(Vec<&str>, Result<&str, ErrorCode>); 4] = [
        (vec![".."], Err(ErrorCode::InvalidName)),
        (vec!["a", "../../../etc"], Ok("a/etc")),
        (vec!["/abs", "ok"], Ok("abs/ok")),
        (vec!["x"; 33], Err(ErrorCode::InvalidName)),
    ];
    for (req, (dir, expected)) in (1..).zip(cases) {
        raw.frame(&Frame::Mkdir {
            req,
            dir: dir.iter().map(|s| s.to_string()).collect(),
        })
        .await;
        match (raw.next().await, expected) {
            (Some(Frame::Made { dir: made, .. }), Ok(want)) => assert_eq!(made, want),
            (Some(Frame::Error { code, .. }), Err(want)) => assert_eq!(code, want, "{dir:?}"),
            (other, want) => panic!("{dir:?}: expected {want:?}, got {other:?}"),
        }
    }
    let owner = server.data().join("files").join("alice");
    assert!(owner.join("a/etc").is_dir() && owner.join("abs/ok").is_dir());
    assert!(!server.data().join("etc").exists() && !server.data().join("files/etc").exists());
}

/// The handshake grants three unidirectional streams (HTTP/3 needs them); a `ferry/1` client's
/// stream opened before `welcome` is stopped at once with `not_authenticated`, not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_stream_before_welcome_is_stopped() {
    let server = TestServer::start().await;
    let raw = Raw::open(&server).await;
    let mut stream = raw.conn.open_uni().await.unwrap();
    let _ = stream.write_all(&[7u8; 4096]).await;
    let stopped = tokio::time::timeout(Duration::from_secs(5), stream.stopped()).await;
    let code = match stopped {
        Ok(Ok(Some(code))) => code.into_inner(),
        other => panic!("expected STOP_SENDING, got {other:?}"),
    };
    assert_eq!(code, u64::from(ErrorCode::NotAuthenticated.quic_code()));
}

//! Issue 21, the third outside review: each finding as a scenario that failed before its fix.
//! Here the sessions, names and documents; the floods (pieces, inodes, idle and trickling
//! connections) are in `hardening3_floods.rs`.

use std::time::Duration;

use ferry_proto::{ErrorCode, Frame, PROTOCOL_VERSION};
use ferry_tests::raw::{close_code, Dial, Raw};
use ferry_tests::*;

/// Finding 2: a client that gives the server no stream credit parks its `welcome`; the token
/// was revoked meanwhile, and when the client granted credit 12 s later it got `welcome` and
/// could create. Now the connection is registered for revocation before `welcome` is written,
/// the write is bounded by the login deadline, and the credential is checked again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_parked_by_a_client_cannot_outlive_a_revocation() {
    let server = TestServer::start_with(|c| c.handshake_timeout = Duration::from_secs(2)).await;
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(8));
    let dial = Dial {
        bind: None,
        transport: Some(transport),
    };
    let mut raw = Raw::dial(server.addr, &server.fingerprint, dial)
        .await
        .unwrap();
    raw.frame(&Frame::Hello {
        version: PROTOCOL_VERSION,
        token: server.alice.clone(),
    })
    .await;
    // The server has read `hello` and is writing `welcome` into 8 bytes of credit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ferry_server::Tokens::new(server.data())
        .revoke("alice")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Reading grants credit now: before the fix `welcome` arrived, and a create succeeded.
    let got = tokio::time::timeout(Duration::from_secs(5), raw.next()).await;
    assert!(
        !matches!(got, Ok(Some(Frame::Welcome { .. }))),
        "a revoked token got welcome: {got:?}"
    );
    assert_eq!(
        close_code(&raw.conn, Duration::from_secs(5)).await,
        Some(ErrorCode::TokenRevoked)
    );
}

/// Finding 3: a token added, used and revoked within one 100 ms look at the file left the file
/// as it was, and the watch compared bytes only: 6 of 8 token sessions and 7 of 8 link sessions
/// survived. Every look now also sees the file's identity and every new login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_added_used_and_revoked_at_once_is_closed() {
    let server = TestServer::start().await;
    let tokens = ferry_server::Tokens::new(server.data());
    let links = ferry_server::links::Links::new(server.data());
    let mut sessions = Vec::new();
    for round in 0..8 {
        let token = tokens.add(&format!("quick{round}")).unwrap();
        let raw = Raw::hello(&server, &token).await;
        tokens.revoke(&format!("quick{round}")).unwrap();
        sessions.push(raw);
        let (link, grant) = links.add("alice", 0, 0, 0).unwrap();
        let raw = Raw::hello(&server, &grant).await;
        links.revoke(&link.id).unwrap();
        sessions.push(raw);
    }
    let mut survived = 0;
    for raw in &sessions {
        if close_code(&raw.conn, Duration::from_secs(2)).await != Some(ErrorCode::TokenRevoked) {
            survived += 1;
        }
    }
    assert_eq!(survived, 0, "of 16 revoked sessions, {survived} survived");
}

/// Finding 12: the client's reconnect wait grew to 5 s and never came back down after a
/// successful reconnect, so in a loop of server restarts it waited 68 of 120 s for a server
/// that was back in 0.04 s. After a connection that got `welcome`, the next loss waits 250 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconnect_wait_starts_short_again_after_a_reconnect() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let token = ferry_server::Tokens::new(&data).add("alice").unwrap();
    let mut server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr.to_string();
    let size = 16usize << 20;
    let source = random_file(work.path(), "rushes.mov", size, 12);
    let state = work.path().join("state");
    let mut client = std::process::Command::new(binary("ferry"))
        .args(["--server", &addr, "--token", &token])
        .args(["--fingerprint", &server.fingerprint])
        .arg("--state-dir")
        .arg(&state)
        .args(["--idle-timeout", "1", "--reconnect-for", "60"])
        .args([
            "upload",
            "--json",
            "--limit-rate",
            "1M",
            "--chunk-size",
            "256KiB",
        ])
        .arg(&source)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Everything the client says on stderr (progress lines end in \r, notes in \n).
    let said = Arc::new(Mutex::new(String::new()));
    let mut stderr = client.stderr.take().unwrap();
    let sink = said.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let waits = |said: &Arc<Mutex<String>>| -> Vec<u64> {
        said.lock()
            .unwrap()
            .split(['\r', '\n'])
            .filter_map(|l| {
                l.split("reconnecting in ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    };
    let probe = work.path().join("probe");
    assert!(
        eventually(Duration::from_secs(30), async || {
            server.durable_bytes(&token, &probe).await > 0
        })
        .await,
        "the upload started"
    );
    // Down long enough for the wait to grow to 1 s.
    server.kill9();
    assert!(
        eventually(Duration::from_secs(30), async || waits(&said)
            .contains(&1000))
        .await,
        "the wait grew: {:?}",
        said.lock().unwrap()
    );
    server = ServerProcess::start(&data, &addr);
    let before = server.durable_bytes(&token, &probe).await;
    assert!(
        eventually(Duration::from_secs(30), async || {
            server.durable_bytes(&token, &probe).await > before
        })
        .await,
        "the client reconnected and went on"
    );
    let seen = waits(&said).len();
    server.kill9();
    assert!(
        eventually(Duration::from_secs(20), async || waits(&said).len() > seen).await,
        "the client noticed the second loss"
    );
    let next = waits(&said)[seen];
    assert_eq!(
        next,
        250,
        "after a reconnect the wait starts over: {:?}",
        waits(&said)
    );
    let _ = client.kill();
    let _ = client.wait();
}

/// Finding 4: a description with a NUL byte made the `--on-complete` hook fail to start, and
/// the job was dropped. `create` refuses it now (and the hook passes any that got through
/// with U+FFFD in its place: `hooks::tests`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_description_with_a_nul_byte_is_refused_at_create() {
    let server = TestServer::start().await;
    let mut raw = Raw::hello(&server, &server.alice).await;
    let Frame::Create {
        req,
        file_name,
        size,
        chunk_size,
        dir,
        on_exists,
        ..
    } = ferry_tests::raw::create(1, "clip.mov", 10, 4096)
    else {
        unreachable!()
    };
    raw.frame(&Frame::Create {
        req,
        file_name,
        size,
        chunk_size,
        desc: "take 1\0take 2".into(),
        dir,
        on_exists,
        deferred: false,
    })
    .await;
    match raw.next().await {
        Some(Frame::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::BadField);
            assert_eq!(message, "description holds a NUL byte");
        }
        other => panic!("expected bad_field, got {other:?}"),
    }
}

/// Finding 9: through an upload link, `on_exists: fail` answered `already_exists` for a name
/// the owner held and `created` otherwise, so a link learned the owner's file names. A link's
/// uploads now behave as if the owner's other files did not exist: a taken name is renamed,
/// and `finished` reports the name as asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_link_cannot_probe_the_owners_file_names() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let path = random_file(local.path(), "clip.mov", 5000, 9);
    server
        .client(&server.alice, local.path())
        .upload(&path, "")
        .await
        .unwrap();
    let (_, grant) = ferry_server::links::Links::new(server.data())
        .add("alice", 0, 0, 0)
        .unwrap();
    let mut raw = Raw::hello(&server, &grant).await;
    let payload = std::fs::read(&path).unwrap();
    let Frame::Create {
        req,
        file_name,
        size,
        dir,
        desc,
        ..
    } = ferry_tests::raw::create(1, "clip.mov", payload.len() as u64, 1 << 20)
    else {
        unreachable!()
    };
    raw.frame(&Frame::Create {
        req,
        file_name,
        size,
        chunk_size: 1 << 20,
        desc,
        dir,
        on_exists: ferry_proto::OnExists::Fail,
        deferred: false,
    })
    .await;
    let upload = match raw.next().await {
        Some(Frame::Created { upload, .. }) => upload,
        other => panic!("a link's create must not tell a taken name: {other:?}"),
    };
    let digest = ferry_proto::Digest::of(&payload);
    raw.chunk(
        &upload.upload_id,
        0,
        payload.len() as u64,
        &digest.to_hex(),
        &payload,
    )
    .await;
    assert!(matches!(raw.next().await, Some(Frame::Ack { .. })));
    raw.frame(&Frame::Finish {
        req: 2,
        upload_id: upload.upload_id.clone(),
        content_hash: ferry_proto::ContentHasher::of(&payload, 1 << 20).to_hex(),
        size: None,
    })
    .await;
    match raw.next().await {
        Some(Frame::Finished { file_name, .. }) => assert_eq!(file_name, "clip.mov"),
        other => panic!("expected finished, got {other:?}"),
    }
    assert_same_file(&path, &server.published("alice", "clip (1).mov"));
}

/// Finding 8: a 255-byte name whose only dot is near its start, uploaded twice, failed at
/// `finish` with `storage_error` "File name too long" every time: its numbered form kept the
/// 254-byte "extension" whole. It is shortened like any other now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_colliding_255_byte_name_with_a_long_extension_is_published() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let name = format!("a.{}", "x".repeat(253));
    let path = random_file(local.path(), &name, 10_000, 4);
    server
        .client(&server.alice, local.path())
        .upload(&path, "")
        .await
        .unwrap();
    // Another file under the name (the same content would be found on the server and skipped).
    std::fs::create_dir_all(local.path().join("other")).unwrap();
    let path = random_file(&local.path().join("other"), &name, 10_000, 6);
    let second = server
        .client(&server.alice, &local.path().join("other"))
        .upload(&path, "")
        .await
        .unwrap();
    assert!(second.file_name.len() <= 255, "{}", second.file_name);
    assert!(second.file_name.ends_with(" (1)"), "{second:?}");
    assert_same_file(&path, &server.published("alice", &second.file_name));
}

/// Finding 10, three places where code and docs disagreed, settled on what a client can rely
/// on: a tokens file made invalid while the server runs made every login `internal` (docs:
/// ignored) — logins now use its last valid version; `create` checks the description before
/// the size and chunk size (the docs now say so); a well-formed `list` cursor the server never
/// gave continues after the position it names (the docs now say so; a malformed one is
/// `bad_field`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_and_docs_agree_on_a_bad_tokens_file_check_order_and_cursors() {
    let server = TestServer::start().await;
    let file = server.data().join("tokens");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{good}this line is not a token\n")).unwrap();
    let mut raw = Raw::hello(&server, &server.alice).await;
    std::fs::write(&file, good).unwrap();

    // A description over 4 096 bytes and a chunk size the server refuses: the description
    // is checked first.
    let Frame::Create {
        req,
        file_name,
        size,
        dir,
        on_exists,
        ..
    } = ferry_tests::raw::create(1, "clip.mov", 10, 4096)
    else {
        unreachable!()
    };
    raw.frame(&Frame::Create {
        req,
        file_name,
        size,
        chunk_size: 1,
        desc: "d".repeat(5000),
        dir,
        on_exists,
        deferred: false,
    })
    .await;
    assert_eq!(raw.code().await, ErrorCode::BadField);

    let first = raw.create("a.bin", 1).await;
    raw.create("b.bin", 1).await;
    raw.frame(&Frame::List {
        req: 2,
        cursor: Some(format!("0-{first}")),
    })
    .await;
    match raw.next().await {
        Some(Frame::Listing { uploads, .. }) => {
            let mut names: Vec<&str> = uploads.iter().map(|u| u.file_name.as_str()).collect();
            names.sort();
            assert_eq!(
                names,
                ["a.bin", "b.bin"],
                "everything after creation time 0"
            );
        }
        other => panic!("expected listing, got {other:?}"),
    }
    raw.frame(&Frame::List {
        req: 3,
        cursor: Some("not a cursor".into()),
    })
    .await;
    assert_eq!(raw.code().await, ErrorCode::BadField);
}

//! Browsers' path without a browser: the protocol over WebTransport on the QUIC port (a Rust
//! WebTransport client, trusting the browser certificates by hash as a page does), upload
//! links and their bounds, the session's path and origin checks, and the web listener.
//! (`browser.rs` drives the real page in Chromium.)

use std::time::Duration;

use ferry_proto::{ErrorCode, Frame};
use ferry_server::links::Links;
use ferry_tests::raw::{create, Raw};
use ferry_tests::web::{browser_cert_hashes, https_get, WebRaw};
use ferry_tests::{assert_same_file, random_file, TestServer};

async fn web_server() -> TestServer {
    TestServer::start_with(|c| c.web_listen = Some("127.0.0.1:0".parse().unwrap())).await
}

/// The next reply, skipping acks.
async fn reply(web: &mut WebRaw) -> Frame {
    loop {
        match web.next().await {
            Some(Frame::Ack { .. }) => continue,
            Some(frame) => return frame,
            None => panic!("the control stream ended"),
        }
    }
}

fn code_of(frame: &Frame) -> Option<ErrorCode> {
    match frame {
        Frame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_session_uploads_through_a_link_and_sees_only_its_own() {
    let server = web_server().await;
    let (_, grant) = Links::new(server.data()).add("alice", 0, 0, 0).unwrap();
    // An upload of alice's own, made with her token.
    let mut native = Raw::hello(&server, &server.alice).await;
    let hers = native.create("hers.bin", 1 << 20).await;

    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "clip.bin", (5 << 19) + 7, 41);
    let bytes = std::fs::read(&source).unwrap();
    let chunk_size = 1u64 << 20;
    let mut web = WebRaw::login(&server, &grant).await;
    web.frame(&create(1, "clip.bin", bytes.len() as u64, chunk_size))
        .await;
    let upload = match reply(&mut web).await {
        Frame::Created { upload, .. } => upload,
        other => panic!("expected created, got {other:?}"),
    };
    assert_eq!(upload.chunk_count, 3);
    for (index, payload) in bytes.chunks(chunk_size as usize).enumerate() {
        web.chunk(&upload.upload_id, index as u64, payload).await;
    }
    let mut acked = ferry_proto::ChunkSet::new();
    for _ in 0..50 {
        if acked.len() == 3 {
            break;
        }
        match web.next().await {
            Some(Frame::Ack { chunks, .. }) => {
                for [start, end] in chunks {
                    acked.insert_range(start, end);
                }
            }
            other => panic!("expected acks, got {other:?}"),
        }
    }
    assert_eq!(acked.len(), 3, "every chunk acknowledged");
    let content_hash = ferry_tests::content_hash_file(&source, chunk_size as usize);
    web.frame(&Frame::Finish {
        req: 2,
        upload_id: upload.upload_id.clone(),
        content_hash,
        size: None,
    })
    .await;
    match reply(&mut web).await {
        Frame::Finished { file_name, .. } => assert_eq!(file_name, "clip.bin"),
        other => panic!("expected finished, got {other:?}"),
    }
    assert_same_file(&source, &server.published("alice", "clip.bin"));

    // A link sees nothing but its own uploads, lists nothing, makes no folders.
    for frame in [
        Frame::List {
            req: 3,
            cursor: None,
        },
        Frame::Mkdir {
            req: 3,
            dir: vec!["x".into()],
        },
    ] {
        web.frame(&frame).await;
        let answer = reply(&mut web).await;
        assert_eq!(code_of(&answer), Some(ErrorCode::Refused), "{answer:?}");
    }
    for frame in [
        Frame::Resume {
            req: 4,
            upload_id: hers.clone(),
            from: 0,
        },
        Frame::Abort {
            req: 4,
            upload_id: hers.clone(),
        },
    ] {
        web.frame(&frame).await;
        let answer = reply(&mut web).await;
        assert_eq!(code_of(&answer), Some(ErrorCode::NotFound), "{answer:?}");
    }
    // Her token still sees both, the link's upload among them.
    native
        .frame(&Frame::List {
            req: 9,
            cursor: None,
        })
        .await;
    match native.next().await {
        Some(Frame::Listing { uploads, .. }) => {
            let ids: Vec<_> = uploads.iter().map(|u| u.upload_id.clone()).collect();
            assert!(
                ids.contains(&hers) && ids.contains(&upload.upload_id),
                "{ids:?}"
            );
        }
        other => panic!("expected a listing, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_links_keep_their_bounds_and_can_be_revoked() {
    let server = web_server().await;
    let links = Links::new(server.data());
    let (link, grant) = links.add("bob", 0, 3 << 20, 2).unwrap();
    let mut web = WebRaw::login(&server, &grant).await;
    let mb = 1u64 << 20;
    let mut created = Vec::new();
    for (req, size, refused) in [
        (1, 2 * mb, None),
        (2, 2 * mb, Some("allows 3.0 MiB in all")),
        (3, mb, None),
        (4, 1, Some("allows 2 files")),
    ] {
        web.frame(&create(req, &format!("f{req}"), size, mb)).await;
        match (reply(&mut web).await, refused) {
            (Frame::Created { upload, .. }, None) => created.push(upload.upload_id),
            (Frame::Error { code, message, .. }, Some(why)) => {
                assert_eq!(code, ErrorCode::QuotaExceeded);
                assert!(message.contains(why), "{message}");
            }
            (other, _) => panic!("create {req}: unexpected {other:?}"),
        }
    }
    // An abort gives its file and bytes back.
    web.frame(&Frame::Abort {
        req: 5,
        upload_id: created[1].clone(),
    })
    .await;
    assert!(matches!(reply(&mut web).await, Frame::Aborted { .. }));
    web.frame(&create(6, "f6", mb, mb)).await;
    assert!(matches!(reply(&mut web).await, Frame::Created { .. }));

    // Unknown and expired links are refused at hello.
    let (_, expired) = links.add("bob", 1, 0, 0).unwrap();
    for (grant, why) in [
        (expired.as_str(), "this upload link has expired"),
        ("fl_0000", "unknown or revoked upload link"),
    ] {
        let mut other = WebRaw::open(&server, "/ferry", None).await.unwrap();
        other
            .frame(&Frame::Hello {
                version: ferry_proto::PROTOCOL_VERSION,
                token: grant.into(),
            })
            .await;
        match other.next().await {
            Some(Frame::Error { code, message, .. }) => {
                assert_eq!(code, ErrorCode::Unauthorized);
                assert_eq!(message, why);
            }
            other => panic!("expected unauthorized, got {other:?}"),
        }
    }

    // Revoked: the live session is closed within the watch's period.
    links.revoke(&link.id).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), web.session.closed()).await;
    assert!(closed.is_ok(), "the revoked link's session was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_path_and_the_page_origin_are_checked() {
    let server = web_server().await;
    let web_port = server.web.unwrap().port();
    let wrong_path = WebRaw::open(&server, "/other", None).await;
    let wrong_path = wrong_path.err().unwrap_or_default();
    assert!(wrong_path.contains("404"), "{wrong_path}");
    let evil = WebRaw::open(&server, "/ferry", Some("https://evil.example:8443")).await;
    assert!(evil.err().is_some_and(|e| e.contains("403")));
    let own = format!("https://127.0.0.1:{web_port}");
    assert!(WebRaw::open(&server, "/ferry", Some(&own)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_listener_serves_the_page_and_the_session_details() {
    let server = web_server().await;
    let web = server.web.unwrap();
    let (_, grant) = Links::new(server.data()).add("alice", 0, 0, 0).unwrap();
    let (status, headers, body) =
        https_get(web, &server.fingerprint, &format!("/u/{grant}"), "").await;
    assert_eq!(status, 200);
    for contract in ["id=\"files\"", "id=\"upload\"", "id=\"status\""] {
        assert!(body.contains(contract), "the page has {contract}");
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        header("alt-svc"),
        format!("h3=\":{}\"; ma=86400", server.addr.port())
    );
    assert_eq!(header("referrer-policy"), "no-referrer");

    let origin = format!("Origin: https://127.0.0.1:{}\r\n", web.port());
    let (status, headers, body) =
        https_get(web, &server.fingerprint, "/webtransport.json", &origin).await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["port"], server.addr.port());
    assert_eq!(info["path"], "/ferry");
    let hashes: Vec<String> = browser_cert_hashes(server.data())
        .iter()
        .map(hex::encode)
        .collect();
    assert_eq!(info["certificate_hashes"], serde_json::json!(hashes));
    let cors = headers
        .iter()
        .find(|(k, _)| k == "access-control-allow-origin");
    assert!(cors.is_some_and(|(_, v)| v == &format!("https://127.0.0.1:{}", web.port())));
    let (status, _, _) = https_get(web, &server.fingerprint, "/nothing", "").await;
    assert_eq!(status, 404);
}

/// Bad input over WebTransport gets the same codes as over plain QUIC: an oversized frame is
/// `frame_too_large` and closes the session with that code; a session without `hello` is closed
/// after the handshake timeout with `not_authenticated`; a bad chunk header is an `error` and the
/// session stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_webtransport_gets_the_same_codes() {
    let server = TestServer::start_with(|c| {
        c.web_listen = Some("127.0.0.1:0".parse().unwrap());
        c.handshake_timeout = Duration::from_secs(2);
    })
    .await;
    let (_, grant) = Links::new(server.data()).add("alice", 0, 0, 0).unwrap();
    let closed_with = |web: &WebRaw| {
        let session = web.session.clone();
        async move {
            let reason = tokio::time::timeout(Duration::from_secs(10), session.closed())
                .await
                .expect("the session closes");
            reason.to_string()
        }
    };

    let mut web = WebRaw::open(&server, "/ferry", None).await.unwrap();
    web.send.write_all(&100_000u32.to_be_bytes()).await.unwrap();
    match web.next().await {
        Some(Frame::Error { code, .. }) => assert_eq!(code, ErrorCode::FrameTooLarge),
        other => panic!("expected frame_too_large, got {other:?}"),
    }
    let reason = closed_with(&web).await;
    assert!(
        reason.contains("65536"),
        "closed with the message: {reason}"
    );

    let silent = WebRaw::open(&server, "/ferry", None).await.unwrap();
    let reason = closed_with(&silent).await;
    assert!(reason.contains("no hello within 2 s"), "{reason}");

    let mut web = WebRaw::login(&server, &grant).await;
    let mut stream = web.session.open_uni().await.unwrap();
    stream
        .write_all(&Frame::Ping { req: 1 }.to_bytes())
        .await
        .unwrap();
    let _ = stream.finish();
    match web.next().await {
        Some(Frame::Error { code, .. }) => assert_eq!(code, ErrorCode::UnexpectedFrame),
        other => panic!("expected unexpected_frame, got {other:?}"),
    }
    web.frame(&Frame::Ping { req: 2 }).await;
    assert!(matches!(web.next().await, Some(Frame::Pong { req: 2 })));
}

/// An upload a link made that expires gives its file and bytes back to the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_upload_gives_its_share_back_to_the_link() {
    let server = TestServer::start_with(|c| {
        c.web_listen = Some("127.0.0.1:0".parse().unwrap());
        c.expire_after = Duration::from_secs(1);
        c.sweep_interval = Duration::from_millis(200);
    })
    .await;
    let (_, grant) = Links::new(server.data()).add("alice", 0, 0, 1).unwrap();
    let mut web = WebRaw::login(&server, &grant).await;
    web.frame(&create(1, "first", 1 << 20, 1 << 20)).await;
    let first = match reply(&mut web).await {
        Frame::Created { upload, .. } => upload.upload_id,
        other => panic!("expected created, got {other:?}"),
    };
    web.frame(&create(2, "second", 1 << 20, 1 << 20)).await;
    assert_eq!(
        code_of(&reply(&mut web).await),
        Some(ErrorCode::QuotaExceeded)
    );
    // Detached (the session ends), it expires: the owner's listing (which attaches nothing)
    // loses it.
    drop(web);
    let mut native = Raw::hello(&server, &server.alice).await;
    let mut gone = false;
    for req in 1..100 {
        native.frame(&Frame::List { req, cursor: None }).await;
        if let Some(Frame::Listing { uploads, .. }) = native.next().await {
            if uploads.iter().all(|u| u.upload_id != first) {
                gone = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the idle upload expired");
    let mut web = WebRaw::login(&server, &grant).await;
    web.frame(&create(500, "second", 1 << 20, 1 << 20)).await;
    assert!(matches!(reply(&mut web).await, Frame::Created { .. }));
}

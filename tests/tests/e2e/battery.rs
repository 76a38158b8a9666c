//! The bad-input battery: a raw QUIC client, below the `ferry` library, sends what scanners,
//! broken clients and hostile ones send, and each case asserts the exact error code. A
//! well-behaved upload runs alongside the whole time and must complete intact.

use std::time::Duration;

use ferry_proto::{ContentHasher, Digest, ErrorCode, Frame, PROTOCOL_VERSION};
use ferry_tests::raw::{quic, Raw};
use ferry_tests::*;

/// Control-stream garbage: each gets its code, then the connection is closed.
async fn control_cases(server: &TestServer) {
    let too_long = ((ferry_proto::MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("frame over 64 KiB", too_long, ErrorCode::FrameTooLarge),
        ("invalid UTF-8", framed(b"\xff\xfe\xfd"), ErrorCode::BadUtf8),
        (
            "invalid JSON",
            framed(b"{\"type\": \"list\", "),
            ErrorCode::BadJson,
        ),
        (
            "unknown type",
            framed(br#"{"type":"teleport","req":1}"#),
            ErrorCode::UnknownType,
        ),
        (
            "missing field",
            framed(br#"{"type":"create","req":1}"#),
            ErrorCode::BadField,
        ),
        (
            "wrongly typed field",
            framed(br#"{"type":"list","req":"seven"}"#),
            ErrorCode::BadField,
        ),
        (
            "negative size",
            framed(br#"{"type":"create","req":1,"file_name":"a","size":-5,"chunk_size":65536}"#),
            ErrorCode::BadField,
        ),
        (
            "a reply type as a request",
            framed(br#"{"type":"aborted","req":1,"upload_id":"x"}"#),
            ErrorCode::UnexpectedFrame,
        ),
    ];
    for (what, bytes, want) in cases {
        let mut raw = Raw::hello(server, &server.alice).await;
        raw.bytes(&bytes).await;
        assert_eq!(raw.code().await, want, "{what}");
        if want != ErrorCode::UnexpectedFrame {
            assert!(
                raw.closed().await,
                "{what}: the connection is closed after a malformed frame"
            );
        }
    }
    // A length prefix promising more than is sent, then the end of the stream.
    let mut raw = Raw::hello(server, &server.alice).await;
    raw.bytes(&[0, 0, 0, 100, b'{']).await;
    raw.send.finish().unwrap();
    assert_eq!(raw.code().await, ErrorCode::TruncatedFrame);
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

async fn hello_cases(server: &TestServer) {
    let mut raw = Raw::open(server).await;
    raw.frame(&Frame::List {
        req: 1,
        cursor: None,
    })
    .await;
    assert_eq!(
        raw.code().await,
        ErrorCode::NotAuthenticated,
        "request before hello"
    );
    assert!(raw.closed().await);

    for (what, token) in [
        ("no token", String::new()),
        ("wrong token", "fy_0000".to_owned()),
    ] {
        let mut raw = Raw::open(server).await;
        raw.frame(&Frame::Hello {
            version: PROTOCOL_VERSION,
            token,
        })
        .await;
        assert_eq!(raw.code().await, ErrorCode::Unauthorized, "{what}");
        assert!(raw.closed().await);
    }

    let mut raw = Raw::open(server).await;
    raw.frame(&Frame::Hello {
        version: 99,
        token: server.alice.clone(),
    })
    .await;
    assert_eq!(raw.code().await, ErrorCode::UnsupportedVersion);

    let wrong_alpn = quic(
        server.addr,
        &server.fingerprint,
        b"http/1.1",
        Default::default(),
    )
    .await;
    assert!(
        wrong_alpn.is_err(),
        "a connection with another ALPN fails the handshake"
    );
}

async fn request_cases(server: &TestServer) {
    let mut raw = Raw::hello(server, &server.alice).await;
    let create = ferry_tests::raw::create;
    let cases = [
        (
            "u64::MAX size",
            create(2, "a", u64::MAX, 65536),
            ErrorCode::FileTooLarge,
        ),
        (
            "zero chunk size",
            create(3, "a", 10, 0),
            ErrorCode::BadChunkSize,
        ),
        (
            "tiny chunk size",
            create(4, "a", 10, 1),
            ErrorCode::BadChunkSize,
        ),
        (
            "huge chunk size",
            create(5, "a", 10, 1 << 30),
            ErrorCode::BadChunkSize,
        ),
        (
            "10 000-byte name",
            create(6, &"n".repeat(10_000), 10, 65536),
            ErrorCode::InvalidName,
        ),
        (
            "name of only dots",
            create(7, "....", 10, 65536),
            ErrorCode::InvalidName,
        ),
        (
            "resume of nonsense",
            Frame::Resume {
                req: 8,
                upload_id: "../../etc".into(),
                from: 0,
            },
            ErrorCode::NotFound,
        ),
        (
            "finish with a digest not hex",
            Frame::Finish {
                req: 9,
                upload_id: "0".repeat(32),
                content_hash: "zz".into(),
                size: None,
            },
            ErrorCode::BadDigest,
        ),
    ];
    for (what, frame, want) in cases {
        raw.frame(&frame).await;
        match raw.next().await {
            Some(Frame::Error { code, req, .. }) => {
                assert_eq!(code, want, "{what}");
                assert!(req.is_some(), "{what}: the error answers the request");
            }
            other => panic!("{what}: expected {want}, got {other:?}"),
        }
    }
    // The connection survives request errors.
    raw.frame(&Frame::List {
        req: 10,
        cursor: None,
    })
    .await;
    assert!(matches!(raw.next().await, Some(Frame::Listing { .. })));
    // A zero-size file is fine.
    let id = raw.create("zero.bin", 0).await;
    raw.frame(&Frame::Finish {
        req: 11,
        upload_id: id,
        content_hash: Digest::of(b"").to_hex(),
        size: None,
    })
    .await;
    assert!(matches!(raw.next().await, Some(Frame::Finished { .. })));

    for (name, landed) in [
        ("../x", "x"),
        ("/etc/passwd", "passwd"),
        ("a\0b", "a_b"),
        ("CON", "CON_"),
    ] {
        raw.frame(&create(12, name, 1, 65536)).await;
        match raw.next().await {
            Some(Frame::Created { upload, .. }) => assert_eq!(upload.file_name, landed, "{name:?}"),
            other => panic!("{name:?}: {other:?}"),
        }
    }
}

async fn chunk_cases(server: &TestServer) {
    let mut raw = Raw::hello(server, &server.alice).await;
    let data = vec![7u8; 64 << 10];
    let good = Digest::of(&data).to_hex();
    let id = raw.create("chunks.bin", 2 * data.len() as u64).await;

    // (what, index, declared size, digest, payload, expected code)
    type Case = (&'static str, u64, u64, String, Vec<u8>, ErrorCode);
    let cases: Vec<Case> = vec![
        (
            "index out of range",
            2,
            65536,
            good.clone(),
            data.clone(),
            ErrorCode::IndexOutOfRange,
        ),
        (
            "declared size wrong",
            0,
            100,
            good.clone(),
            vec![7; 100],
            ErrorCode::WrongChunkSize,
        ),
        (
            // The extra byte is read as the start of chunk_end's length prefix.
            "payload longer than declared",
            0,
            65536,
            good.clone(),
            [data.clone(), vec![1]].concat(),
            ErrorCode::FrameTooLarge,
        ),
        (
            "payload shorter than declared",
            0,
            65536,
            good.clone(),
            data[..1000].to_vec(),
            ErrorCode::ShortPayload,
        ),
        (
            "digest mismatch",
            0,
            65536,
            Digest::of(b"other").to_hex(),
            data.clone(),
            ErrorCode::DigestMismatch,
        ),
        (
            "digest not hex",
            0,
            65536,
            "not-hex".into(),
            data.clone(),
            ErrorCode::BadDigest,
        ),
        (
            "unknown upload",
            0,
            65536,
            good.clone(),
            data.clone(),
            ErrorCode::NotFound,
        ),
    ];
    for (what, index, size, digest, payload, want) in cases {
        let upload = if want == ErrorCode::NotFound {
            "f".repeat(32)
        } else {
            id.clone()
        };
        raw.chunk(&upload, index, size, &digest, &payload).await;
        assert_eq!(raw.code().await, want, "{what}");
    }
    // What may follow the payload: exactly one chunk_end, then the end of the stream.
    let end = Frame::ChunkEnd {
        sha256: good.clone(),
    }
    .to_bytes();
    let tails: [(&str, Vec<u8>, ErrorCode); 3] = [
        (
            "bytes after chunk_end",
            [&data[..], &end, &[0]].concat(),
            ErrorCode::LongPayload,
        ),
        ("no chunk_end", data.clone(), ErrorCode::ShortPayload),
        (
            "another frame in place of chunk_end",
            [&data[..], &Frame::Ping { req: 1 }.to_bytes()].concat(),
            ErrorCode::UnexpectedFrame,
        ),
    ];
    for (what, tail, want) in tails {
        raw.chunk_raw(&id, 0, 65536, &tail).await;
        assert_eq!(raw.code().await, want, "{what}");
    }

    // Another owner's upload looks like no upload at all.
    let bob = Raw::hello(server, &server.bob).await;
    bob.chunk(&id, 0, 65536, &good, &data).await;
    let mut bob = bob;
    assert_eq!(
        bob.code().await,
        ErrorCode::NotFound,
        "chunk for another owner's upload"
    );

    // The same chunk twice: both acknowledged, nothing changes.
    for _ in 0..2 {
        raw.chunk(&id, 0, 65536, &good, &data).await;
        loop {
            match raw.next().await {
                Some(Frame::Ack { chunks, .. }) if chunks.iter().any(|r| r[0] == 0) => break,
                Some(Frame::Ack { .. }) => continue,
                other => panic!("expected an ack of chunk 0, got {other:?}"),
            }
        }
    }
    let whole = ContentHasher::of(&[data.clone(), data.clone()].concat(), data.len()).to_hex();
    raw.frame(&Frame::Finish {
        req: 20,
        upload_id: id.clone(),
        content_hash: whole.clone(),
        size: None,
    })
    .await;
    assert_eq!(
        raw.code().await,
        ErrorCode::Incomplete,
        "finish before every chunk is durable"
    );
    raw.chunk(&id, 1, 65536, &good, &data).await;
    assert!(matches!(raw.next().await, Some(Frame::Ack { .. })));
    raw.frame(&Frame::Finish {
        req: 21,
        upload_id: id.clone(),
        content_hash: good.clone(),
        size: None,
    })
    .await;
    assert_eq!(
        raw.code().await,
        ErrorCode::FileDigestMismatch,
        "finish with a wrong digest"
    );
    let plain = Digest::of(&[data.clone(), data.clone()].concat()).to_hex();
    raw.frame(&Frame::Finish {
        req: 23,
        upload_id: id.clone(),
        content_hash: plain,
        size: None,
    })
    .await;
    assert_eq!(
        raw.code().await,
        ErrorCode::FileDigestMismatch,
        "finish with the plain SHA-256 instead of the content hash"
    );
    raw.frame(&Frame::Finish {
        req: 22,
        upload_id: id,
        content_hash: whole,
        size: None,
    })
    .await;
    assert!(matches!(raw.next().await, Some(Frame::Finished { .. })));
    assert_eq!(
        std::fs::read(server.published("alice", "chunks.bin")).unwrap(),
        [data.clone(), data].concat()
    );
}

async fn stream_limit_case(server: &TestServer) {
    let raw = Raw::hello(server, &server.alice).await;
    let id = {
        let mut raw = raw;
        let id = raw.create("streams.bin", 64 << 20).await;
        (raw, id)
    };
    let (raw, id) = id;
    // Fill every stream the server allows with a header and no payload.
    let mut held = Vec::new();
    for index in 0..32u64 {
        let mut stream = raw.conn.open_uni().await.unwrap();
        let header = Frame::Chunk {
            upload_id: id.clone(),
            index,
            size: 65536,
        };
        stream.write_all(&header.to_bytes()).await.unwrap();
        held.push(stream);
    }
    let extra = tokio::time::timeout(Duration::from_millis(500), raw.conn.open_uni()).await;
    assert!(
        extra.is_err(),
        "a 33rd stream must wait for the server to allow it"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_battery_while_a_good_upload_completes() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "good.bin", 6 << 20, 70);
    let mut opts = server.options(&server.alice, local.path());
    opts.limit_rate = Some(2 << 20);
    let mut good = ferry_client::Client::new(opts).unwrap();
    let good_source = source.clone();
    let upload = tokio::spawn(async move { good.upload(&good_source, "").await });

    control_cases(&server).await;
    hello_cases(&server).await;
    request_cases(&server).await;
    chunk_cases(&server).await;
    stream_limit_case(&server).await;

    let report = upload.await.unwrap().expect("the good upload completes");
    assert_eq!(
        report.bytes_sent,
        6 << 20,
        "the good upload re-sent nothing"
    );
    assert_same_file(&source, &server.published("alice", "good.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_by_timeouts() {
    let server = TestServer::start_with(|c| {
        c.handshake_timeout = Duration::from_secs(2);
        c.stream_timeout = Duration::from_secs(2);
    })
    .await;
    // One byte a second of hello: cut off by the handshake timeout.
    let mut raw = Raw::open(&server).await;
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        token: server.alice.clone(),
    }
    .to_bytes();
    let started = std::time::Instant::now();
    for byte in hello.iter().take(5) {
        raw.bytes(&[*byte]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if raw.conn.close_reason().is_some() {
            break;
        }
    }
    assert!(raw.closed().await, "slow hello cut off");
    assert!(started.elapsed() < Duration::from_secs(8));

    // One byte a second of chunk payload: the stream is cut off with stream_timeout.
    let mut raw = Raw::hello(&server, &server.alice).await;
    let id = raw.create("slow.bin", 65536).await;
    let mut stream = raw.conn.open_uni().await.unwrap();
    let header = Frame::Chunk {
        upload_id: id,
        index: 0,
        size: 65536,
    };
    stream.write_all(&header.to_bytes()).await.unwrap();
    stream.write_all(&[1]).await.unwrap();
    assert_eq!(raw.code().await, ErrorCode::StreamTimeout);

    // A control frame that starts and stalls.
    raw.bytes(&[0, 0, 0, 20, b'{']).await;
    assert_eq!(raw.code().await, ErrorCode::StreamTimeout);
}

#[tokio::test]
async fn per_owner_limits_and_connection_caps_have_their_own_codes() {
    let server = TestServer::start_with(|c| {
        c.max_uploads_per_owner = 2;
        c.quota_per_owner = 1 << 20;
        c.max_connections_per_ip = 3;
    })
    .await;
    let mut raw = Raw::hello(&server, &server.alice).await;
    raw.create("one.bin", 1000).await;
    raw.create("two.bin", 1000).await;
    raw.frame(&Frame::Create {
        req: 3,
        file_name: "three.bin".into(),
        size: 1000,
        chunk_size: 65536,
        desc: String::new(),
        dir: Vec::new(),
        on_exists: Default::default(),
        deferred: false,
    })
    .await;
    match raw.next().await {
        Some(Frame::Error {
            code: ErrorCode::TooManyUploads,
            message,
            ..
        }) => {
            assert!(
                message.contains("2 uploads in progress, the limit is 2"),
                "{message}"
            )
        }
        other => panic!("expected too_many_uploads, got {other:?}"),
    }
    let mut bob = Raw::hello(&server, &server.bob).await;
    bob.frame(&Frame::Create {
        req: 1,
        file_name: "big.bin".into(),
        size: 2 << 20,
        chunk_size: 65536,
        desc: String::new(),
        dir: Vec::new(),
        on_exists: Default::default(),
        deferred: false,
    })
    .await;
    match bob.next().await {
        Some(Frame::Error {
            code: ErrorCode::QuotaExceeded,
            message,
            ..
        }) => {
            assert!(message.contains("quota of 1.0 MiB"), "{message}")
        }
        other => panic!("expected quota_exceeded, got {other:?}"),
    }
    // Two connections are open from 127.0.0.1; the third is allowed, the fourth is not.
    let _third = Raw::hello(&server, &server.alice).await;
    let mut fourth = Raw::open(&server).await;
    fourth
        .frame(&Frame::Hello {
            version: PROTOCOL_VERSION,
            token: server.alice.clone(),
        })
        .await;
    match fourth.next().await {
        Some(Frame::Error {
            code: ErrorCode::TooManyConnections,
            message,
            ..
        }) => {
            assert!(message.contains("the limit per address is 3"), "{message}")
        }
        other => panic!("expected too_many_connections, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_upload_expires_and_the_client_starts_afresh() {
    let server = TestServer::start_with(|c| {
        c.expire_after = Duration::from_secs(1);
        c.sweep_interval = Duration::from_millis(200);
    })
    .await;
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "stale.bin", 1 << 20, 71);
    // Create the upload through the library so the journal remembers it, then stop.
    let mut first = server.client(&server.alice, local.path());
    let mut opts = server.options(&server.alice, local.path());
    opts.limit_rate = Some(256 << 10);
    let mut slow = ferry_client::Client::new(opts).unwrap();
    let started = tokio::time::timeout(Duration::from_millis(1500), slow.upload(&source, "")).await;
    assert!(started.is_err(), "interrupted");
    slow.close().await;
    let id = first.list().await.unwrap()[0].upload_id.clone();
    let staged = server.data().join("staging").join(format!("{id}.part"));
    assert!(staged.exists());

    let gone = eventually(Duration::from_secs(10), async || {
        first.list().await.unwrap().is_empty()
    })
    .await;
    assert!(gone, "the sweeper removed the stale upload");
    // The record goes first (and is synced), then the staging file: wait for both.
    let deleted = eventually(Duration::from_secs(10), async || !staged.exists()).await;
    assert!(deleted, "its staged data is gone");
    let resume = |req| Frame::Resume {
        req,
        upload_id: id.clone(),
        from: 0,
    };
    let err = first
        .connection()
        .await
        .unwrap()
        .request(resume)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ferry_client::ClientError::Server {
                code: ErrorCode::Expired,
                ..
            }
        ),
        "got {err:?}"
    );

    let report = server
        .client(&server.alice, local.path())
        .upload(&source, "")
        .await
        .unwrap();
    assert!(!report.resumed, "a fresh upload");
    assert_ne!(report.upload_id, id);
    assert_same_file(&source, &server.published("alice", "stale.bin"));
}

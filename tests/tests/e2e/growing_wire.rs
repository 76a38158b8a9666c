//! Protocol 9's wire contract with a raw client (issue 24, docs/protocol.md §3.2.1): what a
//! client written from the docs sees for an upload of unknown length, `rewrite` and `read`.
//! The binaries' behaviour with growing sources is in `growing.rs`.

use super::growing::noise;

/// The wire contract of protocol 9 with a raw client (docs/protocol.md §3.2.1): an upload of
/// unknown length laid out for the largest file; `set_length` refused below what is durable;
/// `rewrite` forgetting a durable chunk (the readable prefix shrinks until it is sent again) and
/// refusing an index past the layout; `read` serving only the durable prefix, with its bytes on
/// a read stream; the length declared, the short last chunk, `finish` checking `size`; another
/// owner's upload `not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_length_rewrite_and_read_on_the_wire() {
    use ferry_proto::{ContentHasher, Digest, ErrorCode, Frame};
    use ferry_tests::raw::Raw;
    use ferry_tests::TestServer;

    let server = TestServer::start().await;
    let mut raw = Raw::hello(&server, &server.alice).await;
    let cs: u64 = 64 << 10;
    let Frame::Create {
        req,
        file_name,
        chunk_size,
        desc,
        dir,
        on_exists,
        ..
    } = ferry_tests::raw::create(1, "grow.ts", 0, cs)
    else {
        unreachable!()
    };
    raw.frame(&Frame::Create {
        req,
        file_name,
        size: 0,
        chunk_size,
        desc,
        dir,
        on_exists,
        deferred: true,
    })
    .await;
    let upload = match raw.next().await {
        Some(Frame::Created { upload, .. }) => upload,
        other => panic!("expected created, got {other:?}"),
    };
    assert!(upload.deferred);
    assert_eq!(upload.size, 1 << 40, "laid out for the largest file");
    let id = upload.upload_id.clone();
    let mut seed = 7u64;
    let chunks: Vec<Vec<u8>> = vec![
        noise(cs as usize, &mut seed),
        noise(cs as usize, &mut seed),
        noise(5, &mut seed),
    ];
    let mut acked = 0;
    send_chunk(&raw, &id, 0, &chunks[0]).await;
    send_chunk(&raw, &id, 1, &chunks[1]).await;
    while acked < 2 {
        match raw.next().await {
            Some(Frame::Ack { chunks, .. }) => {
                acked += chunks.iter().map(|[s, e]| e - s).sum::<u64>()
            }
            other => panic!("expected acks, got {other:?}"),
        }
    }
    let mut req = 10;
    let error_code = |reply: &Frame| match reply {
        Frame::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    };
    req += 1;
    let reply = ask(
        &mut raw,
        Frame::SetLength {
            req,
            upload_id: id.clone(),
            size: 1000,
        },
    )
    .await;
    assert_eq!(
        error_code(&reply),
        ErrorCode::BadField,
        "shorter than what is durable"
    );
    req += 1;
    let reply = ask(
        &mut raw,
        Frame::Rewrite {
            req,
            upload_id: id.clone(),
            chunks: vec![1 << 40],
        },
    )
    .await;
    assert_eq!(error_code(&reply), ErrorCode::IndexOutOfRange);
    req += 1;
    let reply = ask(
        &mut raw,
        Frame::Rewrite {
            req,
            upload_id: id.clone(),
            chunks: vec![0, 0],
        },
    )
    .await;
    assert!(
        matches!(reply, Frame::Rewritten { ref chunks, .. } if chunks == &[0]),
        "{reply:?}"
    );
    req += 1;
    let reply = ask(
        &mut raw,
        Frame::Read {
            req,
            upload_id: id.clone(),
            offset: 0,
            max: 1 << 20,
        },
    )
    .await;
    assert!(
        matches!(
            reply,
            Frame::ReadData {
                size: 0,
                durable: 0,
                complete: false,
                ..
            }
        ),
        "chunk 0 forgotten: nothing readable from the start: {reply:?}"
    );
    send_chunk(&raw, &id, 0, &chunks[0]).await;
    match raw.next().await {
        Some(Frame::Ack { chunks, .. }) => assert_eq!(chunks, vec![[0, 1]]),
        other => panic!("expected the ack, got {other:?}"),
    }
    req += 1;
    let reply = ask(
        &mut raw,
        Frame::Read {
            req,
            upload_id: id.clone(),
            offset: 100,
            max: 1 << 20,
        },
    )
    .await;
    let Frame::ReadData { size, durable, .. } = reply else {
        panic!("expected read_data, got {reply:?}")
    };
    assert_eq!((size, durable), (2 * cs - 100, 2 * cs));
    let mut stream = raw.conn.accept_uni().await.unwrap();
    let header = ferry_tests::raw::next_frame(&mut stream).await;
    assert!(matches!(header, Some(Frame::ReadData { req: r, .. }) if r == req));
    let mut got = vec![0; size as usize];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(got, [&chunks[0][100..], &chunks[1][..]].concat());

    let length = 2 * cs + 5;
    req += 1;
    let reply = ask(
        &mut raw,
        Frame::SetLength {
            req,
            upload_id: id.clone(),
            size: length,
        },
    )
    .await;
    let Frame::LengthSet { upload, .. } = reply else {
        panic!("expected length_set, got {reply:?}")
    };
    assert_eq!(
        (upload.size, upload.chunk_count, upload.deferred),
        (length, 3, false)
    );
    send_chunk(&raw, &id, 2, &chunks[2]).await;
    match raw.next().await {
        Some(Frame::Ack { chunks, .. }) => assert_eq!(chunks, vec![[2, 3]]),
        other => panic!("expected the ack, got {other:?}"),
    }
    let mut hasher = ContentHasher::new();
    for chunk in &chunks {
        hasher.push(&Digest::of(chunk));
    }
    let content_hash = hasher.finish().to_hex();
    req += 1;
    let reply = ask(
        &mut raw,
        Frame::Finish {
            req,
            upload_id: id.clone(),
            content_hash: content_hash.clone(),
            size: Some(length + 1),
        },
    )
    .await;
    assert_eq!(
        error_code(&reply),
        ErrorCode::BadState,
        "finish.size must be the length"
    );
    req += 1;
    let reply = ask(
        &mut raw,
        Frame::Finish {
            req,
            upload_id: id.clone(),
            content_hash,
            size: Some(length),
        },
    )
    .await;
    assert!(
        matches!(reply, Frame::Finished { size, .. } if size == length),
        "{reply:?}"
    );
    assert_eq!(
        std::fs::read(server.published("alice", "grow.ts")).unwrap(),
        chunks.concat()
    );

    let mut bob = Raw::hello(&server, &server.bob).await;
    let reply = ask(
        &mut bob,
        Frame::Read {
            req: 1,
            upload_id: id.clone(),
            offset: 0,
            max: 10,
        },
    )
    .await;
    assert_eq!(error_code(&reply), ErrorCode::NotFound);
}

/// A chunk stream carrying `data` whole, with its digest.
async fn send_chunk(raw: &ferry_tests::raw::Raw, id: &str, index: u64, data: &[u8]) {
    let digest = ferry_proto::Digest::of(data).to_hex();
    raw.chunk(id, index, data.len() as u64, &digest, data).await;
}

/// Sends `frame` and returns the next frame that is not an ack.
async fn ask(raw: &mut ferry_tests::raw::Raw, frame: ferry_proto::Frame) -> ferry_proto::Frame {
    raw.frame(&frame).await;
    loop {
        match raw.next().await {
            Some(ferry_proto::Frame::Ack { .. }) => continue,
            Some(other) => return other,
            None => panic!("connection closed"),
        }
    }
}

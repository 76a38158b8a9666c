//! Chunks sent by hand through the client's connection, to see the server's answers.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use ferry_client::upload::send_chunk;
use ferry_proto::{ContentHasher, Digest, ErrorCode, Frame};
use ferry_tests::*;

use crate::upload::{create_named, create_raw, finish_raw, server_code};

async fn next_event(client: &mut ferry_client::Client) -> Frame {
    let conn = client.connection().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), conn.events.recv())
        .await
        .expect("event within 10 s")
        .expect("connection open")
}

#[tokio::test]
async fn chunk_not_matching_its_digest_is_rejected_then_resent() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let mut client = server.client(&server.alice, local.path());
    let data = Bytes::from(vec![42u8; 64 << 10]);
    let id = create_raw(&mut client, "d.bin", data.len() as u64).await;
    let quic = client.connection().await.unwrap().quic().clone();
    let sent = AtomicU64::new(0);

    let mut corrupted = data.to_vec();
    corrupted[1000] ^= 1;
    send_chunk(
        &quic,
        &id,
        0,
        Bytes::from(corrupted),
        Digest::of(&data),
        None,
        &sent,
    )
    .await
    .unwrap();
    match next_event(&mut client).await {
        Frame::Reject {
            index: 0,
            code: ErrorCode::DigestMismatch,
            ..
        } => {}
        other => panic!("expected a digest_mismatch rejection, got {other:?}"),
    }

    send_chunk(&quic, &id, 0, data.clone(), Digest::of(&data), None, &sent)
        .await
        .unwrap();
    match next_event(&mut client).await {
        Frame::Ack { chunks, .. } => assert_eq!(chunks, vec![[0, 1]]),
        other => panic!("expected an ack, got {other:?}"),
    }
    let reply = finish_raw(
        &mut client,
        &id,
        ContentHasher::of(&data, 64 << 10).to_hex(),
    )
    .await
    .unwrap();
    assert!(matches!(reply, Frame::Finished { .. }), "got {reply:?}");
    assert_eq!(
        std::fs::read(server.published("alice", "d.bin")).unwrap(),
        data.to_vec()
    );
}

#[tokio::test]
async fn header_errors_are_rejected_before_the_payload() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let mut client = server.client(&server.alice, local.path());
    let id = create_raw(&mut client, "h.bin", 100_000).await;
    let quic = client.connection().await.unwrap().quic().clone();
    let sent = AtomicU64::new(0);
    let cases: [(u64, usize, ErrorCode); 3] = [
        (2, 1000, ErrorCode::IndexOutOfRange),
        (0, 1000, ErrorCode::WrongChunkSize),
        (1, 65536, ErrorCode::WrongChunkSize),
    ];
    for (index, len, code) in cases {
        let data = Bytes::from(vec![1u8; len]);
        let _ = send_chunk(
            &quic,
            &id,
            index,
            data.clone(),
            Digest::of(&data),
            None,
            &sent,
        )
        .await;
        match next_event(&mut client).await {
            Frame::Reject {
                index: i, code: c, ..
            } => assert_eq!((i, c), (index, code)),
            other => panic!("expected {code} for chunk {index}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn finish_before_all_chunks_and_with_a_wrong_digest() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let mut client = server.client(&server.alice, local.path());
    let data = Bytes::from(vec![9u8; 64 << 10]);
    let id = create_raw(&mut client, "f.bin", data.len() as u64).await;
    let early = finish_raw(
        &mut client,
        &id,
        ContentHasher::of(&data, 64 << 10).to_hex(),
    )
    .await;
    assert_eq!(
        server_code(&early),
        Some(ErrorCode::Incomplete),
        "got {early:?}"
    );
    let not_hex = finish_raw(&mut client, &id, "xyz".into()).await;
    assert_eq!(
        server_code(&not_hex),
        Some(ErrorCode::BadDigest),
        "got {not_hex:?}"
    );

    let quic = client.connection().await.unwrap().quic().clone();
    send_chunk(
        &quic,
        &id,
        0,
        data.clone(),
        Digest::of(&data),
        None,
        &AtomicU64::new(0),
    )
    .await
    .unwrap();
    assert!(matches!(next_event(&mut client).await, Frame::Ack { .. }));
    let wrong = finish_raw(&mut client, &id, Digest::of(b"other").to_hex()).await;
    assert_eq!(
        server_code(&wrong),
        Some(ErrorCode::FileDigestMismatch),
        "got {wrong:?}"
    );
    let right = finish_raw(
        &mut client,
        &id,
        ContentHasher::of(&data, 64 << 10).to_hex(),
    )
    .await
    .unwrap();
    assert!(matches!(right, Frame::Finished { .. }));
}

#[tokio::test]
async fn dot_dot_name_lands_sanitised_inside_files() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let mut client = server.client(&server.alice, local.path());
    let data = Bytes::from(vec![3u8; 5000]);
    let upload = create_named(&mut client, "../../x", 5000).await.unwrap();
    assert_eq!(upload.file_name, "x");
    let quic = client.connection().await.unwrap().quic().clone();
    send_chunk(
        &quic,
        &upload.upload_id,
        0,
        data.clone(),
        Digest::of(&data),
        None,
        &AtomicU64::new(0),
    )
    .await
    .unwrap();
    assert!(matches!(next_event(&mut client).await, Frame::Ack { .. }));
    finish_raw(
        &mut client,
        &upload.upload_id,
        ContentHasher::of(&data, 64 << 10).to_hex(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(server.published("alice", "x")).unwrap(),
        data.to_vec()
    );
    assert!(
        !server.data().parent().unwrap().join("x").exists(),
        "nothing escaped the data directory"
    );

    let refused = create_named(&mut client, "....", 1).await;
    assert_eq!(
        server_code(&refused),
        Some(ErrorCode::InvalidName),
        "got {refused:?}"
    );
}

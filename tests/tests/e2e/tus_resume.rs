//! What Ferry's promises mean over tus (issue 23): a request broken mid-chunk keeps its bytes,
//! a second request takes an upload over, and `ferry` and tus finish each other's uploads. The
//! helpers and the error cases are in `tus.rs`.

use std::time::Duration;

use ferry_tests::http::Https;
use ferry_tests::{assert_same_file, random_file, TestServer};

use crate::tus::{bearer, create, head, https, patch, web_server, OCTETS, TUS};

/// A PATCH of `file[sent]` (alice's upload `id`, whose length is `file`'s) whose connection
/// breaks once those bytes are out; the offset HEAD reports once it reaches the end of `sent`,
/// or after 5 s.
async fn patch_broken(
    web: &Https,
    server: &TestServer,
    id: &str,
    file: &[u8],
    sent: std::ops::Range<usize>,
) -> u64 {
    let auth = bearer(&server.alice);
    let at = sent.start.to_string();
    let headers = [
        TUS,
        OCTETS,
        ("Authorization", auth.as_str()),
        ("Upload-Offset", at.as_str()),
    ];
    let length = (file.len() - sent.start) as u64;
    let url = format!("/files/{id}");
    web.send_broken("PATCH", &url, &headers, length, &file[sent.clone()])
        .await;
    let mut offset = 0;
    for _ in 0..100 {
        offset = head(web, &server.alice, id).await.offset();
        if offset == sent.end as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    offset
}

/// A request whose connection breaks in the middle of a chunk keeps every byte that arrived:
/// the offset is exactly what was sent, and the next request continues from there. Bytes of a
/// partial chunk that changed on disk meanwhile are not built on: the offset goes back to the
/// chunk's start (409, then HEAD says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_broken_mid_chunk_keeps_its_bytes() {
    let server = web_server().await;
    let web = https(&server);
    let local = tempfile::tempdir().unwrap();
    let size = 20_000_000usize;
    let source = random_file(local.path(), "take.mov", size, 11);
    let bytes = std::fs::read(&source).unwrap();
    let id = create(&web, &server.alice, size as u64, "take.mov").await;
    // 5 000 000 bytes of chunk 0 (8 MiB chunks), then the connection breaks.
    let offset = patch_broken(&web, &server, &id, &bytes, 0..5_000_000).await;
    assert_eq!(offset, 5_000_000, "every byte that arrived is kept");
    // Into chunk 1 (from 8 388 608), broken again at 9 000 000.
    let offset = patch_broken(&web, &server, &id, &bytes, 5_000_000..9_000_000).await;
    assert_eq!(offset, 9_000_000);

    // The kept bytes of chunk 1 changed on disk: not built on.
    {
        use std::os::unix::fs::FileExt;
        let staging = server.data().join("staging").join(format!("{id}.part"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(staging)
            .unwrap();
        file.write_all_at(b"XXXX", 8_500_000).unwrap();
    }
    let reply = patch(&web, &server.alice, &id, 9_000_000, &bytes[9_000_000..]).await;
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(reply.offset(), 8_388_608, "back to the chunk's start");
    assert_eq!(head(&web, &server.alice, &id).await.offset(), 8_388_608);
    let reply = patch(&web, &server.alice, &id, 8_388_608, &bytes[8_388_608..]).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(reply.offset(), size as u64);
    assert_same_file(&source, &server.published("alice", "take.mov"));
}

/// A second PATCH to an upload whose first PATCH stalled takes it over: the first stops, the
/// second goes on from the durable offset, and the file is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_takes_the_upload_over() {
    use tokio::io::AsyncWriteExt;
    let server = web_server().await;
    let web = https(&server);
    let local = tempfile::tempdir().unwrap();
    let size = 12_000_000usize;
    let source = random_file(local.path(), "two.bin", size, 13);
    let bytes = std::fs::read(&source).unwrap();
    let id = create(&web, &server.alice, size as u64, "two.bin").await;
    // The first PATCH: 3 MB of the body, then nothing (the connection stays open).
    let stalled = {
        let connector = ferry_tests::http::pinned_connector(&server.fingerprint);
        let tcp = tokio::net::TcpStream::connect(web.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        let head = format!(
            "PATCH /files/{id} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\nAuthorization: Bearer {}\r\nUpload-Offset: 0\r\nContent-Length: {size}\r\n\r\n",
            server.alice
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&bytes[..3_000_000]).await.unwrap();
        stream.flush().await.unwrap();
        stream
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at = head(&web, &server.alice, &id).await.offset();
    assert_eq!(
        at, 0,
        "the stalled request's partial chunk is not durable yet"
    );
    let reply = patch(&web, &server.alice, &id, at, &bytes[at as usize..]).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(reply.offset(), size as u64);
    assert_same_file(&source, &server.published("alice", "two.bin"));
    drop(stalled);
}

/// An upload begun over tus and broken off mid-chunk is finished by `ferry` (it finds the
/// upload by name and size, checks what the server holds and sends the rest); one begun by
/// `ferry` and interrupted is finished over tus from its durable offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_and_tus_finish_each_others_uploads() {
    let server = web_server().await;
    let web = https(&server);
    let local = tempfile::tempdir().unwrap();
    let size = 20_000_000usize;

    // tus first, ferry after.
    let source = random_file(local.path(), "first.mov", size, 21);
    let bytes = std::fs::read(&source).unwrap();
    let id = create(&web, &server.alice, size as u64, "first.mov").await;
    let held = patch_broken(&web, &server, &id, &bytes, 0..11_000_000).await;
    assert_eq!(held, 11_000_000);
    let state = tempfile::tempdir().unwrap();
    let mut client = server.client(&server.alice, state.path());
    let report = client.upload(&source, "").await.expect("ferry finishes it");
    assert_eq!(report.status, "complete");
    assert!(report.resumed, "continued the tus upload");
    assert_eq!(report.upload_id, id);
    // The whole chunk 0 was held; chunk 1 (partial) is sent whole, and chunk 2.
    assert_eq!(report.bytes_sent, (size - 8_388_608) as u64, "{report:?}");
    assert_same_file(&source, &server.published("alice", "first.mov"));

    // ferry first, tus after.
    let source = random_file(local.path(), "second.mov", size, 23);
    let bytes = std::fs::read(&source).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut options = server.options(&server.alice, state.path());
    options.chunk_size = 1 << 20;
    options.limit_rate = Some(8 << 20);
    let mut client = ferry_client::Client::new(options).unwrap();
    let cut = tokio::time::timeout(Duration::from_millis(1200), client.upload(&source, "")).await;
    assert!(cut.is_err(), "interrupted before the end");
    drop(client);
    let id = {
        let state = tempfile::tempdir().unwrap();
        let mut lister = server.client(&server.alice, state.path());
        let uploads = lister.list().await.unwrap();
        uploads
            .into_iter()
            .find(|u| u.file_name == "second.mov")
            .expect("the interrupted upload")
            .upload_id
    };
    let mut at = 0;
    for _ in 0..50 {
        let reply = head(&web, &server.alice, &id).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        at = reply.offset();
        let reply = patch(&web, &server.alice, &id, at, &bytes[at as usize..]).await;
        if reply.status == 204 {
            assert_eq!(reply.offset(), size as u64);
            break;
        }
        // 423 while the interrupted connection's chunks are still in flight: try again.
        assert!(matches!(reply.status, 409 | 423), "{reply:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(at > 0 && at < size as u64, "resumed from {at}");
    assert_same_file(&source, &server.published("alice", "second.mov"));
}

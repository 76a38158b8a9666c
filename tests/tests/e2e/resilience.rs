//! Issue 3's scenarios that run in process: a lossy link, black holes short and long,
//! connection migration, tampering and torn records found after an unclean stop, and a source
//! file that changes during the upload. Each checks the bytes that land, or that none do.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use ferry_client::{Client, ClientError};
use ferry_proto::{ContentHasher, Digest, Frame};
use ferry_tests::relay::{Impairment, Relay};
use ferry_tests::*;

/// A client of `server` that connects through `relay`.
fn client_via(
    server: &TestServer,
    relay: &Relay,
    state: &std::path::Path,
    idle: Duration,
) -> Client {
    let mut opts = server.options(&server.alice, state);
    opts.target.server = relay.addr.to_string();
    opts.target.idle_timeout = idle;
    Client::new(opts).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_reordering_link_completes() {
    let server = TestServer::start().await;
    let link = Impairment {
        jitter: Duration::from_millis(5),
        ..Impairment::lossy(20, 0.01, 0.02)
    };
    let relay = Relay::start(server.addr, link, link, 101).await;
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "lossy.bin", 4 << 20, 1);
    let started = Instant::now();

    let report = client_via(&server, &relay, local.path(), Duration::from_secs(10))
        .upload(&source, "")
        .await
        .unwrap();

    let [(up, up_lost), (down, down_lost)] = relay.counts();
    eprintln!(
        "lossy link: {:?}, sent {} bytes, relay dropped {up_lost}/{} up and {down_lost}/{} down",
        started.elapsed(),
        report.bytes_sent,
        up + up_lost,
        down + down_lost
    );
    assert!(up_lost > 0, "the relay did drop packets");
    assert_same_file(&source, &server.published("alice", "lossy.bin"));
}

/// `--congestion delay` through a link of 25 ms each way (so the server reads chunk streams out
/// of order), 2 % loss and reordering: the file lands byte for byte, each byte sent about once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_controller_over_a_long_lossy_link_completes() {
    let server = TestServer::start().await;
    let link = Impairment {
        jitter: Duration::from_millis(5),
        ..Impairment::lossy(25, 0.02, 0.02)
    };
    let relay = Relay::start(server.addr, link, link, 107).await;
    let local = tempfile::tempdir().unwrap();
    let size = 6 << 20;
    let source = random_file(local.path(), "far.bin", size, 5);
    let mut opts = server.options(&server.alice, local.path());
    opts.target.server = relay.addr.to_string();
    opts.target.congestion = ferry_proto::Congestion::Delay;
    let report = Client::new(opts)
        .unwrap()
        .upload(&source, "")
        .await
        .unwrap();
    assert!(relay.counts()[0].1 > 0, "the relay did drop packets");
    assert_eq!(report.bytes_sent, size as u64, "no chunk sent twice");
    assert_same_file(&source, &server.published("alice", "far.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_black_hole_rides_through_without_resending() {
    let server = TestServer::start().await;
    let relay = Relay::start(
        server.addr,
        Impairment::default(),
        Impairment::default(),
        102,
    )
    .await;
    let local = tempfile::tempdir().unwrap();
    let size = 6 << 20;
    let source = random_file(local.path(), "hole.bin", size, 2);
    let mut client = client_via(&server, &relay, local.path(), Duration::from_secs(15));
    let mut probe = server.client(&server.alice, local.path());
    let started = Instant::now();

    let (report, ()) = tokio::join!(client.upload(&source, ""), async {
        upload_started(&mut probe).await;
        relay.blackhole(Duration::from_secs(5));
    });
    let report = report.unwrap();

    eprintln!(
        "5 s black hole: {:?}, sent {}, reconnects {}",
        started.elapsed(),
        report.bytes_sent,
        report.reconnects
    );
    assert_eq!(report.reconnects, 0, "the connection rode through");
    assert_eq!(report.bytes_sent, size as u64, "no chunk was sent twice");
    // In either direction: a client that had sent its window before the hole began sends
    // nothing into it (it waits for acks), but the server's acks fall in.
    let [(_, up_lost), (_, down_lost)] = relay.counts();
    assert!(up_lost + down_lost > 0, "the black hole dropped packets");
    assert_same_file(&source, &server.published("alice", "hole.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_black_hole_reconnects_and_resends_only_unacknowledged_chunks() {
    let server = TestServer::start().await;
    let relay = Relay::start(
        server.addr,
        Impairment::default(),
        Impairment::default(),
        103,
    )
    .await;
    let local = tempfile::tempdir().unwrap();
    let size = 6 << 20;
    let source = random_file(local.path(), "long.bin", size, 3);
    let mut opts = server.options(&server.alice, local.path());
    opts.target.server = relay.addr.to_string();
    opts.target.idle_timeout = Duration::from_secs(2);
    opts.limit_rate = Some(3 << 20);
    let window = opts.parallel as u64 * opts.chunk_size;
    let mut client = Client::new(opts).unwrap();
    let mut probe = server.client(&server.alice, local.path());
    let started = Instant::now();

    let (report, ()) = tokio::join!(client.upload(&source, ""), async {
        upload_started(&mut probe).await;
        relay.blackhole(Duration::from_secs(5));
    });
    let report = report.unwrap();

    eprintln!(
        "5 s black hole, 2 s idle timeout: {:?}, sent {}, reconnects {}",
        started.elapsed(),
        report.bytes_sent,
        report.reconnects
    );
    assert!(report.reconnects >= 1, "the client noticed and reconnected");
    assert!(
        report.bytes_sent <= size as u64 + window,
        "re-sent more than the window: {}",
        report.bytes_sent
    );
    assert_same_file(&source, &server.published("alice", "long.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_to_a_new_socket_keeps_the_connection() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let size = 4 << 20;
    let source = random_file(local.path(), "move.bin", size, 4);
    let mut opts = server.options(&server.alice, local.path());
    opts.limit_rate = Some(4 << 20);
    let mut client = Client::new(opts).unwrap();
    let endpoint = client.endpoint().clone();
    let mut probe = server.client(&server.alice, local.path());

    let (report, ()) = tokio::join!(client.upload(&source, ""), async {
        upload_started(&mut probe).await;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        endpoint
            .rebind(socket)
            .expect("rebind to a new local socket");
    });
    let report = report.unwrap();

    eprintln!(
        "migration: sent {}, reconnects {}",
        report.bytes_sent, report.reconnects
    );
    assert_eq!(report.reconnects, 0, "the same QUIC connection continued");
    assert_eq!(report.bytes_sent, size as u64, "nothing was re-sent");
    assert_same_file(&source, &server.published("alice", "move.bin"));
}

#[tokio::test]
async fn tampered_chunk_and_torn_records_are_caught_after_an_unclean_stop() {
    let server = TestServer::start().await;
    let (addr, alice) = (server.addr, server.alice.clone());
    let local = tempfile::tempdir().unwrap();
    let size = 1_000_000;
    let source = random_file(local.path(), "t.bin", size, 20);
    let data = std::fs::read(&source).unwrap();
    let chunks: Vec<&[u8]> = data.chunks(64 << 10).collect();
    let mut client = server.client(&server.alice, local.path());
    let id = crate::upload::create_raw(&mut client, "t.bin", size as u64).await;
    let quic = client.connection().await.unwrap().quic().clone();
    let sent = std::sync::atomic::AtomicU64::new(0);
    for (i, chunk) in chunks.iter().enumerate() {
        let bytes = bytes::Bytes::copy_from_slice(chunk);
        ferry_client::upload::send_chunk(
            &quic,
            &id,
            i as u64,
            bytes,
            Digest::of(chunk),
            None,
            &sent,
        )
        .await
        .unwrap();
    }
    let all_durable = eventually(Duration::from_secs(20), async || {
        client.list().await.unwrap()[0].durable_bytes == size as u64
    });
    assert!(all_durable.await, "every chunk acknowledged");
    drop(client);
    let dir = server.stop().await;

    // Make the stop unclean; flip a byte inside chunk 3; tear chunk 5's record; add a garbage
    // upload record.
    {
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("clean_shutdown", &[0u8])
            .unwrap();
        let mut key = hex::decode(&id).unwrap();
        key.extend_from_slice(&5u64.to_be_bytes());
        db.open_tree("chunks")
            .unwrap()
            .insert(key, &b"torn"[..])
            .unwrap();
        db.open_tree("uploads")
            .unwrap()
            .insert([7u8; 16], &b"{not json"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let staged = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("staging").join(format!("{id}.part")))
        .unwrap();
    let at = 3 * 65536 + 10;
    staged.write_all_at(&[data[at] ^ 0xff], at as u64).unwrap();
    drop(staged);

    let mut server = TestServer::start_in(
        dir,
        ferry_server::Config::new(std::path::PathBuf::new(), addr),
    )
    .await;
    server.alice = alice;
    let mut client = server.client(&server.alice, local.path());
    let resume = |req| Frame::Resume {
        req,
        upload_id: id.clone(),
        from: 0,
    };
    let upload = match client
        .connection()
        .await
        .unwrap()
        .request(resume)
        .await
        .unwrap()
    {
        Frame::Resumed { upload, .. } => upload,
        other => panic!("expected resumed, got {other:?}"),
    };
    let count = chunks.len() as u64;
    assert_eq!(
        upload.durable,
        vec![[0, 3], [4, 5], [6, count]],
        "chunks 3 and 5 must be sent again"
    );

    let quic = client.connection().await.unwrap().quic().clone();
    for i in [3usize, 5] {
        let bytes = bytes::Bytes::copy_from_slice(chunks[i]);
        ferry_client::upload::send_chunk(
            &quic,
            &id,
            i as u64,
            bytes,
            Digest::of(chunks[i]),
            None,
            &sent,
        )
        .await
        .unwrap();
    }
    let done = eventually(Duration::from_secs(20), async || {
        client
            .list()
            .await
            .unwrap()
            .iter()
            .any(|u| u.durable_bytes == size as u64)
    });
    assert!(done.await);
    crate::upload::finish_raw(
        &mut client,
        &id,
        ContentHasher::of(&data, 64 << 10).to_hex(),
    )
    .await
    .unwrap();
    assert_same_file(&source, &server.published("alice", "t.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_changed_during_upload_is_never_published() {
    for rewrite in [false, true] {
        let server = TestServer::start().await;
        let local = tempfile::tempdir().unwrap();
        let size = 2 << 20;
        let source = random_file(local.path(), "moving.bin", size, 5);
        let mut opts = server.options(&server.alice, local.path());
        opts.limit_rate = Some(2 << 20);
        let mut client = Client::new(opts).unwrap();
        let mut probe = server.client(&server.alice, local.path());

        let (result, ()) = tokio::join!(client.upload(&source, ""), async {
            upload_started(&mut probe).await;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&source)
                .unwrap();
            if rewrite {
                file.write_all_at(&vec![0u8; size], 0).unwrap();
            } else {
                file.write_all_at(b"appended", size as u64).unwrap();
            }
        });

        let err = result.unwrap_err();
        assert!(
            matches!(err, ClientError::Local(ref m) if m.contains("changed while it was being uploaded")),
            "got {err:?}"
        );
        assert_eq!(err.exit_code(), 2);
        assert!(
            !server.published("alice", "moving.bin").exists(),
            "nothing published (rewrite: {rewrite})"
        );
        assert!(
            probe.list().await.unwrap().is_empty(),
            "the upload was discarded on the server"
        );
    }
}

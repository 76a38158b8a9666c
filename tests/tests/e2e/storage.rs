//! The data directory across restarts: schema versions, unclean stops, tampering.

use std::os::unix::fs::FileExt;

use ferry_tests::*;

#[tokio::test]
async fn store_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        ferry_migrations::migrate(&db).unwrap();
        ferry_migrations::set_version(&db, ferry_migrations::CURRENT + 1).unwrap();
    }
    let config = ferry_server::Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    let err = format!(
        "{:#}",
        ferry_server::Server::bind(config)
            .err()
            .expect("bind must fail")
    );
    let want = format!(
        "schema version {}, newer than the {}",
        ferry_migrations::CURRENT + 1,
        ferry_migrations::CURRENT
    );
    assert!(err.contains(&want), "{err}");
}

#[tokio::test]
async fn tampered_chunk_is_found_after_an_unclean_stop_and_resent() {
    let server = TestServer::start().await;
    let alice = server.alice.clone();
    let local = tempfile::tempdir().unwrap();
    let size = 1_000_000;
    let source = random_file(local.path(), "t.bin", size, 20);
    // Upload everything but do not finish: send chunks by hand, then stop.
    let mut client = server.client(&alice, local.path());
    let id = crate::upload::create_raw(&mut client, "t.bin", size as u64).await;
    let data = std::fs::read(&source).unwrap();
    let quic = client.connection().await.unwrap().quic().clone();
    let sent = std::sync::atomic::AtomicU64::new(0);
    for (i, chunk) in data.chunks(64 << 10).enumerate() {
        let bytes = bytes::Bytes::copy_from_slice(chunk);
        ferry_client::upload::send_chunk(
            &quic,
            &id,
            i as u64,
            bytes,
            ferry_proto::Digest::of(chunk),
            None,
            &sent,
        )
        .await
        .unwrap();
    }
    let count = data.chunks(64 << 10).count() as u64;
    assert!(
        eventually(std::time::Duration::from_secs(20), async || client
            .list()
            .await
            .unwrap()[0]
            .durable_bytes
            == size as u64)
        .await,
        "every chunk acknowledged"
    );
    drop(client);
    let dir = server.stop().await;

    // Pretend the stop was unclean, and flip a byte inside chunk 3 of the staged file.
    {
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("clean_shutdown", &[0u8])
            .unwrap();
        db.flush().unwrap();
    }
    let staged = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("staging").join(format!("{id}.part")))
        .unwrap();
    staged
        .write_all_at(&[data[3 * 65536 + 10] ^ 0xff], 3 * 65536 + 10)
        .unwrap();
    drop(staged);

    let config = ferry_server::Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    let server = ferry_server::Server::bind(config).unwrap();
    let report = server.open_report();
    assert!(!report.clean);
    assert_eq!((report.verified, report.forgotten), (count, 1));
    drop(server);
}

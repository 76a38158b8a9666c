//! The data directory: schema versions. (Unclean stops and tampering are in `resilience`.)

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
            .await
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

//! Uploads through the client library against an in-process server.

use std::time::Duration;

use ferry_client::ClientError;
use ferry_proto::{ErrorCode, Frame, UploadInfo};
use ferry_tests::*;

#[tokio::test]
async fn multi_chunk_upload_lands_byte_for_byte() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "clip.mp4", 3 * 1024 * 1024 + 12_345, 1);
    let mut client = server.client(&server.alice, local.path());

    let report = client.upload(&source, "holiday").await.unwrap();

    assert_eq!(report.status, "complete");
    assert_eq!(report.file_name, "clip.mp4");
    assert_eq!(report.size, 3 * 1024 * 1024 + 12_345);
    assert_eq!(report.content_hash, content_hash_file(&source, 64 << 10));
    assert_eq!(report.sha256, None, "the plain digest only with --sha256");
    assert_eq!(
        report.bytes_sent, report.size,
        "a fresh upload sends every byte once"
    );
    assert_eq!(report.bytes_skipped, 0);
    assert_same_file(&source, &server.published("alice", "clip.mp4"));
    let listed = client.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].state.as_str(), listed[0].desc.as_str()),
        ("complete", "holiday")
    );
    assert!(
        std::fs::read_dir(server.data().join("staging"))
            .unwrap()
            .next()
            .is_none(),
        "staging is empty afterwards"
    );
}

#[tokio::test]
async fn empty_file_uploads() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "empty.bin", 0, 2);
    let report = server
        .client(&server.alice, local.path())
        .upload(&source, "")
        .await
        .unwrap();
    assert_eq!(report.size, 0);
    assert_eq!(
        report.content_hash,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        std::fs::metadata(server.published("alice", "empty.bin"))
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn size_an_exact_multiple_of_the_chunk() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "exact.bin", 16 * 64 * 1024, 3);
    let report = server
        .client(&server.alice, local.path())
        .upload(&source, "")
        .await
        .unwrap();
    assert_eq!(report.bytes_sent, 16 * 64 * 1024);
    assert_same_file(&source, &server.published("alice", "exact.bin"));
}

#[tokio::test]
async fn unicode_name_is_kept() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "视频 第一集.mp4", 200_000, 4);
    let report = server
        .client(&server.alice, local.path())
        .upload(&source, "")
        .await
        .unwrap();
    assert_eq!(report.file_name, "视频 第一集.mp4");
    assert_same_file(&source, &server.published("alice", "视频 第一集.mp4"));
}

#[tokio::test]
async fn two_concurrent_uploads() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let a = random_file(local.path(), "a.bin", 2_000_000, 5);
    let b = random_file(local.path(), "b.bin", 1_500_000, 6);
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut ca, mut cb) = (
        server.client(&server.alice, sa.path()),
        server.client(&server.bob, sb.path()),
    );
    let (ra, rb) = tokio::join!(ca.upload(&a, ""), cb.upload(&b, ""));
    assert_eq!(ra.unwrap().bytes_sent, 2_000_000);
    assert_eq!(rb.unwrap().bytes_sent, 1_500_000);
    assert_same_file(&a, &server.published("alice", "a.bin"));
    assert_same_file(&b, &server.published("bob", "b.bin"));
}

#[tokio::test]
async fn same_name_twice_does_not_overwrite() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let first = random_file(local.path(), "v.mp4", 100_000, 7);
    let mut client = server.client(&server.alice, local.path());
    client.upload(&first, "").await.unwrap();
    let second = random_file(local.path(), "v.mp4", 90_000, 8);
    let report = client.upload(&second, "").await.unwrap();
    assert_eq!(report.file_name, "v (1).mp4");
    assert_eq!(
        std::fs::metadata(server.published("alice", "v.mp4"))
            .unwrap()
            .len(),
        100_000
    );
    assert_same_file(&second, &server.published("alice", "v (1).mp4"));
}

#[tokio::test]
async fn wrong_token_is_refused() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "x.bin", 1000, 9);
    let err = server
        .client("fy_not_a_token", local.path())
        .upload(&source, "")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Server {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "got {err:?}"
    );
    assert_eq!(err.exit_code(), 2);
    assert!(
        std::fs::read_dir(server.data().join("staging"))
            .unwrap()
            .next()
            .is_none(),
        "nothing was created"
    );
}

#[tokio::test]
async fn wrong_fingerprint_is_refused_loudly() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let mut opts = server.options(&server.alice, local.path());
    let wrong = format!("sha256:{}", "0".repeat(64));
    opts.target.fingerprint = Some(wrong.clone());
    let err = ferry_client::Client::new(opts)
        .unwrap()
        .list()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&server.fingerprint) && text.contains(&wrong),
        "message shows both fingerprints: {text}"
    );
    assert_eq!(err.exit_code(), 2);
}

#[tokio::test]
async fn trust_on_first_use_records_and_then_pins() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let mut opts = server.options(&server.alice, local.path());
    opts.target.fingerprint = None;
    ferry_client::Client::new(opts.clone())
        .unwrap()
        .list()
        .await
        .unwrap();
    let known = std::fs::read_to_string(local.path().join("known_servers")).unwrap();
    assert_eq!(known, format!("{} {}\n", server.addr, server.fingerprint));
    // A different server on the same address would now be refused.
    std::fs::write(
        local.path().join("known_servers"),
        format!("{} sha256:{}\n", server.addr, "1".repeat(64)),
    )
    .unwrap();
    let err = ferry_client::Client::new(opts)
        .unwrap()
        .list()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Trust { .. }), "got {err:?}");
}

#[tokio::test]
async fn another_token_cannot_see_resume_or_abort() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let mut alice = server.client(&server.alice, local.path());
    let upload_id = create_raw(&mut alice, "secret.bin", 1 << 20).await;

    let bob_state = tempfile::tempdir().unwrap();
    let mut bob = server.client(&server.bob, bob_state.path());
    assert!(
        bob.list().await.unwrap().is_empty(),
        "bob sees none of alice's uploads"
    );
    let id = upload_id.clone();
    let resume = bob
        .connection()
        .await
        .unwrap()
        .request(|req| ferry_proto::Frame::Resume {
            req,
            upload_id: id,
            from: 0,
        })
        .await;
    assert_eq!(
        server_code(&resume),
        Some(ErrorCode::NotFound),
        "got {resume:?}"
    );
    let abort = bob.abort(&upload_id).await;
    assert_eq!(
        server_code(&abort),
        Some(ErrorCode::NotFound),
        "got {abort:?}"
    );
    assert_eq!(
        alice.list().await.unwrap().len(),
        1,
        "alice's upload is still there"
    );
    alice.abort(&upload_id).await.unwrap();
    assert!(alice.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn interrupted_run_resumes_sending_only_what_is_missing() {
    let report = interrupted_then_resumed(false).await;
    assert_eq!(
        report.bytes_rehashed, 0,
        "the digests of what the server held came from the journal, not from the file"
    );
}

/// Without the digests kept beside the journal (lost, or a journal of an older ferry), the
/// resumed run reads exactly the chunks the server held once more, to hash them, and still
/// sends only what is missing.
#[tokio::test]
async fn resume_without_kept_digests_rehashes_only_what_the_server_held() {
    let report = interrupted_then_resumed(true).await;
    assert_eq!(report.bytes_rehashed, report.bytes_skipped);
}

/// Interrupts an upload of 8 MiB once a quarter is acknowledged, optionally deletes the
/// chunk digests the client kept, runs it again, and checks what was sent and published.
async fn interrupted_then_resumed(lose_digests: bool) -> ferry_client::Report {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let size = 8 * 1024 * 1024;
    let source = random_file(local.path(), "big.bin", size, 10);
    let mut opts = server.options(&server.alice, local.path());
    opts.limit_rate = Some(4 << 20);
    let mut first = ferry_client::Client::new(opts).unwrap();
    // Interrupt the first run once about a quarter is acknowledged.
    let mut probe = server.client(&server.alice, local.path());
    tokio::select! {
        r = first.upload(&source, "") => panic!("first run should have been interrupted, got {r:?}"),
        _ = async {
            eventually(Duration::from_secs(30), async || {
                probe.list().await.unwrap().first().is_some_and(|u| u.durable_bytes >= size as u64 / 4)
            }).await
        } => {}
    }
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = probe.list().await.unwrap()[0].durable_bytes;
    if lose_digests {
        let mut removed = 0;
        for entry in std::fs::read_dir(local.path().join("journal")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "digests") {
                std::fs::remove_file(path).unwrap();
                removed += 1;
            }
        }
        assert_eq!(removed, 1, "one upload, one digests file");
    }

    let report = server
        .client(&server.alice, local.path())
        .upload(&source, "")
        .await
        .unwrap();

    assert!(report.resumed);
    assert!(
        report.bytes_skipped >= held,
        "skipped {} < held {held}",
        report.bytes_skipped
    );
    // Everything missing is sent once; more only for a chunk the interrupted connection was
    // still finishing when the re-run asked for it, which the window bounds.
    let window = 8 * 64 * 1024;
    let total = report.bytes_sent + report.bytes_skipped;
    assert!(
        total >= size as u64 && total <= size as u64 + window,
        "sent + skipped = {total}"
    );
    assert_same_file(&source, &server.published("alice", "big.bin"));
    assert_eq!(report.content_hash, content_hash_file(&source, 64 << 10));
    report
}

#[tokio::test]
async fn resuming_connection_takes_over_at_once() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let mut first = server.client(&server.alice, local.path());
    let upload_id = create_raw(&mut first, "t.bin", 1 << 20).await;
    let mut second = server.client(&server.alice, local.path());
    let id = upload_id.clone();
    second
        .connection()
        .await
        .unwrap()
        .request(|req| ferry_proto::Frame::Resume {
            req,
            upload_id: id,
            from: 0,
        })
        .await
        .unwrap();
    let event = tokio::time::timeout(
        Duration::from_secs(5),
        first.connection().await.unwrap().events.recv(),
    )
    .await;
    match event {
        Ok(Some(ferry_proto::Frame::Detached {
            code,
            upload_id: id,
            ..
        })) => {
            assert_eq!(code, ErrorCode::TakenOver);
            assert_eq!(id, upload_id);
        }
        other => panic!("first connection expected detached, got {other:?}"),
    }
}

/// Creates an upload through the raw request API and returns what the server answered.
pub async fn create_named(
    client: &mut ferry_client::Client,
    name: &str,
    size: u64,
) -> Result<UploadInfo, ClientError> {
    let create = |req| Frame::Create {
        req,
        file_name: name.into(),
        size,
        chunk_size: 64 << 10,
        desc: String::new(),
        dir: Vec::new(),
        on_exists: Default::default(),
        deferred: false,
    };
    match client.connection().await.unwrap().request(create).await? {
        Frame::Created { upload, .. } => Ok(upload),
        other => panic!("expected created, got {other:?}"),
    }
}

/// Creates an upload through the raw request API and returns its id.
pub async fn create_raw(client: &mut ferry_client::Client, name: &str, size: u64) -> String {
    create_named(client, name, size).await.unwrap().upload_id
}

/// Sends `finish` for `upload_id` claiming `content_hash`, through the raw request API.
pub async fn finish_raw(
    client: &mut ferry_client::Client,
    upload_id: &str,
    content_hash: String,
) -> Result<Frame, ClientError> {
    let finish = |req| Frame::Finish {
        req,
        upload_id: upload_id.to_owned(),
        content_hash,
        size: None,
    };
    client.connection().await.unwrap().request(finish).await
}

/// The error code a request failed with, if the server refused it.
pub fn server_code<T>(result: &Result<T, ClientError>) -> Option<ErrorCode> {
    match result {
        Err(ClientError::Server { code, .. }) => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn ca_signed_certificate_is_verified_with_its_name() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let certs = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let (cert, key, ca) = (
        certs.path().join("cert.pem"),
        certs.path().join("key.pem"),
        certs.path().join("ca.pem"),
    );
    std::fs::write(&cert, server_cert.pem()).unwrap();
    std::fs::write(&key, server_key.serialize_pem()).unwrap();
    std::fs::write(&ca, ca_cert.pem()).unwrap();

    let server = TestServer::start_with(|c| c.cert = Some((cert.clone(), key.clone()))).await;
    let local = tempfile::tempdir().unwrap();
    let with_ca = |host: &str| {
        let mut opts = server.options(&server.alice, local.path());
        opts.target.fingerprint = None;
        opts.target.ca = Some(ca.clone());
        opts.target.server = format!("{host}:{}", server.addr.port());
        ferry_client::Client::new(opts).unwrap()
    };
    with_ca("localhost")
        .list()
        .await
        .expect("the name in the certificate is accepted");
    let err = with_ca("127.0.0.1").list().await.unwrap_err();
    assert!(
        err.to_string().contains("cannot connect"),
        "a name not in the certificate is refused: {err}"
    );
    assert!(
        !local.path().join("known_servers").exists(),
        "CA mode records nothing"
    );
}

//! `--store s3` against a real S3 server (SeaweedFS, started and stopped here by PID): bytes
//! read back from the bucket, a resume through another node after `kill -9`, digests checked by
//! Ferry and by the store, the store restarted mid-upload, expiry, orphan collection, and
//! tokens shared by the nodes. Each test has its own SeaweedFS (or its own prefix in it).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_client::Client;
use ferry_proto::{ErrorCode, Frame, PROTOCOL_VERSION};
use ferry_server::store::s3::S3;
use ferry_tests::raw::{Dial, Raw};
use ferry_tests::weed::{S3Server, Weed};
use ferry_tests::{binary, eventually, random_file, ServerProcess};
use sha2::{Digest as _, Sha256};

/// `ferryd <args…> <the bucket's options>`, its stdout; panics on failure.
pub(crate) fn ferryd(weed: &impl S3Server, prefix: &str, args: &[&str]) -> String {
    let out = Command::new(binary("ferryd"))
        .args(args)
        .args(weed.serve_args(prefix))
        .output()
        .expect("ferryd runs");
    assert!(
        out.status.success(),
        "ferryd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `ferryd link <args…>` for the service in the bucket, through the node of `data`, its links
/// based at `web_url`: what it prints on stdout (the URL, or the list); panics on failure.
pub(crate) fn link(
    weed: &impl S3Server,
    prefix: &str,
    data: &Path,
    web_url: &str,
    args: &[&str],
) -> String {
    let out = Command::new(binary("ferryd"))
        .arg("link")
        .args(args)
        .arg("--data")
        .arg(data)
        .args(["--web-url", web_url])
        .args(weed.serve_args(prefix))
        .output()
        .expect("ferryd runs");
    assert!(
        out.status.success(),
        "ferryd link {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `ferryd serve` node on the bucket, with its own data directory.
pub(crate) fn node(
    weed: &impl S3Server,
    prefix: &str,
    data: &Path,
    extra: &[&str],
) -> ServerProcess {
    let mut args: Vec<String> = weed.serve_args(prefix);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ServerProcess::start_with(data, "127.0.0.1:0", &args)
}

/// Another node of the same service: A's TLS identity (as the nodes of one service share it)
/// and the bucket, nothing else: another port, another data directory.
pub(crate) fn second_node(
    weed: &impl S3Server,
    prefix: &str,
    data: &Path,
    first: &Path,
) -> ServerProcess {
    let tls = first.join("tls");
    let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
    let identity = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    node(weed, prefix, data, &identity)
}

pub(crate) fn client(server: &ServerProcess, token: &str, state: &Path) -> Client {
    let mut opts = server.options(token, state);
    opts.reconnect_for = Duration::from_secs(30);
    Client::new(opts).expect("client starts")
}

/// Chunk markers under `prefix` (one per chunk a node stored); 0 while the store cannot be
/// listed.
pub(crate) async fn stored_parts(s3: &S3, prefix: &str) -> usize {
    let keys = s3
        .list(&format!("{prefix}uploads/"))
        .await
        .unwrap_or_default();
    keys.iter().filter(|(k, _)| k.contains("/parts/")).count()
}

/// The published object's bytes, read back from the bucket.
pub(crate) async fn object(s3: &S3, prefix: &str, owner: &str, name: &str) -> Vec<u8> {
    s3.get(&format!("{prefix}files/{owner}/{name}"))
        .await
        .expect("the bucket answers")
        .unwrap_or_else(|| panic!("{name} is in the bucket"))
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_into_s3_reads_back_equal_bytes() {
    let Some(weed) = Weed::start() else { return };
    reads_back_equal_bytes(&weed).await;
}

/// The body of `upload_into_s3_reads_back_equal_bytes`, on any S3 server (MiniStack too:
/// `cluster::on_ministack_…`).
pub(crate) async fn reads_back_equal_bytes(weed: &impl S3Server) {
    let (work, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prefix = "one/";
    let token = ferryd(weed, prefix, &["token", "add", "alice"]);
    let server = node(weed, prefix, data.path(), &[]);
    // 20 MiB + 5 bytes: three parts of the server's 8 MiB chunks, the last one short.
    let source = random_file(work.path(), "clip.mov", (20 << 20) + 5, 1);
    let mut client = client(&server, token.trim(), &work.path().join("state"));
    let report = client.upload(&source, "").await.expect("upload succeeds");
    assert_eq!(report.status, "complete");
    assert_eq!(report.bytes_sent, (20 << 20) + 5);
    let s3 = weed.client(prefix).await;
    let stored = object(&s3, prefix, "alice", "clip.mov").await;
    assert!(
        stored == std::fs::read(&source).unwrap(),
        "the object differs from the source"
    );
    // The content hash is over 8 MiB chunks: the server chose them, the client followed.
    assert_eq!(
        report.content_hash,
        ferry_tests::content_hash_file(&source, 8 << 20)
    );
    // Nothing left behind: no multipart upload in progress, no markers, no reservation.
    assert!(s3.multipart_uploads().await.unwrap().is_empty());
    let leftovers = s3.list(&format!("{prefix}uploads/")).await.unwrap();
    assert_eq!(leftovers.len(), 1, "only the manifest stays: {leftovers:?}");
    assert!(s3
        .list(&format!("{prefix}names/"))
        .await
        .unwrap()
        .is_empty());
    // The same name again is published as `clip (1).mov`, never over the first.
    std::fs::write(work.path().join("clip.mov"), b"another take").unwrap();
    let again = client
        .upload(&work.path().join("clip.mov"), "")
        .await
        .unwrap();
    assert_eq!(again.file_name, "clip (1).mov");
    assert_eq!(
        object(&s3, prefix, "alice", "clip (1).mov").await,
        b"another take"
    );
    assert_eq!(object(&s3, prefix, "alice", "clip.mov").await, stored);
    // The owner's usage in the bucket: both files published, nothing in progress.
    let usage = s3.usage("alice").await.unwrap();
    assert_eq!(usage.published, (20 << 20) + 5 + 12);
    assert!(usage.receiving.is_empty(), "{usage:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_node_a_resumes_through_node_b_sending_only_the_missing_parts() {
    let Some(weed) = Weed::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prefix = "two/";
    let token = ferryd(&weed, prefix, &["token", "add", "alice"]);
    let mut a = node(&weed, prefix, data_a.path(), &[]);
    let b = second_node(&weed, prefix, data_b.path(), data_a.path());
    assert_eq!(a.fingerprint, b.fingerprint);
    const SIZE: u64 = 96 << 20;
    let source = random_file(work.path(), "take.mov", SIZE as usize, 2);
    let state = work.path().join("state");
    let mut opts = a.options(token.trim(), &state);
    opts.limit_rate = Some(16 << 20);
    let mut first = Client::new(opts).unwrap();
    let upload = {
        let source = source.clone();
        tokio::spawn(async move { first.upload(&source, "").await })
    };
    let s3 = weed.client(prefix).await;
    let some_parts = eventually(Duration::from_secs(60), async || {
        stored_parts(&s3, prefix).await >= 3
    });
    if !some_parts.await {
        let log = std::fs::read_to_string(&a.log).unwrap_or_default();
        let ended = upload.is_finished().then_some(upload);
        let result = match ended {
            Some(task) => format!("{:?}", task.await.unwrap().map(|r| r.status)),
            None => "still running".into(),
        };
        panic!("node A stored no three parts within 60 s; upload: {result}; log:\n{log}");
    }
    a.kill9();
    upload.abort();
    // What node A made durable before it died: one marker per stored chunk.
    let held = stored_parts(&s3, prefix).await as u64;
    assert!(
        held < 12,
        "node A was killed mid-upload ({held} of 12 parts)"
    );
    let mut second = client(&b, token.trim(), &state);
    let report = second.upload(&source, "").await.expect("resumes through B");
    assert!(report.resumed, "B resumed the upload A began");
    assert_eq!(report.bytes_skipped, held * (8 << 20));
    assert_eq!(report.bytes_sent, SIZE - held * (8 << 20));
    let stored = object(&s3, prefix, "alice", "take.mov").await;
    assert!(
        stored == std::fs::read(&source).unwrap(),
        "the object differs from the source"
    );
    second.close().await;
}

/// A raw client's upload on `server`: logged in, one upload of `size` created; returns the
/// connection, the upload id and the chunk size the server chose.
async fn raw_create(
    addr: std::net::SocketAddr,
    fp: &str,
    token: &str,
    size: u64,
) -> (Raw, String, u64) {
    let mut raw = Raw::dial(addr, fp, Dial::default()).await.unwrap();
    raw.frame(&Frame::Hello {
        version: PROTOCOL_VERSION,
        token: token.into(),
    })
    .await;
    match raw.next().await {
        Some(Frame::Welcome { service, .. }) => assert_eq!(service.len(), 32),
        other => panic!("expected welcome, got {other:?}"),
    }
    let upload = raw.create_upload("raw.bin", size).await;
    (raw, upload.upload_id, upload.chunk_size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_whose_bytes_do_not_match_its_digest_is_rejected() {
    let Some(weed) = Weed::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let prefix = "three/";
    let token = ferryd(&weed, prefix, &["token", "add", "alice"]);
    let server = node(&weed, prefix, data.path(), &[]);
    let size = 10u64 << 20;
    let (mut raw, id, chunk) =
        raw_create(server.addr, &server.fingerprint, token.trim(), size).await;
    assert_eq!(chunk, 8 << 20, "the server chose the chunk size");
    let payload = vec![7u8; chunk as usize];
    let wrong = hex::encode(Sha256::digest(b"something else"));
    raw.chunk(&id, 0, chunk, &wrong, &payload).await;
    assert_eq!(raw.code().await, ErrorCode::DigestMismatch);
    let s3 = weed.client(prefix).await;
    let upload = ferry_server::store::UploadId::parse(&id).unwrap();
    assert!(
        s3.markers(upload).await.unwrap().is_empty(),
        "nothing became durable"
    );
    // The store checks too: a part sent with another part's SHA-256 is refused by SeaweedFS.
    let manifest = s3.manifest(upload).await.unwrap().expect("a manifest");
    let remote = manifest.record.remote.expect("a multipart upload");
    let claimed = ferry_proto::Digest::parse(&wrong).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let spool = scratch.path().join("spool");
    std::fs::write(&spool, &payload).unwrap();
    let part = ferry_server::store::s3::SpoolPart {
        file: std::sync::Arc::new(std::fs::File::open(&spool).unwrap()),
        offset: 0,
        len: chunk,
    };
    let refused = s3
        .put_part(upload, &remote, 0, &part, &claimed)
        .await
        .expect_err("the store refuses a part that does not match its digest");
    assert!(format!("{refused:#}").contains("BadDigest"), "{refused:#}");
    // The right digest is taken and acknowledged.
    let right = hex::encode(Sha256::digest(&payload));
    raw.chunk(&id, 0, chunk, &right, &payload).await;
    let acked = loop {
        match raw.next().await {
            Some(Frame::Ack { chunks, .. }) => break chunks,
            Some(Frame::Reject { code, message, .. }) => panic!("rejected: {code} {message}"),
            _ => continue,
        }
    };
    assert_eq!(acked, vec![[0, 1]]);
    assert_eq!(s3.markers(upload).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_rides_through_a_restart_of_the_s3_server() {
    let Some(mut weed) = Weed::start() else {
        return;
    };
    let (work, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prefix = "four/";
    let token = ferryd(&weed, prefix, &["token", "add", "alice"]);
    let server = node(&weed, prefix, data.path(), &[]);
    let source = random_file(work.path(), "long.mov", 64 << 20, 4);
    let mut opts = server.options(token.trim(), &work.path().join("state"));
    opts.limit_rate = Some(12 << 20);
    opts.reconnect_for = Duration::from_secs(60);
    let mut uploader = Client::new(opts).unwrap();
    let upload = {
        let source = source.clone();
        tokio::spawn(async move { uploader.upload(&source, "").await })
    };
    let s3 = weed.client(prefix).await;
    let started = eventually(Duration::from_secs(60), async || {
        stored_parts(&s3, prefix).await > 0
    });
    assert!(started.await, "a part was stored within 60 s");
    weed.restart();
    let report = tokio::time::timeout(Duration::from_secs(120), upload)
        .await
        .expect("the upload ends within 120 s")
        .unwrap()
        .expect("the upload completes across the S3 server's restart");
    assert_eq!(report.status, "complete");
    let s3 = weed.client(prefix).await;
    let stored = object(&s3, prefix, "alice", "long.mov").await;
    assert!(
        stored == std::fs::read(&source).unwrap(),
        "the object differs from the source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_aborts_the_multipart_upload_and_gc_aborts_orphans() {
    let Some(weed) = Weed::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let prefix = "five/";
    let token = ferryd(&weed, prefix, &["token", "add", "alice"]);
    let s3 = weed.client(prefix).await;
    // An orphan: a multipart upload whose manifest is gone (its node died in between).
    let server = node(&weed, prefix, data.path(), &[]);
    let (_raw, orphan, _) =
        raw_create(server.addr, &server.fingerprint, token.trim(), 1 << 20).await;
    let orphan = ferry_server::store::UploadId::parse(&orphan).unwrap();
    s3.delete(&s3.manifest_key(orphan)).await.unwrap();
    let listed = ferryd(
        &weed,
        prefix,
        &["s3", "gc", "--older-than", "0s", "--dry-run"],
    );
    let mut lines: Vec<&str> = listed.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[0].starts_with(&format!("{prefix}files/alice/raw.bin\t")),
        "{listed}"
    );
    assert_eq!(
        lines[1],
        format!("{prefix}names/alice/raw.bin\treservation")
    );
    assert_eq!(
        s3.multipart_uploads().await.unwrap().len(),
        1,
        "a dry run aborts nothing"
    );
    ferryd(&weed, prefix, &["s3", "gc", "--older-than", "0s"]);
    assert!(s3.multipart_uploads().await.unwrap().is_empty());
    assert!(s3
        .list(&format!("{prefix}names/"))
        .await
        .unwrap()
        .is_empty());
    drop(server);

    // Expiry: an upload that makes no progress for --expire-after is aborted in the bucket.
    let data = tempfile::tempdir().unwrap();
    let server = node(
        &weed,
        prefix,
        data.path(),
        &["--expire-after", "2s", "--sweep-interval", "1s"],
    );
    let (raw, id, _) = raw_create(server.addr, &server.fingerprint, token.trim(), 1 << 20).await;
    let upload = ferry_server::store::UploadId::parse(&id).unwrap();
    assert_eq!(s3.multipart_uploads().await.unwrap().len(), 1);
    // The client goes away: an upload a connection drives is never expired.
    drop(raw);
    let gone = eventually(Duration::from_secs(30), async || {
        s3.multipart_uploads().await.unwrap().is_empty()
            && s3.manifest(upload).await.unwrap().is_none()
    });
    assert!(gone.await, "the abandoned upload was aborted within 30 s");
    assert!(s3
        .list(&format!("{prefix}names/"))
        .await
        .unwrap()
        .is_empty());
    let mut raw = Raw::login(
        server.addr,
        &server.fingerprint,
        token.trim(),
        Dial::default(),
    )
    .await;
    raw.frame(&Frame::Resume {
        req: 2,
        upload_id: id,
        from: 0,
    })
    .await;
    assert_eq!(raw.code().await, ErrorCode::Expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_added_on_one_node_work_on_the_other() {
    let Some(weed) = Weed::start() else { return };
    let (work, data_a, data_b) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let prefix = "six/";
    ferryd(&weed, prefix, &["token", "add", "alice"]);
    let a = node(&weed, prefix, data_a.path(), &[]);
    let b = node(&weed, prefix, data_b.path(), &[]);
    // Added through the bucket while both run: the first login on B works at once.
    let carol = ferryd(&weed, prefix, &["token", "add", "carol"]);
    let mut on_b = client(&b, carol.trim(), &work.path().join("b"));
    assert!(on_b.list().await.expect("carol logs in on B").is_empty());
    let names = ferryd(&weed, prefix, &["token", "list"]);
    assert_eq!(names.lines().collect::<Vec<_>>(), ["alice", "carol"]);
    // Revoked: node A refuses it within the mirror's period.
    ferryd(&weed, prefix, &["token", "revoke", "carol"]);
    let refused = eventually(Duration::from_secs(10), async || {
        let mut on_a = client(&a, carol.trim(), &work.path().join("a"));
        let result = on_a.list().await;
        on_a.close().await;
        matches!(
            result,
            Err(ferry_client::ClientError::Server {
                code: ErrorCode::Unauthorized,
                ..
            })
        )
    });
    assert!(
        refused.await,
        "node A refused the revoked token within 10 s"
    );
    on_b.close().await;
    // A local installation moved to the s3 store: its tokens seed a bucket that has none.
    let data_c = tempfile::tempdir().unwrap();
    let dave = ferry_server::Tokens::new(data_c.path())
        .add("dave")
        .unwrap();
    let c = node(&weed, "seeded/", data_c.path(), &[]);
    let mut on_c = client(&c, &dave, &work.path().join("c"));
    assert!(on_c.list().await.expect("dave logs in").is_empty());
    on_c.close().await;
    assert_eq!(ferryd(&weed, "seeded/", &["token", "list"]).trim(), "dave");
}

/// The next `ack` on `raw`'s control stream (panics on a reject).
async fn acked(raw: &mut Raw) -> Vec<[u64; 2]> {
    loop {
        match raw.next().await {
            Some(Frame::Ack { chunks, .. }) => return chunks,
            Some(Frame::Reject { code, message, .. }) => panic!("rejected: {code} {message}"),
            _ => continue,
        }
    }
}

fn digest_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The content hash (protocol §3.6) of chunks with these digests.
fn content_hash(digests: &[&str]) -> String {
    let mut h = Sha256::new();
    for d in digests {
        h.update(hex::decode(d).unwrap());
    }
    hex::encode(h.finalize())
}

/// Two nodes receiving one upload at once (a takeover across nodes where the old node still
/// receives): S3 keeps the last write of a part, and `finish` publishes only if the parts on
/// the store are the ones whose digests are on record and give the client's content hash.
/// Chunk 0 is written with bytes X through node B and bytes Y through node A, in both orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_writing_one_part_never_publish_unrecorded_bytes() {
    let Some(weed) = Weed::start() else { return };
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prefix = "seven/";
    let token = ferryd(&weed, prefix, &["token", "add", "alice"]);
    let token = token.trim();
    let a = node(&weed, prefix, data_a.path(), &[]);
    let b = second_node(&weed, prefix, data_b.path(), data_a.path());
    let s3 = weed.client(prefix).await;
    let chunk = 8usize << 20;
    let (x, y, z) = (vec![b'x'; chunk], vec![b'y'; chunk], vec![b'z'; 1000]);
    let size = (chunk + z.len()) as u64;
    let mut last_id = String::new();
    for x_last in [true, false] {
        let (mut on_a, id, chunk_size) = raw_create(a.addr, &a.fingerprint, token, size).await;
        last_id = id.clone();
        assert_eq!(chunk_size, chunk as u64);
        let mut on_b = Raw::login(b.addr, &b.fingerprint, token, Dial::default()).await;
        on_b.frame(&Frame::Resume {
            req: 2,
            upload_id: id.clone(),
            from: 0,
        })
        .await;
        assert!(matches!(on_b.next().await, Some(Frame::Resumed { .. })));
        let (first, second) = match x_last {
            true => ((&mut on_a, &y), (&mut on_b, &x)),
            false => ((&mut on_b, &x), (&mut on_a, &y)),
        };
        first
            .0
            .chunk(&id, 0, chunk as u64, &digest_hex(first.1), first.1)
            .await;
        assert_eq!(acked(first.0).await, vec![[0, 1]]);
        second
            .0
            .chunk(&id, 0, chunk as u64, &digest_hex(second.1), second.1)
            .await;
        assert_eq!(acked(second.0).await, vec![[0, 1]]);
        on_b.chunk(&id, 1, z.len() as u64, &digest_hex(&z), &z)
            .await;
        assert_eq!(acked(&mut on_b).await, vec![[1, 2]]);
        // The client (on B) believes chunk 0 is X.
        on_b.frame(&Frame::Finish {
            req: 3,
            upload_id: id.clone(),
            content_hash: content_hash(&[&digest_hex(&x), &digest_hex(&z)]),
            size: None,
        })
        .await;
        let reply = loop {
            match on_b.next().await {
                Some(Frame::Ack { .. }) => continue,
                other => break other,
            }
        };
        let name = if x_last { "raw.bin" } else { "raw (1).bin" };
        let key = format!("{prefix}files/alice/{name}");
        if x_last {
            // The store holds X, as recorded: published, and the bytes are X then Z.
            assert!(matches!(reply, Some(Frame::Finished { .. })), "{reply:?}");
            let stored = s3.get(&key).await.unwrap().expect("published");
            assert!(stored[..chunk] == x[..] && stored[chunk..] == z[..]);
        } else {
            // The store holds Y: finish refuses, nothing is published.
            match reply {
                Some(Frame::Error { code, .. }) => assert_eq!(code, ErrorCode::FileDigestMismatch),
                other => panic!("expected file_digest_mismatch, got {other:?}"),
            }
            assert!(s3.get(&key).await.unwrap().is_none(), "nothing published");
        }
    }
    // Another owner asking a third node for that upload: `not_found`, and nothing of it is
    // cached or spooled there.
    let bob = ferryd(&weed, prefix, &["token", "add", "bob"]);
    let data_c = tempfile::tempdir().unwrap();
    let c = node(&weed, prefix, data_c.path(), &[]);
    let mut as_bob = Raw::login(c.addr, &c.fingerprint, bob.trim(), Dial::default()).await;
    as_bob
        .frame(&Frame::Resume {
            req: 9,
            upload_id: last_id.clone(),
            from: 0,
        })
        .await;
    assert_eq!(as_bob.code().await, ErrorCode::NotFound);
    let spool = data_c
        .path()
        .join("staging")
        .join(format!("{last_id}.part"));
    assert!(!spool.exists(), "another owner's upload was spooled");
}

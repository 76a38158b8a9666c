//! Uploads over tus 1.0 on the web listener (issue 23), through a raw HTTPS client: every
//! status code of the error cases, expiry, CORS, upload links, hooks and quotas, and the
//! helpers the other HTTP upload tests share. Elsewhere: what the promises mean over HTTP
//! (`tus_resume.rs`), the IETF draft (`ietf_draft.rs`), and the real clients — tus-js-client
//! and tuspy — (`tus_clients.rs`).

use std::time::Duration;

use ferry_tests::http::{Https, Reply};
use ferry_tests::{assert_same_file, random_file, TestServer};

pub(crate) const TUS: (&str, &str) = ("Tus-Resumable", "1.0.0");
pub(crate) const OCTETS: (&str, &str) = ("Content-Type", "application/offset+octet-stream");

pub(crate) async fn web_server() -> TestServer {
    web_server_with(|_| {}).await
}

pub(crate) async fn web_server_with(tweak: impl FnOnce(&mut ferry_server::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.web_listen = Some("127.0.0.1:0".parse().unwrap());
        tweak(c);
    })
    .await
}

pub(crate) fn https(server: &TestServer) -> Https {
    Https::new(server.web.expect("the web listener"), &server.fingerprint)
}

pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `base64` of `text`, as `Upload-Metadata` carries values.
pub(crate) fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A tus upload of `length` bytes named `name`; its id.
pub(crate) async fn create(web: &Https, token: &str, length: u64, name: &str) -> String {
    let auth = bearer(token);
    let metadata = format!("filename {}", b64(name));
    let len = length.to_string();
    let reply = web
        .send(
            "POST",
            "/files/",
            &[
                TUS,
                ("Authorization", &auth),
                ("Upload-Length", &len),
                ("Upload-Metadata", &metadata),
            ],
            b"",
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    reply.upload_id()
}

pub(crate) async fn head(web: &Https, token: &str, id: &str) -> Reply {
    let auth = bearer(token);
    web.send(
        "HEAD",
        &format!("/files/{id}"),
        &[TUS, ("Authorization", &auth)],
        b"",
    )
    .await
}

pub(crate) async fn patch(web: &Https, token: &str, id: &str, at: u64, body: &[u8]) -> Reply {
    let auth = bearer(token);
    let at = at.to_string();
    web.send(
        "PATCH",
        &format!("/files/{id}"),
        &[
            TUS,
            OCTETS,
            ("Authorization", &auth),
            ("Upload-Offset", &at),
        ],
        body,
    )
    .await
}

pub(crate) fn code(reply: &Reply) -> String {
    serde_json::from_str::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("a JSON error body in {reply:?}"))
}

/// Every error case of tus 1.0's core and extensions, with the status the spec gives it, and
/// that a refused body leaves the upload's offset where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_answers_every_error_case_with_its_status() {
    let server = web_server_with(|c| c.max_file_size = 64 << 20).await;
    let web = https(&server);
    let alice = bearer(&server.alice);

    // Discovery.
    let options = web.send("OPTIONS", "/files/", &[], b"").await;
    assert_eq!(options.status, 204);
    assert_eq!(options.header("tus-version"), Some("1.0.0"));
    let extensions = options.header("tus-extension").unwrap();
    for ext in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "termination",
        "checksum",
        "concatenation",
    ] {
        assert!(
            extensions.split(',').any(|e| e == ext),
            "{ext} in {extensions}"
        );
    }
    assert_eq!(options.header("tus-max-size"), Some("67108864"));
    assert_eq!(
        options.header("tus-checksum-algorithm"),
        Some("sha256,sha1,sha512,md5")
    );

    // 412: no or another protocol version, with the version the server speaks.
    for version in [None, Some("0.2.2")] {
        let mut headers = vec![("Authorization", alice.as_str()), ("Upload-Length", "10")];
        if let Some(v) = version {
            headers.push(("Tus-Resumable", v));
        }
        let reply = web.send("POST", "/files/", &headers, b"").await;
        assert_eq!(reply.status, 412, "{reply:?}");
        assert_eq!(reply.header("tus-version"), Some("1.0.0"));
        assert_eq!(code(&reply), "unsupported_version");
    }

    // 401: no token, a wrong one.
    let reply = web
        .send("POST", "/files/", &[TUS, ("Upload-Length", "10")], b"")
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    assert_eq!(code(&reply), "not_authenticated");
    let reply = web
        .send(
            "POST",
            "/files/",
            &[
                TUS,
                ("Upload-Length", "10"),
                ("Authorization", "Bearer fy_nope"),
            ],
            b"",
        )
        .await;
    assert_eq!((reply.status, code(&reply).as_str()), (401, "unauthorized"));
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token", error_description="unknown token""#)
    );
    // A HEAD has no body: the challenge alone says why.
    let unknown = format!("/files/{}", "0".repeat(32));
    let wrong = [TUS, ("Authorization", "Bearer fy_nope")];
    let reply = web.send("HEAD", &unknown, &wrong, b"").await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token", error_description="unknown token""#)
    );

    // 400: no length, a malformed one, both kinds, bad metadata.
    for headers in [
        vec![],
        vec![("Upload-Length", "ten")],
        vec![("Upload-Length", "10"), ("Upload-Defer-Length", "1")],
        vec![("Upload-Defer-Length", "2")],
        vec![("Upload-Length", "10"), ("Upload-Metadata", "filename !!!")],
    ] {
        let mut all = vec![TUS, ("Authorization", alice.as_str())];
        all.extend(headers.iter().copied());
        let reply = web.send("POST", "/files/", &all, b"").await;
        assert_eq!(reply.status, 400, "{headers:?}: {reply:?}");
    }
    // 413: larger than the server takes.
    let reply = web
        .send(
            "POST",
            "/files/",
            &[
                TUS,
                ("Authorization", &alice),
                ("Upload-Length", "67108865"),
            ],
            b"",
        )
        .await;
    assert_eq!(
        (reply.status, code(&reply).as_str()),
        (413, "file_too_large")
    );

    // A good one: 201 with its URL and when it expires.
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "clip.bin", 3_000_000, 7);
    let bytes = std::fs::read(&source).unwrap();
    let id = create(&web, &server.alice, bytes.len() as u64, "clip.bin").await;
    let reply = head(&web, &server.alice, &id).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.offset(), 0);
    assert_eq!(reply.header("upload-length"), Some("3000000"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(
        reply.header("upload-metadata"),
        Some(format!("filename {}", b64("clip.bin")).as_str())
    );
    assert!(reply
        .header("upload-expires")
        .is_some_and(|e| e.ends_with(" GMT")));

    // 415: a PATCH body of another type.
    let url = format!("/files/{id}");
    let reply = web
        .send(
            "PATCH",
            &url,
            &[
                TUS,
                ("Authorization", &alice),
                ("Upload-Offset", "0"),
                ("Content-Type", "application/octet-stream"),
            ],
            &bytes[..10],
        )
        .await;
    assert_eq!(reply.status, 415);
    // 400: no offset.
    let reply = web
        .send(
            "PATCH",
            &url,
            &[TUS, OCTETS, ("Authorization", &alice)],
            &bytes[..10],
        )
        .await;
    assert_eq!(reply.status, 400);
    // 409: not the upload's offset; it says the right one.
    let reply = patch(&web, &server.alice, &id, 5, &bytes[5..10]).await;
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(reply.offset(), 0);
    // 460: a body that does not match its checksum; nothing of it kept.
    let wrong = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b"other bytes"))
    };
    let checksum = format!("sha256 {wrong}");
    let reply = web
        .send(
            "PATCH",
            &url,
            &[
                TUS,
                OCTETS,
                ("Authorization", &alice),
                ("Upload-Offset", "0"),
                ("Upload-Checksum", &checksum),
            ],
            &bytes[..1_000_000],
        )
        .await;
    assert_eq!(
        (reply.status, code(&reply).as_str()),
        (460, "digest_mismatch")
    );
    assert_eq!(
        head(&web, &server.alice, &id).await.offset(),
        0,
        "nothing kept"
    );
    // 400: an algorithm not offered.
    let reply = web
        .send(
            "PATCH",
            &url,
            &[
                TUS,
                OCTETS,
                ("Authorization", &alice),
                ("Upload-Offset", "0"),
                ("Upload-Checksum", "crc99 AAAA"),
            ],
            &bytes[..10],
        )
        .await;
    assert_eq!(reply.status, 400);
    // 413: a body past the upload's length.
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"one too many");
    let reply = patch(&web, &server.alice, &id, 0, &longer).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(head(&web, &server.alice, &id).await.offset(), 0);

    // The right checksum: kept, and the last byte publishes.
    let right = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&bytes))
    };
    let checksum = format!("sha256 {right}");
    let reply = web
        .send(
            "PATCH",
            &url,
            &[
                TUS,
                OCTETS,
                ("Authorization", &alice),
                ("Upload-Offset", "0"),
                ("Upload-Checksum", &checksum),
            ],
            &bytes,
        )
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(reply.offset(), 3_000_000);
    assert_same_file(&source, &server.published("alice", "clip.bin"));
    // A complete upload: its offset is its length; an empty PATCH there is fine.
    assert_eq!(head(&web, &server.alice, &id).await.offset(), 3_000_000);
    assert_eq!(
        patch(&web, &server.alice, &id, 3_000_000, b"").await.status,
        204
    );
    // 409: a published upload is not removed over tus.
    let reply = web
        .send("DELETE", &url, &[TUS, ("Authorization", &alice)], b"")
        .await;
    assert_eq!(reply.status, 409);

    // 404: an unknown upload, another owner's, a path below an upload.
    assert_eq!(head(&web, &server.alice, &"0".repeat(32)).await.status, 404);
    assert_eq!(head(&web, &server.bob, &id).await.status, 404);
    let reply = web
        .send(
            "HEAD",
            &format!("{url}/x"),
            &[TUS, ("Authorization", &alice)],
            b"",
        )
        .await;
    assert_eq!(reply.status, 404);
    // 405: what tus does not define here (GET reads the upload back: `growing.rs`).
    let reply = web
        .send("PUT", &url, &[TUS, ("Authorization", &alice)], b"")
        .await;
    assert_eq!(reply.status, 405);
    assert_eq!(
        reply.header("allow"),
        Some("GET, HEAD, PATCH, DELETE, OPTIONS")
    );

    // Termination: 204, then 404.
    let gone = create(&web, &server.alice, 100, "gone.bin").await;
    let gone_url = format!("/files/{gone}");
    let reply = web
        .send("DELETE", &gone_url, &[TUS, ("Authorization", &alice)], b"")
        .await;
    assert_eq!(reply.status, 204);
    assert_eq!(head(&web, &server.alice, &gone).await.status, 404);
}

/// An upload that expired (no progress for `expire_after`) is `410 Gone`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_tus_upload_is_gone() {
    let server = web_server_with(|c| {
        c.expire_after = Duration::from_secs(1);
        c.sweep_interval = Duration::from_millis(200);
    })
    .await;
    let web = https(&server);
    let id = create(&web, &server.alice, 1000, "late.bin").await;
    let mut status = 0;
    for _ in 0..100 {
        status = head(&web, &server.alice, &id).await.status;
        if status == 410 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 410);
    let reply = patch(&web, &server.alice, &id, 0, b"x").await;
    assert_eq!((reply.status, code(&reply).as_str()), (410, "expired"));
}

/// A page of another origin: the preflight is answered for allowed origins only, and answers
/// let it read the tus headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_for_allowed_origins_only() {
    let server = web_server_with(|c| c.web_origins = vec!["https://app.example".into()]).await;
    let web = https(&server);
    let preflight = web
        .send(
            "OPTIONS",
            "/files/",
            &[
                ("Origin", "https://app.example"),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "tus-resumable,upload-length,authorization",
                ),
            ],
            b"",
        )
        .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let allowed = preflight
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "authorization",
        "tus-resumable",
        "upload-length",
        "upload-offset",
        "upload-metadata",
    ] {
        assert!(allowed.contains(h), "{h} in {allowed}");
    }
    assert!(preflight
        .header("access-control-allow-methods")
        .unwrap()
        .contains("PATCH"));
    let alice = bearer(&server.alice);
    let created = web
        .send(
            "POST",
            "/files/",
            &[
                TUS,
                ("Origin", "https://app.example"),
                ("Authorization", &alice),
                ("Upload-Length", "5"),
            ],
            b"",
        )
        .await;
    assert_eq!(created.status, 201);
    let exposed = created
        .header("access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in ["location", "upload-offset", "tus-resumable"] {
        assert!(exposed.contains(h), "{h} in {exposed}");
    }
    let foreign = web
        .send(
            "OPTIONS",
            "/files/",
            &[
                ("Origin", "https://evil.example"),
                ("Access-Control-Request-Method", "POST"),
            ],
            b"",
        )
        .await;
    assert_eq!(foreign.status, 403);
    assert_eq!(foreign.header("access-control-allow-origin"), None);
}

/// An upload link's grant works as the bearer token: the file lands in the owner's folder, within
/// the link's bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_link_uploads_over_tus_within_its_bounds() {
    let server = web_server().await;
    let (_, grant) = ferry_server::links::Links::new(server.data())
        .add("alice", 0, 1 << 20, 0)
        .unwrap();
    let web = https(&server);
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "from-link.bin", 300_000, 29);
    let bytes = std::fs::read(&source).unwrap();
    let id = create(&web, &grant, bytes.len() as u64, "from-link.bin").await;
    let reply = patch(&web, &grant, &id, 0, &bytes).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_same_file(&source, &server.published("alice", "from-link.bin"));
    // The owner's token does not see into the link's uploads from elsewhere, but the link's
    // bound counts: 1 MiB in all.
    let auth = bearer(&grant);
    let reply = web
        .send(
            "POST",
            "/files/",
            &[TUS, ("Authorization", &auth), ("Upload-Length", "900000")],
            b"",
        )
        .await;
    assert_eq!(
        (reply.status, code(&reply).as_str()),
        (403, "quota_exceeded")
    );
}

/// What the operator set holds over tus as over QUIC: the `--on-complete` hook runs for a tus
/// upload with its name, size and content hash (the same as `ferry hash` gives), the
/// `--on-create` hook can refuse one (403 with its message), and the quota counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_and_quotas_hold_over_tus() {
    let hooks = tempfile::tempdir().unwrap();
    let said = hooks.path().join("completed");
    let on_complete = format!(
        "echo \"$FERRY_NAME $FERRY_SIZE $FERRY_CONTENT_HASH\" >> {}",
        said.display()
    );
    let on_create = "if [ \"$FERRY_NAME\" = refused.bin ]; then echo 'not that one'; exit 1; fi";
    let server = web_server_with(|c| {
        c.on_complete = Some(on_complete);
        c.on_create = Some(on_create.into());
        c.quota_per_owner = 10_000_000;
    })
    .await;
    let web = https(&server);
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "hooked.bin", 9_000_000, 43);
    let bytes = std::fs::read(&source).unwrap();
    let id = create(&web, &server.alice, bytes.len() as u64, "hooked.bin").await;
    assert_eq!(patch(&web, &server.alice, &id, 0, &bytes).await.status, 204);
    let expected = format!(
        "hooked.bin 9000000 {}",
        ferry_tests::content_hash_file(&source, 8 << 20)
    );
    let mut line = String::new();
    for _ in 0..100 {
        line = std::fs::read_to_string(&said).unwrap_or_default();
        if !line.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(line.trim(), expected);

    let alice = bearer(&server.alice);
    let metadata = format!("filename {}", b64("refused.bin"));
    let reply = web
        .send(
            "POST",
            "/files/",
            &[
                TUS,
                ("Authorization", &alice),
                ("Upload-Length", "10"),
                ("Upload-Metadata", &metadata),
            ],
            b"",
        )
        .await;
    assert_eq!((reply.status, code(&reply).as_str()), (403, "refused"));
    assert!(reply.body.contains("not that one"), "{}", reply.body);
    // 9 MB published of a 10 MB quota: 2 MB more do not fit.
    let reply = web
        .send(
            "POST",
            "/files/",
            &[TUS, ("Authorization", &alice), ("Upload-Length", "2000000")],
            b"",
        )
        .await;
    assert_eq!(
        (reply.status, code(&reply).as_str()),
        (403, "quota_exceeded")
    );
}

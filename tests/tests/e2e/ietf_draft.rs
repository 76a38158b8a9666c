//! The IETF resumable-upload draft on the web listener (issue 23), the protocol iOS speaks,
//! through a raw HTTPS client. tus is in `tus.rs`.

use ferry_tests::{assert_same_file, random_file};

use crate::tus::{bearer, https, web_server};

/// The IETF draft: creation with the body, offset retrieval, append, completion, the offset
/// mismatch as a problem document, in interop versions 3 (iOS 17: `Upload-Incomplete`) and 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ietf_draft_creates_resumes_and_completes() {
    let server = web_server().await;
    let web = https(&server);
    let alice = bearer(&server.alice);
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "ios.mov", 10_000_000, 17);
    let bytes = std::fs::read(&source).unwrap();

    // Version 6: the first part, not complete; no length given: deferred.
    let reply = web
        .send(
            "POST",
            "/files/",
            &[
                ("Upload-Draft-Interop-Version", "6"),
                ("Upload-Complete", "?0"),
                ("Authorization", &alice),
                ("Content-Disposition", "attachment; filename=\"ios.mov\""),
            ],
            &bytes[..4_000_000],
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.offset(), 4_000_000);
    assert_eq!(reply.header("upload-complete"), Some("?0"));
    assert!(reply.header("upload-limit").unwrap().contains("max-size="));
    let id = reply.upload_id();
    let url = format!("/files/{id}");
    let v6 = ("Upload-Draft-Interop-Version", "6");
    let reply = web
        .send("HEAD", &url, &[v6, ("Authorization", &alice)], b"")
        .await;
    assert_eq!(reply.status, 204);
    assert_eq!(reply.offset(), 4_000_000);
    assert_eq!(reply.header("upload-complete"), Some("?0"));
    assert_eq!(reply.header("upload-length"), None, "not known yet");
    // The wrong offset: 409 with both offsets.
    let part = ("Content-Type", "application/partial-upload");
    let reply = web
        .send(
            "PATCH",
            &url,
            &[
                v6,
                part,
                ("Authorization", &alice),
                ("Upload-Offset", "7"),
                ("Upload-Complete", "?1"),
            ],
            &bytes[7..],
        )
        .await;
    assert_eq!(reply.status, 409);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let problem: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(problem["expected-offset"], 4_000_000);
    assert_eq!(problem["provided-offset"], 7);
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("#mismatching-upload-offset"));
    // 415: an append of another media type (version 6 on).
    let reply = web
        .send(
            "PATCH",
            &url,
            &[
                v6,
                ("Authorization", &alice),
                ("Upload-Offset", "4000000"),
                ("Upload-Complete", "?1"),
            ],
            &bytes[4_000_000..],
        )
        .await;
    assert_eq!(reply.status, 415);
    // The rest, complete: the length is declared by it, and the file published.
    let reply = web
        .send(
            "PATCH",
            &url,
            &[
                v6,
                part,
                ("Authorization", &alice),
                ("Upload-Offset", "4000000"),
                ("Upload-Complete", "?1"),
            ],
            &bytes[4_000_000..],
        )
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(reply.offset(), 10_000_000);
    assert_eq!(reply.header("upload-complete"), Some("?1"));
    assert_same_file(&source, &server.published("alice", "ios.mov"));
    let reply = web
        .send("HEAD", &url, &[v6, ("Authorization", &alice)], b"")
        .await;
    assert_eq!(reply.header("upload-complete"), Some("?1"));
    assert_eq!(reply.header("upload-length"), Some("10000000"));

    // Version 3 (iOS 17): `Upload-Incomplete`, the whole body in the creation request, its
    // length from Content-Length.
    let reply = web
        .send(
            "POST",
            "/files/",
            &[
                ("Upload-Draft-Interop-Version", "3"),
                ("Upload-Incomplete", "?0"),
                ("Authorization", &alice),
            ],
            &bytes,
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("upload-incomplete"), Some("?0"));
    let published = std::fs::read_dir(server.data().join("files/alice"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().into_string().unwrap())
        .find(|n| n.starts_with("upload-"))
        .expect("a generated name for a body without one");
    assert_same_file(&source, &server.published("alice", &published));

    // An interop version not taken: 400, naming the ones that are.
    let reply = web
        .send(
            "POST",
            "/files/",
            &[
                ("Upload-Draft-Interop-Version", "99"),
                ("Authorization", &alice),
            ],
            b"",
        )
        .await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("3 to 8"), "{}", reply.body);
    // Cancellation.
    let reply = web
        .send(
            "POST",
            "/files/",
            &[
                v6,
                ("Upload-Complete", "?0"),
                ("Authorization", &alice),
                ("Upload-Length", "100"),
            ],
            &bytes[..10],
        )
        .await;
    let gone = format!("/files/{}", reply.upload_id());
    let reply = web
        .send("DELETE", &gone, &[v6, ("Authorization", &alice)], b"")
        .await;
    assert_eq!(reply.status, 204);
    let reply = web
        .send("HEAD", &gone, &[v6, ("Authorization", &alice)], b"")
        .await;
    assert_eq!(reply.status, 404);
}

use super::codec::KNOWN_TYPES;
use super::*;

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Every frame of version 3's additions decodes (its type is known) and round-trips.
#[test]
fn version_3_frames_round_trip() {
    let frames = [
        Frame::Dedup {
            req: 1,
            file_name: "a.mov".into(),
            size: 5,
            chunk_size: 4096,
            content_hash: "00".repeat(32),
            desc: String::new(),
            dir: vec!["card".into()],
            on_exists: OnExists::Skip,
        },
        Frame::Deduped {
            req: 1,
            upload_id: "ab".into(),
            file_name: "card/a.mov".into(),
            size: 5,
            content_hash: "00".repeat(32),
            existing: false,
        },
        Frame::NoMatch { req: 1 },
        Frame::Ping { req: 2 },
        Frame::Pong { req: 2 },
        Frame::Notice {
            text: "maintenance at 22:00 UTC".into(),
        },
    ];
    for frame in frames {
        let bytes = frame.to_bytes();
        assert_eq!(Frame::decode_body(&bytes[4..]).unwrap(), frame);
        assert!(KNOWN_TYPES.contains(&frame.kind()));
    }
    let create = r#"{"type":"create","req":1,"file_name":"a","size":1,"chunk_size":4096,"on_exists":"fail"}"#;
    match Frame::decode_body(create.as_bytes()).unwrap() {
        Frame::Create { on_exists, .. } => assert_eq!(on_exists, OnExists::Fail),
        other => panic!("{other:?}"),
    }
}

/// Version 9's frames round-trip, their replies are routed, and a `create` or `finish`
/// of an older client (no `deferred`, no `size`) still decodes as before.
#[test]
fn version_9_frames_round_trip() {
    let info = UploadInfo {
        upload_id: "ab".into(),
        file_name: "x.ts".into(),
        size: 1 << 40,
        chunk_size: 4096,
        chunk_count: (1 << 40) / 4096,
        durable: vec![[0, 3]],
        durable_offset: 3 * 4096,
        durable_next: None,
        deferred: true,
    };
    let frames = [
        Frame::SetLength {
            req: 1,
            upload_id: "ab".into(),
            size: 12_345,
        },
        Frame::LengthSet {
            req: 1,
            upload: info,
        },
        Frame::Rewrite {
            req: 2,
            upload_id: "ab".into(),
            chunks: vec![0, 7],
        },
        Frame::Rewritten {
            req: 2,
            upload_id: "ab".into(),
            chunks: vec![0, 7],
        },
        Frame::Read {
            req: 3,
            upload_id: "ab".into(),
            offset: 0,
            max: MAX_READ,
        },
        Frame::ReadData {
            req: 3,
            upload_id: "ab".into(),
            offset: 0,
            size: 4096,
            durable: 8192,
            complete: false,
        },
    ];
    for frame in frames {
        let bytes = frame.to_bytes();
        assert_eq!(Frame::decode_body(&bytes[4..]).unwrap(), frame);
        assert!(KNOWN_TYPES.contains(&frame.kind()));
    }
    let replies = [(
        Frame::LengthSet {
            req: 4,
            upload: UploadInfo {
                deferred: false,
                ..info_of(0)
            },
        },
        4,
    )];
    for (frame, req) in replies {
        assert_eq!(frame.reply_to(), Some(req));
    }
    let old = r#"{"type":"finish","req":1,"upload_id":"ab","content_hash":"00"}"#;
    match Frame::decode_body(old.as_bytes()).unwrap() {
        Frame::Finish { size, .. } => assert_eq!(size, None),
        other => panic!("{other:?}"),
    }
    let old = r#"{"type":"create","req":1,"file_name":"a","size":1,"chunk_size":4096}"#;
    match Frame::decode_body(old.as_bytes()).unwrap() {
        Frame::Create { deferred, .. } => assert!(!deferred),
        other => panic!("{other:?}"),
    }
}

fn info_of(size: u64) -> UploadInfo {
    UploadInfo {
        upload_id: "ab".into(),
        file_name: "a".into(),
        size,
        chunk_size: 4096,
        chunk_count: 0,
        durable: Vec::new(),
        durable_offset: 0,
        durable_next: None,
        deferred: false,
    }
}

#[test]
fn round_trip_and_partial_input() {
    let frame = Frame::Chunk {
        upload_id: "ab".into(),
        index: 3,
        size: 10,
    };
    let bytes = frame.to_bytes();
    for cut in 0..bytes.len() {
        assert_eq!(Frame::decode(&bytes[..cut]), Ok(None), "cut at {cut}");
    }
    let mut two = bytes.clone();
    two.extend_from_slice(&bytes);
    assert_eq!(Frame::decode(&two), Ok(Some((frame, bytes.len()))));
}

#[test]
fn oversize_is_refused_from_the_prefix_alone() {
    let prefix = ((MAX_FRAME + 1) as u32).to_be_bytes();
    assert_eq!(
        Frame::decode(&prefix),
        Err(FrameError::TooLarge {
            len: MAX_FRAME as u64 + 1
        })
    );
}

#[test]
fn distinct_errors() {
    let code = |body: &[u8]| Frame::decode(&framed(body)).unwrap_err().code();
    assert_eq!(code(b"\xff\xfe"), ErrorCode::BadUtf8);
    assert_eq!(code(b"{not json"), ErrorCode::BadJson);
    assert_eq!(code(b"[1,2]"), ErrorCode::BadJson);
    assert_eq!(code(br#"{"type":"teleport"}"#), ErrorCode::UnknownType);
    assert_eq!(code(br#"{"no_type":1}"#), ErrorCode::UnknownType);
    assert_eq!(code(br#"{"type":"list"}"#), ErrorCode::BadField);
    assert_eq!(
        code(br#"{"type":"list","req":"seven"}"#),
        ErrorCode::BadField
    );
    assert_eq!(
        code(br#"{"type":"create","req":1,"file_name":"a","size":-1,"chunk_size":4}"#),
        ErrorCode::BadField
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let body = br#"{"type":"list","req":7,"colour":"blue"}"#;
    assert_eq!(
        Frame::decode(&framed(body)).unwrap().unwrap().0,
        Frame::List {
            req: 7,
            cursor: None
        }
    );
}

#[test]
fn an_oversized_frame_is_refused_by_the_encoder() {
    let summary = UploadSummary {
        upload_id: "0".repeat(32),
        file_name: "f".into(),
        desc: "d".repeat(MAX_FRAME),
        size: 0,
        chunk_size: 0,
        durable_bytes: 0,
        state: "complete".into(),
        created_at: 0,
        updated_at: 0,
        expires_at: 0,
    };
    let listing = Frame::Listing {
        req: 1,
        uploads: vec![summary],
        next: None,
    };
    assert!(matches!(
        listing.to_wire(),
        Err(FrameError::TooLarge { .. })
    ));
    let small = Frame::List {
        req: 1,
        cursor: None,
    };
    assert_eq!(small.to_wire().unwrap(), small.to_bytes());
}

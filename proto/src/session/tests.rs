//! The session's rules, one scenario each.

use super::*;

fn session(size: u64, chunk: u64) -> UploadSession {
    UploadSession::new(
        ChunkLayout::new(size, chunk).unwrap(),
        ChunkSet::new(),
        CommitPolicy::default(),
    )
}

fn header(index: u64, data: &[u8]) -> ChunkHeader {
    ChunkHeader {
        index,
        size: data.len() as u64,
    }
}

/// Chunk `i`'s header accepted, then `data` as its payload with the digest it claimed.
fn receive(s: &mut UploadSession, i: u64, data: &[u8], now: Instant) -> ChunkIndex {
    let Accept::Receive { index, .. } = s.handle_header(&header(i, data)).unwrap() else {
        panic!("chunk {i} was not accepted")
    };
    s.handle_payload(index, Digest::of(data), Digest::of(data), now);
    index
}

#[test]
fn header_checks_come_before_payload() {
    let mut s = session(10, 4);
    let h = |index, size| ChunkHeader { index, size };
    assert_eq!(
        s.handle_header(&h(3, 4)).unwrap_err().code(),
        ErrorCode::IndexOutOfRange
    );
    assert_eq!(
        s.handle_header(&h(2, 4)).unwrap_err().code(),
        ErrorCode::WrongChunkSize
    );
    assert_eq!(
        s.handle_header(&h(0, 3)).unwrap_err().code(),
        ErrorCode::WrongChunkSize
    );
    assert!(matches!(
        s.handle_header(&h(2, 2)),
        Ok(Accept::Receive { .. })
    ));
    assert_eq!(
        s.handle_header(&h(2, 2)).unwrap_err().code(),
        ErrorCode::ChunkInProgress
    );
}

#[test]
fn acks_only_after_persisted() {
    let now = Instant::now();
    let mut s = session(8, 4);
    let data = [7u8; 4];
    let index = receive(&mut s, 0, &data, now);
    assert_eq!(s.poll_output(), None);
    assert_eq!(
        s.poll_commit(now),
        None,
        "not due yet: one chunk of two, no time passed"
    );
    let later = s.poll_timeout().unwrap();
    let batch = s.poll_commit(later).unwrap();
    assert_eq!(batch.chunks, vec![(index, Digest::of(&data))]);
    assert_eq!(s.poll_output(), None, "no ack while the commit runs");
    s.handle_persisted(batch.id + 1);
    assert_eq!(
        s.poll_output(),
        None,
        "another batch's outcome acks nothing"
    );
    s.handle_persisted(batch.id);
    assert_eq!(
        s.poll_output(),
        Some(Output::Ack([0].into_iter().collect()))
    );
    assert!(!s.is_complete());
}

#[test]
fn digest_mismatch_is_rejected_and_can_be_resent() {
    let now = Instant::now();
    let mut s = session(4, 4);
    let data = [1u8; 4];
    let Accept::Receive { index, .. } = s.handle_header(&header(0, &data)).unwrap() else {
        panic!()
    };
    s.handle_payload(index, Digest::of(b"other"), Digest::of(&data), now);
    assert!(matches!(
        s.poll_output(),
        Some(Output::Reject {
            index: 0,
            code: ErrorCode::DigestMismatch,
            ..
        })
    ));
    receive(&mut s, 0, &data, now);
    // The last chunk commits at once.
    let batch = s.poll_commit(now).unwrap();
    s.handle_persisted(batch.id);
    assert!(s.is_complete());
    s.handle_finish().unwrap();
    assert_eq!(
        s.handle_header(&header(0, &data)).unwrap_err().code(),
        ErrorCode::BadState
    );
}

#[test]
fn durable_chunk_is_acked_again_without_payload() {
    let layout = ChunkLayout::new(8, 4).unwrap();
    let mut s = UploadSession::new(layout, [0].into_iter().collect(), CommitPolicy::default());
    assert_eq!(
        s.handle_header(&header(0, &[0; 4])),
        Ok(Accept::AlreadyDurable)
    );
    assert_eq!(
        s.poll_output(),
        Some(Output::Ack([0].into_iter().collect()))
    );
}

/// Regression: found by the simulated link. A chunk verified and waiting for its commit was
/// re-sent after a reconnect with corrupted bytes; the re-send overwrote the good bytes on
/// disk and the commit then recorded the chunk as durable with the wrong bytes.
#[test]
fn received_chunk_is_never_written_again() {
    let now = Instant::now();
    let mut s = session(8, 4);
    let data = [5u8; 4];
    receive(&mut s, 0, &data, now);
    assert_eq!(
        s.handle_header(&header(0, &data)),
        Ok(Accept::AlreadyReceived)
    );
    let _batch = s.poll_commit(now + Duration::from_secs(1)).unwrap();
    assert_eq!(
        s.handle_header(&header(0, &data)),
        Ok(Accept::AlreadyReceived)
    );
}

#[test]
fn a_durable_chunk_can_be_rewritten_but_not_one_in_flight() {
    let now = Instant::now();
    let mut s = session(3 * 4, 4);
    let data = *b"abcd";
    let mut indices = Vec::new();
    for i in 0..2 {
        let index = receive(&mut s, i, &data, now);
        indices.push(index);
    }
    let later = s.poll_timeout().unwrap();
    let batch = s.poll_commit(later).unwrap();
    assert_eq!(batch.chunks.len(), 2);
    s.handle_persisted(batch.id);
    assert!(s.durable().contains(0) && s.durable().contains(1));
    // Chunk 2 arrives; while it does, it cannot be rewritten.
    let Accept::Receive {
        index: arriving, ..
    } = s.handle_header(&header(2, &data)).unwrap()
    else {
        panic!()
    };
    assert!(!s.rewrite(arriving));
    assert!(s.rewrite(indices[0]));
    assert!(!s.durable().contains(0));
    // Sent again, it is received like a new chunk.
    assert!(matches!(
        s.handle_header(&header(0, b"wxyz")),
        Ok(Accept::Receive { .. })
    ));
}

#[test]
fn finish_needs_every_chunk() {
    let mut s = session(8, 4);
    assert_eq!(
        s.handle_finish(),
        Err(FinishError::Incomplete {
            missing: 2,
            count: 2
        })
    );
    let mut empty = session(0, 4);
    assert_eq!(empty.handle_finish(), Ok(()));
}

#[test]
fn batches_in_flight_are_bounded_and_acked_in_any_order() {
    let now = Instant::now();
    let policy = CommitPolicy {
        max_in_flight: 2,
        ..CommitPolicy::default()
    };
    let mut s = UploadSession::new(ChunkLayout::new(4 * 4, 4).unwrap(), ChunkSet::new(), policy);
    let later = now + Duration::from_secs(1);
    let mut batches = Vec::new();
    for i in 0..3 {
        let data = [i as u8; 4];
        receive(&mut s, i, &data, now);
        batches.push(s.poll_commit(later));
    }
    let (first, second) = (batches[0].clone().unwrap(), batches[1].clone().unwrap());
    assert_ne!(first.id, second.id);
    assert_eq!(
        batches[2], None,
        "a third batch waits while two are committing"
    );
    assert_eq!(
        s.poll_timeout(),
        None,
        "nothing to wake for while the bound is reached"
    );
    s.handle_persisted(second.id);
    assert_eq!(
        s.poll_output(),
        Some(Output::Ack([1].into_iter().collect()))
    );
    let third = s.poll_commit(later).expect("room for the waiting chunk");
    assert_eq!(third.chunks.len(), 1);
    s.handle_persist_failed(first.id, ErrorCode::StorageError, "store down");
    assert!(matches!(
        s.poll_output(),
        Some(Output::Reject { index: 0, .. })
    ));
    s.handle_persisted(third.id);
    assert_eq!(
        s.poll_output(),
        Some(Output::Ack([2].into_iter().collect()))
    );
    assert_eq!(s.durable().iter().collect::<Vec<_>>(), vec![1, 2]);
    assert!(s.is_idle());
}

#[test]
fn failed_commit_rejects_its_chunks() {
    let now = Instant::now();
    let mut s = session(4, 4);
    receive(&mut s, 0, &[2; 4], now);
    let batch = s.poll_commit(now).unwrap();
    s.handle_persist_failed(batch.id, ErrorCode::StorageFull, "disk full");
    assert!(matches!(
        s.poll_output(),
        Some(Output::Reject {
            index: 0,
            code: ErrorCode::StorageFull,
            ..
        })
    ));
    assert!(s.durable().is_empty());
    assert!(s.received().is_empty());
}

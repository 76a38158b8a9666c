//! Network input must never panic or allocate without bound. These property tests feed the
//! frame decoder and `UploadSession` arbitrary input, the same properties the cargo-fuzz
//! targets in `fuzz/` check for longer (see docs/testing.md); here a bounded run is part of CI.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        match Frame::decode(&bytes) {
            Ok(Some((_, used))) => prop_assert!(used <= bytes.len()),
            Ok(None) => prop_assert!(bytes.len() < 4 || bytes.len() < 4 + u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize),
            Err(_) => {}
        }
    }

    #[test]
    fn decoder_survives_json_shaped_garbage(
        kind in prop::sample::select(vec!["hello", "create", "chunk", "finish", "ack", "error", "list", "x"]),
        field in "[a-z_]{1,12}",
        value in prop_oneof![Just("-1".to_owned()), Just("1e999".to_owned()), Just("18446744073709551616".to_owned()),
                             Just("null".to_owned()), Just("[]".to_owned()), Just("{}".to_owned()), "\"[^\"]{0,20}\""],
    ) {
        let body = format!(r#"{{"type":"{kind}","{field}":{value},"req":1}}"#);
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(body.as_bytes());
        let _ = Frame::decode(&bytes);
    }
}

/// One input to a session, as a fuzzer would choose it.
#[derive(Debug, Clone)]
enum Input {
    Header { index: u64, size: u64 },
    Payload { index: u64, actual: u8, claimed: u8 },
    Abandoned { index: u64 },
    Tick { ms: u64 },
    Persisted { which: usize },
    PersistFailed { which: usize },
    Finish,
    Finalized { ok: bool },
    Forget { index: u64 },
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (0u64..12, prop_oneof![0u64..40, Just(u64::MAX)])
            .prop_map(|(index, size)| Input::Header { index, size }),
        (0u64..12, 0u8..3, 0u8..3).prop_map(|(index, actual, claimed)| Input::Payload {
            index,
            actual,
            claimed
        }),
        (0u64..12).prop_map(|index| Input::Abandoned { index }),
        (0u64..20).prop_map(|ms| Input::Tick { ms }),
        (0usize..4).prop_map(|which| Input::Persisted { which }),
        (0usize..4).prop_map(|which| Input::PersistFailed { which }),
        Just(Input::Finish),
        any::<bool>().prop_map(|ok| Input::Finalized { ok }),
        (0u64..12).prop_map(|index| Input::Forget { index }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn session_never_panics_and_keeps_its_invariants(
        size in 0u64..100,
        chunk in 1u64..30,
        max_in_flight in 0usize..4,
        inputs in prop::collection::vec(input(), 0..200),
    ) {
        let layout = ChunkLayout::new(size, chunk).unwrap();
        let policy = CommitPolicy { max_in_flight, ..CommitPolicy::default() };
        let mut session = UploadSession::new(layout, ChunkSet::new(), policy);
        // The batches committing, by id, as the I/O layer would hold them.
        let mut running: Vec<u64> = Vec::new();
        let mut now = Instant::now();
        let mut acked = ChunkSet::new();
        let digest = |d: u8| Digest::from_bytes([d; 32]);
        for input in inputs {
            match input {
                Input::Header { index, size } => {
                    let _ = session.handle_header(&ChunkHeader { index, size });
                }
                Input::Payload { index, actual, claimed } => {
                    if let Ok(index) = layout.index(index) {
                        session.handle_payload(index, digest(actual), digest(claimed), now);
                    }
                }
                Input::Abandoned { index } => {
                    if let Ok(index) = layout.index(index) {
                        session.handle_abandoned(index);
                    }
                }
                Input::Tick { ms } => {
                    now += Duration::from_millis(ms);
                    if let Some(batch) = session.poll_commit(now) {
                        prop_assert!(!running.contains(&batch.id), "batch id {} reused", batch.id);
                        running.push(batch.id);
                    }
                    prop_assert!(running.len() <= max_in_flight.max(1), "more batches than allowed");
                }
                Input::Persisted { which } if !running.is_empty() => {
                    session.handle_persisted(running.remove(which % running.len()));
                }
                Input::PersistFailed { which } if !running.is_empty() => {
                    let id = running.remove(which % running.len());
                    session.handle_persist_failed(id, ErrorCode::StorageFull, "full");
                }
                Input::Persisted { .. } | Input::PersistFailed { .. } => {}
                Input::Finish => { let _ = session.handle_finish(); }
                Input::Finalized { ok } => session.handle_finalized(ok),
                Input::Forget { index } => {
                    if let Ok(index) = layout.index(index) {
                        session.forget(index);
                        acked.remove(index.get());
                    }
                }
            }
            while let Some(out) = session.poll_output() {
                if let Output::Ack(set) = out {
                    for i in set.iter() {
                        prop_assert!(i < layout.count(), "ack of chunk {} outside the layout", i);
                        acked.insert(i);
                    }
                }
            }
            prop_assert!(session.received().is_superset(session.durable()));
            prop_assert!(session.durable().is_superset(&acked), "an acked chunk is not durable");
            prop_assert_eq!(session.is_complete(), session.durable().len() == layout.count());
        }
    }
}

//! Arbitrary input sequences into `UploadSession`: it must never panic, every acked chunk must
//! be durable, and durable ⊆ received.
#![no_main]

use std::time::{Duration, Instant};

use ferry_proto::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&size, rest)) = data.split_first() else { return };
    let Some((&chunk, ops)) = rest.split_first() else { return };
    let layout = ChunkLayout::new(size as u64, (chunk as u64 % 32) + 1).unwrap();
    let policy = CommitPolicy { max_in_flight: (chunk as usize % 3) + 1, ..CommitPolicy::default() };
    let mut session = UploadSession::new(layout, ChunkSet::new(), policy);
    let mut running: Vec<u64> = Vec::new();
    let mut now = Instant::now();
    let mut acked = ChunkSet::new();
    for op in ops.chunks(3) {
        let (kind, a, b) = (op[0], *op.get(1).unwrap_or(&0) as u64, *op.get(2).unwrap_or(&0));
        match kind % 9 {
            0 => {
                let _ = session.handle_header(&ChunkHeader { index: a % 16, size: b as u64 });
            }
            1 => {
                if let Ok(i) = layout.index(a % 16) {
                    session.handle_payload(i, Digest::from_bytes([b % 3; 32]), Digest::from_bytes([b % 5 % 3; 32]), now);
                }
            }
            2 => {
                if let Ok(i) = layout.index(a % 16) {
                    session.handle_abandoned(i);
                }
            }
            3 => {
                now += Duration::from_millis(a);
                if let Some(batch) = session.poll_commit(now) {
                    running.push(batch.id);
                }
            }
            4 if !running.is_empty() => {
                let id = running.remove(a as usize % running.len());
                session.handle_persisted(id);
            }
            5 if !running.is_empty() => {
                let id = running.remove(a as usize % running.len());
                session.handle_persist_failed(id, ErrorCode::StorageFull, "full");
            }
            4 | 5 => {}
            6 => {
                let _ = session.handle_finish();
            }
            7 => session.handle_finalized(b % 2 == 0),
            _ => {
                if let Ok(i) = layout.index(a % 16) {
                    session.forget(i);
                    acked.remove(i.get());
                }
            }
        }
        while let Some(out) = session.poll_output() {
            if let Output::Ack(set) = out {
                for i in set.iter() {
                    acked.insert(i);
                }
            }
        }
        assert!(session.received().is_superset(session.durable()));
        assert!(session.durable().is_superset(&acked));
    }
});

//! A simulated link between an `UploadSender` and an `UploadSession`, with a virtual clock, a
//! fake disk and a fake record store. A seeded scenario drops, duplicates, reorders and
//! corrupts chunk streams, loses acks with the connection, and crashes the server, which then
//! restores from the last persisted record with garbage where nothing was durable.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::*;

/// xorshift64*: deterministic, seeded by the test case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A chunk stream in flight: header and payload.
struct Stream {
    /// A copy made by the link; copies are not copied again.
    copy: bool,
    index: u64,
    claimed: Digest,
    payload: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
struct Faults {
    drop: u64,
    duplicate: u64,
    corrupt: u64,
    lose_connection: u64,
    crash: u64,
}

struct Pair {
    source: Vec<u8>,
    rng: Rng,
    now: Instant,
    sender: UploadSender,
    session: UploadSession,
    disk: Vec<u8>,
    /// What the record store holds: the durable set as of the last completed commit.
    store: ChunkSet,
    link: Vec<Stream>,
    acks: Vec<Output>,
    faults: Faults,
    crashes: u32,
    /// Every chunk the sender ever saw acked; checked against the store at the end.
    acked_ever: ChunkSet,
    corruptions: std::collections::HashMap<u64, u32>,
}

impl Pair {
    fn new(seed: u64, size: usize, chunk: u64, window: usize, faults: Faults) -> Self {
        let mut rng = Rng(seed | 1);
        let source: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
        let layout = ChunkLayout::new(size as u64, chunk).unwrap();
        Self {
            rng,
            now: Instant::now(),
            sender: UploadSender::new(layout, ChunkSet::new(), window),
            session: UploadSession::new(layout, ChunkSet::new(), CommitPolicy::default()),
            disk: vec![0xee; size],
            store: ChunkSet::new(),
            link: Vec::new(),
            acks: Vec::new(),
            faults,
            crashes: 0,
            acked_ever: ChunkSet::new(),
            corruptions: Default::default(),
            source,
        }
    }

    fn layout(&self) -> ChunkLayout {
        *self.session.layout()
    }

    /// Runs until complete or `max_steps`; returns whether it completed.
    fn run(&mut self, max_steps: usize) -> bool {
        for _ in 0..max_steps {
            if self.sender.is_complete() {
                return true;
            }
            self.step();
            self.check_invariants();
        }
        self.sender.is_complete()
    }

    fn step(&mut self) {
        self.now += Duration::from_millis(1 + self.rng.below(4) as u64);
        // Client sends what it may.
        while let Some(index) = self.sender.poll_send(self.now) {
            let span = self.layout().span(index);
            let payload =
                self.source[span.offset as usize..(span.offset + span.len) as usize].to_vec();
            let claimed = Digest::of(&payload);
            let mut stream = Stream {
                copy: false,
                index: index.get(),
                claimed,
                payload,
            };
            // Corruption on the link is transient: one chunk is corrupted at most twice, so even
            // with every corrupted stream duplicated it fails fewer times than the sender
            // tolerates before it blames the source.
            let corrupted = self.corruptions.entry(stream.index).or_default();
            if *corrupted * 2 + 1 < MAX_DIGEST_FAILURES
                && self.rng.chance(self.faults.corrupt)
                && !stream.payload.is_empty()
            {
                *corrupted += 1;
                let at = self.rng.below(stream.payload.len());
                stream.payload[at] ^= 0x40;
            }
            self.link.push(stream);
        }
        // The link delivers one stream, in random order, maybe dropping or duplicating it.
        if !self.link.is_empty() {
            let stream = self.link.swap_remove(self.rng.below(self.link.len()));
            if self.rng.chance(self.faults.drop) {
                self.sender.handle_send_failed(stream.index);
            } else {
                if !stream.copy && self.rng.chance(self.faults.duplicate) {
                    let copy = Stream {
                        copy: true,
                        index: stream.index,
                        claimed: stream.claimed,
                        payload: stream.payload.clone(),
                    };
                    self.link.push(copy);
                }
                self.deliver(stream);
            }
        }
        // The server commits when due; the I/O completes at once in this model.
        if let Some(batch) = self.session.poll_commit(self.now) {
            if self.rng.chance(self.faults.crash) {
                // Crash between the data sync and the record flush: the batch is lost.
                return self.crash();
            }
            for (index, digest) in &batch.chunks {
                let span = self.layout().span(*index);
                let bytes = &self.disk[span.offset as usize..(span.offset + span.len) as usize];
                assert_eq!(
                    Digest::of(bytes),
                    *digest,
                    "commit of chunk {index} with wrong bytes on disk"
                );
                self.store.insert(index.get());
            }
            self.session.handle_persisted(batch.id);
        }
        while let Some(out) = self.session.poll_output() {
            self.acks.push(out);
        }
        if self.rng.chance(self.faults.lose_connection) {
            return self.reconnect();
        }
        if self.rng.chance(self.faults.crash) {
            return self.crash();
        }
        // Acks arrive in order on the control stream.
        for out in std::mem::take(&mut self.acks) {
            match out {
                Output::Ack(set) => {
                    self.sender.handle_ack(&set.to_wire()).unwrap();
                    for i in set.iter() {
                        self.acked_ever.insert(i);
                    }
                }
                Output::Reject {
                    index,
                    code,
                    message,
                } => {
                    self.sender
                        .handle_reject(index, code, &message, self.now)
                        .unwrap();
                }
            }
        }
    }

    fn deliver(&mut self, stream: Stream) {
        let header = ChunkHeader {
            index: stream.index,
            size: stream.payload.len() as u64,
        };
        match self.session.handle_header(&header) {
            Ok(Accept::Receive { index, span }) => {
                self.disk[span.offset as usize..(span.offset + span.len) as usize]
                    .copy_from_slice(&stream.payload);
                self.session.handle_payload(
                    index,
                    Digest::of(&stream.payload),
                    stream.claimed,
                    self.now,
                );
            }
            Ok(Accept::AlreadyDurable | Accept::AlreadyReceived) => {}
            Err(e) => self.acks.push(Output::Reject {
                index: stream.index,
                code: e.code(),
                message: e.to_string(),
            }),
        }
    }

    /// The connection drops: in-flight streams and unsent acks are lost; the client resumes.
    fn reconnect(&mut self) {
        let layout = self.layout();
        for s in self.link.drain(..) {
            self.session
                .handle_abandoned(layout.index(s.index).unwrap());
        }
        self.acks.clear();
        self.sender.handle_resumed(self.session.durable());
    }

    /// The server dies: everything not in the store is forgotten, and the disk holds garbage
    /// wherever no durable chunk is.
    fn crash(&mut self) {
        self.crashes += 1;
        let before = self.session.durable().clone();
        let layout = self.layout();
        for index in self.store.missing(layout.count()).iter() {
            let span = layout.span(layout.index(index).unwrap());
            for b in &mut self.disk[span.offset as usize..(span.offset + span.len) as usize] {
                *b = self.rng.next() as u8;
            }
        }
        self.session = UploadSession::new(layout, self.store.clone(), CommitPolicy::default());
        assert!(
            self.session.durable().is_superset(&before),
            "durable set shrank across a restart"
        );
        self.link.clear();
        self.acks.clear();
        self.sender.handle_resumed(self.session.durable());
    }

    fn check_invariants(&self) {
        let received = self.session.received();
        assert!(
            received.is_superset(self.session.durable()),
            "durable ⊄ received"
        );
        assert!(
            self.store.is_superset(self.sender.acked()),
            "an acked chunk is not in the store"
        );
        assert!(
            self.store.is_superset(&self.acked_ever),
            "an acked chunk was lost"
        );
        assert_eq!(
            self.session.is_complete(),
            self.session.durable().len() == self.layout().count()
        );
    }
}

fn faults() -> impl Strategy<Value = Faults> {
    (0u64..30, 0u64..20, 0u64..20, 0u64..5, 0u64..5).prop_map(
        |(drop, duplicate, corrupt, lose_connection, crash)| Faults {
            drop,
            duplicate,
            corrupt,
            lose_connection,
            crash,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn uploads_complete_with_identical_bytes(
        seed in any::<u64>(),
        size in 0usize..4000,
        chunk in 1u64..300,
        window in 1usize..10,
        faults in faults(),
    ) {
        let mut pair = Pair::new(seed, size, chunk, window, faults);
        prop_assert!(pair.run(20_000), "did not complete: acked {} of {}", pair.sender.acked().len(), pair.layout().count());
        prop_assert!(pair.session.is_complete());
        prop_assert_eq!(pair.session.handle_finish(), Ok(()));
        prop_assert!(pair.disk == pair.source, "bytes on disk differ from the source");
    }
}

#[test]
fn clean_link_sends_each_chunk_once() {
    let none = Faults {
        drop: 0,
        duplicate: 0,
        corrupt: 0,
        lose_connection: 0,
        crash: 0,
    };
    let mut pair = Pair::new(7, 10_000, 100, 8, none);
    let mut sends = 0;
    for _ in 0..10_000 {
        if pair.sender.is_complete() {
            break;
        }
        let before = pair.link.len();
        pair.step();
        sends += pair.link.len() + 1 - before.min(pair.link.len() + 1);
    }
    assert!(pair.sender.is_complete());
    assert_eq!(pair.disk, pair.source);
    assert!(sends >= 100);
}

#[test]
fn crash_loses_only_unpersisted_chunks() {
    let none = Faults {
        drop: 0,
        duplicate: 0,
        corrupt: 0,
        lose_connection: 0,
        crash: 0,
    };
    let mut pair = Pair::new(11, 1000, 100, 4, none);
    for _ in 0..6 {
        pair.step();
    }
    let stored = pair.store.clone();
    pair.crash();
    assert_eq!(pair.session.durable(), &stored);
    assert!(pair.run(10_000));
    assert_eq!(pair.disk, pair.source);
}

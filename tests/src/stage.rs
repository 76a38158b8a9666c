//! Staged uploads written straight through the server's store, as if clients had sent them and
//! the server had then crashed: gibibytes in seconds, for the restart test and benchmark.

use std::os::unix::fs::FileExt;
use std::path::Path;

use ferry_proto::{ChunkLayout, Digest};
use ferry_server::store::{RecordState, UploadRecord};

/// One staged upload: its id, and its layout.
pub struct Staged {
    pub id: String,
    pub layout: ChunkLayout,
}

/// Writes `count` receiving uploads of `size` bytes owned by `owner` into the data directory
/// `data`, every chunk durable and recorded, and leaves the store as an unclean stop would
/// (never marked clean). Content: a pseudo-random
/// 1 MiB block, its first 16 bytes changed per chunk so that no two chunks are alike.
pub fn stage_uploads(data: &Path, owner: &str, count: u64, size: u64, chunk: u64) -> Vec<Staged> {
    let (store, _) = ferry_server::Store::open(data, 0).expect("open the store");
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for word in block.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
    }
    let mut out = Vec::new();
    for n in 0..count {
        let record = UploadRecord {
            owner: owner.into(),
            file_name: format!("staged-{n}.mov"),
            desc: String::new(),
            size,
            chunk_size: chunk,
            state: RecordState::Receiving,
            created_at: 1_700_000_000 + n,
            updated_at: 1_700_000_000 + n,
            final_name: None,
            content_hash: None,
            dir: Vec::new(),
            on_exists: Default::default(),
            dedup: false,
            stamp: None,
            remote: None,
            link: None,
            deferred: false,
            partial: false,
            metadata: None,
            frontend: None,
        };
        let id = store.create(&record).expect("create");
        let layout = record.layout().unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(store.staging_path(id))
            .unwrap();
        let mut buf = vec![0u8; chunk as usize];
        let mut recorded = Vec::new();
        for raw in 0..layout.count() {
            let index = layout.index(raw).unwrap();
            let span = layout.span(index);
            let piece = &mut buf[..span.len as usize];
            for (i, part) in piece.chunks_mut(block.len()).enumerate() {
                part.copy_from_slice(&block[..part.len()]);
                let tag = [n, raw, i as u64, 0].map(u64::to_le_bytes).concat();
                let len = part.len().min(16);
                part[..len].copy_from_slice(&tag[..len]);
            }
            file.write_all_at(piece, span.offset).unwrap();
            recorded.push((index, Digest::of(piece)));
        }
        file.sync_data().unwrap();
        store.record_chunks(id, &recorded).unwrap();
        store.sync().unwrap();
        out.push(Staged {
            id: id.to_string(),
            layout,
        });
    }
    out
}

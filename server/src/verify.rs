//! Re-verification after an unclean stop, in the background: the server listens first. Every
//! durable chunk of every upload that was receiving is re-hashed against its recorded digest
//! (bytes changed on disk while the server was down, or a disk that lied about a sync, are
//! caught), most recently active uploads first, at most `--verify-rate` bytes per second.
//!
//! An upload that a client wants before the background reaches it (`resume`, `finish`) is
//! verified at once, unpaced, and the request waits for it: its `resumed` is then exact. New
//! uploads never wait. Until every upload is verified the store is not marked clean, so a stop
//! in the meantime (clean or not) verifies again at the next start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::store::{Store, UploadId, Verified};

/// How often the background verification logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub struct Verifier {
    store: Arc<Store>,
    /// The uploads to verify, most recently active first, with their durable bytes.
    order: Vec<(UploadId, u64)>,
    /// One cell per upload, set once it is verified; whoever gets there first verifies.
    /// Filled at start from the store's list and never grows.
    cells: HashMap<UploadId, Arc<OnceCell<()>>>,
    /// Totals so far (for the progress log and the final line).
    found: Mutex<Verified>,
    uploads_done: AtomicU64,
    /// Bytes re-hashed so far, counted as they are read (for the progress log).
    bytes_done: Arc<AtomicU64>,
    finished: AtomicBool,
}

impl Verifier {
    pub fn new(store: Arc<Store>, order: Vec<(UploadId, u64)>) -> Arc<Self> {
        let cells = order
            .iter()
            .map(|(id, _)| (*id, Arc::new(OnceCell::new())))
            .collect();
        Arc::new(Self {
            store,
            order,
            cells,
            found: Default::default(),
            uploads_done: AtomicU64::new(0),
            bytes_done: Arc::default(),
            finished: AtomicBool::new(false),
        })
    }

    /// True once every upload listed at start is verified.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Returns once `id` is verified: at once if it needs none or is done, otherwise after
    /// verifying it now (or waiting for the background, if it is on it).
    pub async fn ready(&self, id: UploadId) -> anyhow::Result<()> {
        let Some(cell) = self.cells.get(&id) else {
            return Ok(());
        };
        cell.get_or_try_init(|| self.verify(id, 0)).await?;
        Ok(())
    }

    /// Works through every upload, most recently active first, at most `rate` bytes per
    /// second (0: no limit), logging progress; then logs what it found.
    pub async fn run(self: Arc<Self>, rate: u64) {
        let started = Instant::now();
        let total_bytes: u64 = self.order.iter().map(|(_, b)| b).sum();
        info!(
            uploads = self.order.len(),
            bytes = total_bytes,
            rate,
            "re-verifying durable chunks in the background after an unclean stop"
        );
        let ticker = tokio::spawn({
            let this = self.clone();
            async move {
                loop {
                    tokio::time::sleep(PROGRESS_EVERY).await;
                    let found = *this.found.lock().unwrap_or_else(|p| p.into_inner());
                    info!(
                        uploads_verified = this.uploads_done.load(Ordering::Relaxed),
                        uploads_remaining =
                            this.order.len() as u64 - this.uploads_done.load(Ordering::Relaxed),
                        bytes_verified = this.bytes_done.load(Ordering::Relaxed),
                        bytes_total = total_bytes,
                        mismatched_so_far = found.mismatched,
                        "re-verification progress"
                    );
                }
            }
        });
        let mut failed = false;
        for (id, _) in &self.order {
            let cell = self.cells[id].clone();
            if let Err(e) = cell.get_or_try_init(|| self.verify(*id, rate)).await {
                warn!(upload = %id, error = %format!("{e:#}"), "re-verification failed");
                failed = true;
            }
        }
        ticker.abort();
        let found = *self.found.lock().unwrap_or_else(|p| p.into_inner());
        self.finished.store(!failed, Ordering::Release);
        info!(
            uploads_verified = self.uploads_done.load(Ordering::Relaxed),
            chunks_verified = found.chunks,
            bytes_verified = found.bytes,
            chunks_mismatched = found.mismatched,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "re-verified durable chunks after an unclean stop"
        );
    }

    /// Verifies one upload on a blocking thread, paced to `rate` bytes per second if not 0.
    async fn verify(&self, id: UploadId, rate: u64) -> anyhow::Result<()> {
        let store = self.store.clone();
        let bytes_done = self.bytes_done.clone();
        let found = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut so_far = 0u64;
            store.verify_upload(id, |len| {
                bytes_done.fetch_add(len, Ordering::Relaxed);
                so_far += len;
                if rate > 0 {
                    let due = Duration::from_secs_f64(so_far as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        })
        .await??;
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) += found;
        self.uploads_done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

//! The queue of `--on-complete` hook jobs: a completion queues one in the same write that
//! records it complete, and a job leaves the queue only after its hook ran.

use anyhow::Result;
use tracing::warn;

use super::{HookJob, Store};

impl Store {
    /// The oldest `limit` queued `--on-complete` hook jobs, with their sequence numbers.
    pub fn hook_jobs(&self, limit: usize) -> Result<Vec<(u64, HookJob)>> {
        let mut out = Vec::new();
        for entry in self.db()?.hooks.iter().take(limit) {
            let (key, value) = entry?;
            let seq = key.as_ref().try_into().map_or(0, u64::from_be_bytes);
            match serde_json::from_slice(&value) {
                Ok(job) => out.push((seq, job)),
                Err(e) => warn!(seq, error = %e, "unreadable hook job, skipped"),
            }
        }
        Ok(out)
    }

    /// Whether completions queue `--on-complete` jobs from now on (a reload turns hooks on or
    /// off).
    pub fn set_queue_hooks(&self, on: bool) {
        self.queue_hooks
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forgets a hook job that ran (durably: a crash before this runs the hook again).
    pub fn hook_done(&self, seq: u64) -> Result<()> {
        self.db()?.hooks.remove(seq.to_be_bytes())?;
        self.sync()
    }
}

//! What the last connections learned about the path to each server address, so the next one
//! starts at speed (issue 26, item 4): on a long lossy link a connection took most of a
//! 128 MiB upload to grow its congestion window and send window. Kept in `STATE/paths.json`
//! (the resume journal's folder): per address, the smallest RTT seen, the congestion window
//! and the send window the connection ended with, and when.
//!
//! The next connection to that address starts its congestion window at what was learned
//! (at most [`MAX_START`], only from a record of the last [`MEMORY`] on a path of at least
//! [`MIN_RTT`]: on a short path the ramp costs nothing) and, once its own RTT agrees with the
//! record's (within a factor of two), its send window too. The delay controller then leaves its
//! start phase at the first sign of a queue, as it does from a small window.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The largest congestion window a connection starts with, bytes.
pub const MAX_START: u64 = 32 << 20;
/// How long a record is trusted.
pub const MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Paths shorter than this start as they always did.
pub const MIN_RTT: Duration = Duration::from_millis(20);
/// At most this many addresses are remembered (the oldest go first).
const MAX_RECORDS: usize = 256;

/// One address's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    /// The smallest RTT seen, microseconds.
    pub min_rtt_us: u64,
    /// The congestion window at the end, bytes.
    pub cwnd: u64,
    /// The QUIC send window at the end, bytes.
    pub send_window: u64,
    /// Unix seconds.
    pub at: u64,
}

impl Learned {
    pub fn min_rtt(&self) -> Duration {
        Duration::from_micros(self.min_rtt_us)
    }

    /// Whether a connection whose RTT is `rtt` runs over the path this record describes.
    pub fn same_path(&self, rtt: Duration) -> bool {
        let learned = self.min_rtt();
        rtt <= learned * 2 && learned <= rtt * 2
    }
}

/// The records of one state folder, shared by the command's connections.
pub struct PathMemory {
    file: PathBuf,
    records: Mutex<BTreeMap<String, Learned>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl PathMemory {
    /// The records in `state_dir` (none if the file is missing or unreadable: it only speeds
    /// things up).
    pub fn open(state_dir: &std::path::Path) -> Self {
        let file = state_dir.join("paths.json");
        let records = std::fs::read(&file)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default();
        Self {
            file,
            records: Mutex::new(records),
        }
    }

    /// What was learned about `addr`, if recent and on a path long enough to matter.
    pub fn get(&self, addr: SocketAddr) -> Option<Learned> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records
            .get(&addr.to_string())
            .copied()
            .filter(|l| now().saturating_sub(l.at) < MEMORY.as_secs())
            .filter(|l| l.min_rtt() >= MIN_RTT)
    }

    /// The congestion window a new connection to `addr` starts with, if something was learned.
    pub fn start_window(&self, addr: SocketAddr) -> Option<u64> {
        self.get(addr).map(|l| l.cwnd.min(MAX_START))
    }

    /// Records what a connection to `addr` ended with, and saves the file (best effort: a
    /// failure costs only the next start's speed).
    pub fn record(&self, addr: SocketAddr, min_rtt: Duration, cwnd: u64, send_window: u64) {
        // A short path has nothing worth remembering (and a job of many files on a LAN
        // writes nothing per file).
        if min_rtt < MIN_RTT || cwnd == 0 {
            return;
        }
        let text = {
            let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            records.insert(
                addr.to_string(),
                Learned {
                    min_rtt_us: min_rtt.as_micros() as u64,
                    cwnd,
                    send_window,
                    at: now(),
                },
            );
            while records.len() > MAX_RECORDS {
                let oldest = records
                    .iter()
                    .min_by_key(|(_, l)| l.at)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(key) => records.remove(&key),
                    None => break,
                };
            }
            serde_json::to_vec_pretty(&*records)
        };
        let Ok(text) = text else { return };
        let Some(dir) = self.file.parent() else {
            return;
        };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
            use std::io::Write;
            if tmp.write_all(&text).is_ok() {
                let _ = tmp.persist(&self.file);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_kept_read_back_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "10.99.0.2:4433".parse().unwrap();
        let memory = PathMemory::open(dir.path());
        assert_eq!(memory.start_window(addr), None);
        memory.record(addr, Duration::from_millis(200), 64 << 20, 96 << 20);
        // Read back by the next command, capped.
        let again = PathMemory::open(dir.path());
        assert_eq!(again.start_window(addr), Some(MAX_START));
        let learned = again.get(addr).unwrap();
        assert!(learned.same_path(Duration::from_millis(300)));
        assert!(!learned.same_path(Duration::from_millis(20)));
        // A short path is not worth it: not even recorded.
        let near: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        again.record(near, Duration::from_micros(300), 8 << 20, 16 << 20);
        assert_eq!(again.start_window(near), None);
        assert!(!std::fs::read_to_string(dir.path().join("paths.json"))
            .unwrap()
            .contains("127.0.0.1"));
    }
}

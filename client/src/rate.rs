//! `--limit-rate`: one pacer shared by every chunk stream of the process.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct RateLimiter {
    bytes_per_sec: u64,
    /// When the next byte may go out. Moves forward by `n / rate` for every `n` bytes.
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `n` more bytes may be sent.
    pub async fn acquire(&self, n: usize) {
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

pub use ferry_proto::units::parse_size;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate() {
        let limiter = RateLimiter::new(1 << 20);
        let start = tokio::time::Instant::now();
        for _ in 0..8 {
            limiter.acquire(256 << 10).await;
        }
        // 8 × 256 KiB at 1 MiB/s: the last piece may start after 1.75 s.
        assert_eq!(start.elapsed().as_millis(), 1750);
    }
}

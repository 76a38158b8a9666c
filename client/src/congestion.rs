//! `--congestion delay`: a congestion controller for long, lossy links. Loss-based
//! controllers (Cubic, NewReno) read every lost packet as congestion and collapse under random
//! loss; quinn's BBR keeps its rate but overshoots (its window reached 140–228 MB on a 25 MB
//! path), filling the bottleneck queue until it drops. This one reads congestion from
//! **queueing delay** instead, like TCP Vegas and LEDBAT:
//!
//! - Each round (one smoothed RTT) it averages the RTT samples of the acknowledged packets; the
//!   queueing delay is that average less the path's base RTT (the smallest sample of the last
//!   30 s). (Not the round's minimum: a sender that pauses lets the queue drain, and the first
//!   packets after the pause would hide the queue the others met.)
//! - Start: the window doubles every round until the queueing delay passes the threshold (also
//!   checked within the round, every 16 samples), then it is cut to what the path held
//!   without a queue (`window × base / average`).
//! - Then, once a round: below half the threshold the window grows by an eighth, above the
//!   threshold it shrinks by an eighth, in between it holds. A flow sharing the bottleneck
//!   with it (a TCP download, say) builds the queue, and this one backs off.
//! - Random loss is ignored. Heavy loss (over a quarter of a round's bytes) still halves the
//!   window once per round — a bottleneck whose queue is too short to show delay — and
//!   persistent congestion (everything lost for several PTOs) resets it to the minimum.
//!
//! Threshold: a quarter of the base RTT, at least 5 ms (on loopback, where the RTT is
//! microseconds, scheduling noise alone reaches a few milliseconds).

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory};
use quinn_proto::RttEstimator;

/// The window never goes below this (bytes).
const MIN_WINDOW: u64 = 256 << 10;
/// How long the base RTT is remembered: a path that got slower for good is learned within
/// this time.
const BASE_RTT_MEMORY: Duration = Duration::from_secs(30);

/// Settings of the delay controller.
#[derive(Debug, Clone)]
pub struct DelayConfig {
    /// Window at the start, bytes.
    pub initial_window: u64,
    /// The largest window, bytes: the memory of unacknowledged data a connection may hold.
    pub max_window: u64,
}

impl Default for DelayConfig {
    fn default() -> Self {
        Self {
            initial_window: 1 << 20,
            max_window: 64 << 20,
        }
    }
}

impl ControllerFactory for DelayConfig {
    fn build(self: Arc<Self>, now: Instant, _current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Delay {
            window: self.initial_window,
            config: self,
            starting: true,
            base: Base::default(),
            round_end: now,
            round_sum: Duration::ZERO,
            round_samples: 0,
            round_acked: 0,
            round_lost: 0,
            cut_in_round: false,
        })
    }
}

/// The smallest RTT sample of the last [`BASE_RTT_MEMORY`], from two half-length windows.
#[derive(Debug, Clone, Default)]
struct Base {
    current: Option<(Instant, Duration)>,
    previous: Option<Duration>,
}

impl Base {
    fn update(&mut self, now: Instant, sample: Duration) {
        match self.current {
            Some((since, _)) if now.duration_since(since) > BASE_RTT_MEMORY / 2 => {
                self.previous = self.current.map(|(_, min)| min);
                self.current = Some((now, sample));
            }
            Some((since, min)) => self.current = Some((since, min.min(sample))),
            None => self.current = Some((now, sample)),
        }
    }

    fn get(&self) -> Option<Duration> {
        let current = self.current.map(|(_, min)| min);
        match (current, self.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Clone)]
struct Delay {
    config: Arc<DelayConfig>,
    window: u64,
    starting: bool,
    base: Base,
    /// When the current round ends (one smoothed RTT after it began).
    round_end: Instant,
    /// Sum and count of the round's RTT samples.
    round_sum: Duration,
    round_samples: u32,
    round_acked: u64,
    round_lost: u64,
    /// A loss cut was made this round (at most one per round).
    cut_in_round: bool,
}

impl Delay {
    fn threshold(base: Duration) -> Duration {
        (base / 4).max(Duration::from_millis(5))
    }

    /// The round's average RTT and the base RTT, once there are samples.
    fn delays(&self) -> Option<(Duration, Duration)> {
        let base = self.base.get()?;
        let average = self.round_sum.checked_div(self.round_samples)?;
        Some((average, base))
    }

    /// Leaves the start phase if the queue has grown past the threshold.
    fn check_start(&mut self) {
        let Some((average, base)) = self.delays() else {
            return;
        };
        if average.saturating_sub(base) > Self::threshold(base) {
            self.starting = false;
            let held = self.window as f64 * base.as_secs_f64() / average.as_secs_f64();
            self.window = (held as u64).max(MIN_WINDOW);
        }
    }

    fn end_round(&mut self, now: Instant, srtt: Duration) {
        if self.starting {
            self.check_start();
        } else if let Some((average, base)) = self.delays() {
            let queueing = average.saturating_sub(base);
            let threshold = Self::threshold(base);
            if queueing < threshold / 2 {
                self.window = (self.window + self.window / 8).min(self.config.max_window);
            } else if queueing > threshold {
                self.window = (self.window - self.window / 8).max(MIN_WINDOW);
            }
        }
        self.round_end = now + srtt.max(Duration::from_millis(1));
        self.round_sum = Duration::ZERO;
        self.round_samples = 0;
        self.round_acked = 0;
        self.round_lost = 0;
        self.cut_in_round = false;
    }
}

impl Controller for Delay {
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        let sample = now.saturating_duration_since(sent);
        self.base.update(now, sample);
        self.round_sum += sample;
        self.round_samples += 1;
        self.round_acked += bytes;
        if self.starting && !app_limited {
            self.window = (self.window + bytes).min(self.config.max_window);
            if self.round_samples.is_multiple_of(16) {
                self.check_start();
            }
        }
        if now >= self.round_end {
            self.end_round(now, rtt.get());
        }
    }

    fn on_congestion_event(
        &mut self,
        _now: Instant,
        _sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        if is_persistent_congestion {
            self.window = MIN_WINDOW;
            self.starting = false;
            return;
        }
        self.round_lost += lost_bytes;
        let heavy = self.round_lost * 4 > self.round_acked + self.round_lost;
        if heavy && !self.cut_in_round && self.round_acked + self.round_lost > 4 * MIN_WINDOW {
            self.window = (self.window / 2).max(MIN_WINDOW);
            self.starting = false;
            self.cut_in_round = true;
        }
    }

    fn on_mtu_update(&mut self, _new_mtu: u16) {}

    fn window(&self) -> u64 {
        self.window
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.config.initial_window
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

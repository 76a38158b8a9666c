//! The server's metrics, served as Prometheus (OpenMetrics) text on the admin listener's
//! `/metrics`. One set per process: counters are bumped where the events happen; the gauges of
//! state (uploads and connections active, free disk) are read when scraped.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookRun {
    pub hook: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Via {
    pub frontend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    pub code: String,
}

pub struct Metrics {
    registry: Registry,
    /// Chunk payload bytes received in full (their digest is checked next), by front end
    /// (`quic`, `webtransport`, `tus`, `ietf`).
    pub bytes_received: Family<Via, Counter>,
    pub uploads_created: Family<Via, Counter>,
    /// Uploads published (by `finish`, `dedup`, or an HTTP upload's last byte), by the front
    /// end that created them.
    pub uploads_completed: Family<Via, Counter>,
    /// Uploads ended or refused at `finish` without publishing, by reason: `aborted`,
    /// `expired`, or the error code of the refused `finish`.
    pub uploads_failed: Family<Reason, Counter>,
    /// Uploads with a running driver (being received or finishing).
    pub uploads_active: Gauge,
    /// Logged-in connections.
    pub connections_active: Gauge,
    pub chunks_rejected: Family<Code, Counter>,
    /// Time from a commit batch's start (data sync) to its durable record (database sync).
    pub commit_duration: Histogram,
    pub disk_free: Gauge,
    /// Logins refused for an unknown or revoked token.
    pub auth_failures: Counter,
    /// Hook runs by hook (`on_complete`, `on_create`) and result (`ok`, `failed`, `timeout`,
    /// `error`).
    pub hooks: Family<HookRun, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let m = Self {
            bytes_received: Family::default(),
            uploads_created: Family::default(),
            uploads_completed: Family::default(),
            uploads_failed: Family::default(),
            uploads_active: Gauge::default(),
            connections_active: Gauge::default(),
            chunks_rejected: Family::default(),
            // 1 ms to ~16 s.
            commit_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            disk_free: Gauge::default(),
            auth_failures: Counter::default(),
            hooks: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "bytes_received",
            "Chunk payload bytes received in full (digest checked next)",
            m.bytes_received.clone(),
        );
        registry.register(
            "uploads_created",
            "Uploads created",
            m.uploads_created.clone(),
        );
        registry.register(
            "uploads_completed",
            "Uploads published (finish or dedup)",
            m.uploads_completed.clone(),
        );
        registry.register(
            "uploads_failed",
            "Uploads aborted, expired, or refused at finish, by reason",
            m.uploads_failed.clone(),
        );
        registry.register(
            "uploads_active",
            "Uploads being received or finished now",
            m.uploads_active.clone(),
        );
        registry.register(
            "connections_active",
            "Logged-in connections",
            m.connections_active.clone(),
        );
        registry.register(
            "chunks_rejected",
            "Chunks rejected, by error code",
            m.chunks_rejected.clone(),
        );
        registry.register_with_unit(
            "commit_duration",
            "Time to make a batch of chunks durable (data sync, then database sync)",
            Unit::Seconds,
            m.commit_duration.clone(),
        );
        registry.register_with_unit(
            "disk_free",
            "Free bytes on the data directory's file system",
            Unit::Bytes,
            m.disk_free.clone(),
        );
        registry.register(
            "auth_failures",
            "Logins refused for an unknown or revoked token",
            m.auth_failures.clone(),
        );
        registry.register(
            "hook_runs",
            "Hook runs, by hook and result",
            m.hooks.clone(),
        );
        Self { registry, ..m }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn received(&self, frontend: crate::uploads::Frontend, bytes: u64) {
        self.bytes_received
            .get_or_create(&via(frontend.as_str()))
            .inc_by(bytes);
    }

    pub fn created(&self, frontend: crate::uploads::Frontend) {
        self.uploads_created
            .get_or_create(&via(frontend.as_str()))
            .inc();
    }

    /// An upload published; `frontend` is the one that created it.
    pub fn completed(&self, frontend: &str) {
        self.uploads_completed.get_or_create(&via(frontend)).inc();
    }

    pub fn failed(&self, reason: &str) {
        self.uploads_failed
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn hook(&self, hook: &str, result: &str) {
        self.hooks
            .get_or_create(&HookRun {
                hook: hook.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn rejected(&self, code: ferry_proto::ErrorCode) {
        self.chunks_rejected
            .get_or_create(&Code {
                code: code.as_str().to_owned(),
            })
            .inc();
    }
}

fn via(frontend: &str) -> Via {
    Via {
        frontend: frontend.to_owned(),
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_as_documented() {
        let m = super::Metrics::new();
        m.received(crate::uploads::Frontend::Tus, 5);
        m.failed("aborted");
        m.rejected(ferry_proto::ErrorCode::DigestMismatch);
        m.commit_duration.observe(0.004);
        let text = m.encode();
        for line in [
            "ferry_bytes_received_total{frontend=\"tus\"} 5",
            "ferry_uploads_failed_total{reason=\"aborted\"} 1",
            "ferry_chunks_rejected_total{code=\"digest_mismatch\"} 1",
            "ferry_commit_duration_seconds_count 1",
            "ferry_disk_free_bytes 0",
            "ferry_connections_active 0",
            "ferry_auth_failures_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}

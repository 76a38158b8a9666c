//! The congestion controllers a user can pick (`--congestion`), by name. The mapping to a
//! QUIC implementation lives in the binaries; this is only the vocabulary.

use std::fmt;
use std::str::FromStr;

/// A congestion-control algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// CUBIC (RFC 9438): loss-based; backs off hard on random loss.
    Cubic,
    /// BBR: model-based; keeps its rate through random loss. Marked experimental in quinn.
    #[default]
    Bbr,
    /// NewReno (RFC 9002's reference controller).
    NewReno,
    /// Ferry's delay-based controller (the client's `congestion::DelayConfig`): ignores random
    /// loss, backs off on queueing delay. A sender's choice; the server, which sends only
    /// control frames, uses BBR for it.
    Delay,
}

impl FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Self::Cubic),
            "bbr" => Ok(Self::Bbr),
            "newreno" => Ok(Self::NewReno),
            "delay" => Ok(Self::Delay),
            other => Err(format!(
                "unknown congestion controller {other:?}; use cubic, bbr, newreno or delay"
            )),
        }
    }
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cubic => "cubic",
            Self::Bbr => "bbr",
            Self::NewReno => "newreno",
            Self::Delay => "delay",
        })
    }
}

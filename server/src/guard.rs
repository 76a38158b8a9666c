//! Protection against floods: a budget of its own for connections that have not logged in yet
//! (the oldest evicted when it is full, so they can never take the places of logged-in ones), a
//! cap on logged-in connections (in total and per IP address), and a growing delay before
//! answering repeated authentication failures from one address. All keep bounded state, so a
//! flood of addresses cannot grow the server's memory.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Connections between the first packet and `welcome`. At most `max_total` wait, at most
/// `max_per_ip` from one address; a new one past either bound evicts the oldest waiting one
/// (of its own address first). A client that logs in promptly is never starved by a flood of
/// connections that do not.
#[derive(Debug)]
pub struct PendingPool {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    next: u64,
    /// Admission order → address and the eviction signal.
    waiting: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    per_ip: HashMap<IpAddr, usize>,
}

/// A connection's place while it logs in; given back on drop. `evicted` is signalled when a
/// newer connection took the place.
#[derive(Debug)]
pub struct PendingSlot {
    pool: Arc<PendingPool>,
    seq: u64,
    pub evicted: Arc<Notify>,
}

impl PendingPool {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            state: Default::default(),
        })
    }

    /// A place for a new connection from `ip`, evicting the oldest waiting one if needed.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> PendingSlot {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let victim = if state.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            state
                .waiting
                .iter()
                .find(|(_, (from, _))| *from == ip)
                .map(|(&seq, _)| seq)
        } else if state.waiting.len() >= self.max_total {
            state.waiting.keys().next().copied()
        } else {
            None
        };
        if let Some(seq) = victim {
            if let Some((_, evicted)) = state.remove(seq) {
                evicted.notify_one();
            }
        }
        let seq = state.next;
        state.next += 1;
        let evicted = Arc::new(Notify::new());
        state.waiting.insert(seq, (ip, evicted.clone()));
        *state.per_ip.entry(ip).or_default() += 1;
        PendingSlot {
            pool: self.clone(),
            seq,
            evicted,
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .len()
    }
}

impl Pending {
    fn remove(&mut self, seq: u64) -> Option<(IpAddr, Arc<Notify>)> {
        let (ip, evicted) = self.waiting.remove(&seq)?;
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        Some((ip, evicted))
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        state.remove(self.seq);
    }
}

/// Counts logged-in connections.
#[derive(Debug)]
pub struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place; given back on drop.
#[derive(Debug)]
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl ConnLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for a connection from `ip`, or why there is none.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, String> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.max_total {
            return Err(format!(
                "the server has {} connections, its limit",
                self.max_total
            ));
        }
        let from_ip = open.1.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_ip {
            return Err(format!(
                "{ip} has {from_ip} connections, the limit per address is {}",
                self.max_per_ip
            ));
        }
        open.0 += 1;
        *open.1.entry(ip).or_default() += 1;
        Ok(ConnSlot {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// Most addresses remembered; beyond it, old entries are forgotten first.
const THROTTLE_ENTRIES: usize = 4096;
/// Failures older than this are forgotten.
const THROTTLE_MEMORY: Duration = Duration::from_secs(600);
/// One remembered failure is forgiven per this much time without a new one. Only time
/// forgives: a success does not, or alternating right and wrong tokens would never slow down.
const THROTTLE_DECAY: Duration = Duration::from_secs(30);

/// Remembers authentication failures per address and says how long to wait before answering.
#[derive(Default)]
pub struct AuthThrottle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthThrottle {
    /// Records a failure from `ip` at `now`; returns the delay to apply before the refusal:
    /// 0 for the first, then 250 ms doubling per failure up to 8 s. Failures decay by one per
    /// [`THROTTLE_DECAY`] since the last one; successes change nothing.
    pub fn fail(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= THROTTLE_ENTRIES && !failures.contains_key(&ip) {
            failures.retain(|_, (_, last)| now.duration_since(*last) < THROTTLE_MEMORY);
            if failures.len() >= THROTTLE_ENTRIES {
                failures.clear();
            }
        }
        let entry = failures.entry(ip).or_insert((0, now));
        let forgiven = now.duration_since(entry.1).as_secs() / THROTTLE_DECAY.as_secs();
        entry.0 = entry
            .0
            .saturating_sub(forgiven.min(u64::from(u32::MAX)) as u32);
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        match entry.0 {
            1 => Duration::ZERO,
            n => Duration::from_millis(250 << (n - 2).min(5)),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_caps() {
        let limiter = ConnLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let _a1 = limiter.acquire(a).unwrap();
        let a2 = limiter.acquire(a).unwrap();
        assert!(limiter
            .acquire(a)
            .unwrap_err()
            .contains("limit per address is 2"));
        let _b1 = limiter.acquire(b).unwrap();
        assert!(limiter.acquire(b).unwrap_err().contains("3 connections"));
        drop(a2);
        assert!(limiter.acquire(b).is_ok());
    }

    #[tokio::test]
    async fn a_full_login_budget_evicts_the_oldest_waiting_connection() {
        let pool = PendingPool::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = pool.admit(a);
        let _a2 = pool.admit(a);
        let a3 = pool.admit(a); // over the per-address bound: evicts a1, not anyone else's
        a1.evicted.notified().await;
        let b1 = pool.admit(b);
        let _b2 = pool.admit(b); // over the total: evicts the oldest, a2
        assert_eq!(pool.waiting(), 3);
        drop((a3, b1));
        assert_eq!(pool.waiting(), 1, "places come back on drop");
    }

    #[test]
    fn delays_grow_and_memory_stays_bounded() {
        let throttle = AuthThrottle::default();
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let delays: Vec<u128> = (0..8).map(|_| throttle.fail(ip, now).as_millis()).collect();
        assert_eq!(delays, vec![0, 250, 500, 1000, 2000, 4000, 8000, 8000]);
        let later = now + THROTTLE_MEMORY;
        assert_eq!(
            throttle.fail(ip, later),
            Duration::ZERO,
            "forgotten after 10 min"
        );
        for i in 0..20_000u32 {
            throttle.fail(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(throttle.len() <= THROTTLE_ENTRIES);
    }

    /// Regression (issue 8): a success used to clear the record, so alternating right and
    /// wrong tokens was never slowed. Only time forgives now.
    #[test]
    fn only_time_forgives_failures() {
        let throttle = AuthThrottle::default();
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let delays: Vec<u128> = [0, 1, 2, 3]
            .map(|s| throttle.fail(ip, at(s)).as_millis())
            .into();
        assert_eq!(
            delays,
            vec![0, 250, 500, 1000],
            "successes in between change nothing"
        );
        // 65 s later two failures are forgiven: the next counts as the third.
        assert_eq!(throttle.fail(ip, at(68)).as_millis(), 500);
    }
}

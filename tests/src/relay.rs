//! A UDP relay that sits between clients and a server on loopback and misbehaves on purpose:
//! delay and jitter, random loss, reordering, duplication, a bandwidth cap with a bounded
//! queue, and black holes. Seeded, so a failing run can be replayed. It runs as tokio tasks
//! that stop when the `Relay` is dropped.
//!
//! Each client address gets its own upstream socket, so the server sees one address per
//! client, and a client that moves to a new local port (connection migration) shows up at the
//! server from a new address, as it would on a real network.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// What one direction of the link does to packets.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in `[0, jitter)`, per packet; reorders packets as a side effect.
    pub jitter: Duration,
    /// Probability a packet is dropped.
    pub loss: f64,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
    /// Probability a packet is held back by an extra `delay + 5 ms`, arriving after later ones.
    pub reorder: f64,
    /// Bandwidth cap in bytes per second; `None` for no cap.
    pub rate: Option<u64>,
    /// With a cap, packets that would wait longer than this in the queue are dropped (tail
    /// drop, like a router buffer). Zero means 100 ms.
    pub queue: Duration,
}

impl Impairment {
    /// Delay, loss and reordering, the common test case.
    pub fn lossy(delay_ms: u64, loss: f64, reorder: f64) -> Self {
        Self {
            delay: Duration::from_millis(delay_ms),
            loss,
            reorder,
            ..Default::default()
        }
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct Counters {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub bytes: AtomicU64,
}

struct Shared {
    /// Client → server, and server → client.
    up: Mutex<Impairment>,
    down: Mutex<Impairment>,
    blackhole_until: Mutex<Option<Instant>>,
    rng: Mutex<u64>,
    pub up_counters: Counters,
    pub down_counters: Counters,
}

impl Shared {
    fn random(&self) -> f64 {
        let mut s = self.rng.lock().unwrap();
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64
    }

    fn blackholed(&self) -> bool {
        self.blackhole_until
            .lock()
            .unwrap()
            .is_some_and(|t| Instant::now() < t)
    }
}

pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _tasks: JoinSet<()>,
}

/// A packet waiting for its departure time.
struct Scheduled {
    at: Instant,
    data: Vec<u8>,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
}

impl Relay {
    /// Starts a relay in front of `server` with the given impairments and seed.
    pub async fn start(server: SocketAddr, up: Impairment, down: Impairment, seed: u64) -> Self {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("relay binds"));
        let addr = listen.local_addr().unwrap();
        let shared = Arc::new(Shared {
            up: Mutex::new(up),
            down: Mutex::new(down),
            blackhole_until: Mutex::new(None),
            rng: Mutex::new(seed | 1),
            up_counters: Counters::default(),
            down_counters: Counters::default(),
        });
        let mut tasks = JoinSet::new();
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        let (down_tx, down_rx) = mpsc::unbounded_channel();
        tasks.spawn(pacer(up_rx));
        tasks.spawn(pacer(down_rx));
        tasks.spawn(accept_loop(listen, server, shared.clone(), up_tx, down_tx));
        Self {
            addr,
            shared,
            _tasks: tasks,
        }
    }

    /// Changes the impairments from now on.
    pub fn set(&self, up: Impairment, down: Impairment) {
        *self.shared.up.lock().unwrap() = up;
        *self.shared.down.lock().unwrap() = down;
    }

    /// Drops every packet, both ways, for `duration` from now.
    pub fn blackhole(&self, duration: Duration) {
        *self.shared.blackhole_until.lock().unwrap() = Some(Instant::now() + duration);
    }

    /// Packets (forwarded, dropped) client → server and server → client.
    pub fn counts(&self) -> [(u64, u64); 2] {
        let c = |c: &Counters| {
            (
                c.forwarded.load(Ordering::Relaxed),
                c.dropped.load(Ordering::Relaxed),
            )
        };
        [c(&self.shared.up_counters), c(&self.shared.down_counters)]
    }
}

async fn accept_loop(
    listen: Arc<UdpSocket>,
    server: SocketAddr,
    shared: Arc<Shared>,
    up: mpsc::UnboundedSender<Scheduled>,
    down: mpsc::UnboundedSender<Scheduled>,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut returns = JoinSet::new();
    let mut up_link = LinkState::default();
    loop {
        let Ok((n, from)) = listen.recv_from(&mut buf).await else {
            return;
        };
        let upstream = match upstreams.get(&from) {
            Some(s) => s.clone(),
            None => {
                let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let socket = Arc::new(socket);
                upstreams.insert(from, socket.clone());
                returns.spawn(return_loop(
                    socket.clone(),
                    listen.clone(),
                    from,
                    shared.clone(),
                    down.clone(),
                ));
                socket
            }
        };
        let imp = *shared.up.lock().unwrap();
        schedule(
            &shared,
            &imp,
            &mut up_link,
            &shared.up_counters,
            &buf[..n],
            upstream,
            server,
            &up,
        );
    }
}

/// Server → one client.
async fn return_loop(
    upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    shared: Arc<Shared>,
    down: mpsc::UnboundedSender<Scheduled>,
) {
    let mut buf = vec![0u8; 65536];
    let mut link = LinkState::default();
    loop {
        let Ok((n, _)) = upstream.recv_from(&mut buf).await else {
            return;
        };
        let imp = *shared.down.lock().unwrap();
        schedule(
            &shared,
            &imp,
            &mut link,
            &shared.down_counters,
            &buf[..n],
            listen.clone(),
            client,
            &down,
        );
    }
}

/// Per-direction (per client for the return path) bandwidth state.
#[derive(Default)]
struct LinkState {
    /// When the link finishes sending what is queued.
    busy_until: Option<Instant>,
}

#[allow(clippy::too_many_arguments)]
fn schedule(
    shared: &Shared,
    imp: &Impairment,
    link: &mut LinkState,
    counters: &Counters,
    data: &[u8],
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    tx: &mpsc::UnboundedSender<Scheduled>,
) {
    let now = Instant::now();
    if shared.blackholed() || shared.random() < imp.loss {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut depart = now;
    if let Some(rate) = imp.rate {
        let start = link.busy_until.map_or(now, |b| b.max(now));
        let queue = if imp.queue.is_zero() {
            Duration::from_millis(100)
        } else {
            imp.queue
        };
        if start > now + queue {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let done = start + Duration::from_secs_f64(data.len() as f64 / rate.max(1) as f64);
        link.busy_until = Some(done);
        depart = done;
    }
    let mut at = depart + imp.delay + imp.jitter.mul_f64(shared.random());
    if shared.random() < imp.reorder {
        at += imp.delay + Duration::from_millis(5);
    }
    let copies = if shared.random() < imp.duplicate {
        2
    } else {
        1
    };
    for _ in 0..copies {
        counters.forwarded.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let _ = tx.send(Scheduled {
            at,
            data: data.to_vec(),
            socket: socket.clone(),
            to,
        });
    }
}

/// Sends scheduled packets at their time, in time order (ties in arrival order).
async fn pacer(mut rx: mpsc::UnboundedReceiver<Scheduled>) {
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut packets: HashMap<u64, Scheduled> = HashMap::new();
    let mut seq = 0u64;
    loop {
        let next = heap.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            packet = rx.recv() => {
                let Some(packet) = packet else { return };
                seq += 1;
                heap.push(Reverse((packet.at, seq)));
                packets.insert(seq, packet);
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                let now = Instant::now();
                while let Some(Reverse((at, id))) = heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    if let Some(p) = packets.remove(&id) {
                        let _ = p.socket.send_to(&p.data, p.to).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_both_ways_and_blackholes() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        });
        let delay = Impairment {
            delay: Duration::from_millis(10),
            ..Default::default()
        };
        let relay = Relay::start(echo_addr, delay, delay, 1).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = Instant::now();
        client.send_to(b"ping", relay.addr).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "delay applied both ways"
        );

        relay.blackhole(Duration::from_millis(300));
        client.send_to(b"lost", relay.addr).await.unwrap();
        let lost =
            tokio::time::timeout(Duration::from_millis(200), client.recv_from(&mut buf)).await;
        assert!(lost.is_err(), "nothing passes a black hole");
        assert_eq!(relay.counts()[0].1, 1);
    }

    #[tokio::test]
    async fn loss_rate_is_roughly_as_configured() {
        let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let lossy = Impairment {
            loss: 0.2,
            ..Default::default()
        };
        let relay = Relay::start(sink.local_addr().unwrap(), lossy, Impairment::default(), 7).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..2000 {
            client.send_to(b"x", relay.addr).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (forwarded, dropped) = relay.counts()[0];
        assert_eq!(forwarded + dropped, 2000);
        assert!(
            (300..500).contains(&dropped),
            "dropped {dropped} of 2000 at 20 %"
        );
    }
}

//! Client QUIC transport settings and socket tuning.

use std::time::Duration;

use std::sync::Arc;

use ferry_proto::Congestion;
use quinn::congestion::{BbrConfig, ControllerFactory, CubicConfig, NewRenoConfig};
use quinn::{TransportConfig, VarInt};

/// quinn's implementation of `congestion`; the delay controller starts at `start` bytes when
/// an earlier connection learned the path (`crate::path`).
pub fn controller(
    congestion: Congestion,
    start: Option<u64>,
) -> Arc<dyn ControllerFactory + Send + Sync> {
    match congestion {
        Congestion::Cubic => Arc::new(CubicConfig::default()),
        Congestion::Bbr => Arc::new(BbrConfig::default()),
        Congestion::NewReno => Arc::new(NewRenoConfig::default()),
        Congestion::Delay => {
            let mut config = crate::congestion::DelayConfig::default();
            if let Some(start) = start {
                config.initial_window = start.clamp(config.initial_window, config.max_window);
            }
            Arc::new(config)
        }
    }
}

/// Wanted size of the UDP send and receive buffers.
pub const SOCKET_BUFFER: usize = 4 << 20;

pub fn client(
    idle_timeout: Duration,
    congestion: Congestion,
    start: Option<u64>,
) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.congestion_controller_factory(controller(congestion, start));
    // The client receives only control frames. Its send window bounds the payload bytes quinn
    // buffers until the server acknowledges them, so it is the client's memory; 16 MiB covers
    // the bandwidth-delay product of ~300 MiB/s at 50 ms RTT.
    t.send_window(16 << 20);
    t.stream_receive_window(VarInt::from_u32(1 << 20));
    t.receive_window(VarInt::from_u32(4 << 20));
    // The server opens one only to answer `read` (`ferry cat`).
    t.max_concurrent_uni_streams(VarInt::from_u32(2));
    if let Ok(idle) = idle_timeout.try_into() {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(Some((idle_timeout / 3).max(Duration::from_millis(500))));
    t
}

/// Raises the socket buffers; the kernel may clamp them (see docs/operations.md).
pub fn tune_socket(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
}

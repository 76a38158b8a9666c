//! QUIC transport settings and the UDP socket. Flow-control windows bound the memory a
//! connection can make the server hold; socket buffers are raised because the kernel's default
//! (208 KiB) drops packets even on loopback at full speed.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};
use std::sync::Arc;

use ferry_proto::Congestion;
use quinn::congestion::{BbrConfig, ControllerFactory, CubicConfig, NewRenoConfig};
use quinn::{TransportConfig, VarInt};
use tracing::warn;

/// Wanted size of the UDP send and receive buffers.
pub const SOCKET_BUFFER: usize = 4 << 20;
/// Connection receive window before login: room for `hello` (at most one 64 KiB frame) and
/// nothing else. Raised to [`CONNECTION_WINDOW`] at `welcome`.
pub const PRELOGIN_WINDOW: u32 = 128 << 10;
/// Connection receive window once logged in: the most unread data one client can make the
/// server hold, whatever the file size.
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// Receive window of one stream (a chunk stream, or the control stream).
pub const STREAM_WINDOW: u32 = 8 << 20;
/// Unread QUIC datagrams kept per connection. Ferry reads none, but WebTransport clients expect
/// the datagram extension to be on; quinn's default would keep 1.25 MB per connection.
pub const DATAGRAM_BUFFER: usize = 64 << 10;

pub fn server(config: &crate::Config) -> Result<TransportConfig> {
    let mut t = TransportConfig::default();
    t.congestion_controller_factory(match config.congestion {
        Congestion::Cubic => {
            Arc::new(CubicConfig::default()) as Arc<dyn ControllerFactory + Send + Sync>
        }
        // `delay` is a sender's controller; the server sends only control frames.
        Congestion::Bbr | Congestion::Delay => Arc::new(BbrConfig::default()),
        Congestion::NewReno => Arc::new(NewRenoConfig::default()),
    });
    VarInt::from_u64(config.max_streams).context("max_streams too large")?;
    // Before login: the control stream (for a browser also the CONNECT request and HTTP/3's
    // own three unidirectional streams, which it needs at the handshake), and 128 KiB of
    // credit in all. `conn::serve` raises both at `welcome` (chunk streams to `max_streams`,
    // the window to 32 MiB); no stream is read before then but the ones named here.
    t.max_concurrent_uni_streams(VarInt::from_u64(crate::web::H3_UNI_STREAMS).expect("small"));
    t.max_concurrent_bidi_streams(VarInt::from_u32(2));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(PRELOGIN_WINDOW));
    t.send_window(4 << 20);
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    t.max_idle_timeout(Some(
        config
            .idle_timeout
            .try_into()
            .context("idle timeout too large")?,
    ));
    t.keep_alive_interval(Some(Duration::from_secs(5).min(config.idle_timeout / 3)));
    Ok(t)
}

/// Binds a UDP socket with large buffers, warning when the kernel clamps them.
pub fn bind_udp(addr: SocketAddr) -> Result<UdpSocket> {
    let socket = UdpSocket::bind(addr).with_context(|| format!("failed to bind UDP {addr}"))?;
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    // Linux reports twice the size it was given; half of the answer is what was granted.
    let granted = sock.recv_buffer_size().unwrap_or(0) / 2;
    if granted < SOCKET_BUFFER {
        warn!(
            granted,
            wanted = SOCKET_BUFFER,
            "the kernel limited the UDP receive buffer; raise net.core.rmem_max (see docs/operations.md)"
        );
    }
    Ok(socket)
}

//! `ferry ping`: the way to the server, its version and limits, whether the token works.

use std::time::{Duration, Instant};

use ferry_client::progress;
use ferry_client::{Client, ClientError, Options};
use ferry_proto::units::human;
use ferry_proto::Frame;

use crate::report;

/// `ferry ping`: connects (timing the handshake and login), then measures `count` round trips
/// with `ping` requests on the control stream.
pub(crate) async fn ping(opts: Options, count: u32, json: bool) -> u8 {
    let server = opts.target.server.clone();
    let endpoint = match Client::endpoint_for(&opts) {
        Ok(e) => e,
        Err(e) => return report("cannot start", &e),
    };
    let started = Instant::now();
    let conn = match endpoint.connect(&opts.target).await {
        Ok(c) => c,
        Err(e) => return report(&format!("ping {server}"), &e),
    };
    let handshake = started.elapsed();
    let mut rtts = Vec::new();
    for _ in 0..count {
        let sent = Instant::now();
        match conn.request(|req| Frame::Ping { req }).await {
            Ok(Frame::Pong { .. }) => rtts.push(sent.elapsed()),
            Ok(other) => {
                let e = ClientError::Protocol(format!("expected pong, got {}", other.kind()));
                return report(&format!("ping {server}"), &e);
            }
            Err(e) => return report(&format!("ping {server}"), &e),
        }
        if rtts.len() < count as usize {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    conn.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let min = rtts.iter().min().copied().unwrap_or_default();
    let max = rtts.iter().max().copied().unwrap_or_default();
    let avg = rtts.iter().sum::<Duration>() / rtts.len().max(1) as u32;
    let l = conn.limits;
    if json {
        let line = serde_json::json!({
            "server": server,
            "software": conn.server,
            "protocol": ferry_proto::PROTOCOL_VERSION,
            "owner": conn.owner,
            "service": conn.service,
            "token": "accepted",
            "handshake_ms": ms(handshake),
            "rtt_ms": {"min": ms(min), "avg": ms(avg), "max": ms(max), "count": rtts.len()},
            "quic_rtt_ms": ms(conn.quic().rtt()),
            "limits": l,
        });
        out!("{line}");
        return 0;
    }
    out!(
        "{server}: {} (protocol {}), token accepted for {:?}",
        if conn.server.is_empty() {
            "ferryd"
        } else {
            &conn.server
        },
        ferry_proto::PROTOCOL_VERSION,
        conn.owner
    );
    out!("service: {}", conn.service);
    out!("connect + TLS + login: {:.1} ms", ms(handshake));
    out!(
        "round trips: {} probes, min {:.2} / avg {:.2} / max {:.2} ms",
        rtts.len(),
        ms(min),
        ms(avg),
        ms(max)
    );
    let or_none = |v: u64, f: &dyn Fn(u64) -> String| {
        if v == 0 {
            "none".to_owned()
        } else {
            f(v)
        }
    };
    out!(
        "limits: files up to {}, chunks {} to {}, {} chunk streams, {} uploads in progress, quota {}, expiry {}",
        human(l.max_file_size),
        human(l.min_chunk_size),
        human(l.max_chunk_size),
        l.max_streams,
        or_none(l.max_uploads, &|v| v.to_string()),
        or_none(l.quota, &human),
        or_none(l.expire_after, &|v| progress::duration(Duration::from_secs(v))),
    );
    0
}

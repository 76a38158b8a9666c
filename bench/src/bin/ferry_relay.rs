//! `ferry-relay`: the misbehaving UDP relay of the tests (`ferry_tests::relay`) as a program,
//! for benchmarks and for trying Ferry over a bad link by hand. Runs until killed or until
//! `--for` seconds pass.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ferry_tests::relay::{Impairment, Relay};

#[derive(Parser)]
#[command(about = "UDP relay with delay, loss, reordering and a bandwidth cap (loopback testing)")]
struct Args {
    /// Where the real server listens.
    #[arg(long)]
    to: SocketAddr,
    /// One-way delay in milliseconds, applied in both directions.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Packet loss probability in both directions (0.01 = 1 %).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability a packet is held back and reordered.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Bandwidth cap in bytes per second, each direction.
    #[arg(long)]
    rate: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many seconds.
    #[arg(long = "for", default_value_t = 3600)]
    run_for: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let link = Impairment {
        rate: args.rate,
        ..Impairment::lossy(args.delay_ms, args.loss, args.reorder)
    };
    let relay = Relay::start(args.to, link, link, args.seed).await;
    println!("relay on {}", relay.addr);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(args.run_for)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let [(up, up_lost), (down, down_lost)] = relay.counts();
    eprintln!("relay: forwarded {up} up ({up_lost} dropped), {down} down ({down_lost} dropped)");
}

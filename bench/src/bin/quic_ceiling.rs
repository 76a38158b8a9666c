//! `quic-ceiling`: the stack's ceiling for the benchmark. A minimal quinn receiver and sender
//! with Ferry's transport settings that move a file's bytes file to file: one stream per 4 MiB
//! piece (8 at once, like Ferry's window), each prefixed by its 8-byte offset, written with
//! `pwrite` — no protocol, no hashing, no sync. What Ferry adds on top is measured against it.

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferry_proto::Congestion;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{TransportConfig, VarInt};

const PIECE: u64 = 4 << 20;
const READ_BUF: usize = 256 << 10;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive one file of --size bytes into --out, print the elapsed time, exit.
    Recv {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        size: u64,
        #[arg(long, default_value = "bbr")]
        congestion: Congestion,
    },
    /// Send --file to --server.
    Send {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        #[arg(long, default_value = "bbr")]
        congestion: Congestion,
    },
}

fn transport(congestion: Congestion) -> TransportConfig {
    // The same windows as Ferry's server and client.
    let mut t = TransportConfig::default();
    t.congestion_controller_factory(ferry_client::transport_controller(congestion, None));
    t.max_concurrent_uni_streams(VarInt::from_u32(32));
    t.stream_receive_window(VarInt::from_u32(8 << 20));
    t.receive_window(VarInt::from_u32(32 << 20));
    t.send_window(16 << 20);
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t
}

fn socket(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    Ok(socket)
}

fn main() -> Result<()> {
    // The same allocator setting as ferryd and ferry, so the ceiling is measured like them.
    // SAFETY: called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<()> {
    match Args::parse().command {
        Command::Recv {
            listen,
            out,
            size,
            congestion,
        } => recv(listen, out, size, congestion).await,
        Command::Send {
            server,
            file,
            parallel,
            congestion,
        } => send(server, file, parallel, congestion).await,
    }
}

async fn recv(listen: SocketAddr, out: PathBuf, size: u64, congestion: Congestion) -> Result<()> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .map_err(anyhow::Error::msg)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
    tls.alpn_protocols = vec![b"ceiling".to_vec()];
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport(congestion)));
    let endpoint = quinn::Endpoint::new(
        Default::default(),
        Some(config),
        socket(listen)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    println!("listening on {}", endpoint.local_addr()?);
    let file = Arc::new(
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&out)?,
    );
    file.set_len(size)?;
    let conn = endpoint.accept().await.context("no connection")?.await?;
    let started = Instant::now();
    let mut received = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while received < size {
        tokio::select! {
            stream = conn.accept_uni(), if tasks.len() < 64 => {
                let mut stream = stream?;
                let file = file.clone();
                tasks.spawn(async move {
                    let mut header = [0u8; 8];
                    stream.read_exact(&mut header).await?;
                    let mut offset = u64::from_be_bytes(header);
                    let mut total = 0u64;
                    let mut buf = vec![0u8; READ_BUF];
                    loop {
                        let mut filled = 0;
                        while filled < buf.len() {
                            match stream.read(&mut buf[filled..]).await? {
                                Some(n) => filled += n,
                                None => break,
                            }
                        }
                        if filled == 0 {
                            break;
                        }
                        let f = file.clone();
                        buf = tokio::task::spawn_blocking(move || f.write_all_at(&buf[..filled], offset).map(|()| buf)).await??;
                        offset += filled as u64;
                        total += filled as u64;
                    }
                    anyhow::Ok(total)
                });
            }
            Some(done) = tasks.join_next() => received += done??,
        }
    }
    println!(
        "received {received} bytes in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(())
}

async fn send(
    server: SocketAddr,
    path: PathBuf,
    parallel: usize,
    congestion: Congestion,
) -> Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(ferry_client::trust::PinVerifier::new(
        None,
        provider.clone(),
    ));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"ceiling".to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport(congestion)));
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()?;
    let endpoint = quinn::Endpoint::new(
        Default::default(),
        None,
        socket(bind)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    let conn = endpoint.connect_with(config, server, "localhost")?.await?;
    let file = Arc::new(File::open(&path)?);
    let size = file.metadata()?.len();
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for start in (0..size).step_by(PIECE as usize) {
        let permit = permits.clone().acquire_owned().await?;
        let (conn, file) = (conn.clone(), file.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let mut stream = conn.open_uni().await?;
            stream.write_all(&start.to_be_bytes()).await?;
            let end = (start + PIECE).min(size);
            let mut offset = start;
            while offset < end {
                let n = (end - offset).min(READ_BUF as u64) as usize;
                let f = file.clone();
                let piece = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, offset)
                        .map(|()| bytes::Bytes::from(buf))
                })
                .await??;
                stream.write_chunk(piece).await?;
                offset += n as u64;
            }
            stream.finish()?;
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    conn.closed().await;
    Ok(())
}

//! `ferryd`: parses arguments, sets up logging, calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferryd",
    version,
    about = "Ferry server: resumable chunked uploads over QUIC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:4433", env = "FERRYD_LISTEN")]
        listen: SocketAddr,
        /// Data directory: database, staging files, published files, certificate, tokens.
        #[arg(long, default_value = "./ferry-data", env = "FERRYD_DATA")]
        data: PathBuf,
        /// Idle timeout in seconds: a connection silent this long is closed.
        #[arg(long, default_value_t = 30)]
        idle_timeout: u64,
        /// Free disk space kept for the database (e.g. 64M): uploads that would eat into it are
        /// refused, and commits pause while free space is below it.
        #[arg(long, default_value = "64M", value_parser = ferry_proto::units::parse_size)]
        min_free_space: u64,
        /// Remove unfinished uploads that made no progress for this long (e.g. 7d, 12h; 0: never).
        #[arg(long, default_value = "7d", value_parser = ferry_proto::units::parse_duration)]
        expire_after: std::time::Duration,
        /// Cut off a stream that stalls inside a frame or a chunk, or a client that leaves the
        /// server's replies unread, after this long (e.g. 30s).
        #[arg(long, default_value = "30s", value_parser = ferry_proto::units::parse_duration)]
        stream_timeout: std::time::Duration,
        /// After an unclean stop, re-verify staged chunks in the background at most this fast
        /// (bytes per second, e.g. 200M; 0: no limit). The server listens at once regardless.
        #[arg(long, default_value = "200M", value_parser = parse_rate)]
        verify_rate: u64,
        /// Uploads in progress per token (0: no limit).
        #[arg(long, default_value_t = 16)]
        max_uploads: u64,
        /// Stored plus staged bytes per token, e.g. 500G (default: no quota).
        #[arg(long, value_parser = ferry_proto::units::parse_size)]
        quota: Option<u64>,
        /// Logged-in connections at once, in total.
        #[arg(long, default_value_t = 256)]
        max_connections: usize,
        /// Logged-in connections at once from one client IP address.
        #[arg(long, default_value_t = 16)]
        max_connections_per_ip: usize,
        /// Connections still logging in (handshake and hello), in total; when full, the oldest
        /// is dropped. A budget apart, so they never take logged-in connections' places.
        #[arg(long, default_value_t = 64)]
        max_pending_logins: usize,
        /// Connections still logging in from one client IP address.
        #[arg(long, default_value_t = 8)]
        max_pending_logins_per_ip: usize,
        /// Congestion controller: cubic, bbr or newreno.
        #[arg(long, default_value_t = ferry_proto::Congestion::default())]
        congestion: ferry_proto::Congestion,
        /// Let `ferry upload --dedup` publish a file by linking to another token's file of the
        /// same content. Off by default: a match tells the client that someone has that content.
        #[arg(long)]
        dedup_across_owners: bool,
        /// PEM certificate chain to present instead of the generated one (needs --key).
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// PEM private key of --cert.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Re-hash every staged durable chunk against its digest, with the server stopped, and
    /// forget those that no longer match (they are re-sent). Prints what it found.
    Verify {
        #[arg(long, default_value = "./ferry-data", env = "FERRYD_DATA")]
        data: PathBuf,
    },
    /// Print the SHA-256 fingerprint of the server's certificate, for clients to pin.
    Fingerprint {
        #[arg(long, default_value = "./ferry-data", env = "FERRYD_DATA")]
        data: PathBuf,
    },
    /// Manage bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[arg(
            long,
            default_value = "./ferry-data",
            env = "FERRYD_DATA",
            global = true
        )]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for NAME and print it (only its hash is stored).
    Add { name: String },
    /// List token names.
    List,
    /// Remove NAME's token.
    Revoke { name: String },
}

fn main() -> ExitCode {
    // glibc gives every thread that allocates its own heap arena; the blocking pool's threads
    // each hash and write 256 KiB buffers, and per-thread arenas kept tens of MiB of freed
    // buffers resident. Two arenas are plenty for this workload.
    // SAFETY: called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,sled=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferryd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            data,
            idle_timeout,
            min_free_space,
            expire_after,
            stream_timeout,
            verify_rate,
            max_uploads,
            quota,
            max_connections,
            max_connections_per_ip,
            max_pending_logins,
            max_pending_logins_per_ip,
            congestion,
            dedup_across_owners,
            cert,
            key,
        } => {
            let mut config = ferry_server::Config::new(data, listen);
            config.idle_timeout = std::time::Duration::from_secs(idle_timeout.max(1));
            config.cert = cert.zip(key);
            config.min_free_space = min_free_space;
            config.congestion = congestion;
            config.expire_after = expire_after;
            config.stream_timeout = stream_timeout.max(std::time::Duration::from_secs(1));
            config.verify_rate = verify_rate;
            config.max_uploads_per_owner = max_uploads;
            config.quota_per_owner = quota.unwrap_or(0);
            config.max_connections = max_connections.max(1);
            config.max_connections_per_ip = max_connections_per_ip.max(1);
            config.max_pending_logins = max_pending_logins.max(1);
            config.max_pending_logins_per_ip = max_pending_logins_per_ip.max(1);
            config.dedup_across_owners = dedup_across_owners;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let server = ferry_server::Server::bind(config)?;
                let report = server.open_report();
                let fixed = report.reconciled;
                if !report.clean || fixed.any() {
                    tracing::warn!(
                        clean = report.clean,
                        uploads_to_verify = report.to_verify.len(),
                        bytes_to_verify = report.to_verify.iter().map(|(_, b)| b).sum::<u64>(),
                        published = fixed.published,
                        rolled_back = fixed.rolled_back,
                        orphans_removed = fixed.orphans,
                        leftovers_removed = fixed.leftovers,
                        lost = fixed.lost,
                        "recovered from an unclean stop"
                    );
                }
                eprintln!(
                    "ferryd: listening on {} (certificate {})",
                    server.local_addr()?,
                    server.fingerprint()
                );
                server.run(shutdown_signal()).await
            })
        }
        Command::Verify { data } => {
            let (store, _) = ferry_server::Store::open(&data, 0).map_err(|e| {
                e.context(format!(
                    "cannot open {} (is ferryd running on it?)",
                    data.display()
                ))
            })?;
            let uploads = store.to_verify()?;
            let mut found = ferry_server::store::Verified::default();
            for (id, _) in &uploads {
                found += store.verify_upload(*id, |_| {})?;
            }
            // Everything staged was just verified: the next start need not do it again.
            store.mark_clean()?;
            println!(
                "verified {} uploads: {} chunks ({}); {} no longer matched and will be re-sent",
                uploads.len(),
                found.chunks,
                ferry_proto::units::human(found.bytes),
                found.mismatched
            );
            Ok(())
        }
        Command::Fingerprint { data } => {
            println!("{}", ferry_server::tls::stored_fingerprint(&data)?);
            Ok(())
        }
        Command::Token { command, data } => {
            // `add` creates the directory (durably) when it writes the tokens file.
            let tokens = ferry_server::Tokens::new(&data);
            match command {
                TokenCommand::Add { name } => println!("{}", tokens.add(&name)?),
                TokenCommand::List => {
                    for entry in tokens.entries()? {
                        println!("{}", entry.name);
                    }
                }
                TokenCommand::Revoke { name } => tokens.revoke(&name)?,
            }
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `--verify-rate`: a size per second; `0` for no limit.
fn parse_rate(text: &str) -> Result<u64, String> {
    match text.trim() {
        "0" => Ok(0),
        other => ferry_proto::units::parse_size(other),
    }
}

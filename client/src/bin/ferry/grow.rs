//! `ferry upload --follow FILE`, `ferry upload - --name NAME` and `ferry cat`: uploads of
//! sources that grow, and reading an upload back while it arrives (`ferry_client::grow`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_client::grow::{Growing, Outcome, Source, EXIT_STREAM_LOST};
use ferry_client::progress::Tracker;
use ferry_client::{Client, ClientError, Options, Shared};
use ferry_proto::units::human;

use crate::cli::UploadArgs;
use crate::report;

/// Whether the command line asks for a growing upload: `--follow`, or `-` for standard input.
pub(crate) fn is_growing(paths: &[PathBuf], args: &UploadArgs) -> bool {
    args.follow || paths.iter().any(|p| p.as_os_str() == "-")
}

pub(crate) async fn upload(
    opts: Options,
    paths: &[PathBuf],
    args: &UploadArgs,
    tracker: Arc<Tracker>,
) -> u8 {
    let job = match plan(&opts, paths, args) {
        Ok(job) => job,
        Err(e) => return report("cannot upload", &e),
    };
    let shown = match &job.source {
        Source::Follow { path, .. } => path.display().to_string(),
        Source::Stdin { .. } => format!("standard input ({})", job.name),
    };
    let endpoint = match Client::endpoint_for(&opts) {
        Ok(e) => e,
        Err(e) => return report("cannot start", &e),
    };
    let shared = Shared {
        tracker: tracker.clone(),
        limiter: opts
            .limit_rate
            .map(|r| Arc::new(ferry_client::rate::RateLimiter::new(r))),
        ..Shared::default()
    };
    let mut client = Client::with(opts, endpoint, shared);
    let mut signal = 0;
    let outcome = tokio::select! {
        outcome = client.upload_growing(job) => outcome,
        code = stopped() => {
            signal = code;
            Err(ClientError::Interrupted)
        }
    };
    client.close().await;
    match outcome {
        Ok(Outcome::Published(r)) => {
            if args.json {
                out!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                let secs = r.elapsed_ms as f64 / 1000.0;
                tracker.note(&format!(
                    "ferry: {shown}: {} published as {:?} in {secs:.1} s ({} sent{})",
                    human(r.size),
                    r.file_name,
                    human(r.bytes_sent),
                    if r.bytes_skipped > 0 {
                        format!(", {} were already on the server", human(r.bytes_skipped))
                    } else {
                        String::new()
                    }
                ));
            }
            0
        }
        Ok(Outcome::StreamLost {
            upload_id,
            held,
            prefix,
        }) => {
            say!(
                "ferry: {shown}: an earlier `ferry upload -` of this name stopped before its input ended, and a pipe cannot be read again. \
                 The server holds {} of that stream ({} from its start, every byte verified) in unfinished upload {upload_id}; \
                 what the stream carried after that is lost. This run read nothing from its own input. \
                 Discard the kept part with `ferry abort {upload_id}`, or keep it until it expires; run the command again to send a new stream.",
                human(held),
                human(prefix),
            );
            EXIT_STREAM_LOST
        }
        Err(ClientError::Interrupted) => {
            let by = if signal == 143 {
                "stopped by SIGTERM"
            } else {
                "interrupted"
            };
            say!("ferry: {shown}: {by}; everything acknowledged is kept on the server: run the same command again to resume");
            signal
        }
        Err(e) => report(&shown, &e),
    }
}

fn plan(opts: &Options, paths: &[PathBuf], args: &UploadArgs) -> Result<Growing, ClientError> {
    if paths.len() != 1 {
        return Err(ClientError::Usage(
            "--follow and `-` (standard input) upload exactly one source".into(),
        ));
    }
    let path = &paths[0];
    if path.as_os_str() == "-" {
        let Some(name) = args.name.as_deref().filter(|n| !n.trim().is_empty()) else {
            return Err(ClientError::Usage(
                "standard input has no name: pass --name NAME (e.g. --name clip.ts)".into(),
            ));
        };
        let mut parts: Vec<String> = name
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        let name = parts.pop().unwrap_or_default();
        let spool = args
            .spool
            .clone()
            .unwrap_or_else(|| opts.state_dir.join("spool"));
        return Ok(Growing {
            source: Source::Stdin { spool },
            name,
            dir: parts,
            desc: args.desc.clone(),
            progress_every: Duration::from_secs(args.progress_interval),
        });
    }
    if args.name.is_some() {
        return Err(ClientError::Usage(
            "--name names standard input (`ferry upload - --name NAME`); a file is published under its own name".into(),
        ));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ClientError::Usage(format!("{} is not a file", path.display())))?;
    Ok(Growing {
        source: Source::Follow {
            path: path.clone(),
            idle: args.idle.max(Duration::from_secs(1)),
            ignore_close: args.idle_only,
        },
        name,
        dir: Vec::new(),
        desc: args.desc.clone(),
        progress_every: Duration::from_secs(args.progress_interval),
    })
}

/// Resolves when Ctrl-C or SIGTERM arrives, with the exit code it means (130, 143).
async fn stopped() -> u8 {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => 130,
        _ = term.recv() => 143,
    }
}

/// Bytes asked for per `read`.
const READ_STEP: u64 = ferry_proto::MAX_READ;
/// How often `cat --follow` asks again when nothing new is acknowledged.
const POLL: Duration = Duration::from_millis(250);

/// `ferry cat TARGET [--follow] [--output FILE]`.
pub(crate) async fn cat(
    client: &mut Client,
    target: String,
    follow: bool,
    output: Option<PathBuf>,
) -> Result<(), (String, ClientError)> {
    let failed = |e| (format!("cat {target}"), e);
    let id = resolve(client, &target).await.map_err(failed)?;
    let mut out: Box<dyn std::io::Write> = match &output {
        Some(path) => Box::new(std::fs::File::create(path).map_err(|e| {
            failed(ClientError::local(
                format!("cannot write {}", path.display()),
                e,
            ))
        })?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut offset = 0;
    let mut lost_since: Option<std::time::Instant> = None;
    let mut wait = Duration::from_millis(250);
    loop {
        let read = match client.read_upload(&id, offset, READ_STEP).await {
            Ok(read) => {
                lost_since = None;
                wait = Duration::from_millis(250);
                read
            }
            // A lost connection or a restarting server: reconnect and go on from `offset`, for
            // up to --reconnect-for (what was written stays written).
            Err(e) if e.is_retryable() => {
                let since = *lost_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= client.options().reconnect_for {
                    return Err(failed(e));
                }
                client.close().await;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => return Err(failed(e)),
        };
        if !read.data.is_empty() {
            if let Err(e) = out.write_all(&read.data) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(failed(ClientError::local("cannot write", e)));
            }
            offset += read.data.len() as u64;
            continue;
        }
        if read.complete || !follow {
            break;
        }
        let _ = out.flush();
        tokio::time::sleep(POLL).await;
    }
    out.flush()
        .map_err(|e| failed(ClientError::local("cannot write", e)))
}

/// An upload id as given, or the newest upload published (or arriving) under that name.
async fn resolve(client: &mut Client, target: &str) -> Result<String, ClientError> {
    let looks_like_id = target.len() == 32 && target.bytes().all(|b| b.is_ascii_hexdigit());
    if looks_like_id {
        return Ok(target.to_owned());
    }
    let wanted = target.trim_start_matches('/');
    let uploads = client.list().await?;
    uploads
        .into_iter()
        .filter(|u| u.file_name == wanted || Path::new(&u.file_name) == Path::new(wanted))
        .max_by_key(|u| (u.state != "complete", u.updated_at))
        .map(|u| u.upload_id)
        .ok_or_else(|| ClientError::Usage(format!("no upload named {target:?} on the server")))
}

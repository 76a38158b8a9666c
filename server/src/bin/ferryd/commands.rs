//! What each `ferryd` command does, once the command line is parsed.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{Cli, Command, S3Command, TokenCommand};
use crate::logging::Relog;
use crate::{parse, Parse};
use ferry_server::cluster::edit_credentials;

pub(crate) fn run(cli: Cli, relog: Relog) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.config()?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let server = ferry_server::Server::bind(config).await?;
                let reloader = server.reloader();
                let mut level = args.log_level.clone();
                // Every handler is installed before "listening on" is printed: a signal that
                // comes right after it must not meet the default action (which terminates).
                let shutdown = shutdown_signal()?;
                let mut hup = signal(SignalKind::hangup())?;
                tokio::spawn(async move {
                    // Bounded by the process: one reload per SIGHUP.
                    while hup.recv().await.is_some() {
                        reload(&reloader, &relog, &mut level);
                    }
                });
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
                        vanished = fixed.vanished,
                        "recovered from an unclean stop"
                    );
                }
                // With JSON logs these are log lines too: every line on stderr is one object.
                let json = args.log_format == "json";
                if let Some(admin) = server.admin_addr() {
                    match json {
                        true => tracing::info!(url = %format!("http://{admin}"), "admin listener"),
                        false => say!("ferryd: admin listener on http://{admin}"),
                    }
                }
                if let Some(web) = server.web_addr() {
                    match json {
                        true => tracing::info!(url = %format!("https://{web}"), "upload page"),
                        false => say!("ferryd: upload page on https://{web} (make links with `ferryd link OWNER`)"),
                    }
                }
                let (addr, fingerprint) = (server.local_addr()?, server.fingerprint().to_owned());
                match json {
                    true => tracing::info!(%addr, certificate = fingerprint, "listening"),
                    false => say!("ferryd: listening on {addr} (certificate {fingerprint})"),
                }
                server.run(shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(args) => {
            out!("{}", args.effective());
            match args.check() {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    say!("ferryd: the server would not start: {e:#}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Verify { place } => {
            let data = existing_state(&place.data)?;
            let (store, _) = ferry_server::Store::open(data, 0).map_err(|e| in_use(e, data))?;
            let uploads = store.to_verify()?;
            let mut found = ferry_server::store::Verified::default();
            for (id, _) in &uploads {
                found += store.verify_upload(*id, |_| {})?;
            }
            // Everything staged was just verified: the next start need not do it again.
            store.mark_clean()?;
            out!(
                "verified {} uploads: {} chunks ({}); {} no longer matched and will be re-sent",
                uploads.len(),
                found.chunks,
                ferry_proto::units::human(found.bytes),
                found.mismatched
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Fingerprint { place, cert } => {
            let fingerprint = match cert {
                Some(cert) => ferry_server::tls::certificate_fingerprint(&cert)?,
                None => ferry_server::tls::stored_fingerprint(existing_state(&place.data)?)?,
            };
            out!("{fingerprint}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            command,
            place,
            store,
        } => {
            if let Some(settings) = store.s3()? {
                return tokens_in_bucket(command, &settings);
            }
            let init = matches!(command, TokenCommand::Add { init: true, .. });
            if !init {
                existing_state(&place.data)?;
            }
            // `add` creates the directory (durably) when it writes the tokens file.
            let tokens = ferry_server::Tokens::new(&place.data);
            match command {
                TokenCommand::Add { name, .. } => out!("{}", tokens.add(&name)?),
                TokenCommand::List => {
                    for entry in tokens.entries()? {
                        out!("{}", entry.name);
                    }
                }
                TokenCommand::Revoke { name } => tokens.revoke(&name)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Link(args) => link(&args),
        Command::S3 { command, store, .. } => {
            let settings = store
                .s3()?
                .context("`ferryd s3` needs --store s3 (and the bucket's options)")?;
            let S3Command::Gc {
                older_than,
                dry_run,
            } = command;
            let runtime = tokio::runtime::Runtime::new()?;
            let orphans = runtime.block_on(async {
                let s3 = ferry_server::store::s3::S3::connect(&settings).await?;
                let now = ferry_server::store::unix_now();
                // 0: every orphan, however new.
                let cutoff = match older_than.as_secs() {
                    0 => u64::MAX,
                    secs => now.saturating_sub(secs),
                };
                s3.gc(cutoff, dry_run).await
            })?;
            for (key, what) in &orphans {
                out!("{key}\t{what}");
            }
            let verb = match dry_run {
                true => "found (dry run, nothing removed)",
                false => "removed",
            };
            say!(
                "{verb} {} orphans (multipart uploads and name reservations)",
                orphans.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Uploads { admin, json, .. } => {
            let body = admin.call("GET", "/uploads", "")?;
            if json {
                out!("{body}");
                return Ok(ExitCode::SUCCESS);
            }
            let uploads: Vec<serde_json::Value> =
                serde_json::from_str(&body).context("the admin listener sent something else")?;
            if uploads.is_empty() {
                out!("nothing in progress");
                return Ok(ExitCode::SUCCESS);
            }
            out!(
                "{:<32}  {:<16}  {:>6}  {:>10}  {:<6}  NAME",
                "ID",
                "OWNER",
                "DONE",
                "SIZE",
                "ACTIVE"
            );
            for u in uploads {
                let size = u["size"].as_u64().unwrap_or(0);
                let durable = u["durable_bytes"].as_u64().unwrap_or(0);
                let pct = if size == 0 {
                    100.0
                } else {
                    durable as f64 * 100.0 / size as f64
                };
                out!(
                    "{:<32}  {:<16}  {:>5.1}%  {:>10}  {:<6}  {}",
                    u["upload_id"].as_str().unwrap_or(""),
                    u["owner"].as_str().unwrap_or(""),
                    pct,
                    ferry_proto::units::human(size),
                    if u["active"].as_bool().unwrap_or(false) {
                        "yes"
                    } else {
                        "no"
                    },
                    u["file_name"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Notice { text, admin, .. } => {
            match text {
                Some(text) => admin.call("PUT", "/notice", &text)?,
                None => admin.call("DELETE", "/notice", "")?,
            };
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Help { command } => {
            let mut root = Cli::command();
            match command {
                None => root.print_help()?,
                Some(name) => match root.find_subcommand_mut(&name) {
                    Some(sub) => sub.print_help()?,
                    None => {
                        say!("ferryd: no command {name:?}; the commands are serve, check-config, verify, fingerprint, token, uploads, notice, man, help");
                        return Ok(ExitCode::from(2));
                    }
                },
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `ferryd token …` with --store s3: the bucket's token file, changed through a scratch copy.
/// Read, change, write: two admins changing tokens at the same moment can lose one change
/// (docs/scale-out.md).
fn tokens_in_bucket(
    command: TokenCommand,
    settings: &ferry_server::store::s3::S3Settings,
) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let s3 = ferry_server::store::s3::S3::connect(settings).await?;
        let kind = ferry_server::store::s3::Kind::Tokens;
        match command {
            TokenCommand::Add { name, .. } => {
                let token =
                    edit_credentials(&s3, kind, |dir| ferry_server::Tokens::new(dir).add(&name))
                        .await?;
                // Printed only once the bucket holds it.
                out!("{token}");
            }
            TokenCommand::List => {
                let names =
                    edit_credentials(&s3, kind, |dir| ferry_server::Tokens::new(dir).entries())
                        .await?;
                for entry in names {
                    out!("{}", entry.name);
                }
            }
            TokenCommand::Revoke { name } => {
                edit_credentials(&s3, kind, |dir| {
                    ferry_server::Tokens::new(dir).revoke(&name)
                })
                .await?
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `data` if it holds server state (a database, tokens or a certificate); otherwise an error
/// that says which directory was looked at and how to point at the right one — so that a
/// command run from another directory does not silently create a new, unused one.
fn existing_state(data: &Path) -> Result<&Path> {
    let state = ["db", "tokens", "tls"]
        .iter()
        .any(|n| data.join(n).exists());
    if state {
        return Ok(data);
    }
    anyhow::bail!(
        "{} holds no ferryd state (no db, tokens or tls inside); point at the server's data \
         directory with --data DIR, FERRYD_DATA or --config FILE (for a new installation: \
         `ferryd token add NAME --init`)",
        data.display()
    )
}

/// The database lock held by a running server, said as such.
fn in_use(e: anyhow::Error, data: &Path) -> anyhow::Error {
    let locked = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::WouldBlock)
            || c.to_string().contains("WouldBlock")
    });
    if locked {
        anyhow::anyhow!(
            "{} is in use by a running ferryd (its database is locked); stop it first",
            data.display()
        )
    } else {
        e.context(format!("cannot open {}", data.display()))
    }
}

/// SIGHUP: reads the command line, environment and config file again and applies what a
/// running server can change (limits, hooks, dedup, log level); never exits. A config that
/// does not parse is logged and changes nothing. Tokens need no reload: they are read at
/// every connection, and revocations apply within 100 ms.
fn reload(reloader: &ferry_server::Reloader, relog: &Relog, level: &mut String) {
    let args = match parse() {
        Ok(Cli {
            command: Command::Serve(args),
        }) => args,
        Ok(_) => return,
        Err(Parse::Config(e)) => {
            tracing::warn!(error = %e, "reload refused: the config file is invalid; nothing changed");
            return;
        }
        Err(Parse::Clap(e)) => {
            let first = e.render().to_string();
            let first = first.lines().next().unwrap_or("").to_owned();
            tracing::warn!(
                error = first,
                "reload refused: the settings are invalid; nothing changed"
            );
            return;
        }
    };
    match args.config() {
        Ok(config) => {
            reloader.reload(&config);
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "reload refused: the settings are invalid; nothing changed");
            return;
        }
    }
    if args.log_level != *level {
        match relog(&args.log_level) {
            Ok(()) => {
                tracing::info!(
                    from = level.as_str(),
                    to = args.log_level,
                    "log level changed"
                );
                *level = args.log_level.clone();
            }
            Err(e) => tracing::warn!(error = %e, "log level not changed"),
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// `ferryd link`: make, list or revoke upload links in the data directory.
fn link(args: &crate::cli::LinkArgs) -> Result<ExitCode> {
    existing_state(&args.place.data)?;
    let said = match args.store.s3()? {
        // The service's links live in the bucket: the same command edits them there.
        Some(settings) => tokio::runtime::Runtime::new()?.block_on(async {
            let s3 = ferry_server::store::s3::S3::connect(&settings).await?;
            let kind = ferry_server::store::s3::Kind::Links;
            edit_credentials(&s3, kind, |dir| link_in(args, dir)).await
        })?,
        None => link_in(args, &args.place.data)?,
    };
    for (stdout, line) in said {
        match stdout {
            true => out!("{line}"),
            false => say!("{line}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ferryd link` on the links file of `dir`: the lines to print (`true`: on stdout), printed by
/// the caller only once the change is saved (in the bucket, with `--store s3`).
fn link_in(args: &crate::cli::LinkArgs, dir: &Path) -> Result<Vec<(bool, String)>> {
    let mut said = Vec::new();
    let links = ferry_server::links::Links::new(dir);
    if args.list {
        let now = ferry_server::store::unix_now();
        use ferry_proto::units::{human, human_duration};
        for link in links.entries()? {
            let size = match link.max_size {
                0 => "no size bound".to_owned(),
                n => format!("up to {}", human(n)),
            };
            let files = match link.max_files {
                0 => "no file bound".to_owned(),
                1 => "up to 1 file".to_owned(),
                n => format!("up to {n} files"),
            };
            let expires = match link.expires_at {
                0 => "never expires".to_owned(),
                t if t <= now => format!("expired {} ({} ago)", utc(t), human_duration(now - t)),
                t => format!("expires {} (in {})", utc(t), human_duration(t - now)),
            };
            match &link.read {
                Some(upload) => said.push((
                    true,
                    format!(
                        "{}  {}  {expires}, reads upload {upload}",
                        link.id, link.owner
                    ),
                )),
                None => said.push((
                    true,
                    format!("{}  {}  {expires}, {size}, {files}", link.id, link.owner),
                )),
            }
        }
        return Ok(said);
    }
    if let Some(which) = &args.revoke {
        let link = links.revoke(which)?;
        said.push((false, format!("revoked link {} of {}", link.id, link.owner)));
        return Ok(said);
    }
    let owner = args.owner.as_deref().context("name the owner")?;
    // The address given, else the one the server recorded when its web listener started.
    let recorded = std::fs::read_to_string(args.place.data.join(ferry_server::WEB_URL_FILE))
        .ok()
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty());
    let base = match (&args.web_url, recorded, args.web_listen) {
        (Some(url), _, _) => url.trim_end_matches('/').to_owned(),
        (None, Some(url), _) => url,
        (None, None, Some(listen)) => {
            let host = gethostname_or_localhost();
            format!("https://{host}:{}", listen.port())
        }
        (None, None, None) => anyhow::bail!(
            "the link needs the web listener's address, and the server has not recorded one: start `ferryd serve` with web-listen (it records its address in {}), or pass --web-url",
            args.place.data.join(ferry_server::WEB_URL_FILE).display()
        ),
    };
    let expires_at = match args.expires.as_secs() {
        0 => 0,
        secs => ferry_server::store::unix_now() + secs,
    };
    if let Some(upload) = &args.read {
        let (link, grant) = links.add_read(owner, expires_at, upload)?;
        let path = format!("/{}/", args.upload_path.trim_matches('/'));
        said.push((
            true,
            format!(
                "{base}{path}{}?grant={grant}",
                link.read.as_deref().unwrap_or(upload)
            ),
        ));
        said.push((false, format!(
            "read link {} for {owner}'s upload {upload}: only this URL opens it (it is not stored); revoke with `ferryd link --revoke {}`",
            link.id, link.id
        )));
        return Ok(said);
    }
    let (link, grant) = links.add(owner, expires_at, args.max_size, args.max_files)?;
    said.push((true, format!("{base}/u/{grant}")));
    said.push((false, format!(
        "link {} for {owner}: only this URL opens it (it is not stored); revoke with `ferryd link --revoke {}`",
        link.id, link.id
    )));
    Ok(said)
}

/// Unix seconds as `2026-12-10 07:00 UTC`.
fn utc(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map(|t| {
            format!(
                "{}-{:02}-{:02} {:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_else(|| secs.to_string())
}

fn gethostname_or_localhost() -> String {
    ferry_server::tls::host_name().unwrap_or_else(|| "localhost".to_owned())
}

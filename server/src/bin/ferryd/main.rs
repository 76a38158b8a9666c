//! `ferryd`: parses arguments (and the config file), sets up logging, calls the library.

/// Prints on stderr, ignoring a closed stderr (a service whose log pipe went away must not
/// panic).
/// Prints a line on stdout. A closed stdout (`ferryd check-config | head -1`) is a normal end:
/// the program exits 0 at once instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod admin;
mod cli;
mod commands;
mod config;
mod logging;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
use commands::run;
use logging::init_logging;

fn main() -> ExitCode {
    // glibc gives every thread that allocates its own heap arena; the blocking pool's threads
    // each hash and write 256 KiB buffers, and per-thread arenas kept tens of MiB of freed
    // buffers resident. Two arenas are plenty for this workload.
    // SAFETY: called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = match parse() {
        Ok(cli) => cli,
        Err(Parse::Clap(e)) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
        Err(Parse::Config(e)) => {
            say!("ferryd: {e}");
            return ExitCode::from(2);
        }
    };
    let (json, level) = match &cli.command {
        Command::Serve(a) => (a.log_format == "json", a.log_level.as_str()),
        _ => (false, "info,quinn=warn,sled=warn"),
    };
    let relog = match init_logging(json, level) {
        Ok(relog) => relog,
        Err(e) => {
            say!("ferryd: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cli, relog) {
        Ok(code) => code,
        Err(e) => {
            say!("ferryd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) enum Parse {
    Clap(clap::Error),
    Config(config::ConfigError),
}

/// The command line with the config file's settings merged in: the file's flags go right
/// after the subcommand's name, before the command line's own, so that those win.
pub(crate) fn parse() -> Result<Cli, Parse> {
    let raw: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::try_parse_from(&raw).map_err(Parse::Clap)?;
    let place = match &cli.command {
        Command::Serve(a) | Command::CheckConfig(a) => &a.place,
        Command::Link(a) => &a.place,
        Command::Verify { place }
        | Command::Fingerprint { place, .. }
        | Command::Token { place, .. }
        | Command::S3 { place, .. }
        | Command::Uploads { place, .. }
        | Command::Notice { place, .. } => place,
        Command::Help { .. } | Command::Man { .. } => return Ok(cli),
    };
    let Some(file) = place.config.clone() else {
        return Ok(cli);
    };
    let root = Cli::command();
    let serve = root
        .find_subcommand("serve")
        .expect("serve is a subcommand");
    let flags = config::flags_from_file(&file, serve).map_err(Parse::Config)?;
    let (name, sub) = match &cli.command {
        Command::Serve(_) => ("serve", serve.clone()),
        Command::CheckConfig(_) => ("check-config", serve.clone()),
        Command::Verify { .. } => (
            "verify",
            root.find_subcommand("verify").expect("verify").clone(),
        ),
        Command::Fingerprint { .. } => (
            "fingerprint",
            root.find_subcommand("fingerprint")
                .expect("fingerprint")
                .clone(),
        ),
        Command::Token { .. } => (
            "token",
            root.find_subcommand("token").expect("token").clone(),
        ),
        Command::S3 { .. } => ("s3", root.find_subcommand("s3").expect("s3").clone()),
        Command::Link(_) => ("link", root.find_subcommand("link").expect("link").clone()),
        Command::Uploads { .. } => (
            "uploads",
            root.find_subcommand("uploads").expect("uploads").clone(),
        ),
        Command::Notice { .. } => (
            "notice",
            root.find_subcommand("notice").expect("notice").clone(),
        ),
        Command::Help { .. } | Command::Man { .. } => unreachable!("returned above"),
    };
    // Other subcommands take only the keys they have (data, cert): the rest is serve's.
    let flags: Vec<OsString> = flags
        .into_iter()
        .filter(|flag| {
            let text = flag.to_string_lossy();
            let long = text
                .trim_start_matches("--")
                .split('=')
                .next()
                .unwrap_or("");
            sub.get_arguments().any(|a| a.get_long() == Some(long))
        })
        .collect();
    // A bad value in the file is reported as the file's, not as a command-line error.
    let alone: Vec<OsString> = ["ferryd".into(), name.into()]
        .into_iter()
        .chain(flags.iter().cloned())
        .collect();
    // Arguments the file cannot give (`token add NAME`, `link OWNER`, `notice TEXT`) come from
    // the command line: their absence here is not the file's fault.
    {
        if let Err(e) = Cli::try_parse_from(&alone) {
            let missing = matches!(
                e.kind(),
                clap::error::ErrorKind::MissingRequiredArgument
                    | clap::error::ErrorKind::MissingSubcommand
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if e.use_stderr() && !missing {
                return Err(Parse::Config(config::ConfigError {
                    file: file.display().to_string(),
                    message: e
                        .render()
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim_start_matches("error: ")
                        .to_owned(),
                }));
            }
        }
    }
    let at = raw
        .iter()
        .position(|a| a == name)
        .expect("the subcommand was parsed from these arguments");
    let merged: Vec<OsString> = raw[..=at]
        .iter()
        .cloned()
        .chain(flags)
        .chain(raw[at + 1..].iter().cloned())
        .collect();
    Cli::try_parse_from(&merged).map_err(Parse::Clap)
}

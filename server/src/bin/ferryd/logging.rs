//! `ferryd`'s logs: text or JSON on stderr, colour only on a terminal, a filter a reload
//! can change.

use anyhow::Result;

/// Sets a new log filter (a reload's `log-level`).
pub(crate) type Relog = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;

/// Logs on stderr: text, coloured only when stderr is a terminal and `NO_COLOR` is unset, or
/// JSON lines. The filter is `RUST_LOG` if set, else `level` (`--log-level`); an invalid one is
/// an error, not silently ignored. Returns how to change the filter later (none under
/// `RUST_LOG`, which a running process cannot see change).
pub(crate) fn init_logging(json: bool, level: &str) -> Result<Relog> {
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var("RUST_LOG").ok();
    let filter = match &from_env {
        Some(text) => EnvFilter::try_new(text)
            .map_err(|e| anyhow::anyhow!("invalid RUST_LOG {text:?}: {e}"))?,
        None => EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("invalid --log-level {level:?}: {e}"))?,
    };
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // A failed write of a log line is dropped: tracing-subscriber's own report of it goes
    // through `eprintln!`, which panics when stderr is a closed pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .log_internal_errors(false);
    let set: Relog = if json {
        let builder = builder.json().with_filter_reloading();
        let handle = builder.reload_handle();
        builder.init();
        Box::new(move |level| {
            let filter = EnvFilter::try_new(level)?;
            Ok(handle.reload(filter)?)
        })
    } else {
        let builder = builder.with_filter_reloading();
        let handle = builder.reload_handle();
        builder.init();
        Box::new(move |level| {
            let filter = EnvFilter::try_new(level)?;
            Ok(handle.reload(filter)?)
        })
    };
    if from_env.is_some() {
        return Ok(Box::new(|_| {
            tracing::info!("RUST_LOG is set: the log filter stays as it was");
            Ok(())
        }));
    }
    Ok(set)
}

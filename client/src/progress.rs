//! Progress: on a terminal, a bar of durable bytes (what the server acknowledged), rate and
//! ETA; elsewhere (nohup, a log file, a service), one plain line every interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::units::human;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(visible: bool, total: u64, name: &str) -> ProgressBar {
    if !visible || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30.cyan/blue}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(name.to_owned());
    bar
}

/// Whether progress is shown as plain lines: stderr is not a terminal.
pub fn plain() -> bool {
    !std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// Prints, every `every`, one line for the upload of `name`: the share of the file safe on the
/// server (acknowledged: `bar`'s position, kept even when the bar is hidden), the bytes this
/// run sent and the send rate over the last interval. Stops when the handle is aborted.
pub fn lines(
    every: Duration,
    name: String,
    total: u64,
    sent: Arc<AtomicU64>,
    bar: ProgressBar,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut before = sent.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(every).await;
            let now = sent.load(Ordering::Relaxed);
            let safe = bar.position().min(total);
            let pct = (safe * 100).checked_div(total).unwrap_or(100);
            let rate = (now - before) as f64 / every.as_secs_f64();
            before = now;
            eprintln!(
                "ferry: {name}: {pct}% safe on the server ({} of {}), {} sent this run, {}/s",
                human(safe),
                human(total),
                human(now),
                human(rate as u64)
            );
        }
    })
}

//! The progress bar: durable bytes (what the server acknowledged), rate and ETA. Hidden when
//! stderr is not a terminal or when asked.

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

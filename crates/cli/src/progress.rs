//! Progress bars on a terminal, nothing otherwise.
//!
//! indicatif hides a bar whose target is not a terminal (or `TERM=dumb`), so
//! piping `adp export` into a file or running it in CI prints no escape codes.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` items on stderr, e.g. "files".
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = format!(
        "{{spinner}} [{{elapsed_precise}}] [{{wide_bar}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Whether stderr is a terminal a bar would be drawn on.
pub fn stderr_is_terminal() -> bool {
    !ProgressDrawTarget::stderr().is_hidden()
}

/// Whether stdout is a terminal a bar would be drawn on.
pub fn stdout_is_terminal() -> bool {
    !ProgressDrawTarget::stdout().is_hidden()
}

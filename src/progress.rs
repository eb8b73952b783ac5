//! Progress bars on stderr (hidden when stderr is not a terminal or with `--quiet`).
//! stdout is left for results.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(total: u64, what: &str, quiet: bool) -> Progress {
        let bar =
            ProgressBar::with_draw_target(Some(total), if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() });
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} rows  {msg}  [{elapsed_precise}<{eta_precise}]")
                .expect("valid template"),
        );
        bar.set_prefix(what.to_string());
        Progress { bar }
    }

    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// Advance by `rows`; the message shows rates over this run's work.
    pub fn inc(&self, rows: u64, tokens: u64, seconds: f64, rows_this_run: u64) {
        self.bar.inc(rows);
        if seconds > 0.0 {
            let mut msg = format!("{:.0} rows/s", rows_this_run as f64 / seconds);
            if tokens > 0 {
                msg.push_str(&format!(", {:.0} tokens/s", tokens as f64 / seconds));
            }
            self.bar.set_message(msg);
        }
    }

    /// Advance a bar that counts something other than rows (steps, shards).
    pub fn tick_to(&self, pos: u64, msg: String) {
        self.bar.set_position(pos);
        self.bar.set_message(msg);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

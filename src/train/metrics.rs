//! `metrics.csv`: one line per training step. A resumed run keeps the lines up to its
//! checkpoint and appends from there.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const HEADER: &str = "step,epoch,loss,kl,ce,lr,positions,seconds";

pub(super) struct Metrics {
    path: PathBuf,
    file: File,
}

/// One step's line.
pub(super) struct StepLine {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub kl: f64,
    pub ce: f64,
    pub lr: f64,
    pub positions: usize,
    pub seconds: f64,
    /// The hidden-state term (`--hidden-layers`; a last column then), without its weight.
    pub hidden: Option<f64>,
}

impl Metrics {
    /// Open `out/metrics.csv`: fresh, or (resuming at `resumed_at`) cut back to its steps.
    /// With `hidden`, a last column holds the hidden-state term.
    pub fn open(out: &Path, resumed_at: Option<usize>, hidden: bool) -> Result<Metrics> {
        let path = out.join("metrics.csv");
        let kept = match (crate::untrusted::read_to_string(&path, crate::untrusted::Cap::Log), resumed_at) {
            (Ok(text), Some(step)) => text
                .lines()
                .filter(|l| l.starts_with("step") || l.split(',').next().and_then(|s| s.parse::<usize>().ok()).is_some_and(|s| s <= step))
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            _ => format!("{HEADER}{}\n", if hidden { ",hidden" } else { "" }),
        };
        std::fs::write(&path, kept).map_err(|e| Error::io(&path, e))?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Metrics { path, file })
    }

    pub fn write(&mut self, l: &StepLine) -> Result<()> {
        let hidden = l.hidden.map(|h| format!(",{h:.6}")).unwrap_or_default();
        writeln!(
            self.file,
            "{},{},{:.6},{:.6},{:.6},{:.3e},{},{:.3}{hidden}",
            l.step, l.epoch, l.loss, l.kl, l.ce, l.lr, l.positions, l.seconds
        )
        .map_err(|e| Error::io(&self.path, e))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

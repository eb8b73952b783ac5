//! `distill inspect`: a cache's manifest summary plus statistics read from its shards
//! (rows, positions, bytes per entry, the histogram of probability mass kept inside the
//! top-k, mean teacher entropy). Reads only through the cache module.

use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use crate::cache::{CacheReader, Manifest};
use crate::error::Result;
use crate::integrity::short;

/// Bins of the kept-mass histogram: `[i/10, (i+1)/10)`, the last one closed.
pub const BINS: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    pub rows: u64,
    pub positions: u64,
    pub entries: u64,
    pub bytes: u64,
    pub bytes_per_entry: f64,
    pub bytes_per_position: f64,
    pub mean_kept_mass: f64,
    pub min_kept_mass: f64,
    pub kept_mass_histogram: [u64; BINS],
    /// Positions by the teacher's entropy over its maximum, `log(vocab_size)`, in `BINS` bins.
    pub entropy_histogram: [u64; BINS],
    pub mean_entropy: f64,
    /// Share of positions where the cached top-1 equals the hard label.
    pub top1_matches_hard_label: Option<f64>,
    /// Classification positions without a hard label (a null label: soft label only).
    pub unlabelled: u64,
}

/// Read every shard of `dir` and gather statistics.
pub fn inspect(dir: &Path) -> Result<(Manifest, CacheStats)> {
    let dir = &crate::store::local_copy(dir)?;
    let reader = CacheReader::open(dir)?;
    let m = reader.manifest().clone();
    let mut s = CacheStats {
        rows: m.totals.rows,
        positions: 0,
        entries: 0,
        bytes: m.shards.iter().map(|s| s.bytes).sum(),
        bytes_per_entry: 0.0,
        bytes_per_position: 0.0,
        mean_kept_mass: 0.0,
        min_kept_mass: 1.0,
        kept_mass_histogram: [0; BINS],
        entropy_histogram: [0; BINS],
        mean_entropy: 0.0,
        top1_matches_hard_label: None,
        unlabelled: 0,
    };
    let (mut kept_sum, mut ent_sum, mut labelled, mut matches) = (0f64, 0f64, 0u64, 0u64);
    let max_entropy = (m.vocab_size.max(2) as f64).ln();
    for shard in &m.shards {
        for batch in reader.read_shard(shard, 8192)? {
            let b = batch?;
            for i in 0..b.len() {
                let kept = 1.0 - (b.tail_logmass[i] as f64).exp();
                kept_sum += kept;
                s.min_kept_mass = s.min_kept_mass.min(kept);
                s.kept_mass_histogram[((kept * BINS as f64) as usize).min(BINS - 1)] += 1;
                ent_sum += b.entropy[i] as f64;
                let relative = b.entropy[i] as f64 / max_entropy;
                s.entropy_histogram[((relative.max(0.0) * BINS as f64) as usize).min(BINS - 1)] += 1;
                match b.hard_labels[i] {
                    Some(h) => {
                        labelled += 1;
                        matches += (b.ids[i * b.k] as i64 == h) as u64;
                    }
                    None => s.unlabelled += 1,
                }
            }
            s.positions += b.len() as u64;
        }
    }
    s.entries = s.positions * m.top_k as u64;
    if s.positions > 0 {
        s.bytes_per_entry = s.bytes as f64 / s.entries as f64;
        s.bytes_per_position = s.bytes as f64 / s.positions as f64;
        s.mean_kept_mass = kept_sum / s.positions as f64;
        s.mean_entropy = ent_sum / s.positions as f64;
    } else {
        s.min_kept_mass = 0.0;
    }
    if labelled > 0 {
        s.top1_matches_hard_label = Some(matches as f64 / labelled as f64);
    }
    Ok((m, s))
}

/// The human-readable report.
pub fn render(dir: &Path, m: &Manifest, s: &CacheStats) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "cache {}", dir.display());
    let _ = writeln!(o, "  schema v{}, written by {} {}", m.schema_version, m.tool.name, m.tool.version);
    let _ = writeln!(o, "  task {:?}, positions {:?}", m.task, m.positions);
    let _ = writeln!(o, "  teacher {} (sha256 {}), logits from `{}`", m.teacher.file, short(&m.teacher.sha256), m.teacher.logits_output);
    for x in &m.teacher.external_data {
        let _ = writeln!(o, "    external data {} ({} bytes, sha256 {})", x.file, x.bytes, short(&x.sha256));
    }
    if let Some(t) = &m.tokenizer {
        let padding = if t.vocab_size < m.vocab_size {
            format!(" (logits {} - {} ids of padding)", m.vocab_size, m.vocab_size - t.vocab_size)
        } else {
            String::new()
        };
        let _ = writeln!(o, "  tokenizer {} (sha256 {}), {} tokens{padding}", t.file, short(&t.sha256), t.vocab_size);
    }
    let _ = writeln!(o, "  vocab_size {}, top_k {}, temperature {}", m.vocab_size, m.top_k, m.temperature);
    let _ =
        writeln!(o, "  dataset {} ({}, sha256 {}), {} rows", m.dataset.file, m.dataset.format, short(&m.dataset.sha256), m.dataset.rows);
    for f in &m.dataset.files {
        let _ = writeln!(o, "    {} ({} rows, sha256 {})", f.file, f.rows, short(&f.sha256));
    }
    let _ = writeln!(
        o,
        "  encoding {} (step {}, max abs error {:.6} nats), {}",
        m.encoding.logprobs.name(),
        m.encoding.logprob_step,
        m.encoding.max_abs_error,
        m.encoding.compression
    );
    let _ = writeln!(o, "  shards {} ({} rows per shard)", m.shards.len(), m.rows_per_shard);
    if m.totals.truncated_rows > 0 || m.totals.rows_without_positions > 0 {
        let _ = writeln!(o, "  truncated rows {}, rows without positions {}", m.totals.truncated_rows, m.totals.rows_without_positions);
    }
    let _ = writeln!(o, "statistics");
    let _ = writeln!(o, "  rows {}, positions {}, entries {}", s.rows, s.positions, s.entries);
    let _ = writeln!(o, "  bytes {}: {:.2} bytes per entry, {:.1} bytes per position", s.bytes, s.bytes_per_entry, s.bytes_per_position);
    let _ = writeln!(o, "  mean teacher entropy {:.4} nats (at T = {})", s.mean_entropy, m.temperature);
    if let Some(a) = s.top1_matches_hard_label {
        let _ = writeln!(o, "  teacher top-1 equals hard label at {:.2}% of positions", a * 100.0);
    }
    if s.unlabelled > 0 {
        let _ = writeln!(o, "  positions without a hard label (soft label only) {}", s.unlabelled);
    }
    let _ = writeln!(o, "  mass kept in the top-{}: mean {:.4}, min {:.4}", m.top_k, s.mean_kept_mass, s.min_kept_mass);
    let max = s.kept_mass_histogram.iter().copied().max().unwrap_or(0).max(1);
    for (i, &n) in s.kept_mass_histogram.iter().enumerate() {
        let bar = "#".repeat(((n as f64 / max as f64) * 40.0).round() as usize);
        let _ = writeln!(o, "    {:.1}-{:.1} {:>9} {}", i as f64 / 10.0, (i + 1) as f64 / 10.0, n, bar);
    }
    o
}

//! Stage one's worker side: the copied logits of each batch become soft labels (top-k over
//! threads), shards are built and written, and the partial manifest records each one.

use std::path::Path;
use std::time::Instant;

use crate::cache::ShardBuilder;
use crate::cache::manifest::{self, Manifest, ShardInfo};
use crate::error::{Error, Result};
use crate::teacher::hidden::Projection;
use crate::teacher::topk::label_logprob;
use crate::teacher::{SoftLabel, TopKScratch, topk};

use super::ShardHook;

/// (row, position, hard label with the teacher's log-prob of it, soft label)
type Labelled = (u64, u32, Option<(i64, f32)>, SoftLabel);

/// The logits of one batch's cached positions, copied out of ONNX Runtime for the worker.
pub(super) struct Pending {
    /// `[n, vocab]`, one row per cached position (empty when `soft` holds the labels).
    pub logits: Vec<f32>,
    /// The soft labels and hard-label log-probs, computed in ONNX Runtime (`--topk-in onnxruntime`).
    pub soft: Option<Vec<(SoftLabel, f32)>>,
    /// `[n, teacher_dim]` per `--hidden-states` output, the same positions.
    pub hidden: Vec<Vec<f32>>,
    /// (dataset row, position, hard label) of each logits row.
    pub meta: Vec<(u64, u32, Option<i64>)>,
    /// Dataset rows of the batch (rows without any cached position are counted).
    pub rows: Vec<u64>,
}

pub(super) enum Job {
    Batch(Pending),
    /// Every row of `first_row .. first_row + rows` has been sent: write shard `index`.
    Flush {
        index: usize,
        first_row: u64,
        rows: u64,
    },
}

/// The worker side of stage one: soft labels, shard building and writing.
pub(super) struct Sink<'a> {
    pub out: &'a Path,
    pub partial_name: String,
    pub encoding: crate::cache::LogprobEncoding,
    pub step: f64,
    pub temperature: f32,
    pub top_k: usize,
    pub vocab: usize,
    /// Ids a soft label may name: the tokenizer's (ids past it are padding of the logits).
    pub selectable: usize,
    pub threads: usize,
    pub teacher_path: std::path::PathBuf,
    pub on_shard: Option<ShardHook>,
    /// Sampled soft labels instead of the top-k.
    pub sampled: Option<manifest::SampledInfo>,
    /// The stored hidden states, and the projection each goes through (if any).
    pub hidden: Vec<(manifest::HiddenStateInfo, Option<Projection>)>,
    /// Where spent logits buffers go back to the main thread.
    pub recycle: std::sync::mpsc::Sender<Vec<f32>>,
}

impl Sink<'_> {
    /// Returns the manifest with its shards and position counts, and the seconds spent on
    /// soft labels and on writing.
    pub fn run(self, jobs: std::sync::mpsc::Receiver<Job>, mut man: Manifest) -> Result<(Manifest, f64, f64)> {
        let infos: Vec<manifest::HiddenStateInfo> = self.hidden.iter().map(|h| h.0.clone()).collect();
        let mut builder = ShardBuilder::with_hidden(self.encoding, self.step, &infos);
        let mut scratch: Vec<TopKScratch> = (0..self.threads).map(|_| TopKScratch::default()).collect();
        let (mut soft_s, mut write_s) = (0.0, 0.0);
        for job in jobs {
            match job {
                Job::Batch(p) => {
                    let t = Instant::now();
                    let labels = self.label(&p, &mut scratch)?;
                    soft_s += t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    let hidden = self.stored_hidden(&p)?;
                    for (i, (row, position, label, soft)) in labels.iter().enumerate() {
                        let at: Vec<&[f32]> = hidden.iter().zip(&infos).map(|(v, h)| &v[i * h.dim..(i + 1) * h.dim]).collect();
                        builder.push_with_hidden(*row, *position, *label, soft, &at);
                    }
                    man.totals.positions += labels.len() as u64;
                    man.totals.rows += p.rows.len() as u64;
                    for r in &p.rows {
                        if !p.meta.iter().any(|m| m.0 == *r) {
                            man.totals.rows_without_positions += 1;
                        }
                    }
                    let _ = self.recycle.send(p.logits); // the main thread may have finished
                    write_s += t.elapsed().as_secs_f64();
                }
                Job::Flush { index, first_row, rows } => {
                    let t = Instant::now();
                    let info = builder.write(self.out, &manifest::ShardStamp::of(&man, index, first_row, rows))?;
                    finish_shard(self.out, &self.partial_name, &mut man, info)?;
                    if let Some(hook) = &self.on_shard {
                        (hook.0)()?;
                    }
                    write_s += t.elapsed().as_secs_f64();
                }
            }
        }
        Ok((man, soft_s, write_s))
    }

    /// Each hidden state of the batch as stored: projected where asked, and within f16's
    /// range (a larger value would be stored as infinity).
    ///
    /// # Shapes
    /// - returns `[n, dim]` per stored hidden state
    fn stored_hidden(&self, p: &Pending) -> Result<Vec<Vec<f32>>> {
        self.hidden
            .iter()
            .zip(&p.hidden)
            .map(|((info, projection), values)| {
                let stored = match projection {
                    None => values.clone(),
                    Some(proj) => {
                        let mut out = Vec::with_capacity(p.meta.len() * proj.dim());
                        for x in values.chunks_exact(info.teacher_dim) {
                            proj.apply(x, &mut out);
                        }
                        out
                    }
                };
                if let Some(at) = stored.iter().position(|v| v.abs() > f32::from(half::f16::MAX)) {
                    let (row, position, _) = p.meta[at / info.dim];
                    return Err(Error::teacher(
                        &self.teacher_path,
                        format!(
                            "row {row}, position {position}: output `{}` holds {} (value {}), outside f16's range (|v| <= 65504), \
                             in which hidden states are stored",
                            info.output,
                            stored[at],
                            at % info.dim
                        ),
                    ));
                }
                Ok(stored)
            })
            .collect()
    }

    fn label(&self, p: &Pending, scratch: &mut [TopKScratch]) -> Result<Vec<Labelled>> {
        if let Some(soft) = &p.soft {
            return self.graph_labelled(p, soft);
        }
        let vocab = self.vocab;
        let starts: Vec<usize> = (0..p.meta.len()).collect();
        let soft = match self.sampled {
            None => soft_labels(&p.logits, vocab, self.selectable, &starts, self.temperature, self.top_k, scratch),
            Some(s) => sampled_labels(&p.logits, vocab, self.selectable, &p.meta, self.temperature, s),
        };
        let soft = soft.map_err(|(i, col)| {
            let (row, position, _) = p.meta[i];
            let at = if p.meta.iter().all(|m| m.1 == 0) { format!("row {row}") } else { format!("row {row}, position {position}") };
            Error::teacher(&self.teacher_path, format!("{at}: logit {col} is not finite ({})", p.logits[i * vocab + col]))
        })?;
        Ok(p.meta
            .iter()
            .zip(soft)
            .enumerate()
            .map(|(i, (&(row, position, hard), s))| {
                let logits = &p.logits[i * vocab..(i + 1) * vocab];
                let lp = match self.sampled {
                    None => |logits: &[f32], s: &SoftLabel, h: i64, t: f32| label_logprob(logits, s, h, t),
                    // A sampled label's entries are shares of the draws, not log-probs.
                    Some(_) => |logits: &[f32], _: &SoftLabel, h: i64, t: f32| exact_logprob(logits, h, t),
                };
                let h = hard.map(|h| (h, lp(logits, &s, h, self.temperature).unwrap_or(f32::NAN)));
                (row, position, h, s)
            })
            .collect())
    }
}

impl Sink<'_> {
    /// Soft labels ONNX Runtime computed, checked finite (non-finite logits give NaN there).
    fn graph_labelled(&self, p: &Pending, soft: &[(SoftLabel, f32)]) -> Result<Vec<Labelled>> {
        p.meta
            .iter()
            .zip(soft)
            .map(|(&(row, position, hard), (s, lp))| {
                let finite = s.logprobs.iter().all(|v| v.is_finite()) && !s.tail_logmass.is_nan() && s.entropy.is_finite();
                if !finite {
                    return Err(Error::teacher(
                        &self.teacher_path,
                        format!(
                            "row {row}, position {position}: the soft label computed in ONNX Runtime is not finite (the logits \
                             hold NaN or infinity; --topk-in rust names the logit)"
                        ),
                    ));
                }
                Ok((row, position, hard.map(|h| (h, *lp)), s.clone()))
            })
            .collect()
    }
}

/// `log p_T(label)` from a row's logits (f64 log-sum-exp over the whole row).
fn exact_logprob(logits: &[f32], label: i64, temperature: f32) -> Option<f32> {
    let l = usize::try_from(label).ok().filter(|&l| l < logits.len())?;
    let t = temperature as f64;
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64 / t));
    let lse = max + logits.iter().map(|&z| (z as f64 / t - max).exp()).sum::<f64>().ln();
    Some((logits[l] as f64 / t - lse) as f32)
}

/// Sampled soft labels of many rows of logits, each seeded by its (row, position).
///
/// # Shapes
/// - `logits`: `[n, vocab]`; `meta`: `n` (row, position, hard label)
fn sampled_labels(
    logits: &[f32],
    vocab: usize,
    selectable: usize,
    meta: &[(u64, u32, Option<i64>)],
    temperature: f32,
    s: manifest::SampledInfo,
) -> std::result::Result<Vec<SoftLabel>, (usize, usize)> {
    meta.iter()
        .enumerate()
        .map(|(i, &(row, position, _))| {
            let mut out = SoftLabel { ids: Vec::new(), logprobs: Vec::new(), tail_logmass: 0.0, entropy: 0.0 };
            crate::teacher::sample::sampled_soft_label(
                &logits[i * vocab..(i + 1) * vocab],
                selectable,
                temperature,
                s.exact_top,
                s.draws,
                (s.seed, row, position),
                &mut out,
            )
            .map_err(|col| (i, col))?;
            Ok(out)
        })
        .collect()
}

/// Top-k (among ids `0..selectable`) of many rows of logits, split over `scratch.len()`
/// threads.
///
/// # Shapes
/// - `logits`: `[n, vocab]` (row `i` at `starts[i] * vocab`)
fn soft_labels(
    logits: &[f32],
    vocab: usize,
    selectable: usize,
    starts: &[usize],
    temperature: f32,
    k: usize,
    scratch: &mut [TopKScratch],
) -> std::result::Result<Vec<SoftLabel>, (usize, usize)> {
    let mut out: Vec<SoftLabel> =
        (0..starts.len()).map(|_| SoftLabel { ids: Vec::new(), logprobs: Vec::new(), tail_logmass: 0.0, entropy: 0.0 }).collect();
    let threads = scratch.len().max(1).min(starts.len().max(1));
    let per = starts.len().div_ceil(threads).max(1);
    let results: Vec<std::result::Result<(), (usize, usize)>> = std::thread::scope(|s| {
        let handles: Vec<_> = out
            .chunks_mut(per)
            .zip(starts.chunks(per))
            .zip(scratch.iter_mut())
            .enumerate()
            .map(|(c, ((outs, sts), sc))| {
                s.spawn(move || {
                    for (j, (o, &st)) in outs.iter_mut().zip(sts).enumerate() {
                        topk::soft_top_k_among(&logits[st * vocab..(st + 1) * vocab], selectable, temperature, k, sc, o)
                            .map_err(|col| (c * per + j, col))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("top-k worker panicked")).collect()
    });
    for r in results {
        r?;
    }
    Ok(out)
}

fn finish_shard(out: &Path, name: &str, man: &mut Manifest, info: ShardInfo) -> Result<()> {
    man.shards.push(info);
    man.write_atomic(out, name)
}

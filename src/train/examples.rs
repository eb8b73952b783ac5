//! Stage two's examples: dataset rows prepared as student inputs (tokenized, or numeric
//! features), kept between epochs up to a budget, and joined with their cached soft labels.

use std::collections::HashMap;
use std::time::Instant;

use crate::cache::{CacheReader, ShardInfo, SoftLabelBatch, Task};
use crate::config::TrainConfig;
use crate::data;
use crate::error::{Error, Result};
use crate::loss;
use crate::text::Tokenizer;

use crate::student::{DataSpec, PreparedRow, prepare_rows_with_logprobs};

use crate::config::COMPLETION_LOGPROBS;

/// Whether the training data carries a student's generation log-probs (a Parquet dataset
/// made by `generate --student`).
fn generation_logprobs_in(data: &std::path::Path) -> Result<bool> {
    Ok(data::column_names(data)?.iter().any(|c| c == COMPLETION_LOGPROBS))
}

/// One dataset row joined with its cached positions.
pub(super) struct Example {
    pub features: Vec<f32>,
    pub tokens: Vec<u32>,
    pub targets: Vec<Target>,
}

pub(super) struct Target {
    pub position: usize,
    pub ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub tail: f32,
    /// `None`: an unlabelled classification row (soft label only).
    pub hard: Option<i64>,
    /// `--divergence sampled-rkl`: the teacher's log-prob of the hard label (the token the
    /// student drew) at the cache's temperature, and the student's at T = 1 when it was
    /// generated (NaN: unknown).
    pub sampled: Option<(f32, f32)>,
    /// The cached teacher hidden states of `--hidden-layers`, one after the other in the
    /// pairs' order (`[sum of their widths]`; empty without hidden-state pairs), in f16 as
    /// the cache stores them (half the memory of the shuffle window's f32).
    pub hidden: Vec<half::f16>,
}

/// The prepared rows of shards, kept between epochs up to a byte budget (first come, first
/// kept), so that a cache larger than the shuffle window is read from the data and tokenized
/// once rather than every epoch. A shard's rows are the same whenever they are prepared, so
/// what is kept changes the work, not the batches.
pub(super) struct PreparedMemo {
    /// By the shard's first dataset row.
    shards: std::collections::HashMap<u64, Vec<PreparedRow>>,
    bytes: usize,
    budget: usize,
}

impl PreparedMemo {
    pub fn new(budget_mb: usize) -> PreparedMemo {
        PreparedMemo { shards: Default::default(), bytes: 0, budget: budget_mb << 20 }
    }

    /// The rows of the shard starting at `first_row`: kept ones, or `prepare()`'s (kept
    /// while the budget allows).
    fn rows(&mut self, first_row: u64, prepare: impl FnOnce() -> Result<Vec<PreparedRow>>) -> Result<Vec<PreparedRow>> {
        if let Some(rows) = self.shards.get(&first_row) {
            return Ok(rows.clone());
        }
        let rows = prepare()?;
        let size: usize = rows.iter().map(PreparedRow::bytes).sum();
        if self.bytes + size <= self.budget {
            self.bytes += size;
            self.shards.insert(first_row, rows.clone());
        }
        Ok(rows)
    }
}

/// Join one shard with its dataset rows. Every cached hard label must agree with the data
/// (a different tokenizer or dataset shows up here, naming the row).
#[allow(clippy::too_many_arguments)]
pub(super) fn load_shard(
    reader: &CacheReader,
    shard: &ShardInfo,
    cfg: &TrainConfig,
    spec: &DataSpec,
    tok: Option<&Tokenizer>,
    train_t: f32,
    student_vocab: usize,
    starts: &HashMap<u64, data::RowStart>,
    memo: &mut PreparedMemo,
    read_seconds: &mut f64,
) -> Result<Vec<Example>> {
    let limit = cfg.max_rows.unwrap_or(u64::MAX);
    if shard.first_row >= limit {
        return Ok(Vec::new());
    }
    let count = shard.rows.min(limit - shard.first_row);
    let sampled = cfg.loss.divergence == loss::Divergence::SampledRkl;
    let logprobs = (sampled && generation_logprobs_in(&cfg.data)?).then_some(COMPLETION_LOGPROBS);
    let start = starts.get(&shard.first_row).copied();
    let rows = memo.rows(shard.first_row, || prepare_rows_with_logprobs(&cfg.data, spec, tok, shard.first_row, count, start, logprobs))?;
    let labels: Vec<Option<i64>> = rows.iter().map(|r| r.label).collect();
    let generated: Vec<Option<(usize, Vec<f32>)>> = rows.iter().map(|r| r.generated.clone()).collect();
    let mut examples: Vec<Example> =
        rows.into_iter().map(|r| Example { features: r.features, tokens: r.tokens, targets: Vec::new() }).collect();
    let t0 = Instant::now();
    let soft = SoftLabelReader {
        k: reader.manifest().top_k,
        k_used: cfg.top_k.unwrap_or(reader.manifest().top_k),
        cache_t: reader.manifest().temperature,
        train_t,
        hidden: hidden_columns(cfg, reader.manifest()),
    };
    for batch in reader.read_shard(shard, 8192)? {
        let b = batch?;
        for i in 0..b.len() {
            let r = b.rows[i];
            if r >= shard.first_row + count {
                continue;
            }
            let at = (r - shard.first_row) as usize;
            let (position, hard) = (b.positions[i] as usize, b.hard_labels[i]);
            check_hard_label(reader, shard, r, position, hard, labels[at], &examples[at].tokens)?;
            let mut target = soft.target(&b, i, position, hard);
            if sampled {
                let teacher = b.hard_label_logprobs[i].filter(|v| v.is_finite()).ok_or_else(|| {
                    Error::cache(
                        reader.shard_path(shard),
                        format!("row {r} position {position}: no teacher log-prob of the next token, which sampled-rkl needs"),
                    )
                })?;
                let at_generation = generated[at].as_ref().and_then(|(first, v)| v.get(position.checked_sub(*first)?).copied());
                target.sampled = Some((teacher, at_generation.unwrap_or(f32::NAN)));
            }
            if let Some(bad) = target.ids.iter().find(|&&id| id as usize >= student_vocab) {
                return Err(Error::cache(
                    reader.shard_path(shard),
                    format!("row {r} position {position}: cached token id {bad} is past the student's vocabulary of {student_vocab}"),
                ));
            }
            examples[at].targets.push(target);
        }
    }
    *read_seconds += t0.elapsed().as_secs_f64();
    examples.retain(|e| !e.targets.is_empty());
    if cfg.loss.alpha == 0.0 {
        // Hard labels only: unlabelled rows teach nothing; leave them out so batches are
        // full of labelled rows (the same batches as training on the labelled rows alone).
        examples.retain(|e| e.targets.iter().all(|t| t.hard.is_some()));
    }
    Ok(examples)
}

/// A cached hard label must be the data's: its label (classification) or the next token of
/// its tokenization (causal LM).
fn check_hard_label(
    reader: &CacheReader,
    shard: &ShardInfo,
    r: u64,
    position: usize,
    hard: Option<i64>,
    label: Option<i64>,
    tokens: &[u32],
) -> Result<()> {
    let m = reader.manifest();
    if m.task == Task::Classification && m.label_column.is_some() && hard != label {
        return Err(Error::cache(
            reader.shard_path(shard),
            format!(
                "row {r}: the cache's hard label is {hard:?} but the data's `{}` is {:?}; the data differs from the \
                 one the cache was made with (rows reordered or relabelled)",
                m.label_column.as_deref().unwrap_or("label"),
                label
            ),
        ));
    }
    if m.task == Task::CausalLm {
        let hard = hard.ok_or_else(|| Error::cache(reader.shard_path(shard), format!("row {r} position {position} has no next token")))?;
        let want = tokens.get(position + 1).copied();
        if want != Some(hard as u32) {
            return Err(Error::cache(
                reader.shard_path(shard),
                format!(
                    "row {r} position {position}: the cache's next token is {hard} but the data tokenizes to {want:?}; \
                     the data or tokenizer differs from the one the cache was made with"
                ),
            ));
        }
    }
    Ok(())
}

/// How a cached entry becomes a training target: the first `k_used` of the cached `k`
/// entries, re-tempered from the cache's temperature to the training one.
struct SoftLabelReader {
    k: usize,
    k_used: usize,
    cache_t: f32,
    train_t: f32,
    /// (index into the manifest's `hidden_states`, width) of each `--hidden-layers` pair.
    hidden: Vec<(usize, usize)>,
}

/// Where each `--hidden-layers` pair's teacher output is in the cache's hidden states
/// (their presence is checked before training).
pub(super) fn hidden_columns(cfg: &TrainConfig, m: &crate::cache::Manifest) -> Vec<(usize, usize)> {
    cfg.loss
        .hidden
        .iter()
        .map(|p| {
            let j = m.hidden_states.iter().position(|h| h.output == p.output).expect("checked by checks::check_cache");
            (j, m.hidden_states[j].dim)
        })
        .collect()
}

impl SoftLabelReader {
    fn target(&self, b: &SoftLabelBatch, i: usize, position: usize, hard: Option<i64>) -> Target {
        let (k, k_used) = (self.k, self.k_used);
        let all = &b.logprobs[i * k..(i + 1) * k];
        let mut logprobs = all[..k_used].to_vec();
        // A smaller k: the dropped entries' mass joins the tail (log-sum-exp, f64).
        let mut tail = b.tail_logmass[i] as f64;
        if k_used < k {
            let terms = all[k_used..].iter().map(|&v| v as f64).chain((tail.is_finite()).then_some(tail));
            let max = terms.clone().fold(f64::NEG_INFINITY, f64::max);
            tail = max + terms.map(|v| (v - max).exp()).sum::<f64>().ln();
        }
        if (self.train_t - self.cache_t).abs() > 1e-6 {
            loss::retemper(&mut logprobs, self.cache_t, self.train_t);
        }
        Target {
            position,
            ids: b.ids[i * k..i * k + k_used].to_vec(),
            logprobs,
            tail: if tail.is_finite() { tail as f32 } else { -1e4 },
            hard,
            sampled: None,
            hidden: self
                .hidden
                .iter()
                .flat_map(|&(j, d)| b.hidden[j][i * d..(i + 1) * d].iter().map(|&v| half::f16::from_f32(v)))
                .collect(),
        }
    }
}

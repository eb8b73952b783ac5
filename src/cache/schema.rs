//! The cache's on-disk schema (the contract between stage one and stage two, and
//! between teams). One Parquet row per cached position:
//!
//! | column | Arrow type | meaning |
//! |---|---|---|
//! | `row` | UInt64 | 0-based row of the dataset the position comes from |
//! | `position` | UInt32 | token position whose next-token distribution this is (0 for classification) |
//! | `hard_label` | Int64, nullable | next token (causal LM) or the `label` column (classification) |
//! | `hard_label_logprob` | Float32, nullable | teacher's `log p_T(hard_label)` over the full distribution |
//! | `top_ids` | `List<UInt32>` | the k most probable ids, most probable first |
//! | `top1_logprob` | Float32 | `log p_T(top_ids[0])`, exact |
//! | `logprob_deltas` | `List<UInt16>` | (`delta_u16` encoding) quantised gaps, see below |
//! | `top_logprobs` | `List<Float32>` | (`f32` encoding) `log p_T` of each id, exact |
//! | `tail_logmass` | Float32 | `log(1 - sum_k p_T)`: exact log of the mass outside the top-k (`-inf` when k = vocab) |
//! | `entropy` | Float32 | entropy of the full softened teacher distribution, nats |
//! | `hidden_NAME` | `List<Float16>` | (`--hidden-states NAME`) the teacher output `NAME` at this position, `dim` values (manifest `hidden_states`) |
//!
//! `delta_u16` decoding: `logprob[i] = top1_logprob - step * sum(logprob_deltas[..=i])`
//! with `step` from the manifest (`encoding.logprob_step`, also in the file's key-value
//! metadata `distill.logprob_step`). `logprob_deltas[0]` is always 0. The absolute error of
//! each decoded log-prob is at most `step / 2` (the quantiser rounds the offset from the top-1
//! to the nearest step; deltas of consecutive rounded offsets are lossless).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

pub const ROW: &str = "row";
pub const POSITION: &str = "position";
pub const HARD_LABEL: &str = "hard_label";
pub const HARD_LABEL_LOGPROB: &str = "hard_label_logprob";
pub const TOP_IDS: &str = "top_ids";
pub const TOP1_LOGPROB: &str = "top1_logprob";
pub const LOGPROB_DELTAS: &str = "logprob_deltas";
pub const TOP_LOGPROBS: &str = "top_logprobs";
pub const TAIL_LOGMASS: &str = "tail_logmass";
pub const ENTROPY: &str = "entropy";

/// Parquet key-value metadata key holding the quantisation step.
pub const STEP_METADATA_KEY: &str = "distill.logprob_step";
/// Key-value metadata key of a shard's [`crate::cache::manifest::ShardStamp`] (JSON).
pub const STAMP_METADATA_KEY: &str = "distill.shard";

/// Default quantisation step of `delta_u16`, in nats: 1/256, so the stored log-probs are
/// within 1/512 nat (0.2% relative probability) of the computed ones.
pub const DEFAULT_LOGPROB_STEP: f64 = 1.0 / 256.0;

/// How the top-k log-probs are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogprobEncoding {
    /// Quantised offsets from the top-1 as UInt16 deltas (compact; error <= step/2).
    #[value(name = "delta_u16")]
    DeltaU16,
    /// Plain Float32 log-probs (lossless, ~2x larger).
    F32,
}

impl LogprobEncoding {
    pub fn name(self) -> &'static str {
        match self {
            LogprobEncoding::DeltaU16 => "delta_u16",
            LogprobEncoding::F32 => "f32",
        }
    }
}

fn list_of(name: &str, item: DataType) -> Field {
    Field::new(name, DataType::List(Arc::new(Field::new("item", item, false))), false)
}

/// The column of the hidden state stored from teacher output `output`.
pub fn hidden_column(output: &str) -> String {
    format!("hidden_{output}")
}

/// The Arrow schema of a shard written with `encoding`, with the `hidden` columns last.
pub fn shard_schema(encoding: LogprobEncoding, hidden: &[String]) -> Schema {
    let mut fields = vec![
        Field::new(ROW, DataType::UInt64, false),
        Field::new(POSITION, DataType::UInt32, false),
        Field::new(HARD_LABEL, DataType::Int64, true),
        Field::new(HARD_LABEL_LOGPROB, DataType::Float32, true),
        list_of(TOP_IDS, DataType::UInt32),
        Field::new(TOP1_LOGPROB, DataType::Float32, false),
    ];
    match encoding {
        LogprobEncoding::DeltaU16 => fields.push(list_of(LOGPROB_DELTAS, DataType::UInt16)),
        LogprobEncoding::F32 => fields.push(list_of(TOP_LOGPROBS, DataType::Float32)),
    }
    fields.push(Field::new(TAIL_LOGMASS, DataType::Float32, false));
    fields.push(Field::new(ENTROPY, DataType::Float32, false));
    fields.extend(hidden.iter().map(|c| list_of(c, DataType::Float16)));
    Schema::new(fields)
}

/// Quantise descending log-probs into deltas (`out` is cleared first).
///
/// # Shapes
/// - `logprobs`: `[k]`, descending; `out`: `[k]`, `out[0] == 0`
pub fn encode_deltas(logprobs: &[f32], step: f64, out: &mut Vec<u16>) {
    out.clear();
    let top = logprobs[0] as f64;
    let mut acc: u64 = 0;
    for &lp in logprobs {
        let target = ((top - lp as f64) / step).round().max(0.0) as u64;
        // Offsets are non-decreasing for sorted input; saturate a gap above u16::MAX steps
        // (256 nats at the default step: a probability ratio of e^-256).
        let delta = target.saturating_sub(acc).min(u16::MAX as u64);
        acc += delta;
        out.push(delta as u16);
    }
}

/// Inverse of [`encode_deltas`].
pub fn decode_deltas(top1: f32, deltas: &[u16], step: f64, out: &mut Vec<f32>) {
    out.clear();
    let mut acc: u64 = 0;
    for &d in deltas {
        acc += d as u64;
        out.push((top1 as f64 - step * acc as f64) as f32);
    }
}

/// The soft label of one position, before any storage encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftLabel {
    /// Token / class ids, most probable first.
    pub ids: Vec<u32>,
    /// `log p_T(id)` for each id, same order (descending).
    pub logprobs: Vec<f32>,
    /// `log(1 - sum(exp(logprobs)))`, computed directly from the entries outside the
    /// top-k; `-inf` when k equals the vocabulary.
    pub tail_logmass: f32,
    /// Entropy of the full softened distribution, in nats.
    pub entropy: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_round_trip_within_half_a_step() {
        let step = DEFAULT_LOGPROB_STEP;
        let lps = [-0.1f32, -0.1, -0.35, -1.0001, -3.7, -9.25, -20.0];
        let mut d = Vec::new();
        encode_deltas(&lps, step, &mut d);
        assert_eq!(d[0], 0);
        assert_eq!(d[1], 0);
        let mut back = Vec::new();
        decode_deltas(lps[0], &d, step, &mut back);
        for (a, b) in lps.iter().zip(&back) {
            assert!(((a - b).abs() as f64) <= step / 2.0 + 1e-6, "{a} vs {b}");
        }
    }
}

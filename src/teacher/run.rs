//! Running the teacher: a batch's logits (or the soft labels the graph computed), and the
//! decoding steps of a with-past export with its key/value cache.

use crate::cache::manifest::IoInfo;
use crate::error::{Error, Result};
use half::{bf16, f16};
use ort::session::SessionInputValue;
use ort::value::{Tensor, TensorElementType};
use std::borrow::Cow;

use super::inputs::{Feed, InputPlan, dims, int_tensor};
use super::model::Teacher;

/// What a teacher is given for one batch.
pub enum TeacherBatch<'a> {
    /// Numeric features: `(column name, flat values [batch * width], width)`.
    Numeric { batch: usize, columns: &'a [(String, Vec<f32>, usize)] },
    /// Right-padded tokens. # Shapes: `ids`, `mask`: `[batch * seq]`
    Tokens { batch: usize, seq: usize, ids: &'a [i64], mask: &'a [i64] },
}

/// The hard labels fed to a teacher that computes its soft labels in the graph
/// ([`Teacher::compute_soft_labels_in_graph`]): `[batch]` or `[batch * seq]`, 0 where there
/// is none (its log-prob is then not used).
pub type HardLabels<'a> = &'a [i64];

/// One batch's soft labels as the in-graph nodes computed them, borrowed from ONNX Runtime.
///
/// # Shapes
/// - `logprobs`, `ids`: `[positions, k]` (`positions` = batch, or batch * seq)
/// - `tail_logmass`, `entropy`, `label_logprob`: `[positions]`
pub struct GraphSoftLabels<'a> {
    pub k: usize,
    pub logprobs: &'a [f32],
    pub ids: &'a [i64],
    pub tail_logmass: &'a [f32],
    pub entropy: &'a [f32],
    pub label_logprob: &'a [f32],
}

/// A batch of logits as ONNX Runtime returns them, borrowed (no copy), in the export's
/// own precision; rows are converted to f32 only where they are copied out.
#[derive(Clone, Copy)]
pub enum Logits<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl Logits<'_> {
    pub fn len(&self) -> usize {
        match self {
            Logits::F32(v) => v.len(),
            Logits::F16(v) => v.len(),
            Logits::Bf16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Append `range` of the logits to `out`, as f32 (exact: f16 and bf16 values are f32
    /// values).
    pub fn extend_f32(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
        match self {
            Logits::F32(v) => out.extend_from_slice(&v[range]),
            Logits::F16(v) => out.extend(v[range].iter().map(|x| x.to_f32())),
            Logits::Bf16(v) => out.extend(v[range].iter().map(|x| x.to_f32())),
        }
    }
    /// All the logits as f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len());
        self.extend_f32(0..self.len(), &mut out);
        out
    }
}

/// One batch's values of a [`HiddenOutput`], borrowed from ONNX Runtime like the logits.
pub struct HiddenValues<'a> {
    pub shape: Vec<usize>,
    pub values: Logits<'a>,
}

/// One decoding step of a with-past export: `new` tokens per row after `past` cached
/// positions.
///
/// # Shapes
/// - `ids`, `positions`: `[batch * new]`
/// - `mask`: `[batch * (past + new)]`, over the cached positions and the new ones
pub struct Step<'a> {
    pub batch: usize,
    pub new: usize,
    pub ids: &'a [i64],
    pub mask: &'a [i64],
    pub positions: &'a [i64],
}

/// The key/value cache a with-past export returned (`present.*`), fed back as its past
/// (`past_key_values.*`) on the next [`Teacher::run_step`].
pub struct Past(Vec<ort::value::DynValue>);

/// The output continuing each past input (`past_key_values.0.key` -> `present.0.key`,
/// `past.0.key` -> `present.0.key`), in input order; empty if any is missing.
pub(super) fn present_outputs(inputs: &[InputPlan], outputs: &[IoInfo]) -> Vec<String> {
    let past: Vec<&InputPlan> = inputs.iter().filter(|p| p.feed == Feed::EmptyPast).collect();
    let presents: Vec<String> = past
        .iter()
        .filter_map(|p| {
            let rest = p.name.strip_prefix("past_key_values").or_else(|| p.name.strip_prefix("past"))?;
            let name = format!("present{rest}");
            outputs.iter().any(|o| o.name == name).then_some(name)
        })
        .collect();
    if presents.len() == past.len() { presents } else { Vec::new() }
}

/// Why logits of the last position only cannot be cached (pruned LM-head exports).
pub fn last_position_only(output: &str, shape: &[i64]) -> String {
    format!(
        "output `{output}` has shape {}: logits for the last position only (an export with a pruned LM head, \
         e.g. onnxruntime-genai's `prune_lm_head`); stage one needs logits at every position, [batch, seq, vocab]: \
         re-export the teacher without pruning the LM head",
        dims(shape)
    )
}

impl Teacher {
    /// Run one batch through a session that computes the soft labels: only the soft labels
    /// and the [`Teacher::hidden`] outputs leave ONNX Runtime, not the logits. `f` sees the
    /// leading shape (`[batch]` or `[batch, seq]`), the soft labels and the hidden states.
    pub fn run_soft_labels<R>(
        &mut self,
        batch: &TeacherBatch<'_>,
        labels: HardLabels<'_>,
        f: impl FnOnce(&[usize], GraphSoftLabels<'_>, &[HiddenValues<'_>]) -> Result<R>,
    ) -> Result<R> {
        use super::ingraph;
        let Some(nodes) = self.soft_nodes.clone() else {
            return Err(Error::teacher(&self.path, "the session does not compute the soft labels"));
        };
        let mut feeds: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = Vec::with_capacity(self.inputs.len());
        for plan in &self.inputs {
            let value = if plan.feed == Feed::HardLabels {
                let shape: Vec<i64> = match batch {
                    TeacherBatch::Tokens { batch, seq, .. } if nodes.rank == 3 => vec![*batch as i64, *seq as i64],
                    TeacherBatch::Tokens { batch, .. } | TeacherBatch::Numeric { batch, .. } => vec![*batch as i64],
                };
                Tensor::<i64>::from_array((shape, labels.to_vec()))
                    .map(|t| t.into_dyn().into())
                    .map_err(|e| Error::teacher(&self.path, format!("input `{}`: {e}", plan.name)))?
            } else {
                self.input_value(plan, batch)?
            };
            feeds.push((Cow::Owned(plan.name.clone()), value));
        }
        let names = [ingraph::TOP_LOGPROBS, ingraph::TOP_IDS, ingraph::TAIL_LOGMASS, ingraph::ENTROPY, ingraph::LABEL_LOGPROB];
        let mut selector = ort::session::OutputSelector::no_default();
        for n in names.iter().copied().chain(self.hidden.iter().map(|h| h.name.as_str())) {
            selector = selector.with(n);
        }
        let path = self.path.clone();
        let options =
            ort::session::RunOptions::new().map_err(|e| Error::teacher(&path, format!("run options: {e}")))?.with_outputs(selector);
        let outputs =
            self.session.run_with_options(feeds, &options).map_err(|e| Error::teacher(&path, format!("inference failed: {e}")))?;
        let get =
            |name: &str| outputs.get(name).ok_or_else(|| Error::teacher(&path, format!("output `{name}` missing from the run's results")));
        let bad = |name: &str, e: ort::Error| Error::teacher(&path, format!("output `{name}`: {e}"));
        let f32s = |name: &str| get(name)?.try_extract_tensor::<f32>().map_err(|e| bad(name, e));
        let (shape, logprobs) = f32s(ingraph::TOP_LOGPROBS)?;
        let (_, ids) = get(ingraph::TOP_IDS)?.try_extract_tensor::<i64>().map_err(|e| bad(ingraph::TOP_IDS, e))?;
        let lead: Vec<usize> = shape[..shape.len() - 1].iter().map(|&d| d.max(0) as usize).collect();
        let soft = GraphSoftLabels {
            k: nodes.k,
            logprobs,
            ids,
            tail_logmass: f32s(ingraph::TAIL_LOGMASS)?.1,
            entropy: f32s(ingraph::ENTROPY)?.1,
            label_logprob: f32s(ingraph::LABEL_LOGPROB)?.1,
        };
        let hidden = self
            .hidden
            .iter()
            .map(|h| {
                let value = get(&h.name)?;
                let (shape, values) = match value.dtype().tensor_type() {
                    Some(TensorElementType::Float16) => {
                        value.try_extract_tensor::<f16>().map(|(s, v)| (s, Logits::F16(v))).map_err(|e| bad(&h.name, e))?
                    }
                    Some(TensorElementType::Bfloat16) => {
                        value.try_extract_tensor::<bf16>().map(|(s, v)| (s, Logits::Bf16(v))).map_err(|e| bad(&h.name, e))?
                    }
                    _ => value.try_extract_tensor::<f32>().map(|(s, v)| (s, Logits::F32(v))).map_err(|e| bad(&h.name, e))?,
                };
                Ok(HiddenValues { shape: shape.iter().map(|&d| d.max(0) as usize).collect(), values })
            })
            .collect::<Result<Vec<_>>>()?;
        f(&lead, soft, &hidden)
    }

    /// Whether the model can decode padded batches with a KV cache ([`Teacher::run_step`]):
    /// it has past inputs, a `present.*` output for each, and `attention_mask` and
    /// `position_ids` inputs (without them the padding inside the cache would be attended
    /// to, or the positions after it miscounted).
    pub fn has_kv_cache(&self) -> bool {
        let has = |feed: Feed| self.inputs.iter().any(|i| i.feed == feed);
        !self.presents.is_empty() && has(Feed::AttentionMask) && has(Feed::PositionIds)
    }

    /// Run one decoding step with a KV cache: `past` from the previous step, `None` for the
    /// first (the prompt, fed an empty past). `f` sees the logits of the new positions
    /// borrowed from ONNX Runtime; the returned [`Past`] holds every position so far.
    ///
    /// # Shapes
    /// - logits: `[batch, new, vocab]`
    pub fn run_step<R>(
        &mut self,
        step: &Step<'_>,
        past: Option<Past>,
        f: impl FnOnce(&[usize], Logits<'_>) -> Result<R>,
    ) -> Result<(R, Past)> {
        let bad = |m: String| Error::teacher(&self.path, m);
        if !self.has_kv_cache() {
            return Err(bad("the model lacks past_key_values inputs with present outputs, attention_mask or position_ids: it cannot decode with a KV cache".into()));
        }
        let cached = past.is_some();
        let mut past_values = past.map(|p| p.0.into_iter());
        let (b, new) = (step.batch as i64, step.new as i64);
        let total = step.mask.len() as i64 / b.max(1);
        let mut feeds: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = Vec::with_capacity(self.inputs.len());
        for plan in &self.inputs {
            let value = match &plan.feed {
                Feed::InputIds => int_tensor(plan, vec![b, new], step.ids.to_vec()).map_err(bad)?,
                Feed::AttentionMask => int_tensor(plan, vec![b, total], step.mask.to_vec()).map_err(bad)?,
                Feed::PositionIds => int_tensor(plan, vec![b, new], step.positions.to_vec()).map_err(bad)?,
                Feed::TokenTypeIds => int_tensor(plan, vec![b, new], vec![0; step.ids.len()]).map_err(bad)?,
                Feed::EmptyPast => match &mut past_values {
                    Some(values) => values.next().ok_or_else(|| bad(format!("no past value for input `{}`", plan.name)))?.into(),
                    None => {
                        let first = TeacherBatch::Tokens { batch: step.batch, seq: step.new, ids: step.ids, mask: step.mask };
                        self.input_value(plan, &first)?
                    }
                },
                Feed::NoCacheBranch => {
                    let s: Vec<i64> = if plan.shape.is_empty() { vec![] } else { vec![1] };
                    Tensor::<bool>::from_array((s, vec![cached]))
                        .map(|t| t.into_dyn().into())
                        .map_err(|e| bad(format!("input `{}`: {e}", plan.name)))?
                }
                Feed::Column(c) => {
                    return Err(bad(format!("input `{}` is fed from column `{c}`, which decoding does not carry", plan.name)));
                }
                Feed::HardLabels => return Err(bad(format!("input `{}` is fed by run_soft_labels", plan.name))),
            };
            feeds.push((Cow::Owned(plan.name.clone()), value));
        }
        let path = self.path.clone();
        let mut outputs = self.session.run(feeds).map_err(|e| Error::teacher(&path, format!("inference failed: {e}")))?;
        let result = {
            let value = outputs
                .get(&self.output)
                .ok_or_else(|| Error::teacher(&path, format!("output `{}` missing from the run's results", self.output)))?;
            let bad = |e: ort::Error| Error::teacher(&path, format!("output `{}`: {e}", self.output));
            let (shape, values) = match value.dtype().tensor_type() {
                Some(TensorElementType::Float16) => value.try_extract_tensor::<f16>().map(|(s, v)| (s, Logits::F16(v))).map_err(bad)?,
                Some(TensorElementType::Bfloat16) => value.try_extract_tensor::<bf16>().map(|(s, v)| (s, Logits::Bf16(v))).map_err(bad)?,
                _ => value.try_extract_tensor::<f32>().map(|(s, v)| (s, Logits::F32(v))).map_err(bad)?,
            };
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            f(&shape, values)?
        };
        let presents = self
            .presents
            .iter()
            .map(|name| {
                outputs.remove(name).ok_or_else(|| Error::teacher(&path, format!("output `{name}` missing from the run's results")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((result, Past(presents)))
    }

    /// Run one batch; `f` sees the logits' shape and values while they are borrowed
    /// from ONNX Runtime (no copy), in the export's precision, and the [`Teacher::hidden`]
    /// outputs the same way.
    ///
    /// # Shapes
    /// - logits: `[batch, classes]` or `[batch, seq, vocab]`
    /// - hidden: `[batch, dim]` or `[batch, seq, dim]` each
    pub fn run<R>(
        &mut self,
        batch: &TeacherBatch<'_>,
        f: impl FnOnce(&[usize], Logits<'_>, &[HiddenValues<'_>]) -> Result<R>,
    ) -> Result<R> {
        let mut feeds: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = Vec::with_capacity(self.inputs.len());
        for plan in &self.inputs {
            let value = self.input_value(plan, batch)?;
            feeds.push((Cow::Owned(plan.name.clone()), value));
        }
        let path = self.path.clone();
        let outputs = self.session.run(feeds).map_err(|e| Error::teacher(&path, format!("inference failed: {e}")))?;
        let take = |name: &str| {
            let value =
                outputs.get(name).ok_or_else(|| Error::teacher(&path, format!("output `{name}` missing from the run's results")))?;
            let bad = |e: ort::Error| Error::teacher(&path, format!("output `{name}`: {e}"));
            let (shape, values) = match value.dtype().tensor_type() {
                Some(TensorElementType::Float16) => value.try_extract_tensor::<f16>().map(|(s, v)| (s, Logits::F16(v))).map_err(bad)?,
                Some(TensorElementType::Bfloat16) => value.try_extract_tensor::<bf16>().map(|(s, v)| (s, Logits::Bf16(v))).map_err(bad)?,
                _ => value.try_extract_tensor::<f32>().map(|(s, v)| (s, Logits::F32(v))).map_err(bad)?,
            };
            Ok(HiddenValues { shape: shape.iter().map(|&d| d.max(0) as usize).collect(), values })
        };
        let logits = take(&self.output)?;
        let hidden = self.hidden.iter().map(|h| take(&h.name)).collect::<Result<Vec<_>>>()?;
        f(&logits.shape, logits.values, &hidden)
    }
}

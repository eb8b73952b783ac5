//! How each ONNX input of the teacher is fed: the input plan made when the model loads
//! (a dataset column, or the token inputs a user should not have to provide), and the
//! tensors built from a batch by that plan.

use crate::cache::manifest::IoInfo;
use crate::error::{Error, Result};
use half::{bf16, f16};
use ort::session::SessionInputValue;
use ort::value::{Tensor, TensorElementType};
use std::path::Path;

use super::model::Teacher;
use super::run::TeacherBatch;
use super::session::listing;

/// How one ONNX input is filled.
#[derive(Debug, Clone, PartialEq)]
pub enum Feed {
    /// From a numeric dataset column of this name.
    Column(String),
    InputIds,
    AttentionMask,
    /// `cumsum(attention_mask) - 1`, clamped at 0 (what Hugging Face computes).
    PositionIds,
    /// All zeros (single-segment input).
    TokenTypeIds,
    /// A zero-length past: `[batch, heads, 0, head_dim]`, zeros.
    EmptyPast,
    /// The merged decoder's `use_cache_branch`: `[false]` (no past yet).
    NoCacheBranch,
    /// The hard labels of the in-graph soft-label nodes.
    HardLabels,
}

impl Feed {
    pub(super) fn describe(&self) -> String {
        match self {
            Feed::Column(c) => format!("column:{c}"),
            Feed::InputIds => "input_ids".into(),
            Feed::AttentionMask => "attention_mask".into(),
            Feed::PositionIds => "position_ids".into(),
            Feed::TokenTypeIds => "token_type_ids (zeros)".into(),
            Feed::EmptyPast => "empty past (length 0)".into(),
            Feed::NoCacheBranch => "false (no past)".into(),
            Feed::HardLabels => "hard labels".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct InputPlan {
    pub name: String,
    pub dtype: TensorElementType,
    pub shape: Vec<i64>,
    pub feed: Feed,
}

/// How inputs are mapped when the model is loaded.
#[derive(Debug, Clone, Default)]
pub struct InputMapping {
    /// Token model: feed `input_ids` & co from a tokenizer.
    pub tokens: bool,
    /// Explicit `input = column` pairs (numeric models).
    pub columns: Vec<(String, String)>,
    /// Output holding the logits; default `logits`, else the first output.
    pub output: Option<String>,
    /// Outputs returned beside the logits (`--hidden-states`).
    pub hidden: Vec<String>,
}

pub(super) fn dims(shape: &[i64]) -> String {
    let d: Vec<String> = shape.iter().map(|&d| if d < 0 { "?".to_string() } else { d.to_string() }).collect();
    format!("[{}]", d.join(", "))
}

/// How each input of the model is fed: a dataset column (numeric models, or `--input`), or
/// for a token model its ids, mask, positions, token types, an empty past or the merged
/// decoder's branch flag. Records each input's source in `io_inputs`; `types` are the
/// inputs' element types (`None`: not a tensor).
pub(super) fn plan_inputs(
    path: &Path,
    mapping: &InputMapping,
    types: &[Option<TensorElementType>],
    io_inputs: &mut [IoInfo],
) -> Result<Vec<InputPlan>> {
    let known = listing(io_inputs);
    let mut inputs = Vec::new();
    for (io, &dtype) in io_inputs.iter_mut().zip(types) {
        let name = io.name.clone();
        let Some(dtype) = dtype else {
            return Err(Error::teacher(path, format!("input `{name}` is not a tensor")));
        };
        let mapped = mapping.columns.iter().find(|(i, _)| *i == name).map(|(_, c)| c.clone());
        let feed = match mapped {
            Some(col) => Feed::Column(col),
            None if mapping.tokens => token_feed(path, &name, &io.shape, &known)?,
            // Numeric model: an input is fed from the dataset column of the same name.
            None => Feed::Column(name.clone()),
        };
        io.filled_from = Some(feed.describe());
        inputs.push(InputPlan { name, dtype, shape: io.shape.clone(), feed });
    }
    if mapping.tokens && !inputs.iter().any(|i| i.feed == Feed::InputIds) {
        return Err(Error::teacher(path, format!("a tokenizer was given but the model has no `input_ids` input; its inputs are: {known}")));
    }
    for (input, _) in &mapping.columns {
        if !inputs.iter().any(|i| &i.name == input) {
            return Err(Error::teacher(path, format!("--input names `{input}`, which the model does not have; its inputs are: {known}")));
        }
    }
    Ok(inputs)
}

/// What feeds the input `name` of a token model.
pub(super) fn token_feed(path: &Path, name: &str, shape: &[i64], known: &str) -> Result<Feed> {
    Ok(match name {
        "input_ids" => Feed::InputIds,
        "attention_mask" => Feed::AttentionMask,
        "position_ids" => Feed::PositionIds,
        "token_type_ids" => Feed::TokenTypeIds,
        "use_cache_branch" => Feed::NoCacheBranch,
        n if n.starts_with("past_key_values") || n.starts_with("past.") => {
            if shape.len() != 4 || shape[1] <= 0 || shape[3] <= 0 {
                return Err(Error::teacher(
                    path,
                    format!(
                        "past input `{n}` has shape {}, expected [batch, heads, past_seq, head_dim] with fixed heads and head_dim",
                        dims(shape)
                    ),
                ));
            }
            Feed::EmptyPast
        }
        _ => {
            return Err(Error::teacher(
                path,
                format!(
                    "cannot fill input `{name}` of a token model (known: input_ids, attention_mask, \
                     position_ids, token_type_ids, past_key_values.*, use_cache_branch); the model's inputs are: {known}"
                ),
            ));
        }
    })
}

pub(super) fn numeric_tensor(plan: &InputPlan, shape: Vec<i64>, values: &[f32]) -> std::result::Result<SessionInputValue<'static>, String> {
    let err = |e: ort::Error| format!("input `{}`: {e}", plan.name);
    Ok(match plan.dtype {
        TensorElementType::Float32 => Tensor::<f32>::from_array((shape, values.to_vec())).map_err(err)?.into_dyn().into(),
        TensorElementType::Float64 => {
            Tensor::<f64>::from_array((shape, values.iter().map(|&v| v as f64).collect::<Vec<_>>())).map_err(err)?.into_dyn().into()
        }
        TensorElementType::Int64 => {
            Tensor::<i64>::from_array((shape, values.iter().map(|&v| v as i64).collect::<Vec<_>>())).map_err(err)?.into_dyn().into()
        }
        TensorElementType::Int32 => {
            Tensor::<i32>::from_array((shape, values.iter().map(|&v| v as i32).collect::<Vec<_>>())).map_err(err)?.into_dyn().into()
        }
        other => return Err(format!("input `{}` has dtype {other}; numeric columns feed f32, f64, i64 or i32", plan.name)),
    })
}

pub(super) fn int_tensor(plan: &InputPlan, shape: Vec<i64>, values: Vec<i64>) -> std::result::Result<SessionInputValue<'static>, String> {
    let err = |e: ort::Error| format!("input `{}`: {e}", plan.name);
    Ok(match plan.dtype {
        TensorElementType::Int64 => Tensor::<i64>::from_array((shape, values)).map_err(err)?.into_dyn().into(),
        TensorElementType::Int32 => {
            Tensor::<i32>::from_array((shape, values.into_iter().map(|v| v as i32).collect::<Vec<_>>())).map_err(err)?.into_dyn().into()
        }
        TensorElementType::Bool => {
            Tensor::<bool>::from_array((shape, values.into_iter().map(|v| v != 0).collect::<Vec<_>>())).map_err(err)?.into_dyn().into()
        }
        other => return Err(format!("input `{}` has dtype {other}; token inputs feed i64, i32 or bool", plan.name)),
    })
}

impl Teacher {
    pub(super) fn input_value(&self, plan: &InputPlan, batch: &TeacherBatch<'_>) -> Result<SessionInputValue<'static>> {
        let bad = |m: String| Error::teacher(&self.path, m);
        match (&plan.feed, batch) {
            (Feed::Column(col), TeacherBatch::Numeric { batch, columns }) => {
                let (_, values, width) = columns
                    .iter()
                    .find(|(c, _, _)| c == col)
                    .ok_or_else(|| bad(format!("input `{}`: no values for column `{col}`", plan.name)))?;
                let shape: Vec<i64> = if plan.shape.len() == 1 { vec![*batch as i64] } else { vec![*batch as i64, *width as i64] };
                if plan.shape.len() == 1 && *width != 1 {
                    return Err(bad(format!("input `{}` is [batch] but column `{col}` has {width} values per row", plan.name)));
                }
                if plan.shape.len() > 2 {
                    return Err(bad(format!(
                        "input `{}` has shape {}; numeric columns feed [batch] or [batch, features]",
                        plan.name,
                        dims(&plan.shape)
                    )));
                }
                numeric_tensor(plan, shape, values).map_err(bad)
            }
            (Feed::Column(col), TeacherBatch::Tokens { .. }) => {
                Err(bad(format!("input `{}` is fed from column `{col}`, which a token batch does not carry", plan.name)))
            }
            (feed, TeacherBatch::Tokens { batch, seq, ids, mask }) => {
                let shape = vec![*batch as i64, *seq as i64];
                let values: Vec<i64> = match feed {
                    Feed::InputIds => ids.to_vec(),
                    Feed::AttentionMask => mask.to_vec(),
                    Feed::TokenTypeIds => vec![0; ids.len()],
                    Feed::PositionIds => {
                        let mut p = Vec::with_capacity(mask.len());
                        for row in mask.chunks(*seq) {
                            let mut c = 0i64;
                            for &m in row {
                                c += m;
                                p.push((c - 1).max(0));
                            }
                        }
                        p
                    }
                    Feed::EmptyPast => {
                        let s = vec![*batch as i64, plan.shape[1], 0, plan.shape[3]];
                        return match plan.dtype {
                            TensorElementType::Float32 => Tensor::<f32>::from_array((s, Vec::<f32>::new())).map(|t| t.into_dyn().into()),
                            TensorElementType::Float16 => Tensor::<f16>::from_array((s, Vec::<f16>::new())).map(|t| t.into_dyn().into()),
                            TensorElementType::Bfloat16 => Tensor::<bf16>::from_array((s, Vec::<bf16>::new())).map(|t| t.into_dyn().into()),
                            other => return Err(bad(format!("past input `{}` has dtype {other}", plan.name))),
                        }
                        .map_err(|e| bad(format!("input `{}`: {e}", plan.name)));
                    }
                    Feed::NoCacheBranch => {
                        let s: Vec<i64> = if plan.shape.is_empty() { vec![] } else { vec![1] };
                        return Tensor::<bool>::from_array((s, vec![false]))
                            .map(|t| t.into_dyn().into())
                            .map_err(|e| bad(format!("input `{}`: {e}", plan.name)));
                    }
                    Feed::Column(_) => unreachable!("handled above"),
                    Feed::HardLabels => return Err(bad(format!("input `{}` is fed by run_soft_labels", plan.name))),
                };
                int_tensor(plan, shape, values).map_err(bad)
            }
            (feed, TeacherBatch::Numeric { .. }) => {
                Err(bad(format!("input `{}` needs {} but the batch has no tokens", plan.name, feed.describe())))
            }
        }
    }
}

//! One training batch: the student's logits at the cached positions and the loss parts.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::LossConfig;
use crate::config::defaults::train as defaults;
use crate::loss::{self, HiddenMaps, SoftTargets};
use crate::student::{Positions, RowInput, Student};

use super::examples::Example;

/// The soft labels' shape: `k` entries per position over a `vocab`-wide distribution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Support {
    pub k: usize,
    pub vocab: usize,
}

/// The hidden-state term's side of a run: the learned maps, the student layers they read
/// and the width of each pair's cached teacher state.
pub(super) struct HiddenTerm<'a> {
    pub maps: &'a HiddenMaps,
    pub layers: &'a [usize],
    pub dims: &'a [usize],
}

/// The loss parts of one batch, its hidden-state term (weighted into `parts.loss` already)
/// and the positions it trained.
///
/// Only the positions with a cached soft label enter the loss. A decoder's batch is mostly
/// prompt and padding positions, so its hidden states are narrowed to the cached ones
/// before the final norm and the LM head ([`Positions::At`]).
///
/// # Shapes
/// - MLP: features `[b, input]` -> logits `[b, classes]`, one target per row
/// - encoder: tokens `[b, s]` -> logits `[b, classes]`, one target per row
/// - decoder: tokens `[b, s]` -> the `m` cached positions' logits `[m, vocab]`
/// - soft targets `[m, k]` (ids, log-probs) and `[m]` (tail); hard labels `[m]`
pub(super) fn batch_loss(
    model: &Student,
    batch: &[&Example],
    Support { k, vocab }: Support,
    cfg: &LossConfig,
    train_t: f32,
    hidden: Option<HiddenTerm<'_>>,
    device: &Device,
) -> (loss::LossParts, Option<Tensor<1>>, usize) {
    let mut cached: Vec<(usize, usize)> = Vec::new(); // (row in the batch, position)
    let (mut ids, mut lps, mut tail, mut hard, mut labelled) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut teacher_states: Vec<f32> = Vec::new(); // [m, sum of widths]
    let (mut drawn_teacher, mut drawn_generated) = (Vec::new(), Vec::new()); // [m] each, sampled-rkl
    for (r, e) in batch.iter().enumerate() {
        for t in &e.targets {
            cached.push((r, t.position));
            ids.extend(t.ids.iter().map(|&i| i as i64));
            lps.extend_from_slice(&t.logprobs);
            tail.push(t.tail);
            hard.push(t.hard.unwrap_or(0));
            labelled.push(if t.hard.is_some() { 1f32 } else { 0.0 });
            teacher_states.extend(t.hidden.iter().map(|v| v.to_f32()));
            if let Some((teacher, generated)) = t.sampled {
                drawn_teacher.push(teacher);
                drawn_generated.push(generated);
            }
        }
    }
    let count = cached.len();
    let rows: Vec<RowInput<'_>> = batch.iter().map(|e| RowInput { features: &e.features, tokens: &e.tokens }).collect();
    let layers = hidden.as_ref().map(|h| h.layers).unwrap_or(&[]);
    let soft = SoftTargets {
        ids: Tensor::from_data(TensorData::new(ids, [count, k]), device),
        logprobs: Tensor::from_data(TensorData::new(lps, [count, k]), device),
        tail_logmass: Tensor::from_data(TensorData::new(tail, [count]), device),
        sampled: (drawn_teacher.len() == count && cfg.divergence == loss::Divergence::SampledRkl).then(|| loss::SampledTokens {
            tokens: Tensor::from_data(TensorData::new(hard.clone(), [count]), device),
            teacher: Tensor::from_data(TensorData::new(drawn_teacher, [count]), device),
            generated: Tensor::from_data(TensorData::new(drawn_generated, [count]), device),
        }),
    };
    let hard: Tensor<1, Int> = Tensor::from_data(TensorData::new(hard, [count]), device);
    let mask: Tensor<1> = Tensor::ones([count], device);
    let labelled: Tensor<1> = Tensor::from_data(TensorData::new(labelled, [count]), device);
    let weights = loss::LossWeights { alpha: cfg.alpha, temperature: train_t, tail: cfg.tail, divergence: cfg.divergence };
    // A decoder's head and loss over chunks of positions when one block of the batch's
    // logits would pass the budget (the same loss; see loss::chunked_head_loss).
    let chunk = cfg.loss_chunk.unwrap_or_else(|| defaults::loss_chunk_positions(vocab));
    let fused = |logits: Tensor<2>| {
        // A student vocabulary padded past the cache's (checked in student::hf::check_fits): the
        // padding columns are not part of the distribution.
        let logits = if logits.dims()[1] > vocab { logits.narrow(1, 0, vocab) } else { logits };
        let w = weights;
        loss::fused_distillation_loss(
            logits,
            &soft,
            hard.clone(),
            mask.clone(),
            labelled.clone(),
            w.alpha,
            w.temperature,
            w.tail,
            w.divergence,
        )
    };
    let (mut parts, student_states) = match model.head_input(&rows, Positions::At(&cached), layers, device) {
        Some((h, head, states)) if count > chunk => {
            (loss::chunked_head_loss(h, &head, vocab, &soft, hard.clone(), mask.clone(), labelled.clone(), weights, chunk), states)
        }
        Some((h, head, states)) => (fused(crate::kernels::linear_with(head.weight, head.bias, h)), states),
        None => {
            let (logits, states) = model.forward(&rows, Positions::At(&cached), layers, device);
            (fused(logits), states)
        }
    };
    let hidden_term = hidden.map(|h| {
        let width: usize = h.dims.iter().sum();
        let all: Tensor<2> = Tensor::from_data(TensorData::new(teacher_states, [count, width]), device);
        let mut at = 0;
        let teacher: Vec<Tensor<2>> = h
            .dims
            .iter()
            .map(|&d| {
                at += d;
                all.clone().narrow(1, at - d, d)
            })
            .collect();
        h.maps.loss(student_states, teacher, cfg.hidden_loss)
    });
    if let Some(term) = &hidden_term {
        parts.loss = parts.loss + term.clone().mul_scalar(cfg.hidden_weight);
    }
    (parts, hidden_term, count)
}

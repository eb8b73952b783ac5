//! The LM head and the distillation loss over chunks of positions: at a real vocabulary the
//! student's `[positions, vocab]` logits and their gradient dominate a training step's
//! memory (8192 positions x 152k ids are 5 GB each in f32). Here each chunk's logits are
//! computed, turned into the loss's value and gradient ([`super::fused_terms`]), and folded
//! into the gradients of the head's input and weight at once, so only one chunk's
//! `[chunk, vocab]` block exists at a time. The result is one graph node per input with a
//! known gradient ([`kernels::with_gradient`]), as the unchunked fused loss is.

use burn::tensor::{Int, Tensor};

use crate::kernels;

use super::{Counts, LossParts, LossWeights, SoftTargets, fused_terms};

/// The LM head the chunks are computed with.
///
/// # Shapes
/// - `weight`: `[d, V_student]` (a Linear's weight, or a tied embedding transposed);
///   `bias`: `[V_student]`
pub struct HeadWeights {
    pub weight: Tensor<2>,
    pub bias: Option<Tensor<1>>,
}

/// `fused_distillation_loss(hidden @ weight + bias, ...)` computed `chunk` positions at a
/// time. `vocab` (at most the head's width) is the cache's: columns past it (a student
/// vocabulary padded past the cache's) are not part of the distribution.
///
/// # Shapes
/// - `hidden`: `[m, d]` (the final norm's output at the cached positions)
/// - `soft`, `hard`, `mask`, `labelled`: as [`super::fused_distillation_loss`], `m` rows
#[allow(clippy::too_many_arguments)]
pub fn chunked_head_loss(
    hidden: Tensor<2>,
    head: &HeadWeights,
    vocab: usize,
    soft: &SoftTargets,
    hard: Tensor<1, Int>,
    mask: Tensor<1>,
    labelled: Tensor<1>,
    weights: LossWeights,
    chunk: usize,
) -> LossParts {
    let [m, d] = hidden.dims();
    let tracked = hidden.is_autodiff();
    let h = hidden.clone().inner(); // [m, d]
    let w = head.weight.clone().inner().narrow(1, 0, vocab); // [d, V]
    let b = head.bias.clone().map(|b| b.inner().narrow(0, 0, vocab).unsqueeze_dim::<2>(0)); // [1, V]
    let soft = soft.inner();
    let (hard, mask, labelled) = (hard.inner(), mask.inner(), labelled.inner());
    let counts = Counts { masked: mask.clone().sum().clamp_min(1.0), labelled: labelled.clone().sum().clamp_min(1.0) };
    let (mut value, mut kl, mut ce) = (counts.masked.zeros_like(), counts.masked.zeros_like(), counts.masked.zeros_like());
    let mut grad_h = Vec::new(); // [c, d] per chunk
    let mut grad_w = w.zeros_like(); // [d, V]
    let mut grad_b = b.as_ref().map(|b| b.zeros_like()); // [1, V]
    let chunk = chunk.max(1);
    for start in (0..m).step_by(chunk) {
        let len = chunk.min(m - start);
        let h_c = h.clone().narrow(0, start, len); // [c, d]
        let z = h_c.clone().matmul(w.clone()); // [c, V]
        let z = match &b {
            Some(b) => z + b.clone(),
            None => z,
        };
        let soft_c = soft.narrow(start, len);
        let t = fused_terms(
            z,
            &soft_c,
            hard.clone().narrow(0, start, len),
            mask.clone().narrow(0, start, len),
            labelled.clone().narrow(0, start, len),
            &counts,
            weights,
        );
        value = value + t.value;
        kl = kl + t.kl;
        ce = ce + t.ce;
        grad_h.push(t.grad.clone().matmul(w.clone().transpose())); // [c, d]
        grad_w = grad_w + h_c.transpose().matmul(t.grad.clone()); // [d, V]
        grad_b = grad_b.map(|g| g + t.grad.sum_dim(0));
    }
    let back = |t: Tensor<1>| if tracked { t.autodiff() } else { t };
    if !tracked {
        return LossParts { loss: value, kl, ce };
    }
    let grad_h = if grad_h.is_empty() { h.zeros_like() } else { Tensor::cat(grad_h, 0) };
    debug_assert_eq!(grad_h.dims(), [m, d]);
    // The weight's gradient over the head's whole width (zero past the cache's vocabulary).
    let width = head.weight.dims()[1];
    let pad = |g: Tensor<2>| {
        if width > vocab { Tensor::cat(vec![g.clone(), Tensor::zeros([g.dims()[0], width - vocab], &g.device())], 1) } else { g }
    };
    let zero = value.zeros_like().autodiff();
    let mut loss = kernels::with_gradient(hidden, back(value), grad_h.autodiff())
        + kernels::with_gradient(head.weight.clone(), zero.clone(), pad(grad_w).autodiff());
    if let (Some(bias), Some(g)) = (&head.bias, grad_b) {
        loss = loss + kernels::with_gradient(bias.clone().unsqueeze_dim::<2>(0), zero, pad(g).autodiff());
    }
    LossParts { loss, kl: back(kl), ce: back(ce) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::{Divergence, TailMode, fused_distillation_loss};
    use burn::tensor::{Device, TensorData};

    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        crate::student::testing::values(n, seed, -scale, scale)
    }

    /// The chunked head + loss equals the head computed whole followed by the fused loss:
    /// the value, the divergence and cross-entropy terms, and the gradients with respect to
    /// the head's input, weight and bias (within 1e-5 relative, f32 sums in another order),
    /// for chunks that divide the positions and chunks that do not, both tail modes, another
    /// divergence, unlabelled positions and a head wider than the cache's vocabulary.
    #[test]
    fn chunks_give_the_loss_and_gradients_of_the_whole_head() {
        let device = Device::default().autodiff();
        let (m, d, width, vocab, k) = (7usize, 5usize, 13usize, 11usize, 4usize);
        let ids: Vec<i64> = (0..m * k).map(|i| ((i * 7 + i / k) % vocab) as i64).collect();
        // Distinct ids per row: ids i*7 + row mod 11 over 4 consecutive i are distinct.
        let mut lps = Vec::new();
        for r in 0..m {
            let raw: Vec<f32> = values(k, 10 + r as u64, 1.0).iter().map(|v| v - 2.0).collect();
            let mut sorted = raw.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            lps.extend(sorted);
        }
        let tail: Vec<f32> = (0..m).map(|r| (0.3 + 0.05 * r as f32).ln()).collect();
        let labelled: Vec<f32> = (0..m).map(|r| if r % 3 == 2 { 0.0 } else { 1.0 }).collect();
        let hard: Vec<i64> = (0..m).map(|r| ((r * 5) % vocab) as i64).collect();
        for (tail_mode, divergence, chunk) in [
            (TailMode::Bucket, Divergence::ForwardKl, 3),
            (TailMode::Bucket, Divergence::ForwardKl, 7),
            (TailMode::Renormalize, Divergence::ForwardKl, 2),
            (TailMode::Bucket, Divergence::parse("jsd:0.5").unwrap(), 4),
        ] {
            let run = |chunked: bool| {
                let h: Tensor<2> = Tensor::from_data(TensorData::new(values(m * d, 1, 1.0), [m, d]), &device).require_grad();
                let w: Tensor<2> = Tensor::from_data(TensorData::new(values(d * width, 2, 0.8), [d, width]), &device).require_grad();
                let b: Tensor<1> = Tensor::from_data(TensorData::new(values(width, 3, 0.5), [width]), &device).require_grad();
                let soft = SoftTargets {
                    ids: Tensor::from_data(TensorData::new(ids.clone(), [m, k]), &device),
                    logprobs: Tensor::from_data(TensorData::new(lps.clone(), [m, k]), &device),
                    tail_logmass: Tensor::from_data(TensorData::new(tail.clone(), [m]), &device),
                    sampled: None,
                };
                let hard_t: Tensor<1, Int> = Tensor::from_data(TensorData::new(hard.clone(), [m]), &device);
                let mask: Tensor<1> = Tensor::ones([m], &device);
                let lab: Tensor<1> = Tensor::from_data(TensorData::new(labelled.clone(), [m]), &device);
                let weights = LossWeights { alpha: 0.6, temperature: 2.0, tail: tail_mode, divergence };
                let parts = if chunked {
                    let head = HeadWeights { weight: w.clone(), bias: Some(b.clone()) };
                    chunked_head_loss(h.clone(), &head, vocab, &soft, hard_t, mask, lab, weights, chunk)
                } else {
                    let logits = kernels::linear_with(w.clone(), Some(b.clone()), h.clone()).narrow(1, 0, vocab);
                    fused_distillation_loss(logits, &soft, hard_t, mask, lab, 0.6, 2.0, tail_mode, divergence)
                };
                let grads = parts.loss.backward();
                let get = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
                let g2 = |t: &Tensor<2>| t.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
                let gb = b.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
                let values = [get(parts.loss.clone().inner().autodiff()), get(parts.kl), get(parts.ce)].concat();
                (values, g2(&h), g2(&w), gb)
            };
            let (a, b) = (run(false), run(true));
            let close = |x: &[f32], y: &[f32], what: &str| {
                assert_eq!(x.len(), y.len());
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    assert!((p - q).abs() <= 1e-5 * (1.0 + p.abs()), "{tail_mode:?} {divergence} chunk {chunk}: {what}[{i}] {p} vs {q}");
                }
            };
            close(&a.0, &b.0, "loss, kl, ce");
            close(&a.1, &b.1, "d/d hidden");
            close(&a.2, &b.2, "d/d weight");
            close(&a.3, &b.3, "d/d bias");
            assert!(b.2.iter().skip(vocab).step_by(width).all(|&g| g == 0.0), "no gradient past the cache's vocabulary");
        }
    }
}

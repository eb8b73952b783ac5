//! Stage two's objective: the distillation loss over cached top-k soft labels plus the
//! hard-label cross-entropy. Pure functions over tensors; no I/O.
//!
//! `L = alpha * T^2 * KL(p_teacher,T || p_student,T) + (1 - alpha) * CE(p_student,1, hard)`
//! (Hinton et al. 2015). The cache holds only the teacher's top-k, so the KL is taken over
//! one of two documented supports ([`TailMode`]):
//!
//! - `Renormalize`: both distributions are restricted to the teacher's top-k ids and
//!   renormalised there; the mass outside is ignored.
//! - `Bucket`: the top-k ids plus one "rest" bucket; the teacher's rest mass is the exact
//!   `tail_logmass` from stage one and the student's is `1 - sum_k p_student`. This is the KL
//!   between the two distributions coarsened to k + 1 outcomes, a lower bound of the full KL
//!   that equals it when k = vocabulary.

use burn::tensor::activation::log_softmax;
use burn::tensor::{IndexingUpdateOp, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::kernels;

mod chunked;
mod divergence;
pub mod hidden;

pub use chunked::{HeadWeights, chunked_head_loss};
use divergence::divergence_terms;
pub use divergence::{Divergence, MAX_IMPORTANCE_WEIGHT, SampledTokens, divergence_per_position, sampled_per_position};
pub use hidden::{HiddenLoss, HiddenMaps, HiddenPair, HiddenPairs};

/// How the mass outside the cached top-k is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TailMode {
    /// The top-k renormalised to sum to one (the tail is dropped).
    #[serde(alias = "renormalise")]
    #[value(alias = "renormalise")]
    Renormalize,
    /// The mass outside the top-k as one more outcome (exact, from the cache).
    Bucket,
}

/// The teacher side of a batch.
///
/// # Shapes
/// - `ids`: `[n, k]` token/class ids
/// - `logprobs`: `[n, k]` teacher log-probs at the training temperature
/// - `tail_logmass`: `[n]` log of the teacher mass outside the top-k (used by `Bucket`;
///   ignored when `k` equals the vocabulary)
pub struct SoftTargets {
    pub ids: Tensor<2, Int>,
    pub logprobs: Tensor<2>,
    pub tail_logmass: Tensor<1>,
    /// The tokens drawn, for [`Divergence::SampledRkl`] (`None` for the other divergences).
    pub sampled: Option<SampledTokens>,
}

/// The loss and its parts (each a mean over the positions that count).
pub struct LossParts {
    /// `alpha * T^2 * kl + (1 - alpha) * ce`, shape `[1]`.
    pub loss: Tensor<1>,
    /// Mean divergence (KL unless another is chosen; without `T^2`), shape `[1]`.
    pub kl: Tensor<1>,
    /// Mean cross-entropy with the hard labels, shape `[1]`.
    pub ce: Tensor<1>,
}

/// Floor for the student's rest mass before its log (keeps the gradient finite when the
/// student puts everything inside the top-k).
pub(crate) const MIN_REST: f64 = 1e-12;

/// Per-position KL(teacher || student) over the cached support.
///
/// # Shapes
/// - `student_logits`: `[n, vocab]`
/// - returns `[n]`
pub fn kl_per_position(student_logits: Tensor<2>, soft: &SoftTargets, temperature: f32, tail: TailMode) -> Tensor<1> {
    let [_, vocab] = student_logits.dims();
    let [_, k] = soft.ids.dims();
    let student = log_softmax(student_logits.div_scalar(temperature), 1);
    let student_k = student.gather(1, soft.ids.clone()); // [n, k]
    let teacher = soft.logprobs.clone();
    match tail {
        TailMode::Bucket if k < vocab => {
            let p = teacher.clone().exp();
            let inside = (p * (teacher - student_k.clone())).sum_dim(1).squeeze_dim::<1>(1); // [n]
            let student_rest = (student_k.exp().sum_dim(1).squeeze_dim::<1>(1).neg() + 1.0).clamp_min(MIN_REST).log();
            let teacher_rest = soft.tail_logmass.clone();
            inside + teacher_rest.clone().exp() * (teacher_rest - student_rest)
        }
        _ => {
            // Renormalised over the top-k (also the exact KL when k = vocabulary).
            let t = teacher.clone() - log_sum_exp(teacher).unsqueeze_dim(1);
            let s = student_k.clone() - log_sum_exp(student_k).unsqueeze_dim(1);
            (t.clone().exp() * (t - s)).sum_dim(1).squeeze_dim::<1>(1)
        }
    }
}

/// Per-position cross-entropy with the hard labels at temperature 1.
///
/// # Shapes
/// - `student_logits`: `[n, vocab]`, `hard`: `[n]`, returns `[n]`
pub fn ce_per_position(student_logits: Tensor<2>, hard: Tensor<1, Int>) -> Tensor<1> {
    let lp = log_softmax(student_logits, 1);
    lp.gather(1, hard.unsqueeze_dim(1)).squeeze_dim::<1>(1).neg()
}

/// The distillation loss, averaged over the positions where `mask` is 1.
///
/// # Shapes
/// - `student_logits`: `[n, vocab]`
/// - `soft`: see [`SoftTargets`] (`[n, k]`)
/// - `hard`: `[n]` class / next-token ids (any value where `mask` is 0)
/// - `mask`: `[n]`, 1 for positions that count, 0 for padding
pub fn distillation_loss(
    student_logits: Tensor<2>,
    soft: &SoftTargets,
    hard: Tensor<1, Int>,
    mask: Tensor<1>,
    alpha: f32,
    temperature: f32,
    tail: TailMode,
) -> LossParts {
    distillation_loss_partly_labelled(student_logits, soft, hard, mask.clone(), mask, alpha, temperature, tail, Divergence::ForwardKl)
}

/// [`distillation_loss`] where some positions have no hard label (unlabelled transfer rows,
/// soft labels only): the KL is averaged over the positions where `mask` is 1, the
/// cross-entropy over those where `labelled` is 1 (0 when a batch has none).
///
/// With [`Divergence::SampledRkl`] its value is the fused loss's but its autodiff gradient is
/// not the estimator's (it differentiates `d` itself): train with
/// [`fused_distillation_loss`], which backpropagates `d * grad log q_T(y)`.
///
/// # Shapes
/// - as [`distillation_loss`]; `labelled`: `[n]`, 1 where `hard` holds a label (and `mask` is 1)
#[allow(clippy::too_many_arguments)]
pub fn distillation_loss_partly_labelled(
    student_logits: Tensor<2>,
    soft: &SoftTargets,
    hard: Tensor<1, Int>,
    mask: Tensor<1>,
    labelled: Tensor<1>,
    alpha: f32,
    temperature: f32,
    tail: TailMode,
    divergence: Divergence,
) -> LossParts {
    let count = mask.clone().sum().clamp_min(1.0);
    let labelled_count = labelled.clone().sum().clamp_min(1.0);
    let ce = (ce_per_position(student_logits.clone(), hard) * labelled).sum() / labelled_count;
    let kl = if alpha > 0.0 {
        (divergence_per_position(student_logits, soft, temperature, tail, divergence) * mask).sum() / count
    } else {
        ce.zeros_like()
    };
    let t2 = temperature * temperature;
    let loss = kl.clone().mul_scalar(alpha * t2) + ce.clone().mul_scalar(1.0 - alpha);
    LossParts { loss, kl, ce }
}

/// [`distillation_loss_partly_labelled`] with the gradient with respect to the logits
/// written out, for training: the same value (up to float rounding) and the same gradient,
/// but the `[n, vocab]` part of the graph is one multiply instead of two log-softmaxes,
/// gathers and their backward passes, each a chain of full-size element-wise tensors. With
/// `z` the logits, `q = softmax(z)`, `q_T = softmax(z / T)`, `w` each position's weight in the
/// mean and `K` the cached ids:
///
/// - CE: `d/dz_j = q_j - [j = y]`
/// - KL, `Bucket`: `d/dz_j = (1/T) (q_T,j (S_p + p_rest) - p_j [j in K] - (p_rest / q_rest)
///   q_T,j [j not in K])`, with `S_p` the teacher's top-k mass, `q_rest = 1 - sum_K q_T` (no
///   `p_rest` terms where `q_rest` is clamped, as the reference's `clamp_min` gives)
/// - KL, `Renormalize`: `d/dz_j = (1/T) (softmax_K(z_K / T)_j S_t - t_j)` for `j` in `K`, 0
///   elsewhere, with `t` the renormalised teacher (`S_t` its sum, 1 up to rounding)
///
/// The returned `loss` is one graph node ([`kernels::with_gradient`]): its value is the loss and
/// it backpropagates `G` into `z`.
/// `kl` and `ce` carry no gradient. The tests check value and gradient against the reference.
///
/// # Shapes
/// - as [`distillation_loss_partly_labelled`]
#[allow(clippy::too_many_arguments)]
pub fn fused_distillation_loss(
    student_logits: Tensor<2>,
    soft: &SoftTargets,
    hard: Tensor<1, Int>,
    mask: Tensor<1>,
    labelled: Tensor<1>,
    alpha: f32,
    temperature: f32,
    tail: TailMode,
    divergence: Divergence,
) -> LossParts {
    // The terms are computed on the backend without autodiff (no graph is recorded, and
    // softmax is the backend's own kernel); only the loss node below is tracked.
    let tracked = student_logits.is_autodiff();
    let z = student_logits.clone().inner(); // [n, V]
    let soft = soft.inner();
    let (hard, mask, labelled) = (hard.inner(), mask.inner(), labelled.inner());
    let counts = Counts { masked: mask.clone().sum().clamp_min(1.0), labelled: labelled.clone().sum().clamp_min(1.0) };
    let terms = fused_terms(z, &soft, hard, mask, labelled, &counts, LossWeights { alpha, temperature, tail, divergence });
    let back = |t: Tensor<1>| if tracked { t.autodiff() } else { t };
    let loss = if tracked { kernels::with_gradient(student_logits, back(terms.value), terms.grad.autodiff()) } else { terms.value };
    LossParts { loss, kl: back(terms.kl), ce: back(terms.ce) }
}

/// The denominators of the loss's means: the positions the divergence averages over (the
/// mask's sum) and the labelled ones the cross-entropy averages over, each at least 1.
/// # Shapes
/// - `[1]` each
pub(crate) struct Counts {
    pub masked: Tensor<1>,
    pub labelled: Tensor<1>,
}

/// The loss's settings.
#[derive(Debug, Clone, Copy)]
pub struct LossWeights {
    pub alpha: f32,
    pub temperature: f32,
    pub tail: TailMode,
    pub divergence: Divergence,
}

/// The loss of some positions as a share of a batch's (`counts` are the batch's): its value,
/// divergence and cross-entropy terms (summed over these positions, divided by the batch's
/// counts, so the shares of a batch's chunks add up to its loss) and the gradient with
/// respect to the logits. Tensors without autodiff.
pub(crate) struct Terms {
    /// `[1]` each
    pub value: Tensor<1>,
    pub kl: Tensor<1>,
    pub ce: Tensor<1>,
    /// `[n, V]`
    pub grad: Tensor<2>,
}

impl SoftTargets {
    /// The same targets without autodiff.
    pub(crate) fn inner(&self) -> SoftTargets {
        SoftTargets {
            ids: self.ids.clone().inner(),
            logprobs: self.logprobs.clone().inner(),
            tail_logmass: self.tail_logmass.clone().inner(),
            sampled: self.sampled.as_ref().map(SampledTokens::inner),
        }
    }

    /// Positions `start..start + len`.
    pub(crate) fn narrow(&self, start: usize, len: usize) -> SoftTargets {
        SoftTargets {
            ids: self.ids.clone().narrow(0, start, len),
            logprobs: self.logprobs.clone().narrow(0, start, len),
            tail_logmass: self.tail_logmass.clone().narrow(0, start, len),
            sampled: self.sampled.as_ref().map(|s| s.narrow(start, len)),
        }
    }
}

/// [`fused_distillation_loss`]'s value and gradient over logits `z` (no autodiff).
///
/// # Shapes
/// - `z`: `[n, V]`; `soft`, `hard`, `mask`, `labelled` as [`fused_distillation_loss`]
pub(crate) fn fused_terms(
    z: Tensor<2>,
    soft: &SoftTargets,
    hard: Tensor<1, Int>,
    mask: Tensor<1>,
    labelled: Tensor<1>,
    counts: &Counts,
    LossWeights { alpha, temperature, tail, divergence }: LossWeights,
) -> Terms {
    let [_, vocab] = z.dims();
    let [_, k] = soft.ids.dims();
    let zmax = z.clone().max_dim(1); // [n, 1]
    let (count, labelled_count) = (counts.masked.clone(), counts.labelled.clone());

    // The student's distribution at T over the whole vocabulary: only the tail bucket needs
    // it (the renormalised KL reads the cached ids alone).
    let qt = (alpha > 0.0 && tail == TailMode::Bucket && k < vocab).then(|| kernels::softmax(z.clone(), 1.0 / temperature as f64)); // [n, V]
    // At T = 1 and T = 2 the distribution at temperature 1 follows from q_T without a second
    // pass of exponentials (the step's costliest element-wise work on a CPU):
    // softmax(z) = q_T^T / sum(q_T^T).
    let q1 = match &qt {
        Some(qt) if temperature == 1.0 => qt.clone(),
        Some(qt) if temperature == 2.0 => {
            let u = qt.clone() * qt.clone();
            let total = u.clone().sum_dim(1);
            u / total
        }
        _ => kernels::softmax(z.clone(), 1.0),
    }; // [n, V]
    // Cross-entropy at T = 1. log Z = z_max - log(q_max), and q_max >= 1 / V cannot underflow.
    let lse1 = zmax.clone() - q1.clone().max_dim(1).log(); // [n, 1]
    let y = hard.unsqueeze_dim::<2>(1); // [n, 1]
    let ce_i = (lse1.clone() - z.clone().gather(1, y.clone())).squeeze_dim::<1>(1); // [n]
    let ce = (ce_i * labelled.clone()).sum() / labelled_count.clone();
    let w_ce = (labelled / labelled_count).mul_scalar(1.0 - alpha).unsqueeze_dim::<2>(1); // [n, 1]
    let mut grad = q1.clone() * w_ce.clone(); // [n, V]
    let mut idx = vec![y]; // scattered into `grad`: [n, 1] and [n, k]
    let mut vals = vec![w_ce.neg()];

    let kl = if alpha > 0.0 {
        // d(alpha T^2 KL_mean)/dz = alpha T^2 * mask / count * (1/T) * (...)
        let w = (mask.clone() / count.clone()).mul_scalar(alpha * temperature).unsqueeze_dim::<2>(1); // [n, 1]
        let zk = z.clone().gather(1, soft.ids.clone()).div_scalar(temperature); // [n, k]
        let teacher = soft.logprobs.clone(); // [n, k]
        let kl_i = match tail {
            _ if divergence == Divergence::SampledRkl => {
                let s = soft.sampled.as_ref().expect("sampled-rkl needs the sampled tokens (checked before training)");
                let qt = if temperature == 1.0 { q1.clone() } else { kernels::softmax(z.clone(), 1.0 / temperature as f64) }; // [n, V]
                let (d, dense, at_y) = divergence::sampled_terms(&z, &zmax, &lse1, qt, s, temperature, &w);
                grad = grad + dense;
                idx.push(s.tokens.clone().unsqueeze_dim::<2>(1));
                vals.push(at_y);
                d
            }
            _ if divergence != Divergence::ForwardKl => {
                let (d, dense, g_val) = divergence_terms(divergence, tail, k < vocab, qt, &zmax, &zk, soft, temperature, &w);
                if let Some(dense) = dense {
                    grad = grad + dense;
                }
                idx.push(soft.ids.clone());
                vals.push(g_val);
                d
            }
            TailMode::Bucket if k < vocab => {
                let qt = qt.expect("computed above for the tail bucket"); // [n, V]
                let lse_t = zmax.div_scalar(temperature) - qt.clone().max_dim(1).log(); // [n, 1]
                let sk = zk - lse_t; // [n, k] student log-probs at T over the cached ids
                let qk = sk.clone().exp();
                let p = teacher.clone().exp();
                let inside = (p.clone() * (teacher - sk)).sum_dim(1); // [n, 1]
                let rest = qk.clone().sum_dim(1).neg() + 1.0; // [n, 1]
                let clamped = rest.clone().lower_elem(MIN_REST);
                let student_rest = rest.clone().clamp_min(MIN_REST).log();
                let tail_lm = soft.tail_logmass.clone().unsqueeze_dim::<2>(1); // [n, 1]
                let pr = tail_lm.clone().exp();
                // A teacher with no mass outside the top-k contributes nothing there (0 * -inf).
                let rest_term = (pr.clone() * (tail_lm - student_rest)).mask_fill(pr.clone().equal_elem(0.0), 0.0);
                let pr_free = pr.mask_fill(clamped, 0.0);
                let r = pr_free.clone() / rest.clamp_min(MIN_REST); // p_rest / q_rest
                let a = p.clone().sum_dim(1) + pr_free;
                grad = grad + qt * ((a - r.clone()) * w.clone());
                idx.push(soft.ids.clone());
                vals.push((r * qk - p) * w);
                (inside + rest_term).squeeze_dim::<1>(1)
            }
            _ => {
                // Renormalised over the top-k (also the exact KL when k = vocabulary).
                let t = teacher.clone() - log_sum_exp(teacher).unsqueeze_dim(1); // [n, k]
                let s = log_softmax(zk, 1); // [n, k]
                let pt = t.clone().exp();
                idx.push(soft.ids.clone());
                vals.push((s.clone().exp() * pt.clone().sum_dim(1) - pt.clone()) * w);
                (pt * (t - s)).sum_dim(1).squeeze_dim::<1>(1)
            }
        };
        (kl_i * mask).sum() / count
    } else {
        ce.zeros_like()
    };
    let grad = grad.scatter(1, Tensor::cat(idx, 1), Tensor::cat(vals, 1), IndexingUpdateOp::Add);
    let t2 = temperature * temperature;
    let value = kl.clone().mul_scalar(alpha * t2) + ce.clone().mul_scalar(1.0 - alpha);
    Terms { value, kl, ce, grad }
}

/// `log(sum(exp(x)))` over dim 1, stable. `[n, k] -> [n]`
pub(crate) fn log_sum_exp(x: Tensor<2>) -> Tensor<1> {
    let max = x.clone().max_dim(1).detach(); // [n, 1]
    ((x - max.clone()).exp().sum_dim(1).log() + max).squeeze_dim::<1>(1)
}

/// Re-temper cached log-probs from the cache temperature to a training temperature,
/// renormalised over the top-k: with `lp_i = z_i / T_c - log Z`, `z_i / T_t = lp_i * T_c / T_t
/// + const`, so the top-k's relative values at `T_t` are exact. The mass outside the top-k at
/// `T_t` is not recoverable, which is why `Bucket` refuses a different temperature.
///
/// # Shapes
/// - `logprobs`: `[k]` (in place)
pub fn retemper(logprobs: &mut [f32], cache_temperature: f32, train_temperature: f32) {
    let scale = cache_temperature as f64 / train_temperature as f64;
    let max = logprobs.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64 * scale));
    let lse = max + logprobs.iter().map(|&v| (v as f64 * scale - max).exp()).sum::<f64>().ln();
    for v in logprobs.iter_mut() {
        *v = (*v as f64 * scale - lse) as f32;
    }
}

#[cfg(test)]
mod tests;

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

/// The divergence between the teacher's and the student's distributions over the cached
/// support (`--divergence`). Each is a sum over the support's outcomes (the cached ids, and
/// with [`TailMode::Bucket`] the rest bucket) of a term in the teacher's probability `p` and
/// the student's `q` there:
///
/// - `ForwardKl`: `p log(p / q)` (Hinton et al.; the default)
/// - `ReverseKl`: `q log(q / p)`, the teacher's log floored at `ln 1e-12` (a zero there would
///   make any student mass infinitely wrong)
/// - `Jsd(beta)`: `beta p log(p / m) + (1 - beta) q log(q / m)`, `m = beta p + (1 - beta) q`
///   (the generalised JSD of TRL's GKD and Liger-Kernel), `0 < beta < 1`
/// - `Tvd`: `|p - q| / 2` (DistillKit)
/// - `SkewKl(lambda)`: `p log(p / m)`, `m = lambda p + (1 - lambda) q` (DistiLLM)
/// - `SkewRkl(lambda)`: `q log(q / m)`, `m = (1 - lambda) p + lambda q` (DistiLLM)
///
/// All are scaled by `T^2` in the loss, as the KL is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Divergence {
    ForwardKl,
    ReverseKl,
    Jsd(f32),
    Tvd,
    SkewKl(f32),
    SkewRkl(f32),
}

impl Divergence {
    /// `forward-kl`, `reverse-kl`, `jsd:BETA`, `tvd`, `skew-kl:LAMBDA`, `skew-rkl:LAMBDA`.
    pub fn parse(s: &str) -> std::result::Result<Divergence, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let weight = |what: &str| -> std::result::Result<f32, String> {
            let a = arg.ok_or_else(|| format!("`{name}` needs its {what}: `{name}:0.1`"))?;
            let v: f32 = a.parse().map_err(|_| format!("`{a}` is not a number ({name}'s {what})"))?;
            if v > 0.0 && v < 1.0 { Ok(v) } else { Err(format!("{name}'s {what} must be strictly between 0 and 1 (got {v})")) }
        };
        let plain = |d: Divergence| match arg {
            None => Ok(d),
            Some(_) => Err(format!("`{name}` takes no argument")),
        };
        match name {
            "forward-kl" | "kl" => plain(Divergence::ForwardKl),
            "reverse-kl" => plain(Divergence::ReverseKl),
            "tvd" => plain(Divergence::Tvd),
            "jsd" => Ok(Divergence::Jsd(weight("beta")?)),
            "skew-kl" => Ok(Divergence::SkewKl(weight("lambda")?)),
            "skew-rkl" => Ok(Divergence::SkewRkl(weight("lambda")?)),
            other => {
                Err(format!("unknown divergence `{other}` (known: forward-kl, reverse-kl, jsd:BETA, tvd, skew-kl:LAMBDA, skew-rkl:LAMBDA)"))
            }
        }
    }

    /// The term of one outcome and its derivative in `q`, elementwise.
    ///
    /// # Shapes
    /// - `p`, `logp`, `q`, `logq`: one shape; returns two of it
    fn term<const D: usize>(self, p: Tensor<D>, logp: Tensor<D>, q: Tensor<D>, logq: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        match self {
            Divergence::ForwardKl => ((logp - logq) * p.clone(), (p / q).neg()),
            Divergence::ReverseKl => {
                let logp = logp.clamp_min(MIN_REST.ln());
                let d = logq - logp;
                (d.clone() * q, d + 1.0)
            }
            Divergence::Tvd => {
                let diff = q - p;
                (diff.clone().abs().mul_scalar(0.5), diff.sign().mul_scalar(0.5))
            }
            Divergence::SkewKl(l) => {
                let m = p.clone().mul_scalar(l) + q.mul_scalar(1.0 - l);
                let value = (logp - m.clone().log()) * p.clone();
                (value, (p / m).mul_scalar(-(1.0 - l)))
            }
            Divergence::SkewRkl(l) => {
                let m = p.mul_scalar(1.0 - l) + q.clone().mul_scalar(l);
                let logm = m.clone().log();
                let value = (logq.clone() - logm.clone()) * q.clone();
                (value, logq - logm + 1.0 - (q / m).mul_scalar(l))
            }
            Divergence::Jsd(b) => {
                let m = p.clone().mul_scalar(b) + q.clone().mul_scalar(1.0 - b);
                let logm = m.log();
                let value = (logp - logm.clone()) * p.mul_scalar(b) + (logq.clone() - logm.clone()) * q.mul_scalar(1.0 - b);
                (value, (logq - logm).mul_scalar(1.0 - b))
            }
        }
    }
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Divergence::ForwardKl => write!(f, "forward-kl"),
            Divergence::ReverseKl => write!(f, "reverse-kl"),
            Divergence::Tvd => write!(f, "tvd"),
            Divergence::Jsd(b) => write!(f, "jsd:{b}"),
            Divergence::SkewKl(l) => write!(f, "skew-kl:{l}"),
            Divergence::SkewRkl(l) => write!(f, "skew-rkl:{l}"),
        }
    }
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
const MIN_REST: f64 = 1e-12;

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

/// Per-position [`Divergence`] over the cached support, composed from Burn operations (the
/// reference the fused loss is tested against; forward KL is [`kl_per_position`]).
///
/// # Shapes
/// - `student_logits`: `[n, vocab]`; returns `[n]`
pub fn divergence_per_position(
    student_logits: Tensor<2>,
    soft: &SoftTargets,
    temperature: f32,
    tail: TailMode,
    div: Divergence,
) -> Tensor<1> {
    if div == Divergence::ForwardKl {
        return kl_per_position(student_logits, soft, temperature, tail);
    }
    let [_, vocab] = student_logits.dims();
    let [_, k] = soft.ids.dims();
    let student_k = log_softmax(student_logits.div_scalar(temperature), 1).gather(1, soft.ids.clone()); // [n, k]
    let teacher = soft.logprobs.clone();
    let (logp, logq) = match tail {
        TailMode::Bucket if k < vocab => {
            let rest = (student_k.clone().exp().sum_dim(1).neg() + 1.0).clamp_min(MIN_REST).log(); // [n, 1]
            (Tensor::cat(vec![teacher, soft.tail_logmass.clone().unsqueeze_dim(1)], 1), Tensor::cat(vec![student_k, rest], 1))
        }
        _ => (teacher.clone() - log_sum_exp(teacher).unsqueeze_dim(1), student_k.clone() - log_sum_exp(student_k).unsqueeze_dim(1)),
    };
    let (d, _) = div.term(logp.clone().exp(), logp, logq.clone().exp(), logq);
    d.sum_dim(1).squeeze_dim::<1>(1)
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
    let [_, vocab] = student_logits.dims();
    let [_, k] = soft.ids.dims();
    // Everything up to the last line runs on the backend without autodiff: no graph is
    // recorded, and softmax is the backend's own kernel rather than autodiff's composition.
    let tracked = student_logits.is_autodiff();
    let z = student_logits.clone().inner(); // [n, V]
    let soft = SoftTargets {
        ids: soft.ids.clone().inner(),
        logprobs: soft.logprobs.clone().inner(),
        tail_logmass: soft.tail_logmass.clone().inner(),
    };
    let (hard, mask, labelled) = (hard.inner(), mask.inner(), labelled.inner());
    let zmax = z.clone().max_dim(1); // [n, 1]
    let count = mask.clone().sum().clamp_min(1.0); // [1]
    let labelled_count = labelled.clone().sum().clamp_min(1.0); // [1]

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
    let ce_i = (lse1 - z.clone().gather(1, y.clone())).squeeze_dim::<1>(1); // [n]
    let ce = (ce_i * labelled.clone()).sum() / labelled_count.clone();
    let w_ce = (labelled / labelled_count).mul_scalar(1.0 - alpha).unsqueeze_dim::<2>(1); // [n, 1]
    let mut grad = q1 * w_ce.clone(); // [n, V]
    let mut idx = vec![y]; // scattered into `grad`: [n, 1] and [n, k]
    let mut vals = vec![w_ce.neg()];

    let kl = if alpha > 0.0 {
        // d(alpha T^2 KL_mean)/dz = alpha T^2 * mask / count * (1/T) * (...)
        let w = (mask.clone() / count.clone()).mul_scalar(alpha * temperature).unsqueeze_dim::<2>(1); // [n, 1]
        let zk = z.clone().gather(1, soft.ids.clone()).div_scalar(temperature); // [n, k]
        let teacher = soft.logprobs.clone(); // [n, k]
        let kl_i = match tail {
            _ if divergence != Divergence::ForwardKl => {
                let (d, dense, g_val) = divergence_terms(divergence, tail, k < vocab, qt, &zmax, &zk, &soft, temperature, &w);
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
    let back = |t: Tensor<1>| if tracked { t.autodiff() } else { t };
    let loss = if tracked { kernels::with_gradient(student_logits, back(value), grad.autodiff()) } else { value };
    LossParts { loss, kl: back(kl), ce: back(ce) }
}

/// A [`Divergence`] other than forward KL, per position, with its gradient in the logits
/// (the chain rule through the support's probabilities, written out). With `g_o` the term's
/// derivative in `q_o` at each outcome and `c = sum_o g_o q_o`:
///
/// - `Bucket`: `d/dz_j = (1/T) q_T,j (g_rest - c)` for every `j`, plus `(1/T) q_j (g_j -
///   g_rest)` at the cached ids (`g_rest = 0` where the student's rest mass is clamped);
/// - `Renormalize`: `d/dz_j = (1/T) s_j (g_j - c)` at the cached ids, `s` the student
///   renormalised there.
///
/// Returns the per-position values `[n]`, the dense part of the gradient `[n, V]` (none for
/// `Renormalize`) and the values scattered at the cached ids `[n, k]`, all weighted by `w`.
#[allow(clippy::too_many_arguments)]
fn divergence_terms(
    div: Divergence,
    tail: TailMode,
    truncated: bool,
    qt: Option<Tensor<2>>,
    zmax: &Tensor<2>,
    zk: &Tensor<2>,
    soft: &SoftTargets,
    temperature: f32,
    w: &Tensor<2>,
) -> (Tensor<1>, Option<Tensor<2>>, Tensor<2>) {
    let teacher = soft.logprobs.clone();
    match (tail, truncated) {
        (TailMode::Bucket, true) => {
            let qt = qt.expect("computed for the tail bucket"); // [n, V]
            let lse_t = zmax.clone().div_scalar(temperature) - qt.clone().max_dim(1).log(); // [n, 1]
            let logq = zk.clone() - lse_t; // [n, k]
            let q = logq.clone().exp();
            let rest = q.clone().sum_dim(1).neg() + 1.0; // [n, 1]
            let clamped = rest.clone().lower_elem(MIN_REST);
            let q_rest = rest.clamp_min(MIN_REST);
            let tail_lm = soft.tail_logmass.clone().unsqueeze_dim::<2>(1); // [n, 1]
            let (d_k, g_k) = div.term(teacher.clone().exp(), teacher, q.clone(), logq);
            let (d_r, g_r) = div.term(tail_lm.clone().exp(), tail_lm, q_rest.clone(), q_rest.clone().log());
            let g_r = g_r.mask_fill(clamped, 0.0);
            let c = (g_k.clone() * q.clone()).sum_dim(1) + g_r.clone() * q_rest; // [n, 1]
            let dense = qt * ((g_r.clone() - c) * w.clone());
            let at_ids = q * (g_k - g_r) * w.clone();
            ((d_k.sum_dim(1) + d_r).squeeze_dim::<1>(1), Some(dense), at_ids)
        }
        _ => {
            let t = teacher.clone() - log_sum_exp(teacher).unsqueeze_dim(1); // [n, k]
            let logs = log_softmax(zk.clone(), 1); // [n, k]
            let s = logs.clone().exp();
            let (d, g) = div.term(t.clone().exp(), t, s.clone(), logs);
            let c = (g.clone() * s.clone()).sum_dim(1); // [n, 1]
            (d.sum_dim(1).squeeze_dim::<1>(1), None, s * (g - c) * w.clone())
        }
    }
}

/// `log(sum(exp(x)))` over dim 1, stable. `[n, k] -> [n]`
fn log_sum_exp(x: Tensor<2>) -> Tensor<1> {
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
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn dev() -> Device {
        Device::default()
    }

    fn t2(v: &[f32], n: usize, k: usize) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [n, k]), &dev())
    }

    fn scalar(t: Tensor<1>) -> f64 {
        t.into_data().try_to_vec::<f32>().unwrap()[0] as f64
    }

    /// f64 log-softmax of a row, the hand reference.
    fn log_softmax_ref(z: &[f64], t: f64) -> Vec<f64> {
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b / t));
        let lse = m + z.iter().map(|&x| (x / t - m).exp()).sum::<f64>().ln();
        z.iter().map(|&x| x / t - lse).collect()
    }

    fn soft_full(teacher_logits: &[f64], t: f64) -> (Vec<f32>, Vec<i64>) {
        let lp = log_softmax_ref(teacher_logits, t);
        (lp.iter().map(|&v| v as f32).collect(), (0..lp.len() as i64).collect())
    }

    fn targets(lp: Vec<f32>, ids: Vec<i64>, tail: Vec<f32>, n: usize, k: usize) -> SoftTargets {
        SoftTargets {
            ids: Tensor::from_data(TensorData::new(ids, [n, k]), &dev()),
            logprobs: t2(&lp, n, k),
            tail_logmass: Tensor::from_data(TensorData::new(tail.clone(), [n]), &dev()),
        }
    }

    /// k = vocabulary: the cached KL equals the full KL computed directly (f64, by hand):
    /// KL = sum p_t (log p_t - log p_s) with both at T = 2.
    #[test]
    fn full_vocabulary_equals_full_kl() {
        let teacher = [2.0, 1.0, 0.1, -1.0];
        let student = [0.5f32, 0.3, 0.9, -0.2];
        let t = 2.0;
        let pt = log_softmax_ref(&teacher, t);
        let ps = log_softmax_ref(&student.map(|v| v as f64), t);
        let want: f64 = pt.iter().zip(&ps).map(|(a, b)| a.exp() * (a - b)).sum();
        let (lp, ids) = soft_full(&teacher, t);
        for mode in [TailMode::Renormalize, TailMode::Bucket] {
            let soft = targets(lp.clone(), ids.clone(), vec![f32::NEG_INFINITY], 1, 4);
            let kl = scalar(kl_per_position(t2(&student, 1, 4), &soft, t as f32, mode));
            assert!((kl - want).abs() < 1e-6, "{mode:?}: {kl} vs {want}");
        }
    }

    /// KL >= 0 on random inputs, and 0 when the student equals the teacher, in both modes
    /// with k < vocabulary (the student's rest mass then equals the stored tail mass).
    #[test]
    fn kl_is_nonnegative_and_zero_at_the_teacher() {
        let teacher = [3.0, -1.0, 0.5, 2.0, 0.0, -2.0];
        let t = 1.5;
        let lp = log_softmax_ref(&teacher, t);
        // top-3 ids: 0 (3.0), 3 (2.0), 2 (0.5); tail = log(sum of the other three p)
        let ids = vec![0i64, 3, 2];
        let top: Vec<f32> = ids.iter().map(|&i| lp[i as usize] as f32).collect();
        let tail = ([1usize, 4, 5].iter().map(|&i| lp[i].exp()).sum::<f64>()).ln() as f32;
        let same: Vec<f32> = teacher.iter().map(|&v| v as f32).collect();
        for mode in [TailMode::Renormalize, TailMode::Bucket] {
            let soft = targets(top.clone(), ids.clone(), vec![tail], 1, 3);
            let at_teacher = scalar(kl_per_position(t2(&same, 1, 6), &soft, t as f32, mode));
            assert!(at_teacher.abs() < 1e-6, "{mode:?}: {at_teacher}");
            for shift in [0.3f32, -2.0, 5.0] {
                let other: Vec<f32> = same.iter().enumerate().map(|(i, v)| v + shift * (i as f32 - 2.5)).collect();
                let kl = scalar(kl_per_position(t2(&other, 1, 6), &soft, t as f32, mode));
                assert!(kl > 0.0, "{mode:?} shift {shift}: {kl}");
            }
        }
    }

    /// Bucket mode against PyTorch on a k < vocab case:
    /// ```python
    /// import torch
    /// t = torch.tensor([3.0, -1.0, 0.5, 2.0, 0.0, -2.0]); s = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 0.0]); T = 1.5
    /// pt = torch.log_softmax(t / T, 0); ps = torch.log_softmax(s / T, 0); ids = [0, 3, 2]; rest = [1, 4, 5]
    /// P = torch.cat([pt[ids], pt[rest].logsumexp(0, keepdim=True)]); Q = torch.cat([ps[ids], ps[rest].logsumexp(0, keepdim=True)])
    /// print((P.exp() * (P - Q)).sum().item())          # 0.30920493602752686
    /// Pr = pt[ids] - pt[ids].logsumexp(0); Qr = ps[ids] - ps[ids].logsumexp(0)
    /// print((Pr.exp() * (Pr - Qr)).sum().item())       # 0.18064472079277039
    /// ```
    #[test]
    fn matches_pytorch_on_a_truncated_support() {
        let teacher = [3.0, -1.0, 0.5, 2.0, 0.0, -2.0];
        let student = [1.0f32, 0.0, 1.0, 1.0, 0.5, 0.0];
        let t = 1.5;
        let lp = log_softmax_ref(&teacher, t);
        let ids = vec![0i64, 3, 2];
        let top: Vec<f32> = ids.iter().map(|&i| lp[i as usize] as f32).collect();
        let tail = ([1usize, 4, 5].iter().map(|&i| lp[i].exp()).sum::<f64>()).ln() as f32;
        let soft = targets(top, ids, vec![tail], 1, 3);
        let bucket = scalar(kl_per_position(t2(&student, 1, 6), &soft, t as f32, TailMode::Bucket));
        let renorm = scalar(kl_per_position(t2(&student, 1, 6), &soft, t as f32, TailMode::Renormalize));
        assert!((bucket - 0.309_204_94).abs() < 1e-5, "{bucket}");
        assert!((renorm - 0.180_644_72).abs() < 1e-5, "{renorm}");
    }

    /// Every divergence against PyTorch (f64) on the case above, over the bucket and the
    /// renormalised support, and with k = vocabulary against the divergence over the whole
    /// distribution (the bucket is then empty):
    /// ```python
    /// # P, Q, Pr, Qr as above, in float64; pt, ps the full log-softmaxes
    /// def divs(P, Q):
    ///     p, q = P.exp(), Q.exp(); kl = lambda a, la, lb: (a * (la - lb)).sum(); out = {}
    ///     out["reverse-kl"] = kl(q, Q, P)
    ///     for b in [0.5, 0.1]:
    ///         m = b * p + (1 - b) * q; out[f"jsd:{b}"] = b * kl(p, P, m.log()) + (1 - b) * kl(q, Q, m.log())
    ///     out["tvd"] = 0.5 * (p - q).abs().sum()
    ///     m = 0.1 * p + 0.9 * q; out["skew-kl:0.1"] = kl(p, P, m.log())
    ///     m = 0.9 * p + 0.1 * q; out["skew-rkl:0.1"] = kl(q, Q, m.log())
    ///     return out
    /// print(divs(P, Q), divs(Pr, Qr), divs(pt, ps))   # the numbers below
    /// ```
    #[test]
    fn divergences_match_pytorch() {
        let teacher = [3.0, -1.0, 0.5, 2.0, 0.0, -2.0];
        let student = [1.0f32, 0.0, 1.0, 1.0, 0.5, 0.0];
        let t = 1.5;
        let lp = log_softmax_ref(&teacher, t);
        let ids = vec![0i64, 3, 2];
        let top: Vec<f32> = ids.iter().map(|&i| lp[i as usize] as f32).collect();
        let tail = ([1usize, 4, 5].iter().map(|&i| lp[i].exp()).sum::<f64>()).ln() as f32;
        let soft = targets(top, ids, vec![tail], 1, 3);
        let (full_lp, full_ids) = soft_full(&teacher, t);
        let full = targets(full_lp, full_ids, vec![f32::NEG_INFINITY], 1, 6);
        let cases: [(&str, f64, f64, f64); 6] = [
            ("reverse-kl", 0.327_340_063_5, 0.211_141_491_5, 0.356_172_420_7),
            ("jsd:0.5", 0.076_670_668_7, 0.047_282_018_4, 0.079_961_327_9),
            ("jsd:0.1", 0.027_622_644_2, 0.016_345_594_1, 0.028_455_091_0),
            ("tvd", 0.357_351_889_6, 0.254_109_699_9, 0.357_351_889_6),
            ("skew-kl:0.1", 0.247_152_938_7, 0.148_032_377_1, 0.255_199_673_7),
            ("skew-rkl:0.1", 0.255_116_513_6, 0.161_501_029_3, 0.270_220_763_9),
        ];
        for (name, bucket, renorm, whole) in cases {
            let d = Divergence::parse(name).unwrap();
            let get = |soft: &SoftTargets, mode| scalar(divergence_per_position(t2(&student, 1, 6), soft, t as f32, mode, d));
            for (what, got, want) in [
                ("bucket", get(&soft, TailMode::Bucket), bucket),
                ("renormalize", get(&soft, TailMode::Renormalize), renorm),
                ("k = V", get(&full, TailMode::Bucket), whole),
            ] {
                assert!((got - want).abs() < 1e-5, "{name} {what}: {got} vs PyTorch {want}");
            }
        }
        assert!(Divergence::parse("jsd").is_err() && Divergence::parse("jsd:1.5").is_err() && Divergence::parse("tvd:0.1").is_err());
        assert_eq!(Divergence::parse("skew-rkl:0.1").unwrap().to_string(), "skew-rkl:0.1");
    }

    /// Sampled soft labels give an unbiased distillation gradient: the mean over 20000
    /// seeded draws of the forward-KL gradient (tail bucket, N = 4 draws per position on a
    /// 6-token vocabulary) equals the gradient of the full KL (k = V, exact) within 0.02 —
    /// about six standard errors of the mean, `T * 0.5 / sqrt(4 * 20000)` — while a top-2
    /// cache of the same teacher, its tail exact, is biased by more than that.
    #[test]
    fn sampled_soft_labels_give_an_unbiased_gradient() {
        let (teacher, student) = ([2.0f32, 1.5, 0.2, -0.5, 0.8, -1.0], [0.3f32, -0.2, 1.0, 0.4, -0.6, 0.1]);
        let (v, t, draws, samples) = (6usize, 2.0f32, 4usize, 20000usize);
        // The gradient of the mean loss over `n` copies of the student, summed over the copies.
        let device = dev().autodiff();
        let on = |s: SoftTargets| SoftTargets {
            ids: Tensor::from_data(s.ids.into_data(), &device),
            logprobs: Tensor::from_data(s.logprobs.into_data(), &device),
            tail_logmass: Tensor::from_data(s.tail_logmass.into_data(), &device),
        };
        let grad = |soft: SoftTargets, n: usize| -> Vec<f64> {
            let soft = on(soft);
            let z: Tensor<2> = Tensor::from_data(TensorData::new(student.repeat(n), [n, v]), &device).require_grad();
            let ones: Tensor<1> = Tensor::ones([n], &device);
            let hard: Tensor<1, Int> = Tensor::zeros([n], &device);
            let parts =
                fused_distillation_loss(z.clone(), &soft, hard, ones.clone(), ones, 1.0, t, TailMode::Bucket, Divergence::ForwardKl);
            let g = z.grad(&parts.loss.backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
            (0..v).map(|j| (0..n).map(|r| g[r * v + j] as f64).sum()).collect()
        };
        let teacher64: Vec<f64> = teacher.iter().map(|&x| x as f64).collect();
        let (lp, ids) = soft_full(&teacher64, t as f64);
        let full = grad(targets(lp.clone(), ids, vec![f32::NEG_INFINITY], 1, v), 1);
        let (mut s_ids, mut s_lp, mut s_tail) = (Vec::new(), Vec::new(), Vec::new());
        for seed in 0..samples as u64 {
            let mut out = crate::teacher::SoftLabel { ids: vec![], logprobs: vec![], tail_logmass: 0.0, entropy: 0.0 };
            crate::teacher::sample::sampled_soft_label(&teacher, v, t, draws, (seed, 0, 0), &mut out).unwrap();
            s_ids.extend(out.ids.iter().map(|&i| i as i64));
            s_lp.extend(out.logprobs);
            s_tail.push(out.tail_logmass);
        }
        let sampled = grad(targets(s_lp, s_ids, s_tail, samples, draws), samples);
        for j in 0..v {
            assert!((sampled[j] - full[j]).abs() < 0.02, "d/dz[{j}]: sampled mean {} vs full {}", sampled[j], full[j]);
        }
        // Top-2 with the exact tail mass: the gradient inside the tail follows the student.
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]));
        let tail = order[2..].iter().map(|&i| (lp[i] as f64).exp()).sum::<f64>().ln() as f32;
        let top2 =
            grad(targets(order[..2].iter().map(|&i| lp[i]).collect(), order[..2].iter().map(|&i| i as i64).collect(), vec![tail], 1, 2), 1);
        let bias = (0..v).map(|j| (top2[j] - full[j]).abs()).fold(0.0, f64::max);
        assert!(bias > 0.05, "the top-2 gradient should be biased: {bias}");
    }

    /// alpha = 0 is plain cross-entropy; by hand: logits [1, 2, 0], label 1:
    /// CE = -(2 - log(e + e^2 + 1)) = log(2.718282 + 7.389056 + 1) - 2 = 0.407606.
    /// alpha = 1 is T^2 * KL (T = 3 scales the same KL by 9).
    #[test]
    fn alpha_zero_is_cross_entropy_and_t_squared_scales_the_kl() {
        let logits = [1.0f32, 2.0, 0.0];
        let (lp, ids) = soft_full(&[0.0, 1.0, 3.0], 3.0);
        let soft = targets(lp, ids, vec![f32::NEG_INFINITY], 1, 3);
        let hard: Tensor<1, Int> = Tensor::from_data(TensorData::new(vec![1i64], [1]), &dev());
        let one: Tensor<1> = Tensor::ones([1], &dev());
        let p = distillation_loss(t2(&logits, 1, 3), &soft, hard.clone(), one.clone(), 0.0, 3.0, TailMode::Bucket);
        assert!((scalar(p.loss) - 0.407606).abs() < 1e-5);
        let p = distillation_loss(t2(&logits, 1, 3), &soft, hard, one, 1.0, 3.0, TailMode::Bucket);
        let kl = scalar(p.kl);
        assert!(kl > 0.0);
        assert!((scalar(p.loss) - 9.0 * kl).abs() < 1e-5);
    }

    /// Masked positions do not count: a batch of [good, garbage] with mask [1, 0] has the
    /// loss of [good] alone.
    #[test]
    fn masked_positions_do_not_count() {
        let (lp, ids) = soft_full(&[0.0, 1.0, 3.0], 2.0);
        let one = targets(lp.clone(), ids.clone(), vec![f32::NEG_INFINITY], 1, 3);
        let two =
            targets([lp.clone(), vec![-0.1, -5.0, -9.0]].concat(), [ids.clone(), vec![2, 1, 0]].concat(), vec![f32::NEG_INFINITY; 2], 2, 3);
        let h1: Tensor<1, Int> = Tensor::from_data(TensorData::new(vec![2i64], [1]), &dev());
        let h2: Tensor<1, Int> = Tensor::from_data(TensorData::new(vec![2i64, 0], [2]), &dev());
        let m1: Tensor<1> = Tensor::ones([1], &dev());
        let m2: Tensor<1> = Tensor::from_data(TensorData::new(vec![1f32, 0.0], [2]), &dev());
        let a = distillation_loss(t2(&[0.2, 0.1, 0.4], 1, 3), &one, h1, m1, 0.5, 2.0, TailMode::Renormalize);
        let b = distillation_loss(t2(&[0.2, 0.1, 0.4, 9.0, -9.0, 3.0], 2, 3), &two, h2, m2, 0.5, 2.0, TailMode::Renormalize);
        assert!((scalar(a.loss) - scalar(b.loss)).abs() < 1e-6);
    }

    /// Re-tempering cached log-probs equals computing them at the new temperature and
    /// renormalising over the same top-k (hand reference in f64).
    #[test]
    fn retemper_is_exact_over_the_top_k() {
        let z = [4.0, 2.5, 1.0, -3.0, 0.2];
        let cached = log_softmax_ref(&z, 2.0);
        let mut top: Vec<f32> = cached[..3].iter().map(|&v| v as f32).collect();
        retemper(&mut top, 2.0, 1.0);
        let want = log_softmax_ref(&z[..3], 1.0);
        for (a, b) in top.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    /// Unlabelled positions (labelled = 0) leave the cross-entropy of the labelled ones
    /// unchanged and still enter the KL; a batch with no label has CE 0.
    #[test]
    fn unlabelled_positions_count_in_the_kl_only() {
        let d = dev();
        let logits = t2(&[0.2, 0.1, 0.4, 9.0, -9.0, 3.0], 2, 3);
        let d = &d;
        let soft = SoftTargets {
            ids: Tensor::from_data(TensorData::new(vec![2i64, 0, 1, 0, 2, 1], [2, 3]), d),
            logprobs: Tensor::from_data(TensorData::new(vec![-0.5f32, -1.5, -1.6, -0.2, -2.0, -3.0], [2, 3]), d),
            tail_logmass: Tensor::from_data(TensorData::new(vec![-1e4f32, -1e4], [2]), d),
        };
        let hard: Tensor<1, Int> = Tensor::from_data(TensorData::new(vec![2i64, 0], [2]), d);
        let mask: Tensor<1> = Tensor::ones([2], d);
        let labelled: Tensor<1> = Tensor::from_data(TensorData::new(vec![1f32, 0.0], [2]), d);
        let part = distillation_loss_partly_labelled(
            logits.clone(),
            &soft,
            hard.clone(),
            mask.clone(),
            labelled,
            0.5,
            2.0,
            TailMode::Renormalize,
            Divergence::ForwardKl,
        );
        let full = distillation_loss(logits.clone(), &soft, hard.clone(), mask.clone(), 0.5, 2.0, TailMode::Renormalize);
        // CE of row 0 alone: -log_softmax([0.2, 0.1, 0.4])[2] (by hand: 0.9398).
        let ce0 = -(0.4f64 - (0.2f64.exp() + 0.1f64.exp() + 0.4f64.exp()).ln());
        assert!((scalar(part.ce.clone()) - ce0).abs() < 1e-5, "{} vs {ce0}", scalar(part.ce.clone()));
        assert!((scalar(part.kl.clone()) - scalar(full.kl.clone())).abs() < 1e-6, "the KL ignores labels");
        let none: Tensor<1> = Tensor::zeros([2], d);
        let p = distillation_loss_partly_labelled(logits, &soft, hard, mask, none, 0.5, 2.0, TailMode::Renormalize, Divergence::ForwardKl);
        assert_eq!(scalar(p.ce.clone()), 0.0);
    }

    /// The fused loss against the autodiff reference: same value, same gradient with
    /// respect to the logits, in both tail modes, with k < V and k = V, with unlabelled and
    /// masked positions, with a student whose rest mass is clamped, for alpha 0 / 0.5 / 1 and
    /// T = 1, 2 (where softmax(z) comes from q_T) and 3 (a second softmax).
    #[test]
    fn fused_matches_the_reference_in_value_and_gradient() {
        let device = dev().autodiff();
        let (n, v) = (5usize, 7usize);
        // Deterministic pseudo-random logits (a linear congruential sequence), spread over
        // about [-4, 4]. In row 4 the teacher's top-3 are ids 0..3 and the student puts all
        // but e^-60 of its mass on id 0: its rest mass 1 - sum_K q is exactly 0 in f32 on both
        // paths, so it is clamped (a rest mass near 1e-7 would be rounding noise, clamped or
        // not by chance).
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) * 8.0 - 4.0
        };
        let mut z: Vec<f32> = (0..n * v).map(|_| next() as f32).collect();
        for j in 0..v {
            z[4 * v + j] = if j == 0 { 60.0 } else { -60.0 };
        }
        let mut teacher: Vec<f64> = (0..n * v).map(|_| next()).collect();
        for j in 0..v {
            teacher[4 * v + j] = if j < 3 { 10.0 } else { -10.0 }; // top-3 = the student's ids 0..3
        }
        let divergences = [
            Divergence::ForwardKl,
            Divergence::ReverseKl,
            Divergence::Jsd(0.5),
            Divergence::Jsd(0.1),
            Divergence::Tvd,
            Divergence::SkewKl(0.1),
            Divergence::SkewRkl(0.1),
        ];
        for (&(k, tail), &div) in [(3usize, TailMode::Bucket), (3, TailMode::Renormalize), (v, TailMode::Bucket)]
            .iter()
            .flat_map(|c| divergences.iter().map(move |d| (c, d)))
        {
            for (&alpha, &temperature) in [0.0f32, 0.5, 1.0].iter().flat_map(|a| [(a, &1.0f32), (a, &2.0), (a, &3.0)]) {
                let (mut ids, mut lps, mut tails) = (Vec::new(), Vec::new(), Vec::new());
                for r in 0..n {
                    let lp = log_softmax_ref(&teacher[r * v..(r + 1) * v], temperature as f64);
                    let mut order: Vec<usize> = (0..v).collect();
                    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]));
                    ids.extend(order[..k].iter().map(|&i| i as i64));
                    lps.extend(order[..k].iter().map(|&i| lp[i] as f32));
                    let rest: f64 = order[k..].iter().map(|&i| lp[i].exp()).sum();
                    tails.push(if k == v { f32::NEG_INFINITY } else { rest.ln() as f32 });
                }
                let soft = SoftTargets {
                    ids: Tensor::from_data(TensorData::new(ids, [n, k]), &device),
                    logprobs: Tensor::from_data(TensorData::new(lps, [n, k]), &device),
                    tail_logmass: Tensor::from_data(TensorData::new(tails, [n]), &device),
                };
                let hard: Tensor<1, Int> = Tensor::from_data(TensorData::new(vec![1i64, 0, 6, 2, 5], [n]), &device);
                let mask: Tensor<1> = Tensor::from_data(TensorData::new(vec![1f32, 1.0, 0.0, 1.0, 1.0], [n]), &device);
                let labelled: Tensor<1> = Tensor::from_data(TensorData::new(vec![1f32, 0.0, 0.0, 1.0, 1.0], [n]), &device);
                let run = |fused: bool| {
                    let x: Tensor<2> = Tensor::from_data(TensorData::new(z.clone(), [n, v]), &device).require_grad();
                    let f = if fused { fused_distillation_loss } else { distillation_loss_partly_labelled };
                    let parts = f(x.clone(), &soft, hard.clone(), mask.clone(), labelled.clone(), alpha, temperature, tail, div);
                    let grads = parts.loss.backward();
                    let g = x.grad(&grads).expect("gradient").into_data().try_to_vec::<f32>().unwrap();
                    (scalar(parts.loss), scalar(parts.kl), scalar(parts.ce), g)
                };
                let (want, got) = (run(false), run(true));
                let case = format!("{div}, k = {k}, {tail:?}, alpha = {alpha}, T = {temperature}");
                for (name, a, b) in [("loss", want.0, got.0), ("kl", want.1, got.1), ("ce", want.2, got.2)] {
                    assert!(a.is_finite() && (a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{case}: {name} {b} vs reference {a}");
                }
                for (j, (a, b)) in want.3.iter().zip(&got.3).enumerate() {
                    assert!((a - b).abs() <= 1e-5, "{case}: d loss / d z[{}, {}] = {b}, reference {a}", j / v, j % v);
                }
            }
        }
    }
}

//! The divergences stage two may distil with (`--divergence`), over the cached support,
//! each with its gradient in the student's logits written out for the fused loss.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use burn::tensor::Int;

use super::{MIN_REST, SoftTargets, TailMode, kl_per_position, log_sum_exp};

/// The tokens the student drew, for [`Divergence::SampledRkl`] on data the student wrote
/// and the teacher scored (`generate --student`, then `cache-teacher --token-ids`).
///
/// `rho` is a truncated importance weight for staleness: the student's probability of `y`
/// at temperature 1 now over when it was generated (`generated`), at most
/// [`MAX_IMPORTANCE_WEIGHT`]; 1 where the generation's log-prob is unknown (NaN) or the
/// student has not changed. On the student's own samples `E_y[(log q - log p) grad log q]`
/// is the reverse KL's gradient (the `+1` of `grad (q log q)` has mean zero), so the term
/// trains the student where it is, not where the teacher's text was.
///
/// # Shapes
/// - `tokens`: `[n]` the token each position's hard label is (the one drawn)
/// - `teacher`: `[n]` the teacher's log-prob of it at the cache's temperature
///   (`hard_label_logprob`)
/// - `generated`: `[n]` the student's log-prob of it at T = 1 when generated, or NaN
pub struct SampledTokens {
    pub tokens: Tensor<1, Int>,
    pub teacher: Tensor<1>,
    pub generated: Tensor<1>,
}

impl SampledTokens {
    /// The same without autodiff.
    pub(crate) fn inner(&self) -> SampledTokens {
        SampledTokens {
            tokens: self.tokens.clone().inner(),
            teacher: self.teacher.clone().inner(),
            generated: self.generated.clone().inner(),
        }
    }

    /// Positions `start..start + len`.
    pub(crate) fn narrow(&self, start: usize, len: usize) -> SampledTokens {
        SampledTokens {
            tokens: self.tokens.clone().narrow(0, start, len),
            teacher: self.teacher.clone().narrow(0, start, len),
            generated: self.generated.clone().narrow(0, start, len),
        }
    }
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
/// - `SampledRkl`: not a sum over the support but the per-token estimator of on-policy
///   distillation (GKD; "on-policy distillation", Thinking Machines 2025), for data the
///   student wrote: at each position, with `y` the token the student drew (the hard label),
///   `d = rho (log q(y) - log p(y))`, whose mean estimates the reverse KL; its gradient is
///   `d * grad log q(y)` (see [`SampledTokens`])
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
    SampledRkl,
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
            "sampled-rkl" => plain(Divergence::SampledRkl),
            "jsd" => Ok(Divergence::Jsd(weight("beta")?)),
            "skew-kl" => Ok(Divergence::SkewKl(weight("lambda")?)),
            "skew-rkl" => Ok(Divergence::SkewRkl(weight("lambda")?)),
            other => Err(format!(
                "unknown divergence `{other}` (known: forward-kl, reverse-kl, jsd:BETA, tvd, skew-kl:LAMBDA, skew-rkl:LAMBDA, sampled-rkl)"
            )),
        }
    }

    /// The term of one outcome and its derivative in `q`, elementwise.
    ///
    /// # Shapes
    /// - `p`, `logp`, `q`, `logq`: one shape; returns two of it
    fn term<const D: usize>(self, p: Tensor<D>, logp: Tensor<D>, q: Tensor<D>, logq: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        match self {
            Divergence::SampledRkl => unreachable!("sampled-rkl is a term at the drawn token, not a sum over the support"),
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

impl std::str::FromStr for Divergence {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Divergence, String> {
        Divergence::parse(s)
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
            Divergence::SampledRkl => write!(f, "sampled-rkl"),
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
    if div == Divergence::SampledRkl {
        return sampled_per_position(student_logits, soft, temperature);
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
pub(super) fn divergence_terms(
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

/// The largest importance weight of a sampled token ([`SampledTokens`]): truncated, so a
/// token the student has since made much more likely does not dominate a batch.
pub const MAX_IMPORTANCE_WEIGHT: f32 = 2.0;

/// `d = rho (log q_T(y) - log p_T(y))` per position ([`Divergence::SampledRkl`]), composed
/// from Burn operations: the reference of the fused loss's value. (Its own gradient is not
/// the estimator's: the fused loss backpropagates `d * grad log q_T(y)`, `d` held constant.)
///
/// # Shapes
/// - `student_logits`: `[n, vocab]`; returns `[n]`
pub fn sampled_per_position(student_logits: Tensor<2>, soft: &SoftTargets, temperature: f32) -> Tensor<1> {
    let s = soft.sampled.as_ref().expect("sampled-rkl needs the sampled tokens (checked before training)");
    let y = s.tokens.clone().unsqueeze_dim::<2>(1); // [n, 1]
    let student = log_softmax(student_logits.clone().div_scalar(temperature), 1).gather(1, y.clone()).squeeze_dim::<1>(1);
    let now = log_softmax(student_logits, 1).gather(1, y).squeeze_dim::<1>(1);
    (student - s.teacher.clone()) * importance_weight(now, s.generated.clone())
}

/// [`Divergence::SampledRkl`] per position, with its gradient in the logits: `d` held
/// constant, `d/dz_j` of `alpha T^2 mean(d log q_T(y))` is `alpha T (mask / count) d ([j = y]
/// - q_T,j)`, i.e. `w d ([j = y] - q_T,j)` with the fused loss's `w`.
///
/// Returns `d` `[n]`, the dense part `-w d q_T` `[n, V]` and the value scattered at `y`,
/// `w d` `[n, 1]`.
///
/// # Shapes
/// - `z`: `[n, V]` logits; `zmax`, `lse1` (their max and log-sum-exp at T = 1), `w`: `[n, 1]`;
///   `qt`: `[n, V]` the student's softmax at T
pub(super) fn sampled_terms(
    z: &Tensor<2>,
    zmax: &Tensor<2>,
    lse1: &Tensor<2>,
    qt: Tensor<2>,
    s: &SampledTokens,
    temperature: f32,
    w: &Tensor<2>,
) -> (Tensor<1>, Tensor<2>, Tensor<2>) {
    let lse_t = zmax.clone().div_scalar(temperature) - qt.clone().max_dim(1).log(); // [n, 1]
    let y = s.tokens.clone().unsqueeze_dim::<2>(1); // [n, 1]
    let z_y = z.clone().gather(1, y); // [n, 1]
    let student = (z_y.clone().div_scalar(temperature) - lse_t).squeeze_dim::<1>(1); // [n] log q_T(y)
    let now = (z_y - lse1.clone()).squeeze_dim::<1>(1); // [n] log q_1(y)
    let d = (student - s.teacher.clone()) * importance_weight(now, s.generated.clone()); // [n]
    let wd = w.clone() * d.clone().unsqueeze_dim::<2>(1); // [n, 1]
    (d, (qt * wd.clone()).neg(), wd)
}

/// `rho = min(exp(log q_1(y) - log q_gen(y)), MAX_IMPORTANCE_WEIGHT)`, 1 where the
/// generation's log-prob is unknown (NaN). No gradient.
///
/// # Shapes
/// - `now`, `generated`: `[n]`; returns `[n]`
pub(crate) fn importance_weight(now: Tensor<1>, generated: Tensor<1>) -> Tensor<1> {
    let unknown = generated.clone().is_nan();
    (now.detach() - generated.mask_fill(unknown.clone(), 0.0)).exp().clamp_max(MAX_IMPORTANCE_WEIGHT).mask_fill(unknown, 1.0)
}

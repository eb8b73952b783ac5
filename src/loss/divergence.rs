//! The divergences stage two may distil with (`--divergence`), over the cached support,
//! each with its gradient in the student's logits written out for the fused loss.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use super::{MIN_REST, SoftTargets, TailMode, kl_per_position, log_sum_exp};

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

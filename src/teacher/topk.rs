//! Stage one's numeric core: one row of teacher logits -> the top-k of the
//! temperature-softened distribution, the exact log of the mass outside it, and
//! the distribution's entropy.
//!
//! Everything is computed over the **full** distribution: the kept log-probs are
//! `log_softmax(logits / T)` (not renormalised over the top-k), so
//! `logsumexp(top_logprobs) + log1p(-exp(...))`-style reconstruction is never needed:
//! `exp(tail_logmass) + sum(exp(top_logprobs)) == 1`.

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

/// Scratch space reused across rows so the hot loop does not allocate.
#[derive(Default)]
pub struct TopKScratch {
    order: Vec<u32>,
    in_top: Vec<bool>,
}

/// Soft label of one row of logits.
///
/// # Shapes
/// - `logits`: `[vocab]`
/// - result: `k` ids and log-probs, most probable first
///
/// Returns `Err(index)` with the index of the first non-finite logit.
pub fn soft_top_k(
    logits: &[f32],
    temperature: f32,
    k: usize,
    scratch: &mut TopKScratch,
) -> Result<SoftLabel, usize> {
    let mut out = SoftLabel { ids: Vec::with_capacity(k), logprobs: Vec::with_capacity(k), tail_logmass: 0.0, entropy: 0.0 };
    soft_top_k_into(logits, temperature, k, scratch, &mut out)?;
    Ok(out)
}

/// As [`soft_top_k`], writing into `out` (its vectors are cleared first).
pub fn soft_top_k_into(
    logits: &[f32],
    temperature: f32,
    k: usize,
    scratch: &mut TopKScratch,
    out: &mut SoftLabel,
) -> Result<(), usize> {
    let vocab = logits.len();
    debug_assert!(k >= 1 && k <= vocab);
    let inv_t = 1.0 / temperature as f64;

    // Pass 1: max, and the finiteness check.
    let mut max = f32::NEG_INFINITY;
    for (i, &x) in logits.iter().enumerate() {
        if !x.is_finite() {
            return Err(i);
        }
        if x > max {
            max = x;
        }
    }
    let max = max as f64 * inv_t;

    // Pass 2: partition sum and sum of p*z (for the entropy), in f64.
    let mut sum = 0.0f64;
    let mut sum_ez = 0.0f64;
    for &x in logits {
        let z = x as f64 * inv_t - max;
        let e = z.exp();
        sum += e;
        sum_ez += e * z;
    }
    let log_z = sum.ln(); // log partition of (z - max)
    // H = -sum p log p, with log p = z - log_z  =>  H = log_z - E_p[z]
    out.entropy = (log_z - sum_ez / sum) as f32;

    // Top-k: partial selection on indices, then sort the k by descending logit
    // (ties broken by the lower id so the result is deterministic).
    let order = &mut scratch.order;
    order.clear();
    order.extend(0..vocab as u32);
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b))
    };
    if k < vocab {
        order.select_nth_unstable_by(k - 1, cmp);
    }
    let top = &mut order[..k];
    top.sort_unstable_by(cmp);

    out.ids.clear();
    out.logprobs.clear();
    for &id in top.iter() {
        out.ids.push(id);
        out.logprobs.push((logits[id as usize] as f64 * inv_t - max - log_z) as f32);
    }

    // Tail mass summed directly over the entries outside the top-k (no 1 - sum
    // cancellation), so tiny tails keep their precision.
    if k == vocab {
        out.tail_logmass = f32::NEG_INFINITY;
    } else {
        let in_top = &mut scratch.in_top;
        in_top.clear();
        in_top.resize(vocab, false);
        for &id in top.iter() {
            in_top[id as usize] = true;
        }
        let mut tail = 0.0f64;
        for (i, &x) in logits.iter().enumerate() {
            if !in_top[i] {
                tail += (x as f64 * inv_t - max).exp();
            }
        }
        out.tail_logmass = (tail.ln() - log_z) as f32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values by hand: logits [1, 2, 3, 0] at T = 1.
    /// Z = e^1 + e^2 + e^3 + e^0 = 2.718282 + 7.389056 + 20.085537 + 1 = 31.192875,
    /// log Z = 3.440190. Top-2 = ids [2, 1], log-probs [3 - 3.440190, 2 - 3.440190];
    /// tail = (e^1 + e^0) / Z = 3.718282 / 31.192875 -> log = -2.126928.
    #[test]
    fn hand_derived_top2() {
        let s = soft_top_k(&[1.0, 2.0, 3.0, 0.0], 1.0, 2, &mut TopKScratch::default()).unwrap();
        assert_eq!(s.ids, vec![2, 1]);
        assert!((s.logprobs[0] - (3.0 - 3.440190)).abs() < 1e-5);
        assert!((s.logprobs[1] - (2.0 - 3.440190)).abs() < 1e-5);
        assert!((s.tail_logmass - (-2.126928)).abs() < 1e-5);
        let total: f64 = s.logprobs.iter().map(|&l| (l as f64).exp()).sum::<f64>()
            + (s.tail_logmass as f64).exp();
        assert!((total - 1.0).abs() < 1e-6);
    }

    /// Temperature divides the logits: [2, 4] at T = 2 is [1, 2] at T = 1:
    /// log p = [1 - log(e + e^2), 2 - log(e + e^2)] = [-1.313262, -0.313262].
    /// Entropy = -(0.268941 * -1.313262 + 0.731059 * -0.313262) = 0.582203.
    #[test]
    fn temperature_and_entropy() {
        let s = soft_top_k(&[2.0, 4.0], 2.0, 2, &mut TopKScratch::default()).unwrap();
        assert_eq!(s.ids, vec![1, 0]);
        assert!((s.logprobs[0] + 0.313262).abs() < 1e-5);
        assert!((s.logprobs[1] + 1.313262).abs() < 1e-5);
        assert!(s.tail_logmass.is_infinite() && s.tail_logmass < 0.0);
        assert!((s.entropy - 0.582203).abs() < 1e-5);
    }

    #[test]
    fn ties_break_by_lower_id() {
        let s = soft_top_k(&[5.0, 1.0, 5.0, 5.0], 1.0, 2, &mut TopKScratch::default()).unwrap();
        assert_eq!(s.ids, vec![0, 2]);
    }

    #[test]
    fn non_finite_logit_is_reported_with_its_index() {
        assert_eq!(soft_top_k(&[0.0, f32::NAN, 1.0], 1.0, 1, &mut TopKScratch::default()), Err(1));
        assert_eq!(soft_top_k(&[0.0, 1.0, f32::INFINITY], 1.0, 1, &mut TopKScratch::default()), Err(2));
    }

    /// A tail far below f32 epsilon relative to the head keeps its value: logits
    /// [0, -40] at k = 1: tail = log(e^-40 / (1 + e^-40)) = -40 - log1p(e^-40) = -40.
    #[test]
    fn tiny_tail_is_exact() {
        let s = soft_top_k(&[0.0, -40.0], 1.0, 1, &mut TopKScratch::default()).unwrap();
        assert!((s.tail_logmass + 40.0).abs() < 1e-4, "{}", s.tail_logmass);
    }
}

//! Stage one's numeric core: one row of teacher logits -> the top-k of the
//! temperature-softened distribution, the exact log of the mass outside it, and
//! the distribution's entropy.
//!
//! Everything is computed over the **full** distribution: the kept log-probs are
//! `log_softmax(logits / T)` (not renormalised over the top-k), so
//! `logsumexp(top_logprobs) + log1p(-exp(...))`-style reconstruction is never needed:
//! `exp(tail_logmass) + sum(exp(top_logprobs)) == 1`.

pub use crate::cache::schema::SoftLabel;

use crate::kernels::simd::exp_nonpositive;

/// Scratch space reused across rows so the hot loop does not allocate.
#[derive(Default)]
pub struct TopKScratch {
    /// Min-heap of the best `k` seen so far, as (logit, id).
    heap: Vec<(f32, u32)>,
    /// `exp(z - max)` of every entry, f32.
    exps: Vec<f32>,
}

/// Sum in f64 with four independent accumulators (vectorisable, no long dependency chain).
#[inline(always)]
fn sum_f64(values: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let chunks = values.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..4 {
            acc[j] += c[j] as f64;
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|&v| v as f64).sum::<f64>()
}

/// `a` ranks above `b`: higher logit first, lower id on ties.
#[inline(always)]
fn better(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// Restore the min-heap property (worst entry at the root) below `i`.
#[inline]
fn sift_down(heap: &mut [(f32, u32)], mut i: usize) {
    loop {
        let l = 2 * i + 1;
        if l >= heap.len() {
            return;
        }
        let r = l + 1;
        let worst = if r < heap.len() && better(heap[l], heap[r]) { r } else { l };
        if better(heap[i], heap[worst]) {
            heap.swap(i, worst);
            i = worst;
        } else {
            return;
        }
    }
}

/// Soft label of one row of logits.
///
/// # Shapes
/// - `logits`: `[vocab]`
/// - result: `k` ids and log-probs, most probable first
///
/// Returns `Err(index)` with the index of the first non-finite logit.
pub fn soft_top_k(logits: &[f32], temperature: f32, k: usize, scratch: &mut TopKScratch) -> Result<SoftLabel, usize> {
    let mut out = SoftLabel { ids: Vec::with_capacity(k), logprobs: Vec::with_capacity(k), tail_logmass: 0.0, entropy: 0.0 };
    soft_top_k_into(logits, temperature, k, scratch, &mut out)?;
    Ok(out)
}

/// As [`soft_top_k`], writing into `out` (its vectors are cleared first).
///
/// One pass finds the maximum and the top-k (a k-entry min-heap: O(vocab) comparisons plus
/// O(k log(vocab/k) log k) replacements); a second computes `exp(z - max)` once per entry
/// (f32) with f64 sums for the partition function and the entropy; the tail is the f64 sum of
/// those exponentials outside the top-k (no `1 - sum` cancellation).
///
/// On x86-64 CPUs with AVX2 the same code runs compiled for AVX2 (chosen at run time, so
/// the binary stays portable). No floating-point operation is reordered or fused, so both
/// paths give bit-identical results.
pub fn soft_top_k_into(logits: &[f32], temperature: f32, k: usize, scratch: &mut TopKScratch, out: &mut SoftLabel) -> Result<(), usize> {
    soft_top_k_among(logits, logits.len(), temperature, k, scratch, out)
}

/// As [`soft_top_k_into`], with the top-k chosen among ids `0..selectable` only, while the
/// distribution stays over every logit: the ids past `selectable` (a vocabulary padded past
/// its tokenizer) are never kept, and their mass is part of the tail.
///
/// # Shapes
/// - `logits`: `[vocab]`, `k <= selectable <= vocab`
pub fn soft_top_k_among(
    logits: &[f32],
    selectable: usize,
    temperature: f32,
    k: usize,
    scratch: &mut TopKScratch,
    out: &mut SoftLabel,
) -> Result<(), usize> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { soft_top_k_avx2(logits, selectable, temperature, k, scratch, out) };
    }
    soft_top_k_body(logits, selectable, temperature, k, scratch, out)
}

/// [`soft_top_k_body`] compiled with AVX2 enabled (8 f32 lanes for the max, the
/// exponentials and the sums). Callers must check that the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn soft_top_k_avx2(
    logits: &[f32],
    selectable: usize,
    temperature: f32,
    k: usize,
    scratch: &mut TopKScratch,
    out: &mut SoftLabel,
) -> Result<(), usize> {
    soft_top_k_body(logits, selectable, temperature, k, scratch, out)
}

#[inline(always)]
fn soft_top_k_body(
    logits: &[f32],
    selectable: usize,
    temperature: f32,
    k: usize,
    scratch: &mut TopKScratch,
    out: &mut SoftLabel,
) -> Result<(), usize> {
    let vocab = logits.len();
    debug_assert!(k >= 1 && k <= selectable && selectable <= vocab);
    let inv_t = 1.0 / temperature;

    // Pass 1a: finiteness and max, in 8 independent lanes (vectorised).
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut finite = true;
    let chunks = logits.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            let x = c[j];
            finite &= x.is_finite();
            lanes[j] = if x > lanes[j] { x } else { lanes[j] };
        }
    }
    for &x in rest {
        finite &= x.is_finite();
        lanes[0] = if x > lanes[0] { x } else { lanes[0] };
    }
    if !finite {
        return Err(logits.iter().position(|x| !x.is_finite()).expect("a non-finite entry exists"));
    }
    let max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);

    // Pass 1b: top-k by raw logit (the order is the same after dividing by T > 0): the
    // first k entries form a min-heap; later entries only enter when they beat its root.
    let heap = &mut scratch.heap;
    heap.clear();
    heap.extend(logits[..k].iter().enumerate().map(|(i, &x)| (x, i as u32)));
    for j in (0..k / 2).rev() {
        sift_down(heap, j);
    }
    let mut threshold = heap[0].0;
    for (i, &x) in logits[..selectable].iter().enumerate().skip(k) {
        // Strictly greater: an equal logit seen later has a higher id and ranks lower.
        if x > threshold {
            heap[0] = (x, i as u32);
            sift_down(heap, 0);
            threshold = heap[0].0;
        }
    }
    let max_z = max * inv_t;

    // Pass 2: exponentials once (f32, vectorised), sums in f64.
    let exps = &mut scratch.exps;
    exps.clear();
    exps.extend(logits.iter().map(|&x| exp_nonpositive(x * inv_t - max_z)));
    let sum = sum_f64(exps);
    let mut acc = [0f64; 4];
    let pairs = logits.chunks_exact(4).zip(exps.chunks_exact(4));
    for (xs, es) in pairs {
        for j in 0..4 {
            acc[j] += (es[j] * (xs[j] * inv_t - max_z)) as f64;
        }
    }
    let done = vocab / 4 * 4;
    let sum_ez =
        acc.iter().sum::<f64>() + logits[done..].iter().zip(&exps[done..]).map(|(&x, &e)| (e * (x * inv_t - max_z)) as f64).sum::<f64>();
    let log_z = sum.ln(); // log partition of (z - max)
    // H = -sum p log p, with log p = z - log_z  =>  H = log_z - E_p[z]
    out.entropy = (log_z - sum_ez / sum) as f32;

    heap.sort_unstable_by(|a, b| if better(*a, *b) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
    out.ids.clear();
    out.logprobs.clear();
    for &(x, id) in heap.iter() {
        out.ids.push(id);
        out.logprobs.push(((x * inv_t - max_z) as f64 - log_z) as f32);
    }

    if k == vocab {
        out.tail_logmass = f32::NEG_INFINITY;
    } else {
        for &(_, id) in heap.iter() {
            exps[id as usize] = 0.0;
        }
        let mut tail = sum_f64(exps);
        if tail < 1e-30 {
            // Every outside entry is at the clamp (below e^-87 of the top): redo in f64.
            for &(_, id) in heap.iter() {
                exps[id as usize] = f32::NAN;
            }
            tail = logits
                .iter()
                .zip(exps.iter())
                .filter(|(_, e)| !e.is_nan())
                .map(|(&x, _)| ((x as f64 - max as f64) / temperature as f64).exp())
                .sum();
        }
        out.tail_logmass = (tail.ln() - log_z) as f32;
    }
    Ok(())
}

/// `log p_T(label)` from a row's logits and its soft label: every log-prob is
/// `logit / T - log Z`, so the top entry's gives `log Z`.
pub fn label_logprob(logits: &[f32], soft: &SoftLabel, label: i64, temperature: f32) -> Option<f32> {
    let l = usize::try_from(label).ok().filter(|&l| l < logits.len())?;
    let top = soft.ids[0] as usize;
    Some(soft.logprobs[0] + (logits[l] - logits[top]) / temperature)
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
        assert!((s.logprobs[0] - (3.0 - 3.44019)).abs() < 1e-5);
        assert!((s.logprobs[1] - (2.0 - 3.44019)).abs() < 1e-5);
        assert!((s.tail_logmass - (-2.126928)).abs() < 1e-5);
        let total: f64 = s.logprobs.iter().map(|&l| (l as f64).exp()).sum::<f64>() + (s.tail_logmass as f64).exp();
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
    /// And below f32's range (e^-200): -200.
    #[test]
    fn tiny_tail_is_exact() {
        let s = soft_top_k(&[0.0, -40.0], 1.0, 1, &mut TopKScratch::default()).unwrap();
        assert!((s.tail_logmass + 40.0).abs() < 1e-4, "{}", s.tail_logmass);
        let s = soft_top_k(&[0.0, -200.0, -200.0], 1.0, 1, &mut TopKScratch::default()).unwrap();
        assert!((s.tail_logmass - (-200.0 + 2f32.ln())).abs() < 1e-3, "{}", s.tail_logmass);
    }

    /// The AVX2-compiled path and the portable one give bit-identical soft labels (no
    /// floating-point operation is reordered or fused), so a cache does not depend on the
    /// CPU that made it. Skipped on CPUs without AVX2.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_path_is_bit_identical_to_the_portable_one() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut state = 99u64;
        let (mut a, mut b) = (TopKScratch::default(), TopKScratch::default());
        let empty = || SoftLabel { ids: vec![], logprobs: vec![], tail_logmass: 0.0, entropy: 0.0 };
        for vocab in [3usize, 8, 61, 4096, 32771] {
            let logits: Vec<f32> = (0..vocab)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 30.0
                })
                .collect();
            for (k, t) in [(1, 1.0), (vocab.min(64), 2.0), (vocab, 0.7)] {
                let (mut x, mut y) = (empty(), empty());
                soft_top_k_body(&logits, vocab, t, k, &mut a, &mut x).unwrap();
                // SAFETY: AVX2 checked above.
                unsafe { soft_top_k_avx2(&logits, vocab, t, k, &mut b, &mut y) }.unwrap();
                assert_eq!(x.ids, y.ids);
                let bits = |s: &SoftLabel| {
                    (s.logprobs.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), s.tail_logmass.to_bits(), s.entropy.to_bits())
                };
                assert_eq!(bits(&x), bits(&y), "vocab {vocab} k {k}");
            }
        }
    }

    /// Padding ids (past `selectable`) are never kept, however large their logits, and
    /// their mass is in the tail. By hand: logits [1, 2, 3, 0] with ids 2.. padding, k = 1,
    /// T = 1: Z = 31.192875 (as in `hand_derived_top2`), kept id 1 with log-prob
    /// 2 - 3.440190 = -1.44019; tail = (e^1 + e^3 + e^0) / Z = 23.803819 / 31.192875 ->
    /// log = -0.270343.
    #[test]
    fn padding_ids_are_never_kept_and_their_mass_is_tail() {
        let mut out = SoftLabel { ids: vec![], logprobs: vec![], tail_logmass: 0.0, entropy: 0.0 };
        soft_top_k_among(&[1.0, 2.0, 3.0, 0.0], 2, 1.0, 1, &mut TopKScratch::default(), &mut out).unwrap();
        assert_eq!(out.ids, vec![1]);
        assert!((out.logprobs[0] - (-1.44019)).abs() < 1e-5, "{}", out.logprobs[0]);
        assert!((out.tail_logmass - (-0.270343)).abs() < 1e-5, "{}", out.tail_logmass);
        // Every id selectable and k = selectable: the whole distribution, no tail.
        soft_top_k_among(&[1.0, 2.0, 3.0, 0.0], 4, 1.0, 4, &mut TopKScratch::default(), &mut out).unwrap();
        assert!(out.tail_logmass == f32::NEG_INFINITY);
        // k = selectable < vocab: the padding alone is the tail.
        soft_top_k_among(&[1.0, 2.0, 3.0, 0.0], 2, 1.0, 2, &mut TopKScratch::default(), &mut out).unwrap();
        assert_eq!(out.ids, vec![1, 0]);
        assert!((out.tail_logmass - ((3f32.exp() + 1.0) / 31.192875).ln()).abs() < 1e-5);
    }

    /// The heap selection agrees with a full sort on random logits with many ties.
    #[test]
    fn heap_selection_matches_a_full_sort() {
        let mut state = 12345u64;
        let mut scratch = TopKScratch::default();
        for trial in 0..200 {
            let vocab = 1 + trial % 97;
            let logits: Vec<f32> = (0..vocab)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((state >> 33) % 17) as f32 - 8.0
                })
                .collect();
            let k = 1 + (trial * 7) % vocab;
            let s = soft_top_k(&logits, 1.5, k, &mut scratch).unwrap();
            let mut order: Vec<u32> = (0..vocab as u32).collect();
            order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
            assert_eq!(s.ids, order[..k].to_vec(), "vocab {vocab} k {k}");
        }
    }
}

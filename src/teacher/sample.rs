//! Sampled soft labels (Anshumann et al. 2025, "Sparse Logit Sampling"): instead of the
//! top-k, `N` tokens drawn from the teacher's distribution at `T`, stored as the distinct
//! ids with `log(count / N)`. The counts over `N` are an unbiased estimate of the teacher's
//! distribution, so the distillation gradient computed from them (forward KL with the tail
//! bucket, whose teacher mass is then the draws that fell on padding ids) is an unbiased
//! estimate of the full-vocabulary KL gradient, where a top-k cache is biased towards the
//! head of the distribution.
//!
//! Draws are seeded by (seed, row, position) alone, so a shard is the same whatever the
//! batch size or the point a run resumed from.

use crate::rng::Rng;

use super::SoftLabel;

/// The entries a stored sampled label is padded with are this many nats below its top
/// entry: past the delta encoding's range (256 nats at the default step), so they decode
/// to a probability of about `e^-256`, nothing.
const PAD_BELOW: f32 = 300.0;

/// SplitMix64's finaliser: keys that differ in one bit give unrelated generator states (a
/// plain XOR of the key into the state would let neighbouring positions share draws).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of one (seed, row, position).
fn rng_for((seed, row, position): (u64, u64, u32)) -> Rng {
    Rng::new(mix(mix(mix(seed) ^ row) ^ position as u64), 0)
}

/// `draws` tokens drawn from `softmax(logits / temperature)` (over every logit), as a soft
/// label of exactly `draws` entries: the distinct ids among the first `selectable` with
/// `log(count / draws)`, most drawn first (ties by id), padded with unused ids far below;
/// draws on ids past `selectable` (padding of the vocabulary) are the tail mass. `entropy`
/// is the full distribution's. Returns the index of the first non-finite logit as the error.
///
/// # Shapes
/// - `logits`: `[vocab]`, `draws <= selectable <= vocab`
pub fn sampled_soft_label(
    logits: &[f32],
    selectable: usize,
    temperature: f32,
    draws: usize,
    key: (u64, u64, u32),
    out: &mut SoftLabel,
) -> Result<(), usize> {
    if let Some(bad) = logits.iter().position(|x| !x.is_finite()) {
        return Err(bad);
    }
    let t = temperature as f64;
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64 / t));
    let total: f64 = logits.iter().map(|&z| (z as f64 / t - max).exp()).sum();
    let lse = max + total.ln();
    let entropy: f64 = logits
        .iter()
        .map(|&z| {
            let lp = z as f64 / t - lse;
            -lp.exp() * lp
        })
        .sum();
    // N sorted uniforms, then one walk along the cumulative distribution.
    let mut rng = rng_for(key);
    let mut u: Vec<f64> = (0..draws).map(|_| (rng.next() >> 11) as f64 / (1u64 << 53) as f64).collect();
    u.sort_by(f64::total_cmp);
    let mut counts: Vec<(u32, u32)> = Vec::new(); // (id, count), ids ascending
    let (mut cdf, mut next, mut padding) = (0.0f64, 0usize, 0u32);
    for (j, &z) in logits.iter().enumerate() {
        cdf += (z as f64 / t - lse).exp();
        let last = j + 1 == logits.len();
        let mut c = 0u32;
        while next < draws && (u[next] < cdf || last) {
            c += 1;
            next += 1;
        }
        if c > 0 {
            if j < selectable { counts.push((j as u32, c)) } else { padding += c }
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out.ids.clear();
    out.logprobs.clear();
    let n = draws as f64;
    for &(id, c) in &counts {
        out.ids.push(id);
        out.logprobs.push((c as f64 / n).ln() as f32);
    }
    let floor = out.logprobs.first().copied().unwrap_or(0.0) - PAD_BELOW;
    let mut used: Vec<u32> = counts.iter().map(|c| c.0).collect();
    used.sort_unstable();
    let mut candidate = 0u32;
    while out.ids.len() < draws {
        if used.binary_search(&candidate).is_err() {
            out.ids.push(candidate);
            out.logprobs.push(floor);
        }
        candidate += 1;
    }
    out.tail_logmass = if padding > 0 { (padding as f64 / n).ln() as f32 } else { f32::NEG_INFINITY };
    out.entropy = entropy as f32;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(logits: &[f32], draws: usize, key: (u64, u64, u32)) -> SoftLabel {
        let mut out = SoftLabel { ids: vec![], logprobs: vec![], tail_logmass: 0.0, entropy: 0.0 };
        sampled_soft_label(logits, logits.len(), 1.0, draws, key, &mut out).unwrap();
        out
    }

    /// The same key draws the same label; another position or seed another; the counts sum
    /// to the draws and the entries are distinct.
    #[test]
    fn draws_are_fixed_by_seed_row_and_position() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.4).collect();
        let a = label(&logits, 16, (0, 3, 7));
        assert_eq!(a, label(&logits, 16, (0, 3, 7)));
        assert_ne!(a, label(&logits, 16, (0, 3, 8)));
        assert_ne!(a, label(&logits, 16, (1, 3, 7)));
        // Neighbouring positions of row 0 at seed 0 draw independently (not shifted copies).
        let uniforms = |p: u32| {
            let mut rng = rng_for((0, 0, p));
            (0..8).map(|_| rng.next()).collect::<Vec<_>>()
        };
        let (u0, u1) = (uniforms(0), uniforms(1));
        assert!(u0.iter().all(|x| !u1.contains(x)), "positions 0 and 1 share draws");
        assert_eq!(a.ids.len(), 16);
        let mut ids = a.ids.clone();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 16, "distinct ids");
        let mass: f64 = a.logprobs.iter().map(|&l| (l as f64).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-5, "the draws' shares sum to one: {mass}");
        assert!(a.logprobs.windows(2).all(|w| w[0] >= w[1]), "most drawn first");
    }
}

//! Sampled soft labels (Anshumann et al. 2025, "Sparse Logit Sampling"): instead of the
//! top-k, `N` tokens drawn from the teacher's distribution at `T`, stored as the distinct
//! ids with `log(count / N)`. The counts over `N` are an unbiased estimate of the teacher's
//! distribution, so the distillation gradient computed from them (forward KL with the tail
//! bucket, whose teacher mass is then the draws that fell on padding ids) is an unbiased
//! estimate of the full-vocabulary KL gradient, where a top-k cache is biased towards the
//! head of the distribution.
//!
//! With `exact_top = K > 0` (`--soft-labels topk+sampled:K,N`) the K most probable ids are
//! kept with their exact log-probs and the N draws come from the rest of the distribution
//! (the teacher's, restricted to the ids outside the top-K): each drawn id `j` is stored with
//! `log(rest_mass * count_j / N)`, `rest_mass` being the mass outside the top K, an unbiased
//! estimate of `p_j`, so the head is exact and the rest unbiased.
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
/// label of exactly `exact_top + draws` entries: the `exact_top` most probable ids among the
/// first `selectable` with their exact log-probs, then the distinct ids among the first
/// `selectable` drawn from the rest of the distribution with `log(rest_mass * count /
/// draws)`, all most probable first (ties by id), padded with unused ids far below; draws
/// on ids past `selectable` (padding of the vocabulary) are the tail mass. `entropy` is the
/// full distribution's. Returns the index of the first non-finite logit as the error.
///
/// # Shapes
/// - `logits`: `[vocab]`, `exact_top + draws <= selectable <= vocab`
pub fn sampled_soft_label(
    logits: &[f32],
    selectable: usize,
    temperature: f32,
    exact_top: usize,
    draws: usize,
    key: (u64, u64, u32),
    out: &mut SoftLabel,
) -> Result<(), usize> {
    if let Some(bad) = logits.iter().position(|x| !x.is_finite()) {
        return Err(bad);
    }
    let t = temperature as f64;
    let (lse, entropy) = log_normalizer(logits, t);
    let head = exact_head(logits, selectable, exact_top);
    let in_head = |j: usize| exact_top > 0 && head.binary_search(&(j as u32)).is_ok();
    // The mass the draws share: 1 without a head (exactly, so the draws are those of the
    // plain sampled label), else that of the ids outside it.
    let rest_mass = if exact_top == 0 {
        1.0
    } else {
        logits.iter().enumerate().filter(|(j, _)| !in_head(*j)).map(|(_, &z)| (z as f64 / t - lse).exp()).sum::<f64>()
    };
    let dist = Tempered { logits, t, lse };
    let (counts, padding) = draw_counts(&dist, selectable, &in_head, rest_mass, draws, key);
    let n = draws as f64;
    let mut entries: Vec<(u32, f64)> = head.iter().map(|&id| (id, logits[id as usize] as f64 / t - lse)).collect();
    entries.extend(counts.iter().map(|&(id, c)| (id, (rest_mass * c as f64 / n).ln())));
    write_entries(entries, exact_top + draws, out);
    out.tail_logmass = if padding > 0 { (rest_mass * padding as f64 / n).ln() as f32 } else { f32::NEG_INFINITY };
    out.entropy = entropy as f32;
    Ok(())
}

/// Logits at temperature `t`, with the log of their softmax's normalizer.
#[derive(Clone, Copy)]
struct Tempered<'a> {
    logits: &'a [f32],
    t: f64,
    lse: f64,
}

/// The log of the softmax's normalizer at temperature `t`, and the distribution's entropy.
fn log_normalizer(logits: &[f32], t: f64) -> (f64, f64) {
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
    (lse, entropy)
}

/// The exact head: the `exact_top` largest logits among the selectable ids (ties by id),
/// ids ascending.
fn exact_head(logits: &[f32], selectable: usize, exact_top: usize) -> Vec<u32> {
    let mut head: Vec<u32> = if exact_top > 0 { (0..selectable as u32).collect() } else { Vec::new() };
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    if exact_top > 0 && exact_top < head.len() {
        head.select_nth_unstable_by(exact_top - 1, by_logit);
    }
    head.truncate(exact_top);
    head.sort_unstable();
    head
}

/// `draws` ids drawn from the distribution outside the head (its mass `rest_mass`), seeded
/// by `key`: N sorted uniforms over that mass, then one walk along its cumulative
/// distribution. Returns (id, count) of the selectable ids drawn, ids ascending, and the
/// draws that fell on padding ids (past `selectable`).
fn draw_counts(
    dist: &Tempered<'_>,
    selectable: usize,
    in_head: &dyn Fn(usize) -> bool,
    rest_mass: f64,
    draws: usize,
    key: (u64, u64, u32),
) -> (Vec<(u32, u32)>, u32) {
    let Tempered { logits, t, lse } = *dist;
    let mut rng = rng_for(key);
    // With no mass outside the head (it underflowed), nothing is drawn: the head is exact.
    let draws_made = if rest_mass > 0.0 { draws } else { 0 };
    let mut u: Vec<f64> = (0..draws_made).map(|_| (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * rest_mass).collect();
    u.sort_by(f64::total_cmp);
    let mut counts: Vec<(u32, u32)> = Vec::new();
    let (mut cdf, mut next, mut padding) = (0.0f64, 0usize, 0u32);
    let last_rest = (0..logits.len()).rev().find(|&j| !in_head(j)).unwrap_or(0);
    for (j, &z) in logits.iter().enumerate() {
        if in_head(j) {
            continue;
        }
        cdf += (z as f64 / t - lse).exp();
        let last = j == last_rest;
        let mut c = 0u32;
        while next < draws_made && (u[next] < cdf || last) {
            c += 1;
            next += 1;
        }
        if c > 0 {
            if j < selectable { counts.push((j as u32, c)) } else { padding += c }
        }
    }
    (counts, padding)
}

/// The entries, most probable first (ties by id), padded to `len` distinct ids with ids
/// not drawn at a log-prob `PAD_BELOW` under the largest.
fn write_entries(mut entries: Vec<(u32, f64)>, len: usize, out: &mut SoftLabel) {
    entries.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.ids.clear();
    out.logprobs.clear();
    for &(id, lp) in &entries {
        out.ids.push(id);
        out.logprobs.push(lp as f32);
    }
    let floor = out.logprobs.first().copied().unwrap_or(0.0) - PAD_BELOW;
    let mut used: Vec<u32> = entries.iter().map(|e| e.0).collect();
    used.sort_unstable();
    let mut candidate = 0u32;
    while out.ids.len() < len {
        if used.binary_search(&candidate).is_err() {
            out.ids.push(candidate);
            out.logprobs.push(floor);
        }
        candidate += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(logits: &[f32], draws: usize, key: (u64, u64, u32)) -> SoftLabel {
        let mut out = SoftLabel { ids: vec![], logprobs: vec![], tail_logmass: 0.0, entropy: 0.0 };
        sampled_soft_label(logits, logits.len(), 1.0, 0, draws, key, &mut out).unwrap();
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

    /// With an exact head: the K most probable ids carry their exact log-probs, the draws
    /// fill the rest, and the label's probabilities sum to one (head exact + rest mass
    /// shared by the draws).
    #[test]
    fn an_exact_head_keeps_the_top_ids_exactly() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.4 + i as f32 * 0.01).collect();
        let mut out = SoftLabel { ids: vec![], logprobs: vec![], tail_logmass: 0.0, entropy: 0.0 };
        sampled_soft_label(&logits, 50, 1.0, 3, 8, (0, 1, 2), &mut out).unwrap();
        assert_eq!(out.ids.len(), 11);
        let lse = logits.iter().map(|&z| (z as f64).exp()).sum::<f64>().ln();
        let mut order: Vec<usize> = (0..50).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        for &id in &order[..3] {
            let at = out.ids.iter().position(|&i| i as usize == id).expect("a top-3 id is kept");
            assert!((out.logprobs[at] as f64 - (logits[id] as f64 - lse)).abs() < 1e-5, "id {id}");
        }
        let mass: f64 = out.logprobs.iter().map(|&l| (l as f64).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-5, "head + drawn rest sum to one: {mass}");
        assert!(out.logprobs.windows(2).all(|w| w[0] >= w[1]), "most probable first");
    }
}

//! Hot path of stage one: top-k + log-softmax + tail mass + entropy over a
//! `[positions, vocab]` block of logits, for vocabularies of 4k, 32k and 128k.
//!
//! `cargo bench --bench topk` prints positions/s and entries/s for each vocabulary (single
//! thread), next to a baseline that only sorts-and-selects with `select_nth_unstable` and a
//! full f64 softmax (the straightforward implementation), and the ratio between them.

use std::hint::black_box;
use std::time::Instant;

use distill::teacher::topk::{SoftLabel, TopKScratch, soft_top_k_into};

fn logits(positions: usize, vocab: usize, seed: u64) -> Vec<f32> {
    // Logit-like values: a heavy head over a Gaussian-ish body (sum of uniforms).
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..positions * vocab).map(|_| (next() + next() + next() - 1.5) * 4.0 + if next() < 0.01 { 6.0 } else { 0.0 }).collect()
}

/// The straightforward kernel: full f64 log-softmax, index select_nth, sort.
fn baseline(row: &[f32], t: f32, k: usize, idx: &mut Vec<u32>) -> (f64, f64) {
    let z: Vec<f64> = row.iter().map(|&x| x as f64 / t as f64).collect();
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    idx.clear();
    idx.extend(0..row.len() as u32);
    idx.select_nth_unstable_by(k - 1, |a, b| row[*b as usize].total_cmp(&row[*a as usize]));
    idx[..k].sort_unstable_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]));
    let top: f64 = idx[..k].iter().map(|&i| (z[i as usize] - lse).exp()).sum();
    (lse, (1.0 - top).ln())
}

fn main() {
    let k = 64;
    println!("{:>7} {:>10} {:>14} {:>14} {:>14} {:>7}", "vocab", "positions", "ours pos/s", "ours Mentry/s", "baseline pos/s", "ratio");
    for &vocab in &[4096usize, 32768, 131072] {
        let positions = (8 << 20) / vocab; // 8M logits per block
        let block = logits(positions, vocab, vocab as u64);
        let mut scratch = TopKScratch::default();
        let mut out = SoftLabel { ids: vec![], logprobs: vec![], tail_logmass: 0.0, entropy: 0.0 };
        let run_ours = |scratch: &mut TopKScratch, out: &mut SoftLabel| {
            let t = Instant::now();
            for row in block.chunks_exact(vocab) {
                soft_top_k_into(black_box(row), 2.0, k, scratch, out).unwrap();
                black_box(&out);
            }
            t.elapsed().as_secs_f64()
        };
        run_ours(&mut scratch, &mut out); // warm-up
        let ours = (0..3).map(|_| run_ours(&mut scratch, &mut out)).fold(f64::INFINITY, f64::min);
        let mut idx = Vec::new();
        let t = Instant::now();
        for row in block.chunks_exact(vocab) {
            black_box(baseline(black_box(row), 2.0, k, &mut idx));
        }
        let base = t.elapsed().as_secs_f64();
        println!(
            "{:>7} {:>10} {:>14.0} {:>14.1} {:>14.0} {:>6.2}x",
            vocab,
            positions,
            positions as f64 / ours,
            (positions * vocab) as f64 / ours / 1e6,
            positions as f64 / base,
            base / ours
        );
    }
}

//! The KD loss forward + backward on the flex backend: `[positions, vocab]` student logits
//! against top-k soft labels (tail bucket), for vocab 4k and 32k, k = 64; positions/s of
//! the autodiff reference (`distillation_loss_partly_labelled`) and of the fused loss that
//! training uses (`fused_distillation_loss`, same value and gradient), side by side.
//!
//! `cargo bench --bench loss`

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use distill::loss::{Divergence, SoftTargets, TailMode, distillation_loss_partly_labelled, fused_distillation_loss};

fn main() {
    let device = Device::flex().autodiff();
    let k = 64;
    println!("{:>6} {:>9} {:>10} {:>14} {:>10} {:>8}", "vocab", "positions", "loss", "positions/s", "ms/step", "speedup");
    for (vocab, n) in [(4096usize, 1024usize), (32768, 256)] {
        let mut reference_s = 0.0;
        for fused in [false, true] {
            let logits: Vec<f32> = (0..n * vocab).map(|i| ((i * 7919) % 1000) as f32 / 300.0).collect();
            let ids: Vec<i64> = (0..n * k).map(|i| ((i * 104729) % vocab) as i64).collect();
            let lps: Vec<f32> = (0..n * k).map(|i| -1.0 - (i % k) as f32 * 0.05).collect();
            let run = || {
                let x: Tensor<2> = Tensor::from_data(TensorData::new(logits.clone(), [n, vocab]), &device).require_grad();
                let soft = SoftTargets {
                    ids: Tensor::from_data(TensorData::new(ids.clone(), [n, k]), &device),
                    logprobs: Tensor::from_data(TensorData::new(lps.clone(), [n, k]), &device),
                    tail_logmass: Tensor::from_data(TensorData::new(vec![-2.0f32; n], [n]), &device),
                    sampled: None,
                };
                let hard: Tensor<1, Int> = Tensor::from_data(TensorData::new(vec![1i64; n], [n]), &device);
                let mask: Tensor<1> = Tensor::ones([n], &device);
                let f = if fused { fused_distillation_loss } else { distillation_loss_partly_labelled };
                let parts = f(x, &soft, hard, mask.clone(), mask, 0.5, 2.0, TailMode::Bucket, Divergence::ForwardKl);
                let _grads = parts.loss.backward();
            };
            run();
            let reps = 5;
            let t = Instant::now();
            for _ in 0..reps {
                run();
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            if !fused {
                reference_s = s;
            }
            let name = if fused { "fused" } else { "reference" };
            println!("{:>6} {:>9} {:>10} {:>14.0} {:>10.1} {:>7.2}x", vocab, n, name, n as f64 / s, s * 1e3, reference_s / s);
        }
    }
}

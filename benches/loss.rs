//! The KD loss forward + backward on the flex backend: `[positions, vocab]` student logits
//! against top-k soft labels (tail bucket), for vocab 4k and 32k, k = 64; positions/s.
//!
//! `cargo bench --bench loss`

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use distill::loss::{SoftTargets, TailMode, distillation_loss};

fn main() {
    let device = Device::flex().autodiff();
    let k = 64;
    println!("{:>6} {:>9} {:>14} {:>10}", "vocab", "positions", "positions/s", "ms/step");
    for (vocab, n) in [(4096usize, 1024usize), (32768, 256)] {
        let logits: Vec<f32> = (0..n * vocab).map(|i| ((i * 7919) % 1000) as f32 / 300.0).collect();
        let ids: Vec<i64> = (0..n * k).map(|i| ((i * 104729) % vocab) as i64).collect();
        let lps: Vec<f32> = (0..n * k).map(|i| -1.0 - (i % k) as f32 * 0.05).collect();
        let run = || {
            let x: Tensor<2> = Tensor::from_data(TensorData::new(logits.clone(), [n, vocab]), &device).require_grad();
            let soft = SoftTargets {
                ids: Tensor::from_data(TensorData::new(ids.clone(), [n, k]), &device),
                logprobs: Tensor::from_data(TensorData::new(lps.clone(), [n, k]), &device),
                tail_logmass: Tensor::from_data(TensorData::new(vec![-2.0f32; n], [n]), &device),
            };
            let hard: Tensor<1, Int> = Tensor::from_data(TensorData::new(vec![1i64; n], [n]), &device);
            let mask: Tensor<1> = Tensor::ones([n], &device);
            let parts = distillation_loss(x, &soft, hard, mask, 0.5, 2.0, TailMode::Bucket);
            let _grads = parts.loss.backward();
        };
        run();
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            run();
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{:>6} {:>9} {:>14.0} {:>10.1}", vocab, n, n as f64 / s, s * 1e3);
    }
}

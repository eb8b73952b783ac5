//! The loss's tests: values by hand and against PyTorch, the fused loss against the
//! composed reference in value and gradient.

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
        sampled: None,
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
        sampled: None,
        tail_logmass: Tensor::from_data(s.tail_logmass.into_data(), &device),
    };
    let grad = |soft: SoftTargets, n: usize| -> Vec<f64> {
        let soft = on(soft);
        let z: Tensor<2> = Tensor::from_data(TensorData::new(student.repeat(n), [n, v]), &device).require_grad();
        let ones: Tensor<1> = Tensor::ones([n], &device);
        let hard: Tensor<1, Int> = Tensor::zeros([n], &device);
        let parts = fused_distillation_loss(z.clone(), &soft, hard, ones.clone(), ones, 1.0, t, TailMode::Bucket, Divergence::ForwardKl);
        let g = z.grad(&parts.loss.backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
        (0..v).map(|j| (0..n).map(|r| g[r * v + j] as f64).sum()).collect()
    };
    let teacher64: Vec<f64> = teacher.iter().map(|&x| x as f64).collect();
    let (lp, ids) = soft_full(&teacher64, t as f64);
    let full = grad(targets(lp.clone(), ids, vec![f32::NEG_INFINITY], 1, v), 1);
    // Plain draws, and (topk+sampled:2,N) the exact top 2 with the draws over the rest.
    for exact_top in [0, 2] {
        let (mut s_ids, mut s_lp, mut s_tail) = (Vec::new(), Vec::new(), Vec::new());
        for seed in 0..samples as u64 {
            let mut out = crate::teacher::SoftLabel { ids: vec![], logprobs: vec![], tail_logmass: 0.0, entropy: 0.0 };
            crate::teacher::sample::sampled_soft_label(&teacher, v, t, exact_top, draws, (seed, 0, 0), &mut out).unwrap();
            s_ids.extend(out.ids.iter().map(|&i| i as i64));
            s_lp.extend(out.logprobs);
            s_tail.push(out.tail_logmass);
        }
        let sampled = grad(targets(s_lp, s_ids, s_tail, samples, exact_top + draws), samples);
        for j in 0..v {
            assert!(
                (sampled[j] - full[j]).abs() < 0.02,
                "exact top {exact_top}, d/dz[{j}]: sampled mean {} vs full {}",
                sampled[j],
                full[j]
            );
        }
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
        sampled: None,
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
                sampled: None,
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

/// The sampled-token estimator (`sampled-rkl`): the fused loss's `kl` is the mean over the
/// mask of `d = rho (log q_T(y) - log p_T(y))` (the composed reference,
/// `sampled_per_position`), its value `alpha T^2 kl + (1 - alpha) ce`, and its gradient
/// that of the REINFORCE surrogate `alpha T^2 mean(d log q_T(y)) + (1 - alpha) ce` with `d`
/// held constant, taken by Burn's autodiff. The generation-time log-probs cover an unknown
/// one (NaN: rho = 1), one the student has made more likely since (rho clamped at 2), one
/// less likely (rho < 1) and the same (rho = 1); one position is masked out.
#[test]
fn sampled_rkl_is_the_reinforce_surrogate() {
    let device = dev().autodiff();
    let (n, v) = (5, 7);
    let mut seed = 7u64;
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) as f64 / (1u64 << 31) as f64) * 6.0 - 3.0
    };
    let z: Vec<f32> = (0..n * v).map(|_| next() as f32).collect();
    let y = vec![1i64, 0, 6, 2, 5];
    let teacher: Vec<f32> = (0..n).map(|_| (next() - 4.0) as f32).collect();
    let now: Vec<f64> =
        (0..n).map(|r| log_softmax_ref(&z[r * v..(r + 1) * v].iter().map(|&x| x as f64).collect::<Vec<_>>(), 1.0)[y[r] as usize]).collect();
    let generated = vec![f32::NAN, (now[1] - 3.0) as f32, (now[2] + 0.7) as f32, now[3] as f32, (now[4] - 0.2) as f32];
    let mask: Tensor<1> = Tensor::from_data(TensorData::new(vec![1f32, 1.0, 0.0, 1.0, 1.0], [n]), &device);
    let labelled: Tensor<1> = Tensor::from_data(TensorData::new(vec![1f32, 0.0, 1.0, 1.0, 1.0], [n]), &device);
    let hard: Tensor<1, Int> = Tensor::from_data(TensorData::new(y.clone(), [n]), &device);
    let soft = SoftTargets {
        ids: Tensor::from_data(TensorData::new(vec![0i64; n], [n, 1]), &device),
        logprobs: Tensor::zeros([n, 1], &device),
        tail_logmass: Tensor::zeros([n], &device),
        sampled: Some(SampledTokens {
            tokens: hard.clone(),
            teacher: Tensor::from_data(TensorData::new(teacher.clone(), [n]), &device),
            generated: Tensor::from_data(TensorData::new(generated.clone(), [n]), &device),
        }),
    };
    for (alpha, temperature) in [(1.0f32, 1.0f32), (0.5, 1.0), (0.5, 2.0), (0.0, 2.0)] {
        let case = format!("alpha = {alpha}, T = {temperature}");
        let x = || Tensor::<2>::from_data(TensorData::new(z.clone(), [n, v]), &device).require_grad();
        let fused_x = x();
        let parts = fused_distillation_loss(
            fused_x.clone(),
            &soft,
            hard.clone(),
            mask.clone(),
            labelled.clone(),
            alpha,
            temperature,
            TailMode::Bucket,
            Divergence::SampledRkl,
        );
        let (loss, kl, ce) = (scalar(parts.loss.clone()), scalar(parts.kl), scalar(parts.ce));
        let got = fused_x.grad(&parts.loss.backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();

        let ref_x = x();
        let d = sampled_per_position(ref_x.clone(), &soft, temperature); // [n]
        let count = mask.clone().sum();
        // At alpha = 0 the divergence is not computed (reported as 0), as for the others.
        let want_kl = if alpha > 0.0 { scalar((d.clone() * mask.clone()).sum() / count.clone()) } else { 0.0 };
        let log_q = log_softmax(ref_x.clone().div_scalar(temperature), 1).gather(1, hard.clone().unsqueeze_dim(1)).squeeze_dim::<1>(1);
        let ce_ref = (ce_per_position(ref_x.clone(), hard.clone()) * labelled.clone()).sum() / labelled.clone().sum();
        let surrogate = (d.detach() * log_q * mask.clone()).sum() / count;
        let total = surrogate.mul_scalar(alpha * temperature * temperature) + ce_ref.clone().mul_scalar(1.0 - alpha);
        let want = ref_x.grad(&total.backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let want_ce = scalar(ce_ref);
        let want_loss = (alpha * temperature * temperature) as f64 * want_kl + (1.0 - alpha) as f64 * want_ce;
        for (name, a, b) in [("kl", want_kl, kl), ("ce", want_ce, ce), ("loss", want_loss, loss)] {
            assert!(a.is_finite() && (a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{case}: {name} {b} vs reference {a}");
        }
        for (j, (a, b)) in want.iter().zip(&got).enumerate() {
            assert!((a - b).abs() <= 1e-5, "{case}: d loss / d z[{}, {}] = {b}, reference {a}", j / v, j % v);
        }
    }
    // rho by hand: unknown -> 1, made more likely since -> clamped at 2, less likely -> e^-0.7.
    let rho = crate::loss::divergence::importance_weight(
        Tensor::from_data(TensorData::new(now.iter().map(|&x| x as f32).collect::<Vec<_>>(), [n]), &device),
        Tensor::from_data(TensorData::new(generated, [n]), &device),
    )
    .into_data()
    .try_to_vec::<f32>()
    .unwrap();
    for (got, want) in rho.iter().zip([1.0, MAX_IMPORTANCE_WEIGHT as f64, (-0.7f64).exp(), 1.0, 0.2f64.exp()]) {
        assert!((*got as f64 - want).abs() < 1e-5, "rho {got} vs {want}");
    }
}

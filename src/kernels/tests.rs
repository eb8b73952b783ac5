//! Every fused layer against Burn's own composition of the same function (its
//! `module::layer_norm`, `activation::{gelu, silu, softmax}` and the RMSNorm formula of
//! `burn::nn::RmsNorm`): values, and gradients through autodiff, on inputs from a fixed
//! pseudo-random sequence. The composed kernels that `tch` runs ([`mod@reference`]) are
//! checked against the flex kernels on the same inputs.

use burn::backend::flex::FlexTensor;
use burn::tensor::activation;
use burn::tensor::{Device, Shape, TensorData};

use super::flex::flex_f32;
use super::*;

use crate::student::testing::{devices, values};

/// An additive mask of `n` entries in rows of `s`: about a third of the entries -1e9 at
/// pseudo-random places (so rows differ), never a row's first (no row fully masked).
fn some_masked(n: usize, s: usize) -> Vec<f32> {
    values(n, 77, 0.0, 1.0).iter().enumerate().map(|(i, &u)| if u < 0.35 && i % s != 0 { -1e9 } else { 0.0 }).collect()
}

fn tensor<const D: usize>(v: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v, shape), device).require_grad()
}

fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: fused {g} vs composed {w}");
    }
}

/// Runs `f` on fresh tracked copies of `inputs`, backpropagates `sum(out * weights)`
/// (fixed pseudo-random weights, as many as outputs) and returns the output and each
/// input's gradient.
fn run<const D: usize, const N: usize>(
    device: &Device,
    inputs: &[(Vec<f32>, Vec<usize>); N],
    f: &impl Fn([Tensor<1>; N]) -> Tensor<D>,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let leaves: [Tensor<1>; N] = std::array::from_fn(|i| {
        let n = inputs[i].0.len();
        tensor(inputs[i].0.clone(), [n], device)
    });
    let out = f(leaves.clone());
    let weights = values(out.shape().num_elements(), 99, -1.0, 1.0);
    let w = Tensor::<D>::from_data(TensorData::new(weights, out.shape()), device);
    let grads = (out.clone() * w).sum().backward();
    let g = leaves.iter().map(|l| vec_of(l.grad(&grads).expect("a gradient for every input"))).collect();
    (vec_of(out), g)
}

fn compare<const D: usize, const N: usize>(
    what: &str,
    inputs: [(Vec<f32>, Vec<usize>); N],
    fused: impl Fn([Tensor<1>; N]) -> Tensor<D>,
    composed: impl Fn([Tensor<1>; N]) -> Tensor<D>,
    tol: f32,
) {
    for device in devices() {
        let (out_f, grads_f) = run(&device, &inputs, &fused);
        let (out_c, grads_c) = run(&device, &inputs, &composed);
        assert_close(&format!("{what} output on {device:?}"), &out_f, &out_c, tol);
        for (i, (gf, gc)) in grads_f.iter().zip(&grads_c).enumerate() {
            assert_close(&format!("{what} gradient of input {i} on {device:?}"), gf, gc, tol);
        }
    }
}

fn shaped<const D: usize>(t: Tensor<1>, shape: &[usize]) -> Tensor<D> {
    let dims: [usize; D] = shape.try_into().unwrap();
    t.reshape(dims)
}

/// A Linear module over the given leaves (so their gradients are the module's).
fn linear_of(w: Tensor<1>, b: Option<Tensor<1>>, d_in: usize, d_out: usize) -> burn::nn::Linear {
    use burn::module::{Param, ParamId};
    // `initialized`, not `from_tensor`: a reshaped leaf is not a leaf, and must not be
    // marked as one (its gradient flows back to the leaf).
    let param = |t| Param::initialized(ParamId::new(), t);
    burn::nn::Linear { weight: param(w.reshape([d_in, d_out])), bias: b.map(|b| Param::initialized(ParamId::new(), b)) }
}

/// Against Burn's `Linear::forward`: a `[2, 32, 12]` input (kept batched by Burn, as rows
/// are a multiple of 32), with and without a bias; and a product large enough for the
/// multi-threaded GEMM (256 x 96 x 300 > 192^3 multiply-adds).
#[test]
fn linear_matches_burns_linear() {
    for (rows, d_in, d_out) in [([2, 32], 12, 5), ([4, 64], 96, 300)] {
        let n = rows[0] * rows[1];
        let x = (values(n * d_in, 20, -2.0, 2.0), vec![n * d_in]);
        let w = (values(d_in * d_out, 21, -0.5, 0.5), vec![d_in * d_out]);
        let b = (values(d_out, 22, -1.0, 1.0), vec![d_out]);
        let view = |x: Tensor<1>| x.reshape([rows[0], rows[1], d_in]);
        // Sums of up to 96 products: rounding differs with the summation order.
        let tol = 2e-5;
        compare(
            &format!("linear {rows:?} x {d_in} -> {d_out}"),
            [x.clone(), w.clone(), b],
            |[x, w, b]| linear(&linear_of(w, Some(b), d_in, d_out), view(x)),
            |[x, w, b]| linear_of(w, Some(b), d_in, d_out).forward(view(x)),
            tol,
        );
        compare(
            &format!("linear without bias {rows:?} x {d_in} -> {d_out}"),
            [x, w],
            |[x, w]| linear(&linear_of(w, None, d_in, d_out), view(x)),
            |[x, w]| linear_of(w, None, d_in, d_out).forward(view(x)),
            tol,
        );
    }
}

#[test]
fn layer_norm_matches_burns() {
    let shape = vec![3, 5, 24];
    let x = (values(360, 1, -3.0, 5.0), shape.clone());
    let (gamma, beta) = ((values(24, 2, 0.5, 1.5), vec![24]), (values(24, 3, -0.5, 0.5), vec![24]));
    compare(
        "layer_norm",
        [x, gamma, beta],
        |[x, g, b]| layer_norm(shaped::<3>(x, &shape), g, b, 1e-5),
        |[x, g, b]| Tensor::from_bridge(burn::tensor::module::layer_norm(shaped::<3>(x, &shape), g, Some(b), 1e-5).into_bridge()),
        2e-5,
    );
}

#[test]
fn layer_norm_reads_a_transposed_input() {
    let x = (values(2 * 6 * 8, 4, -2.0, 2.0), vec![96]);
    let (gamma, beta) = ((values(6, 5, 0.5, 1.5), vec![6]), (values(6, 6, -0.5, 0.5), vec![6]));
    // [2, 8, 6] viewed from a [2, 6, 8] tensor: not contiguous.
    let view = |x: Tensor<1>| x.reshape([2, 6, 8]).swap_dims(1, 2);
    compare(
        "layer_norm (transposed)",
        [x, gamma, beta],
        |[x, g, b]| layer_norm(view(x), g, b, 1e-12),
        |[x, g, b]| burn::tensor::module::layer_norm(view(x), g, Some(b), 1e-12),
        2e-5,
    );
}

#[test]
fn rms_norm_matches_burns() {
    let shape = vec![4, 7, 16];
    let x = (values(448, 7, -2.0, 3.0), shape.clone());
    let gamma = (values(16, 8, 0.5, 1.5), vec![16]);
    // burn::nn::RmsNorm::forward's formula.
    let reference = |x: Tensor<3>, g: Tensor<1>| (x.clone() / (x.square().mean_dim(2) + 1e-5).sqrt()) * g.unsqueeze();
    compare(
        "rms_norm",
        [x, gamma],
        |[x, g]| rms_norm(shaped::<3>(x, &shape), g, 1e-5),
        |[x, g]| reference(shaped::<3>(x, &shape), g),
        2e-5,
    );
}

/// Includes 0, both tails (where Phi is 0 or 1 to f32 precision) and the whole range in
/// between. The bound is A&S 7.1.26's 1.5e-7 on erf, times |x| / 2, plus rounding.
#[test]
fn gelu_matches_burns_erf_gelu() {
    let mut x = values(500, 9, -6.0, 6.0);
    x.extend([0.0, -0.0, 1e-8, -1e-8, 9.0, -9.0, 12.0, -12.0, 30.0, -30.0]);
    let n = x.len();
    compare("gelu", [(x, vec![n])], |[x]| gelu(x), |[x]| activation::gelu(x), 1e-6);
}

#[test]
fn swiglu_matches_silu_times_up() {
    let mut g = values(300, 10, -8.0, 8.0);
    g.extend([0.0, 20.0, -20.0, 90.0, -90.0, 0.5]);
    let u = values(306, 11, -2.0, 2.0);
    compare(
        "swiglu",
        [(g, vec![6, 51]), (u, vec![6, 51])],
        |[g, u]| swiglu(g.reshape([6, 51]), u.reshape([6, 51])),
        |[g, u]| activation::silu(g.reshape([6, 51])) * u.reshape([6, 51]),
        1e-6,
    );
}

/// Against split heads, Burn's matmul and softmax, merged heads: both mask layouts, fewer
/// queries than keys (the encoder's narrowed last block), a longer key sequence; and
/// grouped-query attention (2 and 1 K/V heads for 4 query heads), composed as transformers'
/// `repeat_kv` does it: each K/V head repeated for the query heads of its group.
#[test]
fn attention_matches_burns_multi_head_attention() {
    let (b, heads, hd) = (2, 4, 4);
    let d = heads * hd;
    for kv in [4, 2, 1] {
        let kd = kv * hd;
        for (sq, s, per_query) in [(5, 5, false), (5, 5, true), (1, 6, false), (3, 40, true)] {
            let mq = if per_query { sq } else { 1 };
            let mask = some_masked(b * mq * s, s);
            let mask_on = |x: &Tensor<1>| Tensor::<4>::from_data(TensorData::new(mask.clone(), [b, 1, mq, s]), &x.device());
            let q = (values(b * sq * d, 30 + s as u64, -2.0, 2.0), vec![b * sq * d]);
            let k = (values(b * s * kd, 31 + s as u64, -2.0, 2.0), vec![b * s * kd]);
            let v = (values(b * s * kd, 32 + s as u64, -2.0, 2.0), vec![b * s * kd]);
            let scale = 0.5;
            let split = |t: Tensor<1>, n: usize, h: usize| t.reshape([b, n, h, hd]).swap_dims(1, 2);
            // [b, kv, s, hd] -> [b, heads, s, hd]: query head h reads K/V head h / (heads / kv).
            let repeat = |t: Tensor<4>| Tensor::cat((0..heads).map(|h| t.clone().narrow(1, h / (heads / kv), 1)).collect(), 1);
            compare(
                &format!("attention ({heads} heads, {kv} K/V heads, sq {sq}, s {s}, mask rows {mq})"),
                [q, k, v],
                |[q, k, v]| {
                    let m = mask_on(&q);
                    attention(q.reshape([b, sq, d]), k.reshape([b, s, kd]), v.reshape([b, s, kd]), m, heads, scale)
                },
                |[q, k, v]| {
                    let m = mask_on(&q);
                    let scores = split(q, sq, heads).matmul(repeat(split(k, s, kv)).swap_dims(2, 3));
                    let probs = activation::softmax(scores * scale + m, 3);
                    probs.matmul(repeat(split(v, s, kv))).swap_dims(1, 2).reshape([b, sq, d])
                },
                1e-5,
            );
        }
    }
}

/// The loss's softmax over a vocabulary-sized row, at temperature 1 and 2, including
/// large logits (the row maximum is subtracted) and a row far below the others.
#[test]
fn softmax_matches_burns() {
    let mut x = values(3 * 1000, 30, -20.0, 20.0);
    x[5] = 80.0;
    x[2500] = -200.0;
    for scale in [1.0, 0.5] {
        compare(
            &format!("softmax (scale {scale})"),
            [(x.clone(), vec![3, 1000])],
            |[x]| softmax(x.reshape([3, 1000]), scale),
            |[x]| activation::softmax(x.reshape([3, 1000]) * scale, 1),
            2e-6,
        );
    }
}

/// The composed kernels (what tch runs) equal flex's row kernels.
#[test]
fn composed_kernels_equal_the_flex_kernels() {
    let flex = |v: Vec<f32>, shape: Vec<usize>| flex_f32(v, Shape::from(shape));
    let read = |t: FlexTensor| t.into_data().try_to_vec::<f32>().unwrap();
    let (x, g, b, dy) = (values(6 * 32, 20, -3.0, 3.0), values(32, 21, 0.5, 1.5), values(32, 22, -1.0, 1.0), values(6 * 32, 23, -1.0, 1.0));
    let shape = vec![2, 3, 32];
    let t = |v: &Vec<f32>| flex(v.clone(), shape.clone());
    let v = |v: &Vec<f32>| flex(v.clone(), vec![32]);
    for (i, (k, c)) in Flex::layer_norm_backward(t(&x), v(&g), t(&dy), 1e-5)
        .into_iter()
        .zip(reference::layer_norm_backward::<Flex>(t(&x), v(&g), t(&dy), 1e-5))
        .enumerate()
    {
        assert_close(&format!("layer_norm_backward {i}"), &read(k), &read(c), 1e-5);
    }
    assert_close(
        "rms_norm_forward",
        &read(Flex::rms_norm_forward(t(&x), v(&g), 1e-5)),
        &read(reference::rms_norm_forward::<Flex>(t(&x), v(&g), 1e-5)),
        1e-5,
    );
    for (i, (k, c)) in Flex::rms_norm_backward(t(&x), v(&g), t(&dy), 1e-5)
        .into_iter()
        .zip(reference::rms_norm_backward::<Flex>(t(&x), v(&g), t(&dy), 1e-5))
        .enumerate()
    {
        assert_close(&format!("rms_norm_backward {i}"), &read(k), &read(c), 1e-5);
    }
    assert_close(
        "swiglu_forward",
        &read(Flex::swiglu_forward(t(&x), t(&dy))),
        &read(reference::swiglu_forward::<Flex>(t(&x), t(&dy))),
        1e-6,
    );
    for (i, (k, c)) in Flex::swiglu_backward(t(&x), t(&dy), t(&b.repeat(6)))
        .into_iter()
        .zip(reference::swiglu_backward::<Flex>(t(&x), t(&dy), t(&b.repeat(6))))
        .enumerate()
    {
        assert_close(&format!("swiglu_backward {i}"), &read(k), &read(c), 1e-6);
    }
    let mask = flex((0..2 * 32).map(|i| if i % 5 == 3 { -1e9 } else { 0.0 }).collect(), vec![2, 1, 1, 32]);
    let s4 = |v: &Vec<f32>| flex(v.clone(), vec![2, 1, 3, 32]);
    let y = reference::masked_softmax_forward::<Flex>(s4(&x), mask.clone(), 0.5);
    assert_close(
        "softmax_forward",
        &read(Flex::softmax_forward(s4(&x), 0.5)),
        &read(reference::softmax_forward::<Flex>(s4(&x), 0.5)),
        1e-6,
    );
    assert_close(
        "masked_softmax_backward",
        &read(Flex::masked_softmax_backward(y.clone(), s4(&dy), 0.5)),
        &read(reference::masked_softmax_backward::<Flex>(y, s4(&dy), 0.5)),
        1e-6,
    );
    // Attention: q [2, 3, 32] (2 heads of 16), k and v [2, 3, 32] or, grouped-query, [2, 3, 16]
    // (one K/V head for both), the key-padding mask.
    for kd in [32, 16] {
        let kv_of = |v: &Vec<f32>| flex(v[..6 * kd].to_vec(), vec![2, 3, kd]);
        let (q, k, v) = (t(&x), kv_of(&dy), kv_of(&values(6 * 32, 24, -1.0, 1.0)));
        let pad = || flex(vec![0.0, -1e9, 0.0, 0.0, 0.0, -1e9], vec![2, 1, 1, 3]);
        let ([out, p], [out_c, p_c]) = (
            Flex::attention_forward(q.clone(), k.clone(), v.clone(), pad(), 2, 0.25),
            reference::attention_forward::<Flex>(q.clone(), k.clone(), v.clone(), pad(), 2, 0.25),
        );
        assert_close(&format!("attention_forward (kd {kd})"), &read(out), &read(out_c), 1e-5);
        assert_close(&format!("attention_forward probabilities (kd {kd})"), &read(p.clone()), &read(p_c), 1e-6);
        for (i, (k_, c)) in Flex::attention_backward(q.clone(), k.clone(), v.clone(), p.clone(), t(&x), 2, 0.25)
            .into_iter()
            .zip(reference::attention_backward::<Flex>(q, k, v, p, t(&x), 2, 0.25))
            .enumerate()
        {
            assert_close(&format!("attention_backward {i} (kd {kd})"), &read(k_), &read(c), 1e-5);
        }
    }
}

//! flex's kernels for the fused layers: row kernels over f32 slices and, for Linear and
//! attention, direct GEMM calls. Other dtypes take the composed defaults ([`mod@reference`]).

use burn::backend::Flex;
use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape, TensorData};
use rayon::prelude::*;

use super::simd::{exp, lanes_max, lanes_sum, lanes_sums, multiversion, normal_cdf_pdf, sigmoid};
use super::{Kernels, reference};

/// The f32 elements of a flex tensor in row-major order (a copy only when the layout is not
/// contiguous), or `None` for another dtype.
fn f32_contiguous(t: &FlexTensor) -> Option<FlexTensor> {
    (t.dtype() == DType::F32).then(|| t.to_contiguous())
}

pub(crate) fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 flex tensor")
}

pub(crate) fn flex_f32(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Rows per parallel task: about `PAR_ELEMS` elements, at least one row.
const PAR_ELEMS: usize = 16 * 1024;

fn rows_per_task(d: usize) -> usize {
    (PAR_ELEMS / d.max(1)).max(1)
}

/// GEMMs below this many multiply-adds run on one thread (flex's own threshold, 192^3).
const GEMM_PARALLEL_WORK: usize = 192 * 192 * 192;

/// `dst = (read_dst ? dst : 0) + lhs @ rhs` on row-major f32 buffers, `[m, k] @ [k, n]`, each
/// operand given by its pointer and (row, column) strides. With `read_dst` false, `dst` may
/// be uninitialised: every element is written.
///
/// # Safety
/// The pointers must address every element their strides reach for these `m`, `n`, `k`;
/// `dst` must not overlap the operands.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    read_dst: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
) {
    let parallelism = if m * n * k >= GEMM_PARALLEL_WORK { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: forwarded from the caller; dst is row-major [m, n] (column stride 1, row n).
    unsafe { gemm_strided(m, n, k, (dst, n as isize), read_dst, lhs, rhs, parallelism) }
}

/// [`gemm_f32`] with the output's row stride given (column stride 1) and the threads chosen
/// by the caller.
///
/// # Safety
/// As [`gemm_f32`], for the strides given.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, isize),
    read_dst: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            1,
            dst.1,
            read_dst,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A pointer that parallel tasks write through, each to its own elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: the tasks that share it write disjoint elements (see each use).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
impl SharedMut {
    /// The pointer `offset` elements on (a method, so closures capture the whole wrapper).
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer the pointer was made from.
        unsafe { self.0.add(offset) }
    }
}

/// A buffer of `len` f32 that `fill` initialises completely (GEMM outputs: not zeroed first).
fn filled_by(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut v = Vec::<f32>::with_capacity(len);
    fill(v.spare_capacity_mut().as_mut_ptr().cast());
    // SAFETY: `fill` wrote all `len` elements (a GEMM with read_dst = false and k > 0).
    unsafe { v.set_len(len) };
    v
}

impl Kernels for Flex {
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> [FloatTensor<Self>; 2] {
        let (Some(qc), Some(kc), Some(vc), Some(mc)) = (f32_contiguous(&q), f32_contiguous(&k), f32_contiguous(&v), f32_contiguous(&mask))
        else {
            return reference::attention_forward::<Flex>(q, k, v, mask, heads, scale);
        };
        let (qs, ks, vs, ms) = (slice(&qc), slice(&kc), slice(&vc), slice(&mc));
        let ([b, sq, d], [s, kd], mq) = ([q.shape()[0], q.shape()[1], q.shape()[2]], [k.shape()[1], k.shape()[2]], mask.shape()[2]);
        let hd = d / heads;
        let group = heads / (kd / hd); // query heads per K/V head
        let mut probs = vec![0f32; b * heads * sq * s];
        let out = filled_by(b * sq * d, |out| {
            let out = SharedMut(out);
            // One task per (row of the batch, head): its probabilities are its own chunk, its
            // output the head's columns of the row's sq x d block (disjoint between tasks).
            probs.par_chunks_mut(sq * s).enumerate().for_each(|(bh, p)| {
                let (r, h) = (bh / heads, bh % heads);
                let (qo, ko) = (r * sq * d + h * hd, r * s * kd + (h / group) * hd);
                let mut scores = vec![0f32; sq * s];
                let none = gemm::Parallelism::None;
                // SAFETY: q_h is [sq, hd] at row stride d inside q; k_g^T [hd, s] reads k_g
                // ([s, hd], row stride kd) transposed; scores is [sq, s]; the output block is
                // [sq, hd] at row stride d inside out, written by this task only.
                unsafe {
                    gemm_strided(
                        sq,
                        s,
                        hd,
                        (scores.as_mut_ptr(), s as isize),
                        false,
                        (qs[qo..].as_ptr(), d as isize, 1),
                        (ks[ko..].as_ptr(), 1, kd as isize),
                        none,
                    );
                }
                masked_softmax_rows(&scores, Some(&ms[r * mq * s..(r + 1) * mq * s]), mq == 1, s, scale as f32, p);
                unsafe {
                    gemm_strided(
                        sq,
                        hd,
                        s,
                        (out.at(qo), d as isize),
                        false,
                        (p.as_ptr(), s as isize, 1),
                        (vs[ko..].as_ptr(), kd as isize, 1),
                        none,
                    );
                }
            });
        });
        [flex_f32(out, q.shape()), flex_f32(probs, Shape::from(vec![b, heads, sq, s]))]
    }

    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> [FloatTensor<Self>; 3] {
        let (Some(qc), Some(kc), Some(vc), Some(pc), Some(dc)) =
            (f32_contiguous(&q), f32_contiguous(&k), f32_contiguous(&v), f32_contiguous(&probs), f32_contiguous(&dout))
        else {
            return reference::attention_backward::<Flex>(q, k, v, probs, dout, heads, scale);
        };
        let (qs, ks, vs, ps, dos) = (slice(&qc), slice(&kc), slice(&vc), slice(&pc), slice(&dc));
        let ([b, sq, d], [s, kd]) = ([q.shape()[0], q.shape()[1], q.shape()[2]], [k.shape()[1], k.shape()[2]]);
        let hd = d / heads;
        let kv = kd / hd;
        let group = heads / kv; // query heads per K/V head
        let (mut dq, mut dk) = (Vec::new(), Vec::new());
        let dv = filled_by(b * s * kd, |dv| {
            dq = filled_by(b * sq * d, |dq| {
                dk = filled_by(b * s * kd, |dk| {
                    let (dq, dk, dv) = (SharedMut(dq), SharedMut(dk), SharedMut(dv));
                    // Each (row, K/V head) task writes its query heads' columns of the row's
                    // dq block and the K/V head's columns of the row's dk and dv blocks
                    // (disjoint between tasks, together every element): the first query head
                    // of the group writes dk and dv, the others add to them.
                    (0..b * kv).into_par_iter().for_each(|bg| {
                        let (r, g) = (bg / kv, bg % kv);
                        let ko = r * s * kd + g * hd;
                        let (mut dp, mut ds) = (vec![0f32; sq * s], vec![0f32; sq * s]);
                        let none = gemm::Parallelism::None;
                        let (d_, kd_, s_) = (d as isize, kd as isize, s as isize);
                        for h in g * group..(g + 1) * group {
                            let qo = r * sq * d + h * hd;
                            let p = &ps[(r * heads + h) * sq * s..(r * heads + h + 1) * sq * s];
                            let add = h > g * group;
                            // SAFETY: every operand is a head's block inside its buffer at row
                            // stride d or kd ([sq, hd] or [s, hd]) or a [sq, s] scratch;
                            // transposes read the same blocks with the strides swapped; each
                            // output block is this task's.
                            unsafe {
                                // dp [sq, s] = do_h [sq, hd] @ v_g^T
                                gemm_strided(
                                    sq,
                                    s,
                                    hd,
                                    (dp.as_mut_ptr(), s_),
                                    false,
                                    (dos[qo..].as_ptr(), d_, 1),
                                    (vs[ko..].as_ptr(), 1, kd_),
                                    none,
                                );
                            }
                            softmax_backward_rows(p, &dp, s, scale as f32, &mut ds);
                            unsafe {
                                // dq_h [sq, hd] = ds [sq, s] @ k_g [s, hd]
                                gemm_strided(sq, hd, s, (dq.at(qo), d_), false, (ds.as_ptr(), s_, 1), (ks[ko..].as_ptr(), kd_, 1), none);
                                // dk_g [s, hd] (+)= ds^T [s, sq] @ q_h [sq, hd]
                                gemm_strided(s, hd, sq, (dk.at(ko), kd_), add, (ds.as_ptr(), 1, s_), (qs[qo..].as_ptr(), d_, 1), none);
                                // dv_g [s, hd] (+)= p^T [s, sq] @ do_h [sq, hd]
                                gemm_strided(s, hd, sq, (dv.at(ko), kd_), add, (p.as_ptr(), 1, s_), (dos[qo..].as_ptr(), d_, 1), none);
                            }
                        }
                    });
                });
            });
        });
        [flex_f32(dq, q.shape()), flex_f32(dk, k.shape()), flex_f32(dv, v.shape())]
    }

    fn linear_forward(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let (Some(xc), Some(wc), Some(bc)) = (f32_contiguous(&x), f32_contiguous(&weight), f32_contiguous(&bias)) else {
            return reference::linear_forward::<Flex>(x, weight, bias);
        };
        let (xs, ws, bs) = (slice(&xc), slice(&wc), slice(&bc));
        let (i, o) = (ws.len() / bs.len(), bs.len());
        let n = xs.len() / i;
        // The output starts as the bias in every row; the GEMM adds x @ w to it.
        let mut y: Vec<f32> = Vec::with_capacity(n * o);
        for _ in 0..n {
            y.extend_from_slice(bs);
        }
        // SAFETY: x is [n, i], w is [i, o] and y is [n, o], all contiguous and distinct.
        unsafe { gemm_f32(n, o, i, y.as_mut_ptr(), true, (xs.as_ptr(), i as isize, 1), (ws.as_ptr(), o as isize, 1)) };
        flex_f32(y, Shape::from(vec![n, o]))
    }

    fn linear_backward(x: FloatTensor<Self>, weight: FloatTensor<Self>, dy: FloatTensor<Self>) -> [FloatTensor<Self>; 3] {
        let (Some(xc), Some(wc), Some(dyc)) = (f32_contiguous(&x), f32_contiguous(&weight), f32_contiguous(&dy)) else {
            return reference::linear_backward::<Flex>(x, weight, dy);
        };
        let (xs, ws, dys) = (slice(&xc), slice(&wc), slice(&dyc));
        let [i, o] = [weight.shape()[0], weight.shape()[1]];
        let n = xs.len() / i;
        assert!(i > 0 && o > 0 && n > 0, "linear_backward: empty operands {:?} {:?}", x.shape(), weight.shape());
        // dx [n, i] = dy [n, o] @ w^T (w^T[r][c] = w[c][r]: row stride 1, column stride o).
        // SAFETY (both GEMMs): the operands cover [n, o], [i, o], [n, i] contiguously; the
        // outputs are fresh buffers of the product's size.
        let dx =
            filled_by(n * i, |dst| unsafe { gemm_f32(n, i, o, dst, false, (dys.as_ptr(), o as isize, 1), (ws.as_ptr(), 1, o as isize)) });
        // dw [i, o] = x^T [i, n] @ dy [n, o].
        let dw =
            filled_by(i * o, |dst| unsafe { gemm_f32(i, o, n, dst, false, (xs.as_ptr(), 1, i as isize), (dys.as_ptr(), o as isize, 1)) });
        let mut db = vec![0f32; o];
        for row in dys.chunks_exact(o) {
            for (a, &g) in db.iter_mut().zip(row) {
                *a += g;
            }
        }
        [flex_f32(dx, x.shape()), flex_f32(dw, weight.shape()), flex_f32(db, Shape::from(vec![o]))]
    }

    fn layer_norm_backward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, dy: FloatTensor<Self>, eps: f64) -> [FloatTensor<Self>; 3] {
        let (Some(xc), Some(gc), Some(dyc)) = (f32_contiguous(&x), f32_contiguous(&gamma), f32_contiguous(&dy)) else {
            return reference::layer_norm_backward::<Flex>(x, gamma, dy, eps);
        };
        let shape = x.shape();
        let d = shape[shape.num_dims() - 1];
        let (g, e) = (slice(&gc), eps as f32);
        let (dx, dgamma, dbeta) = norm_backward_rows(slice(&xc), slice(&dyc), d, |x, dy, dx, dgamma, dbeta| {
            layer_norm_backward_rows(x, dy, g, e, dx, dgamma, dbeta)
        });
        [flex_f32(dx, shape), flex_f32(dgamma, Shape::from(vec![d])), flex_f32(dbeta, Shape::from(vec![d]))]
    }

    fn rms_norm_forward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let (Some(xc), Some(gc)) = (f32_contiguous(&x), f32_contiguous(&gamma)) else {
            return reference::rms_norm_forward::<Flex>(x, gamma, eps);
        };
        let shape = x.shape();
        let d = shape[shape.num_dims() - 1];
        let (xs, g) = (slice(&xc), slice(&gc));
        let mut y = vec![0f32; xs.len()];
        let chunk = rows_per_task(d) * d;
        y.par_chunks_mut(chunk).zip(xs.par_chunks(chunk)).for_each(|(y, x)| rms_norm_rows(x, g, eps as f32, y));
        flex_f32(y, shape)
    }

    fn rms_norm_backward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, dy: FloatTensor<Self>, eps: f64) -> [FloatTensor<Self>; 2] {
        let (Some(xc), Some(gc), Some(dyc)) = (f32_contiguous(&x), f32_contiguous(&gamma), f32_contiguous(&dy)) else {
            return reference::rms_norm_backward::<Flex>(x, gamma, dy, eps);
        };
        let shape = x.shape();
        let d = shape[shape.num_dims() - 1];
        let (g, e) = (slice(&gc), eps as f32);
        let (dx, dgamma, _) =
            norm_backward_rows(slice(&xc), slice(&dyc), d, |x, dy, dx, dgamma, _| rms_norm_backward_rows(x, dy, g, e, dx, dgamma));
        [flex_f32(dx, shape), flex_f32(dgamma, Shape::from(vec![d]))]
    }

    fn gelu_forward(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let Some(xc) = f32_contiguous(&x) else { return Flex::gelu(x) };
        let xs = slice(&xc);
        let mut y = vec![0f32; xs.len()];
        y.par_chunks_mut(PAR_ELEMS).zip(xs.par_chunks(PAR_ELEMS)).for_each(|(y, x)| gelu_slice(x, y));
        flex_f32(y, x.shape())
    }

    fn gelu_backward_of(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let (Some(xc), Some(dyc)) = (f32_contiguous(&x), f32_contiguous(&dy)) else {
            return Flex::gelu_backward(x, dy);
        };
        let (xs, dys) = (slice(&xc), slice(&dyc));
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(PAR_ELEMS)
            .zip(xs.par_chunks(PAR_ELEMS).zip(dys.par_chunks(PAR_ELEMS)))
            .for_each(|(dx, (x, dy))| gelu_backward_slice(x, dy, dx));
        flex_f32(dx, x.shape())
    }

    fn swiglu_forward(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (Some(gc), Some(uc)) = (f32_contiguous(&gate), f32_contiguous(&up)) else {
            return reference::swiglu_forward::<Flex>(gate, up);
        };
        let (gs, us) = (slice(&gc), slice(&uc));
        let mut y = vec![0f32; gs.len()];
        y.par_chunks_mut(PAR_ELEMS)
            .zip(gs.par_chunks(PAR_ELEMS).zip(us.par_chunks(PAR_ELEMS)))
            .for_each(|(y, (g, u))| swiglu_slice(g, u, y));
        flex_f32(y, gate.shape())
    }

    fn swiglu_backward(gate: FloatTensor<Self>, up: FloatTensor<Self>, dy: FloatTensor<Self>) -> [FloatTensor<Self>; 2] {
        let (Some(gc), Some(uc), Some(dyc)) = (f32_contiguous(&gate), f32_contiguous(&up), f32_contiguous(&dy)) else {
            return reference::swiglu_backward::<Flex>(gate, up, dy);
        };
        let (gs, us, dys) = (slice(&gc), slice(&uc), slice(&dyc));
        let mut dgate = vec![0f32; gs.len()];
        let mut dup = vec![0f32; gs.len()];
        dgate
            .par_chunks_mut(PAR_ELEMS)
            .zip(dup.par_chunks_mut(PAR_ELEMS))
            .zip(gs.par_chunks(PAR_ELEMS).zip(us.par_chunks(PAR_ELEMS)).zip(dys.par_chunks(PAR_ELEMS)))
            .for_each(|((dg, du), ((g, u), dy))| swiglu_backward_slice(g, u, dy, dg, du));
        let shape = gate.shape();
        [flex_f32(dgate, shape.clone()), flex_f32(dup, shape)]
    }

    fn softmax_forward(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        let Some(xc) = f32_contiguous(&x) else { return reference::softmax_forward::<Flex>(x, scale) };
        let shape = x.shape();
        let s = shape[shape.num_dims() - 1];
        let xs = slice(&xc);
        let mut y = vec![0f32; xs.len()];
        let chunk = rows_per_task(s) * s;
        y.par_chunks_mut(chunk).zip(xs.par_chunks(chunk)).for_each(|(y, x)| masked_softmax_rows(x, None, true, s, scale as f32, y));
        flex_f32(y, shape)
    }

    fn masked_softmax_backward(y: FloatTensor<Self>, dy: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        let (Some(yc), Some(dyc)) = (f32_contiguous(&y), f32_contiguous(&dy)) else {
            return reference::masked_softmax_backward::<Flex>(y, dy, scale);
        };
        let shape = y.shape();
        let s = shape[shape.num_dims() - 1];
        let (ys, dys) = (slice(&yc), slice(&dyc));
        let mut dx = vec![0f32; ys.len()];
        let chunk = rows_per_task(s) * s;
        dx.par_chunks_mut(chunk)
            .zip(ys.par_chunks(chunk).zip(dys.par_chunks(chunk)))
            .for_each(|(dx, (y, dy))| softmax_backward_rows(y, dy, s, scale as f32, dx));
        flex_f32(dx, shape)
    }
}

/// A norm's gradient over rows of `d`, split into parallel tasks of whole rows:
/// `rows(x, dy, dx, dgamma, dbeta)` writes `dx` and accumulates the task's parameter
/// gradients, which are then summed. Returns `(dx, dgamma, dbeta)`.
fn norm_backward_rows(
    xs: &[f32],
    dys: &[f32],
    d: usize,
    rows: impl Fn(&[f32], &[f32], &mut [f32], &mut [f32], &mut [f32]) + Sync,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; xs.len()];
    let chunk = rows_per_task(d) * d;
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(chunk)
        .zip(xs.par_chunks(chunk).zip(dys.par_chunks(chunk)))
        .map(|(dx, (x, dy))| {
            let (mut dgamma, mut dbeta) = (vec![0f32; d], vec![0f32; d]);
            rows(x, dy, dx, &mut dgamma, &mut dbeta);
            (dgamma, dbeta)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0f32; d], vec![0f32; d]);
    for (g, b) in partials {
        dgamma.iter_mut().zip(&g).for_each(|(a, v)| *a += v);
        dbeta.iter_mut().zip(&b).for_each(|(a, v)| *a += v);
    }
    (dx, dgamma, dbeta)
}

// The row kernels, each compiled for every CPU feature level by `multiversion!`.
multiversion! {
    /// LayerNorm's gradient over rows of `d = gamma.len()`; `dgamma`, `dbeta` accumulate.
    fn layer_norm_backward_rows(x: &[f32], dy: &[f32], gamma: &[f32], eps: f32, dx: &mut [f32], dgamma: &mut [f32], dbeta: &mut [f32]) {
        let d = gamma.len();
        let inv_d = 1.0 / d as f32;
        for ((x, dy), dx) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let mean = lanes_sum(d, |i| x[i]) * inv_d;
            // One pass for the variance and both of the gradient's row means.
            let [sq, g, gxc] = lanes_sums(d, |i| {
                let (xc, g) = (x[i] - mean, dy[i] * gamma[i]);
                [xc * xc, g, g * xc]
            });
            let rstd = 1.0 / (sq * inv_d + eps).sqrt();
            let (a, b) = (g * inv_d, gxc * rstd * inv_d);
            for i in 0..d {
                let xhat = (x[i] - mean) * rstd;
                dx[i] = rstd * (dy[i] * gamma[i] - a - xhat * b);
                dgamma[i] += dy[i] * xhat;
                dbeta[i] += dy[i];
            }
        }
    }

    /// RMSNorm over rows of `d = gamma.len()`.
    fn rms_norm_rows(x: &[f32], gamma: &[f32], eps: f32, y: &mut [f32]) {
        let d = gamma.len();
        for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let r = 1.0 / (lanes_sum(d, |i| x[i] * x[i]) / d as f32 + eps).sqrt();
            for i in 0..d {
                y[i] = x[i] * r * gamma[i];
            }
        }
    }

    /// RMSNorm's gradient over rows of `d = gamma.len()`; `dgamma` accumulates.
    fn rms_norm_backward_rows(x: &[f32], dy: &[f32], gamma: &[f32], eps: f32, dx: &mut [f32], dgamma: &mut [f32]) {
        let d = gamma.len();
        let inv_d = 1.0 / d as f32;
        for ((x, dy), dx) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let r = 1.0 / (lanes_sum(d, |i| x[i] * x[i]) * inv_d + eps).sqrt();
            let c = lanes_sum(d, |i| dy[i] * gamma[i] * x[i] * r) * inv_d;
            for i in 0..d {
                let xhat = x[i] * r;
                dx[i] = r * (dy[i] * gamma[i] - xhat * c);
                dgamma[i] += dy[i] * xhat;
            }
        }
    }

    fn gelu_slice(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x * normal_cdf_pdf(x).0;
        }
    }

    /// `d gelu / dx = Phi(x) + x phi(x)`.
    fn gelu_backward_slice(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            let (cdf, pdf) = normal_cdf_pdf(x);
            *dx = dy * (cdf + x * pdf);
        }
    }

    fn swiglu_slice(gate: &[f32], up: &[f32], y: &mut [f32]) {
        for ((y, &g), &u) in y.iter_mut().zip(gate).zip(up) {
            *y = g * sigmoid(g) * u;
        }
    }

    fn swiglu_backward_slice(gate: &[f32], up: &[f32], dy: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
        for i in 0..gate.len().min(up.len()).min(dy.len()).min(dgate.len()).min(dup.len()) {
            let (g, s) = (gate[i], sigmoid(gate[i]));
            dgate[i] = dy[i] * up[i] * s * (1.0 + g * (1.0 - s));
            dup[i] = dy[i] * g * s;
        }
    }

    /// `softmax(x * scale + mask)` over rows of `s`; the mask is one row for all
    /// (`one_mask_row`), one per row, or none.
    fn masked_softmax_rows(x: &[f32], mask: Option<&[f32]>, one_mask_row: bool, s: usize, scale: f32, y: &mut [f32]) {
        for (r, (x, y)) in x.chunks_exact(s).zip(y.chunks_exact_mut(s)).enumerate() {
            match mask {
                Some(mask) => {
                    let m = if one_mask_row { &mask[..s] } else { &mask[r * s..(r + 1) * s] };
                    for i in 0..s {
                        y[i] = x[i] * scale + m[i];
                    }
                }
                None => {
                    for i in 0..s {
                        y[i] = x[i] * scale;
                    }
                }
            }
            let max = lanes_max(s, |i| y[i]);
            for v in y.iter_mut() {
                *v = exp(*v - max);
            }
            let inv = 1.0 / lanes_sum(s, |i| y[i]);
            for v in y.iter_mut() {
                *v *= inv;
            }
        }
    }

    /// `dx = scale * y * (dy - sum(dy * y))` over rows of `s`.
    fn softmax_backward_rows(y: &[f32], dy: &[f32], s: usize, scale: f32, dx: &mut [f32]) {
        for ((y, dy), dx) in y.chunks_exact(s).zip(dy.chunks_exact(s)).zip(dx.chunks_exact_mut(s)) {
            let dot = lanes_sum(s, |i| dy[i] * y[i]);
            for i in 0..s {
                dx[i] = scale * y[i] * (dy[i] - dot);
            }
        }
    }
}

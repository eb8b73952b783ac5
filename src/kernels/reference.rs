//! Each kernel composed from a backend's own operations, run without autodiff: the slow
//! reference beside every fast kernel (the tests compare flex's with these), and what
//! [`Kernels`](super::Kernels) runs where a backend has no kernel of its own (`tch`'s other
//! layers, flex on dtypes other than f32). The gradients are written out:
//! - LayerNorm, `xhat = (x - mean) * rstd`, `g = dy * gamma`:
//!   `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`, `dgamma = sum(dy * xhat)`, `dbeta = sum(dy)`
//! - RMSNorm, `xhat = x * rrms`: `dx = rrms * (g - xhat * mean(g * xhat))`, `dgamma = sum(dy * xhat)`
//! - SwiGLU, `s = sigmoid(gate)`: `dgate = dy * up * s * (1 + gate * (1 - s))`, `dup = dy * gate * s`
//! - softmax of `scores * scale + mask`, output `y`: `dscores = scale * y * (dy - sum(dy * y))`
//! - Linear, `y = x @ w + b`: `dx = dy @ w^T`, `dw = x^T @ dy`, `db = sum over rows of dy`
//! - attention per head, `p = softmax(q k^T * scale + mask)`, `o = p v`: `dv = p^T do`,
//!   `dp = do v^T`, `ds` = the softmax's gradient of `dp`, `dq = ds k`, `dk = ds^T q`; with
//!   grouped-query attention K/V head `g`'s `dk`, `dv` are the sums over the query heads reading it

use burn::backend::Backend;
use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Shape;

/// `[b, n, heads * hd] -> [b, heads, n, hd]`
fn split_heads<B: Backend>(t: FloatTensor<B>, heads: usize) -> FloatTensor<B> {
    let shape = t.shape();
    let (b, n, d) = (shape[0], shape[1], shape[2]);
    B::float_swap_dims(B::float_reshape(t, Shape::from(vec![b, n, heads, d / heads])), 1, 2)
}

/// `[b, heads, n, hd] -> [b, n, heads * hd]`
fn merge_heads<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let shape = t.shape();
    let (b, h, n, hd) = (shape[0], shape[1], shape[2], shape[3]);
    B::float_reshape(B::float_swap_dims(t, 1, 2), Shape::from(vec![b, n, h * hd]))
}

/// K or V `[b, s, kv * hd]` as `[b, heads, s, hd]`: each of its `kv` heads repeated for the
/// `heads / kv` query heads that read it (transformers' `repeat_kv`).
fn kv_heads<B: Backend>(t: FloatTensor<B>, heads: usize, hd: usize) -> FloatTensor<B> {
    let shape = t.shape();
    let (b, s, kv) = (shape[0], shape[1], shape[2] / hd);
    let t = split_heads::<B>(t, kv); // [b, kv, s, hd]
    if kv == heads {
        return t;
    }
    let t = B::float_reshape(t, Shape::from(vec![b, kv, 1, s, hd]));
    let t = B::float_expand(t, Shape::from(vec![b, kv, heads / kv, s, hd]));
    B::float_reshape(t, Shape::from(vec![b, heads, s, hd]))
}

/// The gradient of [`kv_heads`]: `[b, heads, s, hd]` summed over each group -> `[b, s, kv * hd]`.
fn kv_heads_grad<B: Backend>(g: FloatTensor<B>, kv: usize) -> FloatTensor<B> {
    let shape = g.shape();
    let (b, heads, s, hd) = (shape[0], shape[1], shape[2], shape[3]);
    let g = if kv == heads {
        g
    } else {
        let g = B::float_sum_dim(B::float_reshape(g, Shape::from(vec![b, kv, heads / kv, s, hd])), 2);
        B::float_reshape(g, Shape::from(vec![b, kv, s, hd]))
    };
    merge_heads::<B>(g)
}

pub fn attention_forward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: FloatTensor<B>,
    heads: usize,
    scale: f64,
) -> [FloatTensor<B>; 2] {
    let hd = q.shape()[2] / heads;
    let (q, k, v) = (split_heads::<B>(q, heads), kv_heads::<B>(k, heads, hd), kv_heads::<B>(v, heads, hd));
    let probs = masked_softmax_forward::<B>(B::float_matmul(q, B::float_swap_dims(k, 2, 3)), mask, scale);
    [merge_heads::<B>(B::float_matmul(probs.clone(), v)), probs]
}

pub fn attention_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    probs: FloatTensor<B>,
    dout: FloatTensor<B>,
    heads: usize,
    scale: f64,
) -> [FloatTensor<B>; 3] {
    let hd = q.shape()[2] / heads;
    let kv = k.shape()[2] / hd;
    let (q, k, v, dout) =
        (split_heads::<B>(q, heads), kv_heads::<B>(k, heads, hd), kv_heads::<B>(v, heads, hd), split_heads::<B>(dout, heads));
    let dv = B::float_matmul(B::float_swap_dims(probs.clone(), 2, 3), dout.clone());
    let dp = B::float_matmul(dout, B::float_swap_dims(v, 2, 3));
    let ds = masked_softmax_backward::<B>(probs, dp, scale);
    let dq = B::float_matmul(ds.clone(), k);
    let dk = B::float_matmul(B::float_swap_dims(ds, 2, 3), q);
    [merge_heads::<B>(dq), kv_heads_grad::<B>(dk, kv), kv_heads_grad::<B>(dv, kv)]
}

/// # Shapes
/// - `x`: `[n, i]`; `weight`: `[i, o]`; `bias`: `[o]`; returns `[n, o]`
pub fn linear_forward<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, bias: FloatTensor<B>) -> FloatTensor<B> {
    B::float_add(B::float_matmul(x, weight), row_vector::<B>(bias, 2))
}

pub fn linear_backward<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, dy: FloatTensor<B>) -> [FloatTensor<B>; 3] {
    let [n, o] = [dy.shape()[0], dy.shape()[1]];
    let dx = B::float_matmul(dy.clone(), B::float_swap_dims(weight, 0, 1));
    let dw = B::float_matmul(B::float_swap_dims(x, 0, 1), dy.clone());
    [dx, dw, column_sum::<B>(dy, n, o)]
}

pub fn layer_norm_backward<B: Backend>(x: FloatTensor<B>, gamma: FloatTensor<B>, dy: FloatTensor<B>, eps: f64) -> [FloatTensor<B>; 3] {
    let shape = x.shape();
    let last = shape.num_dims() - 1;
    let d = shape[last];
    let rows = shape.num_elements() / d;
    let mean = B::float_mean_dim(x.clone(), last);
    let xc = B::float_sub(x, mean);
    let var = B::float_mean_dim(B::float_mul(xc.clone(), xc.clone()), last);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, eps.into())));
    let xhat = B::float_mul(xc, rstd.clone());
    let g = B::float_mul(dy.clone(), row_vector::<B>(gamma, last + 1));
    let a = B::float_mean_dim(g.clone(), last);
    let b = B::float_mean_dim(B::float_mul(g.clone(), xhat.clone()), last);
    let dx = B::float_mul(rstd, B::float_sub(B::float_sub(g, a), B::float_mul(xhat.clone(), b)));
    let dgamma = column_sum::<B>(B::float_mul(dy.clone(), xhat), rows, d);
    let dbeta = column_sum::<B>(dy, rows, d);
    [dx, dgamma, dbeta]
}

pub fn rms_norm_forward<B: Backend>(x: FloatTensor<B>, gamma: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    let last = x.shape().num_dims() - 1;
    let rrms = rrms::<B>(x.clone(), last, eps);
    B::float_mul(B::float_mul(x, rrms), row_vector::<B>(gamma, last + 1))
}

pub fn rms_norm_backward<B: Backend>(x: FloatTensor<B>, gamma: FloatTensor<B>, dy: FloatTensor<B>, eps: f64) -> [FloatTensor<B>; 2] {
    let shape = x.shape();
    let last = shape.num_dims() - 1;
    let d = shape[last];
    let rows = shape.num_elements() / d;
    let rrms = rrms::<B>(x.clone(), last, eps);
    let xhat = B::float_mul(x, rrms.clone());
    let g = B::float_mul(dy.clone(), row_vector::<B>(gamma, last + 1));
    let c = B::float_mean_dim(B::float_mul(g.clone(), xhat.clone()), last);
    let dx = B::float_mul(rrms, B::float_sub(g, B::float_mul(xhat.clone(), c)));
    let dgamma = column_sum::<B>(B::float_mul(dy, xhat), rows, d);
    [dx, dgamma]
}

pub fn swiglu_forward<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    let s = B::sigmoid(gate.clone());
    B::float_mul(B::float_mul(gate, s), up)
}

pub fn swiglu_backward<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>, dy: FloatTensor<B>) -> [FloatTensor<B>; 2] {
    let s = B::sigmoid(gate.clone());
    let silu = B::float_mul(gate.clone(), s.clone());
    let one_minus = B::float_add_scalar(B::float_neg(s.clone()), 1.0.into());
    let dsilu = B::float_mul(s, B::float_add_scalar(B::float_mul(gate, one_minus), 1.0.into()));
    let dgate = B::float_mul(B::float_mul(dy.clone(), up), dsilu);
    let dup = B::float_mul(dy, silu);
    [dgate, dup]
}

pub fn masked_softmax_forward<B: Backend>(scores: FloatTensor<B>, mask: FloatTensor<B>, scale: f64) -> FloatTensor<B> {
    let last = scores.shape().num_dims() - 1;
    B::softmax(B::float_add(B::float_mul_scalar(scores, scale.into()), mask), last)
}

pub fn softmax_forward<B: Backend>(x: FloatTensor<B>, scale: f64) -> FloatTensor<B> {
    let last = x.shape().num_dims() - 1;
    B::softmax(B::float_mul_scalar(x, scale.into()), last)
}

pub fn masked_softmax_backward<B: Backend>(y: FloatTensor<B>, dy: FloatTensor<B>, scale: f64) -> FloatTensor<B> {
    let last = y.shape().num_dims() - 1;
    let dot = B::float_sum_dim(B::float_mul(dy.clone(), y.clone()), last);
    B::float_mul_scalar(B::float_mul(y, B::float_sub(dy, dot)), scale.into())
}

/// `[d] -> [1, .., 1, d]` (rank `rank`), to broadcast over rows.
fn row_vector<B: Backend>(v: FloatTensor<B>, rank: usize) -> FloatTensor<B> {
    let d = v.shape()[0];
    let mut dims = vec![1; rank];
    dims[rank - 1] = d;
    B::float_reshape(v, Shape::from(dims))
}

/// Sum over every row: `[.., d] -> [d]`.
fn column_sum<B: Backend>(t: FloatTensor<B>, rows: usize, d: usize) -> FloatTensor<B> {
    B::float_reshape(B::float_sum_dim(B::float_reshape(t, Shape::from(vec![rows, d])), 0), Shape::from(vec![d]))
}

/// `1 / sqrt(mean(x^2) + eps)` over `last`, kept as a size-1 dimension.
fn rrms<B: Backend>(x: FloatTensor<B>, last: usize, eps: f64) -> FloatTensor<B> {
    let ms = B::float_mean_dim(B::float_mul(x.clone(), x), last);
    B::float_recip(B::float_sqrt(B::float_add_scalar(ms, eps.into())))
}

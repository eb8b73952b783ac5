//! Fused layers for the students: Linear, multi-head attention, LayerNorm, RMSNorm, GELU and
//! SwiGLU as single operations with hand-written gradients; and two pieces of the loss, the
//! softmax over the vocabulary and a node that backpropagates a gradient computed in closed
//! form ([`with_gradient`]).
//!
//! Burn's autodiff composes LayerNorm, RMSNorm, softmax and SwiGLU from five to ten
//! element-wise operations, each recorded in the graph with its own backward and its own
//! temporary tensors. Here each is one backend operation (a Burn backend extension) with its
//! gradient written out, so training records one node per layer. On `flex` the forward and
//! backward are row kernels over plain slices (exp and erf as branch-free polynomials that
//! the compiler vectorises, AVX2 or AVX-512 when the CPU has them) and, for Linear and
//! attention, direct GEMM calls; on `tch` they are libtorch's own kernels or compositions of
//! them, run without autodiff.
//!
//! Every operation computes the same function as the composed one it replaces: the tests
//! compare values and gradients with Burn's own composition on random inputs.

// burn-tch is deprecated upstream; the project keeps it as the libtorch backend.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::TensorMetadata;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

// ---------------------------------------------------------------------------------------
// The layers, as the students call them.

/// A `Linear` layer over the last dimension, `x @ weight + bias`, as one fused operation on
/// a 2-D view of all leading positions. Burn's own `Linear::forward` keeps a `[b, s, d]`
/// input batched when `s` is a multiple of 32 (a GPU tiling rule): on flex that is `b` small
/// GEMMs forward and `b` weight gradients summed afterwards; and it records the product and
/// the bias add as two graph nodes. Here: one GEMM that starts from the bias, one node, and
/// backward one GEMM per gradient.
///
/// # Shapes
/// - `x`: `[.., d_in]`; the layer's weight `[d_in, d_out]`, bias `[d_out]` (zeros when it
///   has none); returns `[.., d_out]`
pub fn linear<const D: usize>(layer: &burn::nn::Linear, x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let weight = layer.weight.val();
    let [w_in, d_out] = weight.dims();
    assert_eq!(w_in, d_in, "linear: the input has {d_in} features but the weight is {:?}", weight.dims());
    let bias = match &layer.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([d_out], &x.device()),
    };
    let y: Tensor<2> = Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::fused_linear(
        x.reshape([rows, d_in]).into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    ));
    let mut out = dims;
    out[D - 1] = d_out;
    y.reshape(out)
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * gamma + beta`.
///
/// # Shapes
/// - `x`: `[.., d]`; `gamma`, `beta`: `[d]`; returns the shape of `x`
pub fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::fused_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        eps,
    ))
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * gamma`.
///
/// # Shapes
/// - `x`: `[.., d]`; `gamma`: `[d]`; returns the shape of `x`
pub fn rms_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, eps: f64) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::fused_rms_norm(x.into_dispatch(), gamma.into_dispatch(), eps))
}

/// The exact (erf) GELU, `x * Phi(x)`.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::fused_gelu(x.into_dispatch()))
}

/// SwiGLU's gate: `silu(gate) * up`.
///
/// # Shapes
/// - `gate`, `up`: the same shape; returns it
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    assert_eq!(gate.dims(), up.dims(), "swiglu: gate and up differ in shape");
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::fused_swiglu(gate.into_dispatch(), up.into_dispatch()))
}

/// Multi-head attention, one fused operation: for each head `h`,
/// `softmax(q_h @ k_h^T * scale + mask) @ v_h`, with the heads interleaved in the model
/// dimension (head `h` is columns `h * hd .. (h + 1) * hd`, `hd = d / heads`) as the Q, K, V
/// projections produce them and the output projection reads them. No head split or merge
/// copies; on flex each (row, head) is three small GEMMs and a softmax on one thread, the
/// probabilities kept for the backward (as PyTorch eager keeps them).
///
/// # Shapes
/// - `q`: `[b, sq, d]`; `k`, `v`: `[b, s, d]`; `mask`: `[b, 1, mq, s]` additive (0 or a large
///   negative) with `mq` 1 (one row for every query) or `sq`; returns `[b, sq, d]`
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, mask: Tensor<4>, heads: usize, scale: f64) -> Tensor<3> {
    let ([b, sq, d], [kb, s, kd]) = (q.dims(), k.dims());
    assert!(kb == b && kd == d && v.dims() == k.dims(), "attention: q {:?}, k {:?}, v {:?} do not match", q.dims(), k.dims(), v.dims());
    assert!(heads > 0 && d.is_multiple_of(heads), "attention: {d} features do not split into {heads} heads");
    let [mb, mh, mq, ms] = mask.dims();
    assert!(
        mb == b && mh == 1 && (mq == sq || mq == 1) && ms == s,
        "attention: mask {:?} does not fit q {:?} and k {:?}",
        mask.dims(),
        q.dims(),
        k.dims()
    );
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::fused_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        mask.detach().into_dispatch(),
        heads,
        scale,
    ))
}

/// `softmax(x * scale)` over the last dimension (the loss's softmax over the vocabulary).
///
/// # Shapes
/// - `x`: `[.., v]`; returns the shape of `x`
pub fn softmax<const D: usize>(x: Tensor<D>, scale: f64) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::fused_softmax(x.into_dispatch(), scale))
}

/// A loss whose gradient is already known: returns `value`, and backpropagates `grad * dy`
/// into `z` (one graph node, instead of recording `value + sum((z - z') * grad)`, which costs
/// three passes over `z` forward and three backward). `value` and `grad` carry no gradient.
///
/// # Shapes
/// - `z`, `grad`: `[n, v]` (the logits, and the loss's gradient with respect to them);
///   `value`: `[1]`; returns `[1]`
pub fn with_gradient(z: Tensor<2>, value: Tensor<1>, grad: Tensor<2>) -> Tensor<1> {
    assert_eq!(z.dims(), grad.dims(), "with_gradient: the gradient's shape differs from the logits'");
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::fused_with_gradient(
        z.into_dispatch(),
        value.detach().into_dispatch(),
        grad.detach().into_dispatch(),
    ))
}

// ---------------------------------------------------------------------------------------
// The backend extension: one operation per layer, routed to flex, tch or their autodiff.

#[cfg_attr(feature = "tch", backend_extension(Flex, LibTorch, Autodiff))]
#[cfg_attr(not(feature = "tch"), backend_extension(Flex, Autodiff))]
pub trait FusedOps: Backend {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> FloatTensor<Self>;
    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
    fn fused_layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
    fn fused_rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
    fn fused_softmax(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self>;
    /// Without autodiff there is nothing to backpropagate: the value.
    fn fused_with_gradient(z: FloatTensor<Self>, value: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let _ = (z, grad);
        value
    }
}

/// The forward and backward kernels of each fused layer on a backend without autodiff. The
/// defaults compose the backend's own operations ([`composed`], what `tch` uses); `flex`
/// overrides them with row kernels.
pub trait Kernels: Backend {
    /// Returns `[out, probs]`, the probabilities `[b, heads, sq, s]` kept for the backward.
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> [FloatTensor<Self>; 2] {
        composed::attention_forward::<Self>(q, k, v, mask, heads, scale)
    }
    /// Returns `[dq, dk, dv]`.
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> [FloatTensor<Self>; 3] {
        composed::attention_backward::<Self>(q, k, v, probs, dout, heads, scale)
    }
    fn linear_forward(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::linear_forward::<Self>(x, weight, bias)
    }
    /// Returns `[dx, dweight, dbias]`.
    fn linear_backward(x: FloatTensor<Self>, weight: FloatTensor<Self>, dy: FloatTensor<Self>) -> [FloatTensor<Self>; 3] {
        composed::linear_backward::<Self>(x, weight, dy)
    }
    fn layer_norm_forward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), eps)
    }
    /// Returns `[dx, dgamma, dbeta]`.
    fn layer_norm_backward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, dy: FloatTensor<Self>, eps: f64) -> [FloatTensor<Self>; 3] {
        composed::layer_norm_backward::<Self>(x, gamma, dy, eps)
    }
    fn rms_norm_forward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        composed::rms_norm_forward::<Self>(x, gamma, eps)
    }
    /// Returns `[dx, dgamma]`.
    fn rms_norm_backward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, dy: FloatTensor<Self>, eps: f64) -> [FloatTensor<Self>; 2] {
        composed::rms_norm_backward::<Self>(x, gamma, dy, eps)
    }
    fn gelu_forward(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu(x)
    }
    fn gelu_backward_of(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu_backward(x, dy)
    }
    fn swiglu_forward(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::swiglu_forward::<Self>(gate, up)
    }
    /// Returns `[dgate, dup]`.
    fn swiglu_backward(gate: FloatTensor<Self>, up: FloatTensor<Self>, dy: FloatTensor<Self>) -> [FloatTensor<Self>; 2] {
        composed::swiglu_backward::<Self>(gate, up, dy)
    }
    fn softmax_forward(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        composed::softmax_forward::<Self>(x, scale)
    }
    /// The gradient with respect to the scores, from the forward's output `y`.
    fn masked_softmax_backward(y: FloatTensor<Self>, dy: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        composed::masked_softmax_backward::<Self>(y, dy, scale)
    }
}

/// Each kernel composed from a backend's own operations, run without autodiff. The
/// gradients are written out:
/// - LayerNorm, `xhat = (x - mean) * rstd`, `g = dy * gamma`:
///   `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`, `dgamma = sum(dy * xhat)`, `dbeta = sum(dy)`
/// - RMSNorm, `xhat = x * rrms`: `dx = rrms * (g - xhat * mean(g * xhat))`, `dgamma = sum(dy * xhat)`
/// - SwiGLU, `s = sigmoid(gate)`: `dgate = dy * up * s * (1 + gate * (1 - s))`, `dup = dy * gate * s`
/// - softmax of `scores * scale + mask`, output `y`: `dscores = scale * y * (dy - sum(dy * y))`
/// - Linear, `y = x @ w + b`: `dx = dy @ w^T`, `dw = x^T @ dy`, `db = sum over rows of dy`
/// - attention per head, `p = softmax(q k^T * scale + mask)`, `o = p v`: `dv = p^T do`,
///   `dp = do v^T`, `ds` = the softmax's gradient of `dp`, `dq = ds k`, `dk = ds^T q`
pub mod composed {
    use super::*;

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

    pub fn attention_forward<B: Backend>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        v: FloatTensor<B>,
        mask: FloatTensor<B>,
        heads: usize,
        scale: f64,
    ) -> [FloatTensor<B>; 2] {
        let (q, k, v) = (split_heads::<B>(q, heads), split_heads::<B>(k, heads), split_heads::<B>(v, heads));
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
        let (q, k, v, dout) =
            (split_heads::<B>(q, heads), split_heads::<B>(k, heads), split_heads::<B>(v, heads), split_heads::<B>(dout, heads));
        let dv = B::float_matmul(B::float_swap_dims(probs.clone(), 2, 3), dout.clone());
        let dp = B::float_matmul(dout, B::float_swap_dims(v, 2, 3));
        let ds = masked_softmax_backward::<B>(probs, dp, scale);
        let dq = B::float_matmul(ds.clone(), k);
        let dk = B::float_matmul(B::float_swap_dims(ds, 2, 3), q);
        [merge_heads::<B>(dq), merge_heads::<B>(dk), merge_heads::<B>(dv)]
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

/// On a backend without autodiff each fused operation is its forward kernel.
macro_rules! forward_kernels {
    ($backend:ty) => {
        impl FusedOps for $backend {
            fn fused_attention(
                q: FloatTensor<Self>,
                k: FloatTensor<Self>,
                v: FloatTensor<Self>,
                mask: FloatTensor<Self>,
                heads: usize,
                scale: f64,
            ) -> FloatTensor<Self> {
                let [out, _probs] = Self::attention_forward(q, k, v, mask, heads, scale);
                out
            }
            fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
                Self::linear_forward(x, weight, bias)
            }
            fn fused_layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
                Self::layer_norm_forward(x, gamma, beta, eps)
            }
            fn fused_rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
                Self::rms_norm_forward(x, gamma, eps)
            }
            fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
                Self::gelu_forward(x)
            }
            fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
                Self::swiglu_forward(gate, up)
            }
            fn fused_softmax(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
                Self::softmax_forward(x, scale)
            }
        }
    };
}

forward_kernels!(Flex);

/// libtorch: the Linear as libtorch's `addmm` (bias + x @ w in one call, as PyTorch's
/// `nn.Linear` runs) and its gradients as two `mm`s and a sum; the attention on views of the
/// heads with libtorch's softmax and softmax-backward kernels; the LayerNorm backward by
/// libtorch's own kernel. The other layers compose libtorch's operations (the defaults).
#[cfg(feature = "tch")]
impl Kernels for burn::backend::LibTorch {
    fn linear_forward(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        TchTensor::new(bias.tensor.addmm(&x.tensor, &weight.tensor))
    }

    fn linear_backward(x: FloatTensor<Self>, weight: FloatTensor<Self>, dy: FloatTensor<Self>) -> [FloatTensor<Self>; 3] {
        let dx = dy.tensor.mm(&weight.tensor.tr());
        let dw = x.tensor.tr().mm(&dy.tensor);
        let db = dy.tensor.sum_dim_intlist([0i64].as_slice(), false, dy.tensor.kind());
        [TchTensor::new(dx), TchTensor::new(dw), TchTensor::new(db)]
    }

    /// libtorch's LayerNorm backward kernel, through its autograd: the forward again on
    /// detached leaves, then the gradient of `sum(y * dy)` (which is `dy` at `y`).
    fn layer_norm_backward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, dy: FloatTensor<Self>, eps: f64) -> [FloatTensor<Self>; 3] {
        let d = *x.tensor.size().last().expect("layer_norm_backward: a tensor with dimensions");
        let (xl, gl) = (x.tensor.detach().set_requires_grad(true), gamma.tensor.detach().set_requires_grad(true));
        let y = xl.layer_norm([d].as_slice(), Some(&gl), None::<&tch::Tensor>, eps, true);
        let grads = tch::Tensor::run_backward(&[(&y * &dy.tensor).sum(y.kind())], &[&xl, &gl], false, false);
        let rows: Vec<i64> = (0..dy.tensor.dim() as i64 - 1).collect();
        let dbeta = dy.tensor.sum_dim_intlist(rows.as_slice(), false, dy.tensor.kind());
        let [dx, dgamma]: [tch::Tensor; 2] = grads.try_into().expect("two gradients");
        [TchTensor::new(dx), TchTensor::new(dgamma), TchTensor::new(dbeta)]
    }

    fn masked_softmax_backward(y: FloatTensor<Self>, dy: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        let dx = tch::Tensor::internal_softmax_backward_data(&dy.tensor, &y.tensor, -1, y.tensor.kind());
        TchTensor::new(dx * scale)
    }

    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> [FloatTensor<Self>; 2] {
        let (q, k, v) = (tch_heads(&q.tensor, heads), tch_heads(&k.tensor, heads), tch_heads(&v.tensor, heads));
        let probs = (q.matmul(&k.transpose(-2, -1)) * scale + &mask.tensor).softmax(-1, q.kind());
        [TchTensor::new(tch_merge(&probs.matmul(&v))), TchTensor::new(probs)]
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
        let (q, k, v, dout, p) = (
            tch_heads(&q.tensor, heads),
            tch_heads(&k.tensor, heads),
            tch_heads(&v.tensor, heads),
            tch_heads(&dout.tensor, heads),
            &probs.tensor,
        );
        let dv = p.transpose(-2, -1).matmul(&dout);
        let dp = dout.matmul(&v.transpose(-2, -1));
        let ds = tch::Tensor::internal_softmax_backward_data(&dp, p, -1, p.kind()) * scale;
        let dq = ds.matmul(&k);
        let dk = ds.transpose(-2, -1).matmul(&q);
        [TchTensor::new(tch_merge(&dq)), TchTensor::new(tch_merge(&dk)), TchTensor::new(tch_merge(&dv))]
    }
}

#[cfg(feature = "tch")]
use burn::backend::libtorch::TchTensor;

/// `[b, n, heads * hd] -> [b, heads, n, hd]` (a view).
#[cfg(feature = "tch")]
fn tch_heads(t: &tch::Tensor, heads: usize) -> tch::Tensor {
    let s = t.size();
    t.view([s[0], s[1], heads as i64, s[2] / heads as i64]).transpose(1, 2)
}

/// `[b, heads, n, hd] -> [b, n, heads * hd]`.
#[cfg(feature = "tch")]
fn tch_merge(t: &tch::Tensor) -> tch::Tensor {
    let s = t.size();
    t.transpose(1, 2).reshape([s[0], s[2], s[1] * s[3]])
}

#[cfg(feature = "tch")]
forward_kernels!(burn::backend::LibTorch);

// ---------------------------------------------------------------------------------------
// Autodiff: one graph node per layer, its backward the kernels above.

/// Registers `out` as one node over `inputs`' nodes with backward `op` and `state`
/// (when any input is tracked).
macro_rules! node {
    ($op:expr, [$($guard:expr),+], $state:expr, $out:expr) => {{
        match $op.prepare::<C>([$($guard),+]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish($state, $out),
            OpsKind::UnTracked(prep) => prep.finish($out),
        }
    }};
}

/// One backward step: `f(state, dy)` gives each parent's gradient, registered for the parents
/// that are tracked.
fn backward_with<B: Backend, S, const N: usize>(
    ops: Ops<S, N>,
    grads: &mut Gradients,
    f: impl FnOnce(S, FloatTensor<B>) -> [FloatTensor<B>; N],
) {
    let dy = grads.consume::<B>(&ops.node);
    for (parent, grad) in ops.parents.into_iter().zip(f(ops.state, dy)) {
        if let Some(node) = parent {
            grads.register::<B>(node.id, grad);
        }
    }
}

/// The backward steps: their state, and which kernel turns it and `dy` into gradients.
macro_rules! steps {
    ($($name:ident: $n:literal, $state:ty, |$s:pat_param, $dy:ident| $body:expr;)*) => {$(
        #[derive(Debug)]
        struct $name;
        impl<B: Kernels> Backward<B, $n> for $name {
            type State = $state;
            fn backward(self, ops: Ops<Self::State, $n>, grads: &mut Gradients, _: &mut Checkpointer) {
                backward_with::<B, _, $n>(ops, grads, |$s, $dy| $body);
            }
        }
    )*};
}

steps! {
    AttentionStep: 3, ([FloatTensor<B>; 4], usize, f64), |([q, k, v, probs], heads, scale), dy| B::attention_backward(q, k, v, probs, dy, heads, scale);
    LinearStep: 3, (FloatTensor<B>, FloatTensor<B>), |(x, weight), dy| B::linear_backward(x, weight, dy);
    LayerNormStep: 3, (FloatTensor<B>, FloatTensor<B>, f64), |(x, gamma, eps), dy| B::layer_norm_backward(x, gamma, dy, eps);
    RmsNormStep: 2, (FloatTensor<B>, FloatTensor<B>, f64), |(x, gamma, eps), dy| B::rms_norm_backward(x, gamma, dy, eps);
    GeluStep: 1, FloatTensor<B>, |x, dy| [B::gelu_backward_of(x, dy)];
    SwigluStep: 2, (FloatTensor<B>, FloatTensor<B>), |(gate, up), dy| B::swiglu_backward(gate, up, dy);
    SoftmaxStep: 1, (FloatTensor<B>, f64), |(y, scale), dy| [B::masked_softmax_backward(y, dy, scale)];
    // `dy` is the loss's `[1]` upstream gradient, broadcast over the known `[n, v]` gradient.
    KnownGradientStep: 1, FloatTensor<B>, |grad, dy| [B::float_mul(grad, B::float_reshape(dy, Shape::from(vec![1, 1])))];
}

impl<B: Kernels, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        let (q, gq) = q.into_parts();
        let (k, gk) = k.into_parts();
        let (v, gv) = v.into_parts();
        let [out, probs] = B::attention_forward(q.clone(), k.clone(), v.clone(), mask.into_primitive(), heads, scale);
        node!(AttentionStep, [gq, gk, gv], ([q, k, v, probs], heads, scale), out)
    }

    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, gx) = x.into_parts();
        let (weight, gw) = weight.into_parts();
        let (bias, gb) = bias.into_parts();
        let out = B::linear_forward(x.clone(), weight.clone(), bias);
        node!(LinearStep, [gx, gw, gb], (x, weight), out)
    }

    fn fused_layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let (x, gx) = x.into_parts();
        let (gamma, gg) = gamma.into_parts();
        let (beta, gb) = beta.into_parts();
        let out = B::layer_norm_forward(x.clone(), gamma.clone(), beta, eps);
        node!(LayerNormStep, [gx, gg, gb], (x, gamma, eps), out)
    }

    fn fused_rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let (x, gx) = x.into_parts();
        let (gamma, gg) = gamma.into_parts();
        let out = B::rms_norm_forward(x.clone(), gamma.clone(), eps);
        node!(RmsNormStep, [gx, gg], (x, gamma, eps), out)
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, gx) = x.into_parts();
        let out = B::gelu_forward(x.clone());
        node!(GeluStep, [gx], x, out)
    }

    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (gate, gg) = gate.into_parts();
        let (up, gu) = up.into_parts();
        let out = B::swiglu_forward(gate.clone(), up.clone());
        node!(SwigluStep, [gg, gu], (gate, up), out)
    }

    fn fused_with_gradient(z: FloatTensor<Self>, value: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let (_, gz) = z.into_parts();
        node!(KnownGradientStep, [gz], grad.into_primitive(), value.into_primitive())
    }

    fn fused_softmax(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        let (x, gx) = x.into_parts();
        let out = B::softmax_forward(x, scale);
        node!(SoftmaxStep, [gx], (out.clone(), scale), out)
    }
}

// ---------------------------------------------------------------------------------------
// flex: row kernels over f32 slices. Other dtypes take the composed defaults.

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
            return composed::attention_forward::<Flex>(q, k, v, mask, heads, scale);
        };
        let (qs, ks, vs, ms) = (slice(&qc), slice(&kc), slice(&vc), slice(&mc));
        let ([b, sq, d], s, mq) = ([q.shape()[0], q.shape()[1], q.shape()[2]], k.shape()[1], mask.shape()[2]);
        let hd = d / heads;
        let mut probs = vec![0f32; b * heads * sq * s];
        let out = filled_by(b * sq * d, |out| {
            let out = SharedMut(out);
            // One task per (row of the batch, head): its probabilities are its own chunk, its
            // output the head's columns of the row's sq x d block (disjoint between tasks).
            probs.par_chunks_mut(sq * s).enumerate().for_each(|(bh, p)| {
                let (r, h) = (bh / heads, bh % heads);
                let (qo, ko) = (r * sq * d + h * hd, r * s * d + h * hd);
                let mut scores = vec![0f32; sq * s];
                let none = gemm::Parallelism::None;
                // SAFETY: q_h is [sq, hd] at row stride d inside q; k_h^T [hd, s] reads k_h
                // ([s, hd], row stride d) transposed; scores is [sq, s]; the output block is
                // [sq, hd] at row stride d inside out, written by this task only.
                unsafe {
                    gemm_strided(
                        sq,
                        s,
                        hd,
                        (scores.as_mut_ptr(), s as isize),
                        false,
                        (qs[qo..].as_ptr(), d as isize, 1),
                        (ks[ko..].as_ptr(), 1, d as isize),
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
                        (vs[ko..].as_ptr(), d as isize, 1),
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
            return composed::attention_backward::<Flex>(q, k, v, probs, dout, heads, scale);
        };
        let (qs, ks, vs, ps, dos) = (slice(&qc), slice(&kc), slice(&vc), slice(&pc), slice(&dc));
        let ([b, sq, d], s) = ([q.shape()[0], q.shape()[1], q.shape()[2]], k.shape()[1]);
        let hd = d / heads;
        let (mut dq, mut dk) = (Vec::new(), Vec::new());
        let dv = filled_by(b * s * d, |dv| {
            dq = filled_by(b * sq * d, |dq| {
                dk = filled_by(b * s * d, |dk| {
                    let (dq, dk, dv) = (SharedMut(dq), SharedMut(dk), SharedMut(dv));
                    // Each (row, head) task writes the head's columns of its row's blocks of
                    // dq, dk and dv (disjoint between tasks, together every element).
                    (0..b * heads).into_par_iter().for_each(|bh| {
                        let (r, h) = (bh / heads, bh % heads);
                        let (qo, ko) = (r * sq * d + h * hd, r * s * d + h * hd);
                        let p = &ps[bh * sq * s..(bh + 1) * sq * s];
                        let (mut dp, mut ds) = (vec![0f32; sq * s], vec![0f32; sq * s]);
                        let none = gemm::Parallelism::None;
                        let (d_, s_) = (d as isize, s as isize);
                        // SAFETY: every operand is a head's block inside its buffer at row stride
                        // d ([sq, hd] or [s, hd]) or a [sq, s] scratch; transposes read the same
                        // blocks with the strides swapped; each output block is this task's.
                        unsafe {
                            // dp [sq, s] = do_h [sq, hd] @ v_h^T
                            gemm_strided(
                                sq,
                                s,
                                hd,
                                (dp.as_mut_ptr(), s_),
                                false,
                                (dos[qo..].as_ptr(), d_, 1),
                                (vs[ko..].as_ptr(), 1, d_),
                                none,
                            );
                        }
                        softmax_backward_rows(p, &dp, s, scale as f32, &mut ds);
                        unsafe {
                            // dq_h [sq, hd] = ds [sq, s] @ k_h [s, hd]
                            gemm_strided(sq, hd, s, (dq.at(qo), d_), false, (ds.as_ptr(), s_, 1), (ks[ko..].as_ptr(), d_, 1), none);
                            // dk_h [s, hd] = ds^T [s, sq] @ q_h [sq, hd]
                            gemm_strided(s, hd, sq, (dk.at(ko), d_), false, (ds.as_ptr(), 1, s_), (qs[qo..].as_ptr(), d_, 1), none);
                            // dv_h [s, hd] = p^T [s, sq] @ do_h [sq, hd]
                            gemm_strided(s, hd, sq, (dv.at(ko), d_), false, (p.as_ptr(), 1, s_), (dos[qo..].as_ptr(), d_, 1), none);
                        }
                    });
                });
            });
        });
        [flex_f32(dq, q.shape()), flex_f32(dk, k.shape()), flex_f32(dv, v.shape())]
    }

    fn linear_forward(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let (Some(xc), Some(wc), Some(bc)) = (f32_contiguous(&x), f32_contiguous(&weight), f32_contiguous(&bias)) else {
            return composed::linear_forward::<Flex>(x, weight, bias);
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
            return composed::linear_backward::<Flex>(x, weight, dy);
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
            return composed::layer_norm_backward::<Flex>(x, gamma, dy, eps);
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
            return composed::rms_norm_forward::<Flex>(x, gamma, eps);
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
            return composed::rms_norm_backward::<Flex>(x, gamma, dy, eps);
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
            return composed::swiglu_forward::<Flex>(gate, up);
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
            return composed::swiglu_backward::<Flex>(gate, up, dy);
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
        let Some(xc) = f32_contiguous(&x) else { return composed::softmax_forward::<Flex>(x, scale) };
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
            return composed::masked_softmax_backward::<Flex>(y, dy, scale);
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

/// Compiles each kernel three times, for the baseline x86-64, AVX2 + FMA and AVX-512, and
/// picks the widest the CPU has at run time (the kernels are plain loops that the compiler
/// vectorises for the features it may use).
macro_rules! multiversion {
    ($($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block)*) => {$(
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) {
                    imp($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: the CPU has the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) {
                    imp($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    )*};
}
pub(crate) use multiversion;

/// `sum(f(i))` for `i < n`, in eight lanes so that the compiler may vectorise it.
#[inline(always)]
fn lanes_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let full = n - n % 8;
    for i in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
    }
    let mut total = acc.iter().sum::<f32>();
    for i in full..n {
        total += f(i);
    }
    total
}

/// `K` sums `sum(f(i)[j])` for `i < n` in one pass, each in eight lanes like [`lanes_sum`].
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lane `l` of every accumulator: the loop the compiler vectorises
fn lanes_sums<const K: usize>(n: usize, f: impl Fn(usize) -> [f32; K]) -> [f32; K] {
    let mut acc = [[0f32; 8]; K];
    let full = n - n % 8;
    for i in (0..full).step_by(8) {
        for l in 0..8 {
            let v = f(i + l);
            for j in 0..K {
                acc[j][l] += v[j];
            }
        }
    }
    let mut total: [f32; K] = std::array::from_fn(|j| acc[j].iter().sum::<f32>());
    for i in full..n {
        let v = f(i);
        for j in 0..K {
            total[j] += v[j];
        }
    }
    total
}

/// `max(f(i))` for `i < n` (`n > 0`), in eight lanes.
#[inline(always)]
fn lanes_max(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let full = n - n % 8;
    for i in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            let v = f(i + l);
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = acc.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for i in full..n {
        let v = f(i);
        m = if v > m { v } else { m };
    }
    m
}

/// `e^x` to about 2 ulp, branch-free: `x = n ln2 + r` with `|r| <= ln2 / 2`, a degree-6
/// Taylor polynomial for `e^r` (truncation `r^7 / 7! < 1.3e-7` relative) and `2^n` built in
/// the exponent bits. Below -87 it returns 0 (the true value is under 1.7e-38).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts (the first exact in a few bits) so that `x - n ln2` loses nothing.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n as an integer from `t`'s low mantissa bits (integer arithmetic, which vectorises;
    // `n as i32` saturates and does not), then 2^n from its exponent bits.
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(ni.wrapping_add(127) << 23);
    if x < -87.0 { 0.0 } else { p * scale }
}

/// `(Phi(x), phi(x))`, the standard normal CDF and density, with erf from Abramowitz &
/// Stegun 7.1.26 (absolute error under 1.5e-7): `erf(a) = 1 - t (a1 + t (a2 + ..)) e^{-a^2}`,
/// `t = 1 / (1 + p a)`, for `a = |x| / sqrt 2`. The `e^{-a^2} = e^{-x^2/2}` is the density's too.
#[inline(always)]
fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let a = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let e = exp(-a * a);
    let erf_abs = 1.0 - poly * e;
    let erf = f32::copysign(erf_abs, x);
    (0.5 * (1.0 + erf), INV_SQRT_2PI * e)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

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

#[cfg(test)]
mod tests {
    //! Every fused layer against Burn's own composition of the same function (its
    //! `module::layer_norm`, `activation::{gelu, silu, softmax}` and the RMSNorm formula of
    //! `burn::nn::RmsNorm`): values, and gradients through autodiff, on inputs from a fixed
    //! pseudo-random sequence. The composed kernels that `tch` runs are checked against the
    //! flex kernels on the same inputs.
    use super::*;
    use burn::tensor::Device;
    use burn::tensor::activation;

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
    /// queries than keys (the encoder's narrowed last block), and a longer key sequence.
    #[test]
    fn attention_matches_burns_multi_head_attention() {
        let (b, heads, hd) = (2, 3, 4);
        let d = heads * hd;
        for (sq, s, per_query) in [(5, 5, false), (5, 5, true), (1, 6, false), (3, 40, true)] {
            let mq = if per_query { sq } else { 1 };
            let mask = some_masked(b * mq * s, s);
            let mask_on = |x: &Tensor<1>| Tensor::<4>::from_data(TensorData::new(mask.clone(), [b, 1, mq, s]), &x.device());
            let q = (values(b * sq * d, 30 + s as u64, -2.0, 2.0), vec![b * sq * d]);
            let k = (values(b * s * d, 31 + s as u64, -2.0, 2.0), vec![b * s * d]);
            let v = (values(b * s * d, 32 + s as u64, -2.0, 2.0), vec![b * s * d]);
            let scale = 0.5;
            let split = |t: Tensor<1>, n: usize| t.reshape([b, n, heads, hd]).swap_dims(1, 2);
            compare(
                &format!("attention (sq {sq}, s {s}, mask rows {mq})"),
                [q, k, v],
                |[q, k, v]| {
                    let m = mask_on(&q);
                    attention(q.reshape([b, sq, d]), k.reshape([b, s, d]), v.reshape([b, s, d]), m, heads, scale)
                },
                |[q, k, v]| {
                    let m = mask_on(&q);
                    let scores = split(q, sq).matmul(split(k, s).swap_dims(2, 3));
                    let probs = activation::softmax(scores * scale + m, 3);
                    probs.matmul(split(v, s)).swap_dims(1, 2).reshape([b, sq, d])
                },
                1e-5,
            );
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
        let (x, g, b, dy) =
            (values(6 * 32, 20, -3.0, 3.0), values(32, 21, 0.5, 1.5), values(32, 22, -1.0, 1.0), values(6 * 32, 23, -1.0, 1.0));
        let shape = vec![2, 3, 32];
        let t = |v: &Vec<f32>| flex(v.clone(), shape.clone());
        let v = |v: &Vec<f32>| flex(v.clone(), vec![32]);
        for (i, (k, c)) in Flex::layer_norm_backward(t(&x), v(&g), t(&dy), 1e-5)
            .into_iter()
            .zip(composed::layer_norm_backward::<Flex>(t(&x), v(&g), t(&dy), 1e-5))
            .enumerate()
        {
            assert_close(&format!("layer_norm_backward {i}"), &read(k), &read(c), 1e-5);
        }
        assert_close(
            "rms_norm_forward",
            &read(Flex::rms_norm_forward(t(&x), v(&g), 1e-5)),
            &read(composed::rms_norm_forward::<Flex>(t(&x), v(&g), 1e-5)),
            1e-5,
        );
        for (i, (k, c)) in Flex::rms_norm_backward(t(&x), v(&g), t(&dy), 1e-5)
            .into_iter()
            .zip(composed::rms_norm_backward::<Flex>(t(&x), v(&g), t(&dy), 1e-5))
            .enumerate()
        {
            assert_close(&format!("rms_norm_backward {i}"), &read(k), &read(c), 1e-5);
        }
        assert_close(
            "swiglu_forward",
            &read(Flex::swiglu_forward(t(&x), t(&dy))),
            &read(composed::swiglu_forward::<Flex>(t(&x), t(&dy))),
            1e-6,
        );
        for (i, (k, c)) in Flex::swiglu_backward(t(&x), t(&dy), t(&b.repeat(6)))
            .into_iter()
            .zip(composed::swiglu_backward::<Flex>(t(&x), t(&dy), t(&b.repeat(6))))
            .enumerate()
        {
            assert_close(&format!("swiglu_backward {i}"), &read(k), &read(c), 1e-6);
        }
        let mask = flex((0..2 * 32).map(|i| if i % 5 == 3 { -1e9 } else { 0.0 }).collect(), vec![2, 1, 1, 32]);
        let s4 = |v: &Vec<f32>| flex(v.clone(), vec![2, 1, 3, 32]);
        let y = composed::masked_softmax_forward::<Flex>(s4(&x), mask.clone(), 0.5);
        assert_close(
            "softmax_forward",
            &read(Flex::softmax_forward(s4(&x), 0.5)),
            &read(composed::softmax_forward::<Flex>(s4(&x), 0.5)),
            1e-6,
        );
        assert_close(
            "masked_softmax_backward",
            &read(Flex::masked_softmax_backward(y.clone(), s4(&dy), 0.5)),
            &read(composed::masked_softmax_backward::<Flex>(y, s4(&dy), 0.5)),
            1e-6,
        );
        // Attention: q [2, 3, 32], k and v [2, 3, 32] (2 heads of 16), the key-padding mask.
        let (q, k, v) = (t(&x), t(&dy), t(&values(6 * 32, 24, -1.0, 1.0)));
        let pad = || flex(vec![0.0, -1e9, 0.0, 0.0, 0.0, -1e9], vec![2, 1, 1, 3]);
        let ([out, p], [out_c, p_c]) = (
            Flex::attention_forward(q.clone(), k.clone(), v.clone(), pad(), 2, 0.25),
            composed::attention_forward::<Flex>(q.clone(), k.clone(), v.clone(), pad(), 2, 0.25),
        );
        assert_close("attention_forward", &read(out), &read(out_c), 1e-5);
        assert_close("attention_forward probabilities", &read(p.clone()), &read(p_c), 1e-6);
        for (i, (k_, c)) in Flex::attention_backward(q.clone(), k.clone(), v.clone(), p.clone(), t(&x), 2, 0.25)
            .into_iter()
            .zip(composed::attention_backward::<Flex>(q, k, v, p, t(&x), 2, 0.25))
            .enumerate()
        {
            assert_close(&format!("attention_backward {i}"), &read(k_), &read(c), 1e-5);
        }
    }
}

//! The students' fused layers, for stage two: Linear, multi-head attention, LayerNorm,
//! RMSNorm, GELU and SwiGLU as single operations with hand-written gradients; two pieces of
//! the loss, the softmax over the vocabulary and a node that backpropagates a gradient
//! computed in closed form ([`with_gradient`]); and the SIMD maths they share with AdamW and
//! with stage one's top-k. Tensors in, tensors out.
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
//! Split by concern:
//! - this file: the operations the students and the loss call, and the two backend traits,
//!   [`FusedOps`] (one operation per layer) and [`Kernels`] (each layer's forward and
//!   backward on a backend without autodiff)
//! - [`mod@reference`]: each kernel composed from a backend's own operations, the slow
//!   reference beside every fast kernel and the defaults of [`Kernels`]
//! - `autodiff.rs`: one graph node per layer, its backward the [`Kernels`]
//! - `flex.rs`: flex's row kernels and GEMM calls over f32 slices
//! - `tch.rs`: libtorch's kernels (feature `tch`)
//! - `simd.rs`: exp, erf and sigmoid as branch-free polynomials, lane reductions, and the
//!   `multiversion!` macro that builds a kernel per CPU feature level
//! - `tests.rs`: every operation computes the same function as the composed one it replaces;
//!   the tests compare values and gradients with Burn's own composition on random inputs, on
//!   flex and libtorch, and the flex kernels with [`mod@reference`]

// burn-tch is deprecated upstream; the project keeps it as the libtorch backend.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, backend_extension};
use burn::tensor::Tensor;

mod autodiff;
pub(crate) mod flex;
pub mod reference;
pub(crate) mod simd;
#[cfg(feature = "tch")]
mod tch;
#[cfg(test)]
mod tests;

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
    linear_with(layer.weight.val(), layer.bias.as_ref().map(|b| b.val()), x)
}

/// [`linear`] with the weight and bias given as tensors (a tied LM head is the transposed
/// input embedding).
///
/// # Shapes
/// - `weight`: `[d_in, d_out]`; `bias`: `[d_out]`; `x`: `[.., d_in]`; returns `[.., d_out]`
pub fn linear_with<const D: usize>(weight: Tensor<2>, bias: Option<Tensor<1>>, x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let [w_in, d_out] = weight.dims();
    assert_eq!(w_in, d_in, "linear: the input has {d_in} features but the weight is {:?}", weight.dims());
    let bias = bias.unwrap_or_else(|| Tensor::zeros([d_out], &x.device()));
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
/// `softmax(q_h @ k_g^T * scale + mask) @ v_g`, with the heads interleaved in the model
/// dimension (head `h` is columns `h * hd .. (h + 1) * hd`) as the Q, K, V projections
/// produce them and the output projection reads them. Grouped-query attention when K and V
/// have fewer heads than Q: `kv = kd / hd` heads, query head `h` reading K/V head
/// `g = h / (heads / kv)` (as transformers' `repeat_kv` pairs them), without repeating K and
/// V in memory. No head split or merge copies; on flex each (row, head) is three small GEMMs
/// and a softmax on one thread, the probabilities kept for the backward (as PyTorch eager
/// keeps them).
///
/// # Shapes
/// - `q`: `[b, sq, heads * hd]`; `k`, `v`: `[b, s, kv * hd]` with `heads` a multiple of
///   `kv`; `mask`: `[b, 1, mq, s]` additive (0 or a large negative) with `mq` 1 (one row for
///   every query) or `sq`; returns `[b, sq, heads * hd]`
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, mask: Tensor<4>, heads: usize, scale: f64) -> Tensor<3> {
    let ([b, sq, d], [kb, s, kd]) = (q.dims(), k.dims());
    assert!(heads > 0 && d.is_multiple_of(heads), "attention: {d} features do not split into {heads} heads");
    let hd = d / heads;
    assert!(
        kb == b && kd.is_multiple_of(hd) && kd > 0 && heads.is_multiple_of(kd / hd) && v.dims() == k.dims(),
        "attention: q {:?} ({heads} heads), k {:?}, v {:?} do not match",
        q.dims(),
        k.dims(),
        v.dims()
    );
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
/// defaults compose the backend's own operations ([`mod@reference`], what `tch` uses);
/// `flex` overrides them with row kernels.
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
        reference::attention_forward::<Self>(q, k, v, mask, heads, scale)
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
        reference::attention_backward::<Self>(q, k, v, probs, dout, heads, scale)
    }
    fn linear_forward(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::linear_forward::<Self>(x, weight, bias)
    }
    /// Returns `[dx, dweight, dbias]`.
    fn linear_backward(x: FloatTensor<Self>, weight: FloatTensor<Self>, dy: FloatTensor<Self>) -> [FloatTensor<Self>; 3] {
        reference::linear_backward::<Self>(x, weight, dy)
    }
    fn layer_norm_forward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), eps)
    }
    /// Returns `[dx, dgamma, dbeta]`.
    fn layer_norm_backward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, dy: FloatTensor<Self>, eps: f64) -> [FloatTensor<Self>; 3] {
        reference::layer_norm_backward::<Self>(x, gamma, dy, eps)
    }
    fn rms_norm_forward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        reference::rms_norm_forward::<Self>(x, gamma, eps)
    }
    /// Returns `[dx, dgamma]`.
    fn rms_norm_backward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, dy: FloatTensor<Self>, eps: f64) -> [FloatTensor<Self>; 2] {
        reference::rms_norm_backward::<Self>(x, gamma, dy, eps)
    }
    fn gelu_forward(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu(x)
    }
    fn gelu_backward_of(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu_backward(x, dy)
    }
    fn swiglu_forward(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::swiglu_forward::<Self>(gate, up)
    }
    /// Returns `[dgate, dup]`.
    fn swiglu_backward(gate: FloatTensor<Self>, up: FloatTensor<Self>, dy: FloatTensor<Self>) -> [FloatTensor<Self>; 2] {
        reference::swiglu_backward::<Self>(gate, up, dy)
    }
    fn softmax_forward(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        reference::softmax_forward::<Self>(x, scale)
    }
    /// The gradient with respect to the scores, from the forward's output `y`.
    fn masked_softmax_backward(y: FloatTensor<Self>, dy: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        reference::masked_softmax_backward::<Self>(y, dy, scale)
    }
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

#[cfg(feature = "tch")]
forward_kernels!(burn::backend::LibTorch);

//! Autodiff: each fused operation as one graph node, its backward the layer's
//! [`Kernels`] on the inner backend.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend};
use burn::tensor::Shape;

use super::{FusedOps, Kernels};

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

//! libtorch's kernels for the fused layers (feature `tch`).

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use burn::backend::tensor::FloatTensor;

use super::Kernels;

/// libtorch: the Linear as libtorch's `addmm` (bias + x @ w in one call, as PyTorch's
/// `nn.Linear` runs) and its gradients as two `mm`s and a sum; the attention on views of the
/// heads with libtorch's softmax and softmax-backward kernels; the LayerNorm backward by
/// libtorch's own kernel. The other layers compose libtorch's operations (the defaults).
impl Kernels for LibTorch {
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
        let hd = q.tensor.size()[2] / heads as i64;
        let (q, k, v) = (tch_heads(&q.tensor, heads), tch_kv(&k.tensor, heads, hd), tch_kv(&v.tensor, heads, hd));
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
        let hd = q.tensor.size()[2] / heads as i64;
        let kv = k.tensor.size()[2] / hd;
        let (q, k, v, dout, p) = (
            tch_heads(&q.tensor, heads),
            tch_kv(&k.tensor, heads, hd),
            tch_kv(&v.tensor, heads, hd),
            tch_heads(&dout.tensor, heads),
            &probs.tensor,
        );
        let dv = p.transpose(-2, -1).matmul(&dout);
        let dp = dout.matmul(&v.transpose(-2, -1));
        let ds = tch::Tensor::internal_softmax_backward_data(&dp, p, -1, p.kind()) * scale;
        let dq = ds.matmul(&k);
        let dk = ds.transpose(-2, -1).matmul(&q);
        [TchTensor::new(tch_merge(&dq)), TchTensor::new(tch_merge(&tch_kv_grad(&dk, kv))), TchTensor::new(tch_merge(&tch_kv_grad(&dv, kv)))]
    }
}

/// `[b, n, heads * hd] -> [b, heads, n, hd]` (a view).
fn tch_heads(t: &tch::Tensor, heads: usize) -> tch::Tensor {
    let s = t.size();
    t.view([s[0], s[1], heads as i64, s[2] / heads as i64]).transpose(1, 2)
}

/// K or V `[b, n, kv * hd]` as `[b, heads, n, hd]`, each K/V head repeated for the query
/// heads of its group (grouped-query attention; a view when `kv == heads`).
fn tch_kv(t: &tch::Tensor, heads: usize, hd: i64) -> tch::Tensor {
    let kv = t.size()[2] / hd;
    let t = tch_heads(t, kv as usize);
    if kv == heads as i64 { t } else { t.repeat_interleave_self_int(heads as i64 / kv, Some(1), None) }
}

/// The gradient of [`tch_kv`]: `[b, heads, n, hd]` summed over each group -> `[b, kv, n, hd]`.
fn tch_kv_grad(g: &tch::Tensor, kv: i64) -> tch::Tensor {
    let s = g.size();
    if s[1] == kv {
        g.shallow_clone()
    } else {
        g.view([s[0], kv, s[1] / kv, s[2], s[3]]).sum_dim_intlist([2i64].as_slice(), false, g.kind())
    }
}

/// `[b, heads, n, hd] -> [b, n, heads * hd]`.
fn tch_merge(t: &tch::Tensor) -> tch::Tensor {
    let s = t.size();
    t.transpose(1, 2).reshape([s[0], s[2], s[1] * s[3]])
}

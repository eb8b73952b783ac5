//! AdamW with each parameter's update as one fused operation.
//!
//! Burn's `AdamW` composes the update from about fourteen tensor operations per parameter
//! (two for each moment's decay and add, the square, two bias corrections, the square root,
//! epsilon, the division, the learning-rate scale and the subtraction), each of which
//! allocates and passes over the whole parameter. On the text encoder that was a fifth of a
//! libtorch training step, where PyTorch's AdamW (in-place operations) took a seventh. Here
//! the update is one pass over the parameter, its gradient and both moments, in place when
//! nothing else holds them (copy-on-write on flex; on libtorch when Burn's storage count says
//! the tensor is not shared, otherwise on a copy). Other devices and dtypes take the same
//! formula composed from the backend's operations.
//!
//! The function and the optimizer state are Burn's `AdamW` (the same `AdamWState` records,
//! so checkpoints are interchangeable); the tests compare both over several steps. With
//! `g` the gradient, `t` the step number (from 1), `lr` the learning rate, `wd` the weight
//! decay:
//! - `m = beta_1 * m + (1 - beta_1) * g`, `v = beta_2 * v + (1 - beta_2) * g^2`
//! - `delta = (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)`
//! - `param = param * (1 - lr * wd) - lr * delta` (the decay factor only when `wd != 0`)

// burn-tch is deprecated upstream; the project keeps it as the libtorch backend.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Flex, TensorMetadata, backend_extension};
use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::kernels::flex::{flex_f32, slice};
use crate::kernels::simd::multiversion;

/// AdamW's hyperparameters (Burn's `AdamWConfig` defaults: betas 0.9 / 0.999, epsilon 1e-5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedAdamW {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
}

impl FusedAdamW {
    pub fn new(weight_decay: f32) -> Self {
        Self { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-5, weight_decay }
    }

    /// The optimizer over a whole module.
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        assert_eq!(tensor.dims(), grad.dims(), "adamw: the gradient's shape differs from the parameter's");
        let (m, v, time) = match state {
            Some(s) => (s.momentum.moment_1, s.momentum.moment_2, s.momentum.time),
            None => (tensor.zeros_like(), tensor.zeros_like(), 0),
        };
        let time = time + 1;
        let (p, m, v) = <burn::backend::Dispatch as AdamWOps>::fused_adamw(
            tensor.into_dispatch(),
            grad.into_dispatch(),
            m.into_dispatch(),
            v.into_dispatch(),
            lr,
            self.beta_1,
            self.beta_2,
            self.epsilon,
            self.weight_decay,
            time,
        );
        let momentum = AdaptiveMomentumState::new(time, Tensor::from_dispatch(m), Tensor::from_dispatch(v));
        (Tensor::from_dispatch(p), Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

/// One step's scalars.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub lr: f64,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    /// The step number, from 1.
    pub time: usize,
}

impl Step {
    /// `1 - beta^t` for both moments, as Burn computes them (in f32).
    fn corrections(&self) -> (f32, f32) {
        let t = self.time as i32;
        (1f32 - self.beta_1.powi(t), 1f32 - self.beta_2.powi(t))
    }

    /// The weight decay's factor on the parameter, `None` without decay.
    fn decay(&self) -> Option<f32> {
        let rate = self.lr * self.weight_decay as f64;
        (rate != 0.0).then_some((1.0 - rate) as f32)
    }
}

#[cfg_attr(feature = "tch", backend_extension(Flex, LibTorch, Autodiff))]
#[cfg_attr(not(feature = "tch"), backend_extension(Flex, Autodiff))]
pub trait AdamWOps: Backend {
    /// Returns the updated `(param, moment_1, moment_2)`; all four inputs have one shape.
    #[allow(clippy::too_many_arguments)]
    fn fused_adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        lr: f64,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
        time: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The update composed from a backend's own operations, in Burn's `AdamW` order.
pub fn composed<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    m: FloatTensor<B>,
    v: FloatTensor<B>,
    s: Step,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (c1, c2) = s.corrections();
    let m = B::float_add(B::float_mul_scalar(m, s.beta_1.into()), B::float_mul_scalar(grad.clone(), (1.0 - s.beta_1).into()));
    let g2 = B::float_mul(grad.clone(), grad);
    let v = B::float_add(B::float_mul_scalar(v, s.beta_2.into()), B::float_mul_scalar(g2, (1.0 - s.beta_2).into()));
    let denom = B::float_add_scalar(B::float_sqrt(B::float_div_scalar(v.clone(), c2.into())), s.epsilon.into());
    let delta = B::float_div(B::float_div_scalar(m.clone(), c1.into()), denom);
    let param = match s.decay() {
        Some(f) => B::float_mul_scalar(param, f.into()),
        None => param,
    };
    (B::float_sub(param, B::float_mul_scalar(delta, (s.lr as f32).into())), m, v)
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// The update in place over slices of one length, in parallel chunks for large parameters.
fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: Step) {
    assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len(), "adamw: parameter, gradient and moments differ in length");
    let (c1, c2) = s.corrections();
    let decay = s.decay().unwrap_or(1.0);
    let k = [s.beta_1, s.beta_2, 1.0 - s.beta_1, 1.0 - s.beta_2, c1, c2, s.epsilon, decay, s.lr as f32];
    if p.len() <= CHUNK {
        update_rows(p, g, m, v, &k);
    } else {
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| update_rows(p, g, m, v, &k));
    }
}

multiversion! {
    /// `k`: beta_1, beta_2, 1 - beta_1, 1 - beta_2, both corrections, epsilon, the decay
    /// factor (1 without decay, which leaves the parameter unchanged) and the learning rate.
    fn update_rows(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &[f32; 9]) {
        let [b1, b2, f1, f2, c1, c2, eps, decay, lr] = *k;
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = *m * b1 + g * f1;
            *v = *v * b2 + (g * g) * f2;
            let delta = (*m / c1) / ((*v / c2).sqrt() + eps);
            *p = *p * decay - delta * lr;
        }
    }
}

// ---------------------------------------------------------------------------------------
// flex

/// A flex f32 tensor that owns a buffer of exactly its elements in row-major order (a copy
/// when it is a view; a shared buffer is copied when it is written, by flex's copy-on-write).
fn whole(t: FlexTensor) -> FlexTensor {
    let n = t.layout().num_elements();
    if t.layout().contiguous_offsets() == Some((0, n)) && t.storage::<f32>().len() == n {
        return t;
    }
    flex_f32(slice(&t.to_contiguous()).to_vec(), t.shape())
}

impl AdamWOps for Flex {
    fn fused_adamw(
        param: FlexTensor,
        grad: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        lr: f64,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
        time: usize,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let s = Step { lr, beta_1, beta_2, epsilon, weight_decay, time };
        if [&param, &grad, &m, &v].iter().any(|t| t.dtype() != DType::F32) {
            return composed::<Self>(param, grad, m, v, s);
        }
        let (mut param, mut m, mut v) = (whole(param), whole(m), whole(v));
        let grad = grad.to_contiguous();
        update(param.storage_mut::<f32>(), slice(&grad), m.storage_mut::<f32>(), v.storage_mut::<f32>(), s);
        (param, m, v)
    }
}

// ---------------------------------------------------------------------------------------
// libtorch

#[cfg(feature = "tch")]
use burn::backend::libtorch::TchTensor;

/// A contiguous tensor this update may write: the same one when Burn's storage count says
/// nothing else holds it, else a copy.
#[cfg(feature = "tch")]
fn writable(t: TchTensor) -> TchTensor {
    if t.can_mut() && t.tensor.is_contiguous() { t } else { TchTensor::new(t.tensor.contiguous().copy()) }
}

/// The first f32 element of a contiguous CPU tensor and its element count.
#[cfg(feature = "tch")]
fn tch_f32(t: &tch::Tensor) -> (*mut f32, usize) {
    (t.data_ptr() as *mut f32, t.numel())
}

#[cfg(feature = "tch")]
impl AdamWOps for burn::backend::LibTorch {
    fn fused_adamw(
        param: TchTensor,
        grad: TchTensor,
        m: TchTensor,
        v: TchTensor,
        lr: f64,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
        time: usize,
    ) -> (TchTensor, TchTensor, TchTensor) {
        let s = Step { lr, beta_1, beta_2, epsilon, weight_decay, time };
        let cpu_f32 = [&param, &grad, &m, &v].iter().all(|t| t.tensor.device() == tch::Device::Cpu && t.tensor.kind() == tch::Kind::Float);
        if !cpu_f32 {
            return composed::<Self>(param, grad, m, v, s);
        }
        let (param, m, v) = (writable(param), writable(m), writable(v));
        let g = grad.tensor.contiguous();
        let [(p, n), (g, gn), (mp, mn), (vp, vn)] = [&param.tensor, &g, &m.tensor, &v.tensor].map(tch_f32);
        assert!(gn == n && mn == n && vn == n, "adamw: parameter, gradient and moments differ in length");
        if n > 0 {
            // SAFETY: each is a contiguous f32 CPU tensor of `n` elements; `param`, `m` and
            // `v` are this update's alone (`writable`) and distinct, and `g` is only read.
            unsafe {
                use std::slice::{from_raw_parts, from_raw_parts_mut};
                update(from_raw_parts_mut(p, n), from_raw_parts(g, n), from_raw_parts_mut(mp, n), from_raw_parts_mut(vp, n), s);
            }
        }
        (param, m, v)
    }
}

// ---------------------------------------------------------------------------------------
// Autodiff: parameters are updated outside the graph, so the inner backend's update.

impl<B: AdamWOps, C: CheckpointStrategy> AdamWOps for Autodiff<B, C> {
    fn fused_adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        lr: f64,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
        time: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (p, m, v) = B::fused_adamw(
            param.into_primitive(),
            grad.into_primitive(),
            m.into_primitive(),
            v.into_primitive(),
            lr,
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            time,
        );
        (Self::from_inner(p), Self::from_inner(m), Self::from_inner(v))
    }
}

#[cfg(test)]
mod tests {
    //! The fused update against Burn's `AdamW` over several steps of a Linear layer, with
    //! and without weight decay, a small layer (one chunk) and a large one (parallel chunks);
    //! their optimizer records loaded into each other; and a parameter that something else
    //! still holds left unchanged.
    use super::*;
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::TensorData;

    use crate::student::testing::devices;

    /// `n` values in `[-1, 1)`.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::student::testing::values(n, seed, -1.0, 1.0)
    }

    fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn layer(device: &Device, d_in: usize, d_out: usize) -> Linear {
        let t = |v, shape: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, shape), device);
        Linear {
            weight: Param::from_tensor(t(values(d_in * d_out, 1), [d_in, d_out])),
            bias: Some(Param::from_tensor(Tensor::from_data(TensorData::new(values(d_out, 2), [d_out]), device))),
        }
    }

    /// Steps `from..to` of `optim` on `layer`: the loss `sum(layer(x) * w)` with inputs and
    /// weights that change every step, the learning rate `0.01 * (step + 1)`.
    fn steps(device: &Device, mut layer: Linear, optim: &mut ModuleOptimizer, from: usize, to: usize) -> Linear {
        let [d_in, d_out] = layer.weight.dims();
        for step in from..to {
            let x = Tensor::<2>::from_data(TensorData::new(values(3 * d_in, 10 + step as u64), [3, d_in]), device);
            let w = Tensor::<2>::from_data(TensorData::new(values(3 * d_out, 20 + step as u64), [3, d_out]), device);
            let loss = (layer.forward(x) * w).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optim.step(0.01 * (step + 1) as f64, layer, grads);
        }
        layer
    }

    fn assert_same(what: &str, got: &Linear, want: &Linear) {
        let pairs = [
            (vec_of(got.weight.val()), vec_of(want.weight.val())),
            (vec_of(got.bias.as_ref().unwrap().val()), vec_of(want.bias.as_ref().unwrap().val())),
        ];
        for (name, (g, w)) in ["weight", "bias"].iter().zip(pairs) {
            for (i, (g, w)) in g.iter().zip(&w).enumerate() {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{what}: {name}[{i}] fused {g} vs Burn {w}");
            }
        }
    }

    #[test]
    fn fused_adamw_follows_burns_adamw() {
        for device in devices() {
            for (d_in, d_out) in [(4, 3), (256, 130)] {
                for wd in [0.0, 0.1] {
                    let what = format!("{d_in}x{d_out}, weight decay {wd}, {device:?}");
                    let mut burn_optim = AdamWConfig::new().with_weight_decay(wd).init();
                    let mut fused_optim = FusedAdamW::new(wd).init();
                    let want = steps(&device, layer(&device, d_in, d_out), &mut burn_optim, 0, 5);
                    let got = steps(&device, layer(&device, d_in, d_out), &mut fused_optim, 0, 5);
                    assert_same(&what, &got, &want);
                    // The update moved the weights (so the comparison is not of two no-ops).
                    let start = vec_of(layer(&device, d_in, d_out).weight.val());
                    assert!(vec_of(got.weight.val()).iter().zip(&start).all(|(a, b)| a != b), "{what}: a weight did not move");
                }
            }
        }
    }

    /// The records are Burn's: three steps by one, two more by the other after a record
    /// round trip, either way, equal five steps by Burn's.
    #[test]
    fn fused_adamw_records_are_burns() {
        for device in devices() {
            let (d_in, d_out, wd) = (5, 4, 0.05);
            let mut burn_optim = AdamWConfig::new().with_weight_decay(wd).init();
            let want = steps(&device, layer(&device, d_in, d_out), &mut burn_optim, 0, 5);
            for burn_first in [true, false] {
                let (mut first, second) = if burn_first {
                    (AdamWConfig::new().with_weight_decay(wd).init(), FusedAdamW::new(wd).init())
                } else {
                    (FusedAdamW::new(wd).init(), AdamWConfig::new().with_weight_decay(wd).init())
                };
                let half = steps(&device, layer(&device, d_in, d_out), &mut first, 0, 3);
                let mut second = second.load_record(first.to_record());
                let got = steps(&device, half, &mut second, 3, 5);
                assert_same(&format!("Burn's first: {burn_first}, {device:?}"), &got, &want);
            }
        }
    }

    /// A parameter tensor that something else still holds is not written in place.
    #[test]
    fn fused_adamw_leaves_shared_tensors_alone() {
        for device in devices() {
            let mut optim = FusedAdamW::new(0.0).init();
            let layer = steps(&device, layer(&device, 4, 3), &mut optim, 0, 1);
            let held = layer.weight.val();
            let before = vec_of(held.clone());
            let after = steps(&device, layer, &mut optim, 1, 2);
            assert_eq!(vec_of(held), before, "{device:?}: the held weight changed");
            assert_ne!(vec_of(after.weight.val()), before, "{device:?}: the step did not move the weight");
        }
    }
}

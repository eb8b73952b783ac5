//! Stage two's student for causal language modelling: a Llama-style decoder (RMSNorm,
//! rotary positions in the Hugging Face `rotate_half` convention, SwiGLU, causal + padding
//! attention mask, no biases).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::kernels;

/// Hyperparameters of the decoder student.
#[derive(Config, Debug)]
pub struct DecoderConfig {
    /// Vocabulary (from the cache's manifest).
    pub vocab_size: usize,
    #[config(default = 64)]
    pub d_model: usize,
    #[config(default = 2)]
    pub layers: usize,
    #[config(default = 2)]
    pub heads: usize,
    #[config(default = 172)]
    pub d_ff: usize,
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    #[config(default = 1e-5)]
    pub norm_eps: f64,
}

impl DecoderConfig {
    pub fn init(&self, device: &Device) -> Decoder {
        assert!(self.d_model.is_multiple_of(self.heads) && (self.d_model / self.heads).is_multiple_of(2), "d_model / heads must be even");
        let lin = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        let norm = || RmsNormConfig::new(self.d_model).with_epsilon(self.norm_eps).init(device);
        let blocks = (0..self.layers)
            .map(|_| Block {
                attn_norm: norm(),
                q: lin(self.d_model, self.d_model),
                k: lin(self.d_model, self.d_model),
                v: lin(self.d_model, self.d_model),
                o: lin(self.d_model, self.d_model),
                mlp_norm: norm(),
                gate: lin(self.d_model, self.d_ff),
                up: lin(self.d_model, self.d_ff),
                down: lin(self.d_ff, self.d_model),
                heads: self.heads,
            })
            .collect();
        Decoder {
            embed: EmbeddingConfig::new(self.vocab_size, self.d_model).init(device),
            blocks,
            norm: norm(),
            head: lin(self.d_model, self.vocab_size),
            heads: self.heads,
            rope_theta: self.rope_theta,
        }
    }
}

#[derive(Module, Debug)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub mlp_norm: RmsNorm,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub heads: usize,
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub embed: Embedding,
    pub blocks: Vec<Block>,
    pub norm: RmsNorm,
    pub head: Linear,
    pub heads: usize,
    pub rope_theta: f64,
}

/// An RmsNorm module's function as one fused operation ([`kernels::rms_norm`]).
fn rms<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    kernels::rms_norm(x, norm.gamma.val(), norm.epsilon)
}

/// `cat(-x2, x1)` over the last dim. `[.., hd] -> [.., hd]`
fn rotate_half(x: Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.narrow(3, d / 2, d / 2);
    Tensor::cat(vec![x2.neg(), x1], 3)
}

impl Block {
    /// # Shapes
    /// - `x`: `[b, s, d_model]`; `mask`: `[b, 1, s, s]` additive (0 or a large negative);
    ///   `cos`, `sin`: `[1, 1, s, head_dim]`
    fn forward(&self, x: Tensor<3>, mask: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let hd = d / self.heads;
        let h = rms(&self.attn_norm, x.clone());
        // Rotary positions on [b, s, heads, hd] (cos, sin as [1, s, 1, hd]); the heads stay
        // interleaved in d, as kernels::attention reads them.
        let (cos, sin) = (cos.reshape([1, s, 1, hd]), sin.reshape([1, s, 1, hd]));
        let rope = |t: Tensor<3>| {
            let t = t.reshape([b, s, self.heads, hd]);
            (t.clone() * cos.clone() + rotate_half(t) * sin.clone()).reshape([b, s, d])
        };
        let q = rope(kernels::linear(&self.q, h.clone()));
        let k = rope(kernels::linear(&self.k, h.clone()));
        let v = kernels::linear(&self.v, h);
        let attn = kernels::attention(q, k, v, mask, self.heads, 1.0 / (hd as f64).sqrt()); // [b, s, d]
        let x = x + kernels::linear(&self.o, attn);
        let h = rms(&self.mlp_norm, x.clone());
        x + kernels::linear(&self.down, kernels::swiglu(kernels::linear(&self.gate, h.clone()), kernels::linear(&self.up, h)))
    }
}

impl Decoder {
    /// # Shapes
    /// - `tokens`: `[b, s]`; `lengths`: the real (unpadded) length of each row
    /// - returns logits `[b, s, vocab]` (positions past a row's length are garbage, to be masked)
    pub fn forward(&self, tokens: Tensor<2, Int>, lengths: &[usize]) -> Tensor<3> {
        let h = self.hidden(tokens, lengths);
        let [b, s, d] = h.dims();
        let logits = self.logits(h.reshape([b * s, d]));
        let vocab = logits.dims()[1];
        logits.reshape([b, s, vocab])
    }

    /// The logits of some positions' hidden states (from [`Decoder::hidden`]): the final
    /// norm and the LM head. Training computes them only at the cached positions.
    ///
    /// # Shapes
    /// - `hidden`: `[m, d_model]`; returns `[m, vocab]`
    pub fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        kernels::linear(&self.head, rms(&self.norm, hidden))
    }

    /// The hidden states after the last block, before the final norm.
    ///
    /// # Shapes
    /// - `tokens`: `[b, s]`; `lengths`: the real (unpadded) length of each row
    /// - returns `[b, s, d_model]` (positions past a row's length are garbage, to be masked)
    pub fn hidden(&self, tokens: Tensor<2, Int>, lengths: &[usize]) -> Tensor<3> {
        let [b, s] = tokens.dims();
        let device = tokens.device();
        let d = self.embed.weight.dims()[1];
        let hd = d / self.heads;
        // Rotary tables, HF convention: angle[p, i] = p * theta^(-2i/hd), duplicated halves.
        let mut cos = Vec::with_capacity(s * hd);
        let mut sin = Vec::with_capacity(s * hd);
        for p in 0..s {
            for j in 0..hd {
                let i = j % (hd / 2);
                let angle = p as f64 * self.rope_theta.powf(-2.0 * i as f64 / hd as f64);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let cos: Tensor<4> = Tensor::from_data(TensorData::new(cos, [1, 1, s, hd]), &device);
        let sin: Tensor<4> = Tensor::from_data(TensorData::new(sin, [1, 1, s, hd]), &device);
        // Causal + key-padding mask, additive.
        let mut mask = vec![0f32; b * s * s];
        for (r, &len) in lengths.iter().enumerate() {
            for i in 0..s {
                for j in 0..s {
                    if j > i || j >= len {
                        mask[(r * s + i) * s + j] = -1e9;
                    }
                }
            }
        }
        let mask: Tensor<4> = Tensor::from_data(TensorData::new(mask, [b, 1, s, s]), &device);
        let mut x = self.embed.forward(tokens);
        for block in &self.blocks {
            x = block.forward(x, mask.clone(), cos.clone(), sin.clone());
        }
        x
    }
}

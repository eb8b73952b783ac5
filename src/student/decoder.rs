//! Stage two's student for causal language modelling: the decoder of the Llama family as
//! transformers computes it (RMSNorm, rotary positions in the `rotate_half` convention with
//! the `rope_scaling` variants, SwiGLU, causal + padding mask), with the options of the
//! small models people distil into: grouped-query attention (SmolLM2, Llama-3.2, Qwen),
//! an explicit head width (Qwen3), Q/K/V biases (Qwen2), per-head Q/K RMSNorm (Qwen3), a
//! sliding window (Mistral), and an LM head tied to the input embedding.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::kernels;

/// The decoder student's architecture: what `student.json` records and every decoder is
/// built from (fresh, or from a Hugging Face checkpoint's `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// Vocabulary (from the cache's manifest, or the checkpoint's, which may be padded).
    pub vocab_size: usize,
    pub d_model: usize,
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    pub d_ff: usize,
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "rms_eps")]
    pub norm_eps: f64,
    /// K/V heads (grouped-query attention); `None`: as many as `heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
    /// Width of each head; `None`: `d_model / heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Biases on the Q, K and V projections (Qwen2; the output projection has none).
    #[serde(default, skip_serializing_if = "is_false")]
    pub qkv_bias: bool,
    /// RMSNorm over each head of Q and K before the rotary positions (Qwen3).
    #[serde(default, skip_serializing_if = "is_false")]
    pub qk_norm: bool,
    /// The LM head is the input embedding (transposed): one parameter, trained as one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tie_embeddings: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Layers whose attention sees only the last `sliding_window` positions (itself
    /// included); empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sliding_layers: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
}

fn rope_theta() -> f64 {
    10000.0
}
fn rms_eps() -> f64 {
    1e-5
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// `rope_scaling` / `rope_parameters` of a transformers config, as its
/// `modeling_rope_utils` computes the inverse frequencies (and the cos/sin factor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// NTK scaling of the base once a batch is longer than `max_positions`.
    Dynamic { factor: f64, max_positions: usize },
    /// Llama 3.1/3.2: low frequencies divided by `factor`, high kept, a smooth ramp between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_positions: usize },
    /// YaRN: interpolation and extrapolation blended by a ramp over the dimensions, and
    /// cos/sin scaled by `attention_factor`.
    Yarn { factor: f64, original_max_positions: usize, beta_fast: f64, beta_slow: f64, attention_factor: f64, truncate: bool },
}

impl DecoderConfig {
    /// A fresh Llama-style decoder (`decoder:` specs).
    pub fn new(vocab_size: usize, d_model: usize, layers: usize, heads: usize, d_ff: usize) -> DecoderConfig {
        DecoderConfig {
            vocab_size,
            d_model,
            layers,
            heads,
            d_ff,
            rope_theta: rope_theta(),
            norm_eps: rms_eps(),
            kv_heads: None,
            head_dim: None,
            qkv_bias: false,
            qk_norm: false,
            tie_embeddings: false,
            rope_scaling: None,
            sliding_layers: Vec::new(),
            sliding_window: None,
        }
    }

    pub fn head_width(&self) -> usize {
        self.head_dim.unwrap_or(self.d_model / self.heads)
    }

    pub fn kv_head_count(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
    }

    pub fn init(&self, device: &Device) -> Decoder {
        let (hd, kv) = (self.head_width(), self.kv_head_count());
        assert!(hd.is_multiple_of(2) && self.heads.is_multiple_of(kv), "head_dim must be even and heads a multiple of kv_heads");
        let lin = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let norm = |d| RmsNormConfig::new(d).with_epsilon(self.norm_eps).init(device);
        let (dq, dkv) = (self.heads * hd, kv * hd);
        let blocks = (0..self.layers)
            .map(|i| Block {
                attn_norm: norm(self.d_model),
                q: lin(self.d_model, dq, self.qkv_bias),
                k: lin(self.d_model, dkv, self.qkv_bias),
                v: lin(self.d_model, dkv, self.qkv_bias),
                q_norm: self.qk_norm.then(|| norm(hd)),
                k_norm: self.qk_norm.then(|| norm(hd)),
                o: lin(dq, self.d_model, false),
                mlp_norm: norm(self.d_model),
                gate: lin(self.d_model, self.d_ff, false),
                up: lin(self.d_model, self.d_ff, false),
                down: lin(self.d_ff, self.d_model, false),
                heads: self.heads,
                kv_heads: kv,
                head_dim: hd,
                window: self.sliding_layers.contains(&i).then_some(self.sliding_window).flatten().unwrap_or(0),
            })
            .collect();
        Decoder {
            embed: EmbeddingConfig::new(self.vocab_size, self.d_model).init(device),
            blocks,
            norm: norm(self.d_model),
            head: (!self.tie_embeddings).then(|| lin(self.d_model, self.vocab_size, false)),
            rope: Rope::of(self),
        }
    }
}

#[derive(Module, Debug)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub o: Linear,
    pub mlp_norm: RmsNorm,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Sliding window of this layer's attention (0: none).
    pub window: usize,
}

/// The rotary inverse frequencies and the cos/sin factor; dynamic NTK scaling adjusts the
/// base to a batch longer than its `max_positions`.
#[derive(Module, Debug)]
pub struct Rope {
    pub inv_freq: Vec<f64>,
    pub attention_factor: f64,
    /// Dynamic scaling: (factor, max_positions, theta, head width).
    pub dynamic: Option<(f64, usize, f64, usize)>,
}

impl Rope {
    fn of(c: &DecoderConfig) -> Rope {
        let (hd, base) = (c.head_width(), c.rope_theta);
        let default: Vec<f64> = (0..hd / 2).map(|i| base.powf(-2.0 * i as f64 / hd as f64)).collect();
        let mut rope = Rope { inv_freq: default.clone(), attention_factor: 1.0, dynamic: None };
        match c.rope_scaling.clone() {
            None => {}
            Some(RopeScaling::Linear { factor }) => rope.inv_freq = default.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Dynamic { factor, max_positions }) => rope.dynamic = Some((factor, max_positions, base, hd)),
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions }) => {
                let old = original_max_positions as f64;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                rope.inv_freq = default
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
            }
            Some(RopeScaling::Yarn { factor, original_max_positions, beta_fast, beta_slow, attention_factor, truncate }) => {
                let dim = hd as f64;
                let correction = |rotations: f64| {
                    dim * (original_max_positions as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001;
                }
                rope.inv_freq = default
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let extrapolation = 1.0 - ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        (f / factor) * (1.0 - extrapolation) + f * extrapolation
                    })
                    .collect();
                rope.attention_factor = attention_factor;
            }
        }
        rope
    }

    /// The inverse frequencies for a batch of `s` positions.
    fn frequencies(&self, s: usize) -> Vec<f64> {
        match self.dynamic {
            Some((factor, max, base, hd)) if s > max => {
                let base = base * ((factor * s as f64 / max as f64) - (factor - 1.0)).powf(hd as f64 / (hd as f64 - 2.0));
                (0..hd / 2).map(|i| base.powf(-2.0 * i as f64 / hd as f64)).collect()
            }
            _ => self.inv_freq.clone(),
        }
    }

    /// cos and sin tables, HF convention: `angle[p, i] = p * inv_freq[i]`, halves duplicated.
    /// With dynamic scaling a row longer than `max_positions` gets the base of its own
    /// length (as transformers computes a row alone), so a row's logits do not depend on
    /// the rows it is batched with.
    ///
    /// # Shapes
    /// - returns two `[1, s, 1, head_dim]`, or `[b, s, 1, head_dim]` when rows differ
    fn tables(&self, s: usize, lengths: &[usize], device: &Device) -> (Tensor<4>, Tensor<4>) {
        let per_row = self.dynamic.is_some_and(|(_, max, ..)| s > max);
        let rows: Vec<usize> = if per_row { lengths.iter().map(|&l| l.max(1)).collect() } else { vec![s] };
        let hd = 2 * self.inv_freq.len();
        let (mut cos, mut sin) = (Vec::with_capacity(rows.len() * s * hd), Vec::with_capacity(rows.len() * s * hd));
        for &len in &rows {
            let freq = self.frequencies(len);
            for p in 0..s {
                for j in 0..hd {
                    let angle = p as f64 * freq[j % (hd / 2)];
                    cos.push((angle.cos() * self.attention_factor) as f32);
                    sin.push((angle.sin() * self.attention_factor) as f32);
                }
            }
        }
        let shape = [rows.len(), s, 1, hd];
        (Tensor::from_data(TensorData::new(cos, shape), device), Tensor::from_data(TensorData::new(sin, shape), device))
    }
}

impl Rope {
    /// cos and sin at one position per row (a decoding step): row `r` at `positions[r]`,
    /// with dynamic scaling's base for a sequence of `positions[r] + 1` tokens (as
    /// transformers computes a step of a row alone).
    ///
    /// # Shapes
    /// - returns two `[b, 1, 1, head_dim]`
    fn at(&self, positions: &[usize], device: &Device) -> (Tensor<4>, Tensor<4>) {
        let hd = 2 * self.inv_freq.len();
        let (mut cos, mut sin) = (Vec::with_capacity(positions.len() * hd), Vec::with_capacity(positions.len() * hd));
        for &p in positions {
            let freq = self.frequencies(p + 1);
            for j in 0..hd {
                let angle = p as f64 * freq[j % (hd / 2)];
                cos.push((angle.cos() * self.attention_factor) as f32);
                sin.push((angle.sin() * self.attention_factor) as f32);
            }
        }
        let shape = [positions.len(), 1, 1, hd];
        (Tensor::from_data(TensorData::new(cos, shape), device), Tensor::from_data(TensorData::new(sin, shape), device))
    }
}

/// Every layer's keys and values so far, for decoding one token at a time. Slots
/// `0..prompt_slots` hold the right-padded prompts (row `r`'s first `lengths[r]` are its
/// prompt, the rest padding, never attended to); each step appends one slot to every row.
pub struct KvCache {
    /// Per layer: keys (rotated) and values, `[b, slots, kv_heads * head_dim]` each.
    layers: Vec<(Tensor<3>, Tensor<3>)>,
    lengths: Vec<usize>,
    prompt_slots: usize,
    /// Slots appended after the prompts.
    steps: usize,
}

impl KvCache {
    /// Row `r`'s position of the token fed at the next step (its prompt and the tokens
    /// fed since).
    fn next_positions(&self) -> Vec<usize> {
        self.lengths.iter().map(|&l| l + self.steps).collect()
    }

    /// Which slots the next step's token of each row sees: its prompt, the tokens fed
    /// since and itself, within the layer's sliding `window` (0: none).
    ///
    /// # Shapes
    /// - returns `[b, 1, 1, slots + 1]`, additive
    fn step_mask(&self, window: usize, device: &Device) -> Tensor<4> {
        let (b, p, slots) = (self.lengths.len(), self.prompt_slots, self.prompt_slots + self.steps + 1);
        let mut mask = vec![0f32; b * slots];
        for (r, &len) in self.lengths.iter().enumerate() {
            let query = len + self.steps;
            for j in 0..slots {
                let key = if j < p { j } else { len + (j - p) };
                if (j < p && j >= len) || (window > 0 && query - key >= window) {
                    mask[r * slots + j] = -1e9;
                }
            }
        }
        Tensor::from_data(TensorData::new(mask, [b, 1, 1, slots]), device)
    }
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub embed: Embedding,
    pub blocks: Vec<Block>,
    pub norm: RmsNorm,
    /// `None`: tied to `embed`.
    pub head: Option<Linear>,
    pub rope: Rope,
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
    ///   `cos`, `sin`: `[1 or b, s, 1, head_dim]`
    fn forward(&self, x: Tensor<3>, mask: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<3> {
        self.attend(x, mask, cos, sin, None).0
    }

    /// [`Block::forward`] after `past` keys and values (decoding with a KV cache): the new
    /// positions attend to the past slots and to themselves; returns the output and the
    /// keys (rotated) and values of every slot, past and new.
    ///
    /// # Shapes
    /// - `x`: `[b, s, d_model]`; `past`: two `[b, p, kv_heads * head_dim]`; `mask`:
    ///   `[b, 1, s, p + s]`; `cos`, `sin`: `[1 or b, s, 1, head_dim]`
    /// - returns `[b, s, d_model]` and two `[b, p + s, kv_heads * head_dim]`
    fn attend(
        &self,
        x: Tensor<3>,
        mask: Tensor<4>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        past: Option<(Tensor<3>, Tensor<3>)>,
    ) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
        let [b, s, _] = x.dims();
        let hd = self.head_dim;
        let h = rms(&self.attn_norm, x.clone());
        // Per-head norm (Qwen3), then rotary positions on [b, s, heads, hd]; the heads stay
        // interleaved in the last dimension, as kernels::attention reads them.
        let rope = |t: Tensor<3>, heads: usize, norm: &Option<RmsNorm>| {
            let t = t.reshape([b, s, heads, hd]);
            let t = match norm {
                Some(n) => rms(n, t),
                None => t,
            };
            (t.clone() * cos.clone() + rotate_half(t) * sin.clone()).reshape([b, s, heads * hd])
        };
        let q = rope(kernels::linear(&self.q, h.clone()), self.heads, &self.q_norm);
        let k = rope(kernels::linear(&self.k, h.clone()), self.kv_heads, &self.k_norm);
        let v = kernels::linear(&self.v, h);
        let (k, v) = match past {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 1), Tensor::cat(vec![pv, v], 1)),
            None => (k, v),
        };
        let attn = kernels::attention(q, k.clone(), v.clone(), mask, self.heads, 1.0 / (hd as f64).sqrt()); // [b, s, heads * hd]
        let x = x + kernels::linear(&self.o, attn);
        let h = rms(&self.mlp_norm, x.clone());
        (x + kernels::linear(&self.down, kernels::swiglu(kernels::linear(&self.gate, h.clone()), kernels::linear(&self.up, h))), k, v)
    }
}

/// The causal + key-padding mask, additive, with a sliding window of `window` positions
/// (0: none): query `i` sees key `j` when `j <= i`, `j < len` and `i - j < window`.
///
/// # Shapes
/// - returns `[b, 1, s, s]`
fn causal_mask(lengths: &[usize], s: usize, window: usize, device: &Device) -> Tensor<4> {
    let b = lengths.len();
    let mut mask = vec![0f32; b * s * s];
    for (r, &len) in lengths.iter().enumerate() {
        for i in 0..s {
            for j in 0..s {
                if j > i || j >= len || (window > 0 && i - j >= window) {
                    mask[(r * s + i) * s + j] = -1e9;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(mask, [b, 1, s, s]), device)
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
    /// norm and the LM head (or the transposed embedding it is tied to). Training computes
    /// them only at the cached positions.
    ///
    /// # Shapes
    /// - `hidden`: `[m, d_model]`; returns `[m, vocab]`
    pub fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        let h = self.final_norm(hidden);
        match &self.head {
            Some(head) => kernels::linear(head, h),
            None => kernels::linear_with(self.embed.weight.val().transpose(), None, h),
        }
    }

    /// The final norm, the LM head's input. # Shapes: `[m, d_model]` -> `[m, d_model]`
    pub fn final_norm(&self, hidden: Tensor<2>) -> Tensor<2> {
        rms(&self.norm, hidden)
    }

    /// The LM head's weight `[d_model, vocab]` (the embedding transposed when tied) and bias.
    pub fn head_weights(&self) -> crate::loss::HeadWeights {
        match &self.head {
            Some(head) => crate::loss::HeadWeights { weight: head.weight.val(), bias: head.bias.as_ref().map(|b| b.val()) },
            None => crate::loss::HeadWeights { weight: self.embed.weight.val().transpose(), bias: None },
        }
    }

    /// The hidden states after the last block, before the final norm.
    ///
    /// # Shapes
    /// - `tokens`: `[b, s]`; `lengths`: the real (unpadded) length of each row
    /// - returns `[b, s, d_model]` (positions past a row's length are garbage, to be masked)
    pub fn hidden(&self, tokens: Tensor<2, Int>, lengths: &[usize]) -> Tensor<3> {
        self.hidden_tapped(tokens, lengths, &[]).0
    }

    /// As [`Decoder::hidden`], with the hidden states after each layer in `taps` (0: the
    /// embeddings, `l`: block `l`'s output, `layers`: the last block's, before the norm).
    ///
    /// # Shapes
    /// - returns `[b, s, d_model]` and one `[b, s, d_model]` per tap, in `taps`' order
    pub fn hidden_tapped(&self, tokens: Tensor<2, Int>, lengths: &[usize], taps: &[usize]) -> (Tensor<3>, Vec<Tensor<3>>) {
        let s = tokens.dims()[1];
        let device = tokens.device();
        let (cos, sin) = self.rope.tables(s, lengths, &device);
        let full = causal_mask(lengths, s, 0, &device);
        let mut windowed: std::collections::HashMap<usize, Tensor<4>> = Default::default();
        let mut x = self.embed.forward(tokens);
        let mut tapped: Vec<Option<Tensor<3>>> = vec![None; taps.len()];
        let tap = |layer: usize, x: &Tensor<3>, tapped: &mut Vec<Option<Tensor<3>>>| {
            for (t, _) in taps.iter().enumerate().filter(|(_, l)| **l == layer) {
                tapped[t] = Some(x.clone());
            }
        };
        tap(0, &x, &mut tapped);
        for (i, block) in self.blocks.iter().enumerate() {
            let mask = match block.window {
                0 => full.clone(),
                w => windowed.entry(w).or_insert_with(|| causal_mask(lengths, s, w, &device)).clone(),
            };
            x = block.forward(x, mask, &cos, &sin);
            tap(i + 1, &x, &mut tapped);
        }
        (x, tapped.into_iter().map(|t| t.expect("every tap is a layer of the decoder (checked by the caller)")).collect())
    }

    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// Decoding, first step: run the right-padded prompts and keep every layer's keys and
    /// values; returns the logits that choose each row's first new token.
    ///
    /// # Shapes
    /// - `tokens`: `[b, p]`; `lengths`: each prompt's length (>= 1)
    /// - returns `[b, vocab]` (at each row's last prompt token) and the cache of `p` slots
    pub fn prefill(&self, tokens: Tensor<2, Int>, lengths: &[usize]) -> (Tensor<2>, KvCache) {
        let [b, p] = tokens.dims();
        let device = tokens.device();
        let (cos, sin) = self.rope.tables(p, lengths, &device);
        let full = causal_mask(lengths, p, 0, &device);
        let mut x = self.embed.forward(tokens);
        let mut layers = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let mask = if block.window == 0 { full.clone() } else { causal_mask(lengths, p, block.window, &device) };
            let (out, k, v) = block.attend(x, mask, &cos, &sin, None);
            layers.push((k, v));
            x = out;
        }
        let d = x.dims()[2];
        let last: Vec<i64> = lengths.iter().enumerate().map(|(r, &l)| (r * p + l - 1) as i64).collect();
        let last = Tensor::<1, Int>::from_data(TensorData::new(last, [b]), &device);
        let logits = self.logits(x.reshape([b * p, d]).select(0, last));
        (logits, KvCache { layers, lengths: lengths.to_vec(), prompt_slots: p, steps: 0 })
    }

    /// Decoding, every later step: one token per row (the one drawn last; a finished row
    /// may be fed anything), appended to the cache; returns the logits of the next.
    ///
    /// # Shapes
    /// - `tokens`: `[b, 1]`; returns `[b, vocab]`
    pub fn step(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<2> {
        let b = tokens.dims()[0];
        let device = tokens.device();
        let (cos, sin) = self.rope.at(&cache.next_positions(), &device);
        let full = cache.step_mask(0, &device);
        let masks: Vec<Tensor<4>> =
            self.blocks.iter().map(|b| if b.window == 0 { full.clone() } else { cache.step_mask(b.window, &device) }).collect();
        let mut x = self.embed.forward(tokens);
        for ((block, kv), mask) in self.blocks.iter().zip(&mut cache.layers).zip(masks) {
            let (out, k, v) = block.attend(x, mask, &cos, &sin, Some(kv.clone()));
            *kv = (k, v);
            x = out;
        }
        cache.steps += 1;
        let d = x.dims()[2];
        self.logits(x.reshape([b, d]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding with the KV cache gives the logits of running each whole sequence: for
    /// three prompts of different lengths batched together (right padded), the prefill's
    /// logits and those of five steps equal `forward` over the row alone at its last
    /// position, within 1e-4, for a decoder with grouped-query attention, per-head norms,
    /// Q/K/V biases and a sliding window shorter than the rows, and one with dynamic rope
    /// scaling. Once a row outgrows dynamic scaling's `max_positions`, the cached keys keep
    /// the base they were rotated with (as transformers' generate does) while a whole
    /// sequence rotates every key with its length's: only the prefill is compared there.
    #[test]
    fn kv_cache_steps_equal_whole_sequences() {
        let device = Device::flex();
        let mut gqa = DecoderConfig::new(50, 32, 3, 4, 48);
        (gqa.kv_heads, gqa.qk_norm, gqa.qkv_bias, gqa.tie_embeddings) = (Some(2), true, true, true);
        (gqa.sliding_layers, gqa.sliding_window) = (vec![1], Some(4));
        let mut dynamic = DecoderConfig::new(50, 32, 2, 2, 48);
        dynamic.rope_scaling = Some(RopeScaling::Dynamic { factor: 2.0, max_positions: 6 });
        for (cfg, grows) in [(gqa, usize::MAX), (dynamic, 6)] {
            let model = cfg.init(&device);
            let prompts: [&[u32]; 3] = [&[3, 9, 27, 4], &[7], &[11, 2, 5, 30, 8, 1, 44]];
            let fed: [[u32; 5]; 3] = [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19]];
            let p = prompts.iter().map(|q| q.len()).max().unwrap();
            let lengths: Vec<usize> = prompts.iter().map(|q| q.len()).collect();
            let mut padded = vec![0i64; 3 * p];
            for (r, q) in prompts.iter().enumerate() {
                for (j, &t) in q.iter().enumerate() {
                    padded[r * p + j] = t as i64;
                }
            }
            let (first, mut cache) = model.prefill(Tensor::from_data(TensorData::new(padded, [3, p]), &device), &lengths);
            let mut got = vec![first];
            for step in 0..5 {
                let ids: Vec<i64> = fed.iter().map(|f| f[step] as i64).collect();
                got.push(model.step(Tensor::from_data(TensorData::new(ids, [3, 1]), &device), &mut cache));
            }
            for (r, q) in prompts.iter().enumerate() {
                for (step, logits) in got.iter().enumerate() {
                    let whole: Vec<i64> = q.iter().chain(&fed[r][..step]).map(|&t| t as i64).collect();
                    let n = whole.len();
                    if step > 0 && n > grows {
                        continue;
                    }
                    let want = model.forward(Tensor::from_data(TensorData::new(whole, [1, n]), &device), &[n]);
                    let want = want.narrow(1, n - 1, 1).reshape([1, 50]).into_data().try_to_vec::<f32>().unwrap();
                    let row = logits.clone().narrow(0, r, 1).into_data().try_to_vec::<f32>().unwrap();
                    let diff = want.iter().zip(&row).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(diff < 1e-4, "row {r}, step {step}: logits differ by {diff}");
                }
            }
        }
    }
}

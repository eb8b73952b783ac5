//! Stage two's student for text classification: a BERT-style Transformer encoder
//! classifier (learned word + position + token-type embeddings, post-LayerNorm blocks with
//! GELU feed-forward, a tanh pooler over the first token, a linear classifier), or
//! DistilBERT's variant of it (no token types, a ReLU pre-classifier). The layout follows
//! Hugging Face `BertForSequenceClassification` / `DistilBertForSequenceClassification` so
//! checkpoints map one to one.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{relu, tanh};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::kernels;

/// The encoder student's architecture: what `student.json` records and every encoder is
/// built from (fresh, or from a Hugging Face checkpoint's `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Token vocabulary (from the cache's tokenizer).
    pub vocab_size: usize,
    /// Output classes (from the cache's manifest).
    pub classes: usize,
    /// Longest sequence the position table holds (the cache's `max_seq_len` or more).
    pub max_positions: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub d_ff: usize,
    /// Token-type (segment) embeddings; 0: none (DistilBERT).
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    pub norm_eps: f64,
    #[serde(default, skip_serializing_if = "EncoderFamily::is_bert")]
    pub family: EncoderFamily,
}

/// How the first token becomes the class logits, and the weight names of a checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderFamily {
    /// `BertForSequenceClassification`: a tanh pooler, then the classifier.
    #[default]
    Bert,
    /// `DistilBertForSequenceClassification`: a ReLU pre-classifier, then the classifier;
    /// no token-type embeddings.
    DistilBert,
}

impl EncoderFamily {
    fn is_bert(&self) -> bool {
        *self == EncoderFamily::Bert
    }
}

fn two() -> usize {
    2
}
fn bert_eps() -> f64 {
    1e-12
}

impl EncoderConfig {
    /// A fresh BERT-style encoder (`encoder:` specs).
    pub fn new(
        vocab_size: usize,
        classes: usize,
        max_positions: usize,
        d_model: usize,
        layers: usize,
        heads: usize,
        d_ff: usize,
    ) -> EncoderConfig {
        EncoderConfig {
            vocab_size,
            classes,
            max_positions,
            d_model,
            layers,
            heads,
            d_ff,
            type_vocab_size: two(),
            norm_eps: bert_eps(),
            family: EncoderFamily::Bert,
        }
    }

    pub fn init(&self, device: &Device) -> Encoder {
        assert!(self.d_model.is_multiple_of(self.heads), "d_model must be a multiple of heads");
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        let norm = || LayerNormConfig::new(self.d_model).with_epsilon(self.norm_eps).init(device);
        let blocks = (0..self.layers)
            .map(|_| EncoderBlock {
                q: lin(self.d_model, self.d_model),
                k: lin(self.d_model, self.d_model),
                v: lin(self.d_model, self.d_model),
                attn_out: lin(self.d_model, self.d_model),
                attn_norm: norm(),
                up: lin(self.d_model, self.d_ff),
                down: lin(self.d_ff, self.d_model),
                mlp_norm: norm(),
                heads: self.heads,
            })
            .collect();
        Encoder {
            word: EmbeddingConfig::new(self.vocab_size, self.d_model).init(device),
            position: EmbeddingConfig::new(self.max_positions, self.d_model).init(device),
            token_type: (self.type_vocab_size > 0).then(|| EmbeddingConfig::new(self.type_vocab_size, self.d_model).init(device)),
            embed_norm: norm(),
            blocks,
            pooler: lin(self.d_model, self.d_model),
            classifier: lin(self.d_model, self.classes),
            heads: self.heads,
            norm_eps: self.norm_eps,
            relu_pooler: self.family == EncoderFamily::DistilBert,
        }
    }
}

#[derive(Module, Debug)]
pub struct EncoderBlock {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub attn_out: Linear,
    pub attn_norm: LayerNorm,
    pub up: Linear,
    pub down: Linear,
    pub mlp_norm: LayerNorm,
    pub heads: usize,
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub word: Embedding,
    pub position: Embedding,
    /// `None`: no token types (DistilBERT).
    pub token_type: Option<Embedding>,
    pub embed_norm: LayerNorm,
    pub blocks: Vec<EncoderBlock>,
    /// BERT's pooler (tanh) or DistilBERT's pre-classifier (ReLU), over the first token.
    pub pooler: Linear,
    pub classifier: Linear,
    pub heads: usize,
    pub norm_eps: f64,
    pub relu_pooler: bool,
}

/// A LayerNorm module's function as one fused operation ([`kernels::layer_norm`]).
fn norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>, eps: f64) -> Tensor<D> {
    let beta = norm.beta.as_ref().expect("the encoder's LayerNorms have a bias").val();
    kernels::layer_norm(x, norm.gamma.val(), beta, eps)
}

impl EncoderBlock {
    /// The block's output at the first `queries` positions; keys and values come from all
    /// `s` positions, so these outputs are the same as those of the whole block.
    ///
    /// # Shapes
    /// - `x`: `[b, s, d_model]`; `mask`: `[b, 1, 1, s]` additive (0 or a large negative); `eps`:
    ///   the LayerNorms' epsilon (the encoder's `norm_eps`)
    /// - returns `[b, queries, d_model]`
    fn forward(&self, x: Tensor<3>, mask: Tensor<4>, queries: usize, eps: f64) -> Tensor<3> {
        let [_, s, d] = x.dims();
        let hd = d / self.heads;
        let xq = if queries == s { x.clone() } else { x.clone().narrow(1, 0, queries) }; // [b, queries, d]
        let q = kernels::linear(&self.q, xq.clone()); // [b, queries, d]
        let k = kernels::linear(&self.k, x.clone()); // [b, s, d]
        let v = kernels::linear(&self.v, x);
        let attn = kernels::attention(q, k, v, mask, self.heads, 1.0 / (hd as f64).sqrt()); // [b, queries, d]
        let x = norm(&self.attn_norm, xq + kernels::linear(&self.attn_out, attn), eps);
        let ff = kernels::linear(&self.down, kernels::gelu(kernels::linear(&self.up, x.clone())));
        norm(&self.mlp_norm, x + ff, eps)
    }
}

impl Encoder {
    /// # Shapes
    /// - `tokens`: `[b, s]` (the first token of each row is the `[CLS]`-like token that is
    ///   pooled); `lengths`: the real (unpadded) length of each row, `s <= max_positions`
    /// - returns logits `[b, classes]`
    pub fn forward(&self, tokens: Tensor<2, Int>, lengths: &[usize]) -> Tensor<2> {
        self.forward_pooled(tokens, lengths, true, &[]).0
    }

    /// As [`Encoder::forward`], with the first token's hidden state after each layer in
    /// `taps` (0: the embeddings, `l`: block `l`'s output).
    ///
    /// # Shapes
    /// - returns logits `[b, classes]` and one `[b, d_model]` per tap, in `taps`' order
    pub fn forward_tapped(&self, tokens: Tensor<2, Int>, lengths: &[usize], taps: &[usize]) -> (Tensor<2>, Vec<Tensor<2>>) {
        self.forward_pooled(tokens, lengths, true, taps)
    }

    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// With `narrow_last`, the last block computes only the first position, the one the
    /// pooler reads (its attention still looks at every position): the same logits for a
    /// fraction of the last block's work. Without it, every position of every block (the
    /// Hugging Face computation; the tests compare the two).
    fn forward_pooled(&self, tokens: Tensor<2, Int>, lengths: &[usize], narrow_last: bool, taps: &[usize]) -> (Tensor<2>, Vec<Tensor<2>>) {
        let [b, s] = tokens.dims();
        let device = tokens.device();
        let d = self.word.weight.dims()[1];
        let positions = self.position.weight.val().narrow(0, 0, s).reshape([1, s, d]);
        let embedded = self.word.forward(tokens) + positions;
        let embedded = match &self.token_type {
            Some(tt) => embedded + tt.weight.val().narrow(0, 0, 1).reshape([1, 1, d]),
            None => embedded,
        };
        let mut x = norm(&self.embed_norm, embedded, self.norm_eps);
        // Key-padding mask, additive.
        let mut mask = vec![0f32; b * s];
        for (r, &len) in lengths.iter().enumerate() {
            for j in len..s {
                mask[r * s + j] = -1e9;
            }
        }
        let mask: Tensor<4> = Tensor::from_data(TensorData::new(mask, [b, 1, 1, s]), &device);
        let mut tapped: Vec<Option<Tensor<2>>> = vec![None; taps.len()];
        let mut tap = |layer: usize, x: &Tensor<3>| {
            for (t, _) in taps.iter().enumerate().filter(|(_, l)| **l == layer) {
                tapped[t] = Some(x.clone().narrow(1, 0, 1).reshape([b, d]));
            }
        };
        tap(0, &x);
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            let queries = if narrow_last && i == last { 1 } else { s };
            x = block.forward(x, mask.clone(), queries, self.norm_eps);
            tap(i + 1, &x);
        }
        let first = kernels::linear(&self.pooler, x.narrow(1, 0, 1).reshape([b, d]));
        let pooled = if self.relu_pooler { relu(first) } else { tanh(first) };
        let tapped = tapped.into_iter().map(|t| t.expect("every tap is a layer of the encoder (checked by the caller)")).collect();
        (kernels::linear(&self.classifier, pooled), tapped)
    }

    /// Longest sequence the position table holds.
    pub fn max_positions(&self) -> usize {
        self.position.weight.dims()[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Narrowing the last block to the pooled position changes nothing but the work: the
    /// logits equal those of the full computation (Hugging Face's), with padding.
    #[test]
    fn narrowed_last_block_gives_the_full_logits() {
        let device = Device::default();
        let enc = EncoderConfig::new(50, 3, 16, 8, 2, 2, 16).init(&device);
        let ids: Vec<i64> = (0..3 * 6).map(|i| (i * 7 % 50) as i64).collect();
        let tokens: Tensor<2, Int> = Tensor::from_data(TensorData::new(ids, [3, 6]), &device);
        let lengths = [6, 4, 1];
        let get = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
        let narrow = get(enc.forward_pooled(tokens.clone(), &lengths, true, &[]).0);
        let full = get(enc.forward_pooled(tokens, &lengths, false, &[]).0);
        assert_eq!(narrow.len(), 9);
        for (i, (a, b)) in narrow.iter().zip(&full).enumerate() {
            assert!((a - b).abs() <= 1e-5, "logit {i}: {a} narrowed vs {b} full");
        }
    }
}

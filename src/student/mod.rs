//! Stage two's students (Burn modules): an MLP over numeric features, a BERT-style encoder
//! classifier over tokens and a Llama-style decoder for causal LMs; how a student is
//! specified, built, saved and loaded. The class
//! count / vocabulary always comes from the cache's manifest.

pub mod adamw;
pub mod decoder;
pub mod encoder;
mod file;
pub mod hf;
pub mod load;
pub mod mlp;
pub mod select;

use std::path::Path;

use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use decoder::{Decoder, DecoderConfig};
pub use encoder::{Encoder, EncoderConfig};
pub use file::{DataSpec, PreparedRow, StudentFile, prepare_rows, prepare_rows_with_logprobs};
pub use mlp::{Mlp, MlpConfig};

use crate::error::{Error, Result};

/// What the students' kernel tests share: the devices they run on and their inputs.
#[cfg(test)]
pub(crate) mod testing {
    use burn::tensor::Device;

    /// Flex, and libtorch in a build with the `tch` feature (CI runs these tests there too).
    #[cfg_attr(feature = "tch", allow(deprecated))] // burn-tch: kept as the libtorch backend
    pub fn devices() -> Vec<Device> {
        #[allow(unused_mut)]
        let mut devices = vec![Device::flex().autodiff()];
        #[cfg(feature = "tch")]
        devices.push(Device::libtorch().autodiff());
        devices
    }

    /// `n` values in `[lo, hi)` from a fixed LCG (the same inputs on every run).
    pub fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }
}

/// A student of any kind.
// One value per run, moved once per optimizer step: the 760-byte variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Student {
    Mlp(Mlp),
    Encoder(Encoder),
    Decoder(Decoder),
}

/// One row as a student reads it: numeric features (MLP) or token ids (encoder, decoder).
#[derive(Debug, Clone, Copy)]
pub struct RowInput<'a> {
    pub features: &'a [f32],
    pub tokens: &'a [u32],
}

/// Which positions of a decoder's rows get logits (classifiers give one row of logits per
/// input row whatever this says).
#[derive(Debug, Clone, Copy)]
pub enum Positions<'a> {
    /// Every position of the padded batch: row `r`, position `p` at `r * s + p`.
    All,
    /// These `(row, position)` pairs, in order: only their hidden states reach the final
    /// norm and the LM head (the largest matrix product of a training step).
    At(&'a [(usize, usize)]),
}

impl Student {
    /// What it predicts: a class per row (MLP, encoder) or the next token at each position
    /// (decoder).
    pub fn task(&self) -> crate::cache::Task {
        match self {
            Student::Mlp(_) | Student::Encoder(_) => crate::cache::Task::Classification,
            Student::Decoder(_) => crate::cache::Task::CausalLm,
        }
    }

    /// Whether it reads token ids (an encoder or decoder) rather than feature vectors.
    pub fn reads_tokens(&self) -> bool {
        !matches!(self, Student::Mlp(_))
    }

    /// The forward pass of any student: the one dispatch training, `eval` and `predict` use.
    ///
    /// # Shapes
    /// - MLP: features `[b, input]` -> `[b, classes]`
    /// - encoder: tokens `[b, s]` (right-padded, [`token_tensor`]) -> `[b, classes]`
    /// - decoder: tokens `[b, s]` -> hidden `[b, s, d_model]` -> `[b * s, vocab]`
    ///   ([`Positions::All`]) or `[m, vocab]` for `m` listed pairs ([`Positions::At`])
    pub fn logits(&self, rows: &[RowInput<'_>], positions: Positions<'_>, device: &Device) -> Tensor<2> {
        self.forward(rows, positions, &[], device).0
    }

    /// [`Student::logits`] and the hidden states after the layers `taps` (see
    /// [`Student::layer_widths`]) at the same rows or positions as the logits.
    ///
    /// # Shapes
    /// - logits as [`Student::logits`]; one `[n, width]` per tap with `n` the logits' rows
    ///   (classifiers: the first token of each row; decoders: the listed positions)
    pub fn forward(&self, rows: &[RowInput<'_>], positions: Positions<'_>, taps: &[usize], device: &Device) -> (Tensor<2>, Vec<Tensor<2>>) {
        match self {
            Student::Mlp(mlp) => {
                let width = rows.first().map(|r| r.features.len()).unwrap_or(0);
                let x: Vec<f32> = rows.iter().flat_map(|r| r.features.iter().copied()).collect();
                mlp.forward_tapped(Tensor::from_data(TensorData::new(x, [rows.len(), width]), device), taps)
            }
            Student::Encoder(enc) => {
                let (tokens, lengths) = token_tensor(rows.iter().map(|r| r.tokens), device);
                enc.forward_tapped(tokens, &lengths, taps)
            }
            Student::Decoder(dec) => {
                let (h, tapped) = dec_states(dec, rows, positions, taps, device);
                (dec.logits(h), tapped)
            }
        }
    }

    /// A decoder's LM-head input (the final norm's output) at `positions`, its head, and
    /// the `taps`' hidden states there, for a loss that computes the head itself
    /// ([`crate::loss::chunked_head_loss`]); `None` for a classifier.
    ///
    /// # Shapes
    /// - returns `[m, d_model]`, the head's `[d_model, vocab]` weight, one `[m, d_model]` per tap
    pub fn head_input(
        &self,
        rows: &[RowInput<'_>],
        positions: Positions<'_>,
        taps: &[usize],
        device: &Device,
    ) -> Option<(Tensor<2>, crate::loss::HeadWeights, Vec<Tensor<2>>)> {
        let Student::Decoder(dec) = self else { return None };
        let (h, tapped) = dec_states(dec, rows, positions, taps, device);
        Some((dec.final_norm(h), dec.head_weights(), tapped))
    }

    /// The layers a hidden-state loss may read (`--hidden-layers`), with their widths:
    /// MLP hidden layers `1..=n`; encoder and decoder `0` (the embeddings) to `layers`.
    pub fn layer_widths(&self) -> Vec<(usize, usize)> {
        match self {
            Student::Mlp(mlp) => mlp.layers.iter().enumerate().map(|(i, l)| (i + 1, l.weight.dims()[1])).collect(),
            Student::Encoder(enc) => (0..=enc.layers()).map(|l| (l, enc.word.weight.dims()[1])).collect(),
            Student::Decoder(dec) => (0..=dec.layers()).map(|l| (l, dec.embed.weight.dims()[1])).collect(),
        }
    }
}

/// A decoder's last hidden states (before the final norm) and the taps' at `positions`.
///
/// # Shapes
/// - tokens `[b, s]` -> `[b * s, d_model]` ([`Positions::All`]) or `[m, d_model]` each
fn dec_states(
    dec: &decoder::Decoder,
    rows: &[RowInput<'_>],
    positions: Positions<'_>,
    taps: &[usize],
    device: &Device,
) -> (Tensor<2>, Vec<Tensor<2>>) {
    let (tokens, lengths) = token_tensor(rows.iter().map(|r| r.tokens), device);
    let (h, tapped) = dec.hidden_tapped(tokens, &lengths, taps);
    let [b, s, d] = h.dims();
    let index = match positions {
        Positions::All => None,
        Positions::At(at) => {
            let flat: Vec<i64> = at.iter().map(|&(r, p)| (r * s + p) as i64).collect();
            Some(Tensor::<1, Int>::from_data(TensorData::new(flat, [at.len()]), device))
        }
    };
    let at = |h: Tensor<3>| {
        let h = h.reshape([b * s, d]);
        match &index {
            None => h,
            Some(idx) => h.select(0, idx.clone()),
        }
    };
    let tapped = tapped.into_iter().map(at).collect();
    (at(h), tapped)
}

/// Rows of token ids, right-padded with id 0 (padding is masked by the lengths, so the pad
/// id never reaches a logit that counts).
///
/// # Shapes
/// - returns tokens `[b, s]` with `s` the longest row (at least 1), and each row's length
pub fn token_tensor<'a>(rows: impl ExactSizeIterator<Item = &'a [u32]> + Clone, device: &Device) -> (Tensor<2, Int>, Vec<usize>) {
    let b = rows.len();
    let s = rows.clone().map(<[u32]>::len).max().unwrap_or(1).max(1);
    let mut ids = vec![0i64; b * s];
    let mut lengths = Vec::with_capacity(b);
    for (r, row) in rows.enumerate() {
        for (t, &id) in row.iter().enumerate() {
            ids[r * s + t] = id as i64;
        }
        lengths.push(row.len());
    }
    (Tensor::from_data(TensorData::new(ids, [b, s]), device), lengths)
}

/// What the user asks for (`--student mlp:hidden=64,64` or a pipeline's `[student]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StudentSpec {
    /// MLP classifier over the cache's feature columns.
    Mlp {
        #[serde(default = "default_hidden")]
        hidden: Vec<usize>,
    },
    /// BERT-style Transformer encoder classifier over tokens.
    Encoder {
        #[serde(default = "d_model")]
        d_model: usize,
        #[serde(default = "layers")]
        layers: usize,
        #[serde(default = "heads")]
        heads: usize,
        #[serde(default = "encoder_d_ff")]
        d_ff: usize,
    },
    /// A pretrained Hugging Face checkpoint directory (`LlamaForCausalLM` or
    /// `BertForSequenceClassification` / `BertModel`): architecture and starting weights.
    Hf { path: std::path::PathBuf },
    /// Llama-style causal decoder.
    Decoder {
        #[serde(default = "d_model")]
        d_model: usize,
        #[serde(default = "layers")]
        layers: usize,
        #[serde(default = "heads")]
        heads: usize,
        #[serde(default = "decoder_d_ff")]
        d_ff: usize,
        /// K/V heads (grouped-query attention); `None`: as many as `heads`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kv_heads: Option<usize>,
    },
}

/// The shape of a student whose spec leaves it out, declared once for `--student` and a
/// pipeline's `[student]`.
pub mod defaults {
    pub const MLP_HIDDEN: &[usize] = &[64];
    pub const D_MODEL: usize = 64;
    pub const LAYERS: usize = 2;
    pub const HEADS: usize = 2;
    pub const ENCODER_D_FF: usize = 256;
    /// About 8/3 of `D_MODEL`, as Llama sizes its SwiGLU.
    pub const DECODER_D_FF: usize = 172;
}

fn default_hidden() -> Vec<usize> {
    defaults::MLP_HIDDEN.to_vec()
}
fn d_model() -> usize {
    defaults::D_MODEL
}
fn layers() -> usize {
    defaults::LAYERS
}
fn heads() -> usize {
    defaults::HEADS
}
fn encoder_d_ff() -> usize {
    defaults::ENCODER_D_FF
}
fn decoder_d_ff() -> usize {
    defaults::DECODER_D_FF
}

impl StudentSpec {
    /// Parse `mlp:hidden=64,64`, `encoder:d_model=64,layers=2,heads=2,d_ff=256` or
    /// `decoder:d_model=64,layers=2,heads=2,d_ff=172`.
    pub fn parse(s: &str) -> Result<StudentSpec> {
        let bad = |m: String| Error::Config(format!("--student `{s}`: {m}"));
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        if kind == "hf" {
            if rest.is_empty() {
                return Err(bad("expected hf:DIR (a Hugging Face checkpoint directory)".into()));
            }
            return Ok(StudentSpec::Hf { path: rest.into() });
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in rest.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((k, v)) => pairs.push((k.trim().to_string(), v.trim().to_string())),
                // `hidden=64,64`: a bare number continues the previous list.
                None if part.trim().parse::<usize>().is_ok() && !pairs.is_empty() => {
                    let last = pairs.last_mut().expect("non-empty");
                    last.1 = format!("{},{}", last.1, part.trim());
                }
                None => return Err(bad(format!("expected key=value, got `{part}`"))),
            }
        }
        let num = |v: &str, k: &str| v.parse::<usize>().map_err(|_| bad(format!("{k} must be a positive integer, got `{v}`")));
        match kind {
            "mlp" => {
                let mut hidden = default_hidden();
                for (k, v) in &pairs {
                    match k.as_str() {
                        "hidden" => hidden = v.split(',').map(|x| num(x, k)).collect::<Result<_>>()?,
                        other => return Err(bad(format!("unknown mlp key `{other}` (known: hidden)"))),
                    }
                }
                Ok(StudentSpec::Mlp { hidden })
            }
            "encoder" | "decoder" => {
                let (mut d_model, mut layers, mut heads, mut kv_heads) = (d_model(), layers(), heads(), None);
                let mut d_ff = if kind == "encoder" { encoder_d_ff() } else { decoder_d_ff() };
                for (k, v) in &pairs {
                    match k.as_str() {
                        "d_model" => d_model = num(v, k)?,
                        "layers" => layers = num(v, k)?,
                        "heads" => heads = num(v, k)?,
                        "d_ff" => d_ff = num(v, k)?,
                        "kv_heads" if kind == "decoder" => kv_heads = Some(num(v, k)?),
                        other => {
                            let known =
                                if kind == "decoder" { "d_model, layers, heads, kv_heads, d_ff" } else { "d_model, layers, heads, d_ff" };
                            return Err(bad(format!("unknown {kind} key `{other}` (known: {known})")));
                        }
                    }
                }
                Ok(if kind == "encoder" {
                    StudentSpec::Encoder { d_model, layers, heads, d_ff }
                } else {
                    StudentSpec::Decoder { d_model, layers, heads, d_ff, kv_heads }
                })
            }
            other => Err(bad(format!("unknown student kind `{other}` (known: mlp, encoder, decoder, hf:DIR)"))),
        }
    }

    /// Check ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        match self {
            StudentSpec::Mlp { hidden } => {
                if hidden.contains(&0) {
                    return Err(Error::Config("student.hidden widths must be >= 1".into()));
                }
            }
            StudentSpec::Encoder { d_model, layers, heads, d_ff } => {
                if *d_model == 0 || *layers == 0 || *heads == 0 || *d_ff == 0 {
                    return Err(Error::Config("student.d_model, layers, heads and d_ff must be >= 1".into()));
                }
                if d_model % heads != 0 {
                    return Err(Error::Config(format!("student.d_model ({d_model}) must be a multiple of student.heads ({heads})")));
                }
            }
            StudentSpec::Hf { path } => {
                if !path.join("config.json").is_file() {
                    return Err(Error::Config(format!(
                        "student.path {}: not a Hugging Face checkpoint directory (no config.json)",
                        path.display()
                    )));
                }
            }
            StudentSpec::Decoder { d_model, layers, heads, d_ff, kv_heads } => {
                if let Some(kv) = kv_heads
                    && (*kv == 0 || !heads.is_multiple_of(*kv))
                {
                    return Err(Error::Config(format!("student.heads ({heads}) must be a multiple of student.kv_heads ({kv})")));
                }
                if *d_model == 0 || *layers == 0 || *heads == 0 || *d_ff == 0 {
                    return Err(Error::Config("student.d_model, layers, heads and d_ff must be >= 1".into()));
                }
                if d_model % heads != 0 || (d_model / heads) % 2 != 0 {
                    return Err(Error::Config(format!(
                        "student.d_model ({d_model}) / student.heads ({heads}) must be an even integer (rotary positions)"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// What the cache and data fix about a student.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheDims {
    /// Class count (classification) or vocabulary (causal LM) of the teacher's logits.
    pub outputs: usize,
    /// Numeric features per row (MLP).
    pub features: usize,
    /// Token vocabulary of the cache's tokenizer (encoder).
    pub tokens: usize,
    /// The cache's `max_seq_len` (encoder positions).
    pub max_seq_len: usize,
}

/// The resolved architecture of a trained student, saved beside its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StudentArch {
    Mlp(MlpConfig),
    Encoder(EncoderConfig),
    Decoder(DecoderConfig),
}

impl StudentArch {
    /// Resolve a spec against the cache and data.
    pub fn resolve(spec: &StudentSpec, dims: &CacheDims) -> StudentArch {
        let vocab = dims.outputs;
        match spec {
            StudentSpec::Mlp { hidden } => StudentArch::Mlp(MlpConfig { input: dims.features, hidden: hidden.clone(), classes: vocab }),
            StudentSpec::Encoder { d_model, layers, heads, d_ff } => {
                StudentArch::Encoder(EncoderConfig::new(dims.tokens, vocab, dims.max_seq_len, *d_model, *layers, *heads, *d_ff))
            }
            StudentSpec::Decoder { d_model, layers, heads, d_ff, kv_heads } => {
                let mut c = DecoderConfig::new(vocab, *d_model, *layers, *heads, *d_ff);
                c.kv_heads = kv_heads.filter(|&kv| kv != *heads);
                StudentArch::Decoder(c)
            }
            StudentSpec::Hf { .. } => unreachable!("a Hugging Face student's architecture comes from its config.json (hf::read_arch)"),
        }
    }

    /// Whether it reads token ids (an encoder or decoder, which also have a Hugging Face
    /// form) rather than feature vectors.
    pub fn reads_tokens(&self) -> bool {
        !matches!(self, StudentArch::Mlp(_))
    }

    /// The feature values per row an MLP takes (`None`: a token model).
    pub fn feature_width(&self) -> Option<usize> {
        match self {
            StudentArch::Mlp(c) => Some(c.input),
            _ => None,
        }
    }

    /// `mlp`, `encoder` or `decoder`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            StudentArch::Mlp(_) => "mlp",
            StudentArch::Encoder(_) => "encoder",
            StudentArch::Decoder(_) => "decoder",
        }
    }

    /// Output classes / vocabulary.
    pub fn vocab(&self) -> usize {
        match self {
            StudentArch::Mlp(c) => c.classes,
            StudentArch::Encoder(c) => c.classes,
            StudentArch::Decoder(c) => c.vocab_size,
        }
    }

    /// A lower bound on the parameters [`StudentArch::init`] allocates, counting only
    /// tensors every checkpoint of the architecture holds (embeddings, the feed-forward and
    /// query projections); `None` if it overflows. What a config from someone else claims
    /// is compared with the weights that came with it before anything is allocated.
    pub fn min_params(&self) -> Option<u128> {
        let m = |a: usize, b: usize| (a as u128).checked_mul(b as u128);
        match self {
            StudentArch::Mlp(c) => {
                let widths = std::iter::once(c.input).chain(c.hidden.iter().copied()).chain([c.classes]);
                widths.clone().zip(widths.skip(1)).try_fold(0u128, |sum, (a, b)| sum.checked_add(m(a, b)?))
            }
            StudentArch::Encoder(c) => {
                let per_layer = m(c.d_model, c.d_ff)?.checked_mul(2)?.checked_add(m(c.d_model, c.d_model)?)?;
                m(c.vocab_size, c.d_model)?
                    .checked_add(m(c.max_positions, c.d_model)?)?
                    .checked_add(per_layer.checked_mul(c.layers as u128)?)
            }
            StudentArch::Decoder(c) => {
                let head_dim = c.head_dim.unwrap_or(c.d_model / c.heads.max(1));
                let query = m(c.heads, head_dim)?.checked_mul(c.d_model as u128)?;
                let per_layer = m(c.d_model, c.d_ff)?.checked_mul(3)?.checked_add(query)?;
                m(c.vocab_size, c.d_model)?.checked_add(per_layer.checked_mul(c.layers as u128)?)
            }
        }
    }

    /// Refuse an architecture whose parameters could not come from `held` stored values
    /// (the element count of the weights `source` holds): a `config.json` or `student.json`
    /// that claims a vocabulary of 10^12 or a billion layers is refused here, naming the
    /// claim, instead of aborting on the allocation.
    pub fn check_against_weights(&self, held: u128, source: &Path) -> Result<()> {
        match self.min_params() {
            Some(n) if n <= held => Ok(()),
            claimed => Err(Error::Config(format!(
                "{}: the {} architecture it describes has at least {} parameters, but its weights hold {held} values:                  the config does not describe these weights ({})",
                source.display(),
                self.kind_name(),
                claimed.map_or("more than 2^128".into(), |n| n.to_string()),
                self.describe_size()
            ))),
        }
    }

    fn describe_size(&self) -> String {
        match self {
            StudentArch::Mlp(c) => format!("input {}, hidden {:?}, classes {}", c.input, c.hidden, c.classes),
            StudentArch::Encoder(c) => format!(
                "vocab_size {}, hidden {}, layers {}, intermediate {}, max_positions {}",
                c.vocab_size, c.d_model, c.layers, c.d_ff, c.max_positions
            ),
            StudentArch::Decoder(c) => {
                format!(
                    "vocab_size {}, hidden {}, layers {}, heads {}, intermediate {}",
                    c.vocab_size, c.d_model, c.layers, c.heads, c.d_ff
                )
            }
        }
    }

    pub fn init(&self, device: &Device) -> Student {
        match self {
            StudentArch::Mlp(c) => Student::Mlp(c.init(device)),
            StudentArch::Encoder(c) => Student::Encoder(c.init(device)),
            StudentArch::Decoder(c) => Student::Decoder(c.init(device)),
        }
    }
}

/// Save weights in Burn's format (`.bpk`), keeping parameter ids for resuming.
pub fn save_burnpack<M: ModuleSnapshot>(student: &M, path: &Path) -> Result<()> {
    let mut store = BurnpackStore::from_file(path).overwrite(true).auto_extension(false);
    student.save_into(&mut store).map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
}

/// Load weights saved by [`save_burnpack`] into `student` (shapes are checked).
pub fn load_burnpack<M: ModuleSnapshot>(student: &mut M, path: &Path) -> Result<()> {
    let mut store = BurnpackStore::from_file(path).auto_extension(false);
    student
        .load_from(&mut store)
        .map(|_| ())
        .map_err(|e| Error::io(path, std::io::Error::other(format!("cannot load student weights: {e}"))))
}

/// Save weights as safetensors: the same weights give the same bytes (the header's metadata
/// in key order), written atomically with the usual file mode.
pub fn save_safetensors(student: &Student, path: &Path) -> Result<()> {
    let mut store = SafetensorsStore::from_bytes(None);
    student.save_into(&mut store).map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    let bytes = store.get_bytes().map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    crate::integrity::write_atomic(path, &metadata_in_key_order(bytes))
}

/// A safetensors file with its header's `__metadata__` keys sorted (writers fill it from a
/// hash map, so its order changes from run to run). The header keeps its length; a header
/// that would not is left as it is.
fn metadata_in_key_order(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(n) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize) else { return bytes };
    let Some(header) = bytes.get(8..8usize.saturating_add(n)) else { return bytes };
    let Ok(serde_json::Value::Object(mut top)) = serde_json::from_slice::<serde_json::Value>(header) else { return bytes };
    if let Some(serde_json::Value::Object(meta)) = top.get_mut("__metadata__") {
        let mut entries: Vec<(String, serde_json::Value)> = std::mem::take(meta).into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        meta.extend(entries);
    }
    let text = serde_json::Value::Object(top).to_string();
    if text.len() == header.trim_ascii_end().len() {
        bytes[8..8 + text.len()].copy_from_slice(text.as_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_errors_list_the_known_kinds() {
        assert_eq!(
            StudentSpec::parse("encoder:d_model=32,layers=1").unwrap(),
            StudentSpec::Encoder { d_model: 32, layers: 1, heads: 2, d_ff: 256 }
        );
        assert_eq!(
            StudentSpec::parse("decoder").unwrap(),
            StudentSpec::Decoder { d_model: 64, layers: 2, heads: 2, d_ff: 172, kv_heads: None }
        );
        assert_eq!(
            StudentSpec::parse("decoder:heads=4,kv_heads=2").unwrap(),
            StudentSpec::Decoder { d_model: 64, layers: 2, heads: 4, d_ff: 172, kv_heads: Some(2) }
        );
        let e = StudentSpec::parse("decoder:heads=4,kv_heads=3").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("multiple of student.kv_heads (3)"), "{e}");
        assert_eq!(StudentSpec::parse("hf:models/a,b:c").unwrap(), StudentSpec::Hf { path: "models/a,b:c".into() });
        let e = StudentSpec::parse("bert").unwrap_err().to_string();
        assert!(e.contains("known: mlp, encoder, decoder, hf:DIR"), "{e}");
        let e = StudentSpec::parse("encoder:width=3").unwrap_err().to_string();
        assert!(e.contains("unknown encoder key `width`"), "{e}");
        let e = StudentSpec::Encoder { d_model: 30, layers: 1, heads: 4, d_ff: 8 }.validate().unwrap_err().to_string();
        assert!(e.contains("multiple of student.heads"), "{e}");
    }
}

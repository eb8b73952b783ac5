//! Hugging Face checkpoints in and out: a `config.json` + `model.safetensors` directory
//! (or sharded, `model.safetensors.index.json`) for a Llama-style decoder
//! (`LlamaForCausalLM`) or a BERT encoder classifier (`BertForSequenceClassification`).
//!
//! Reading maps every weight onto the Burn student by name, checking each shape; an
//! architecture or option the students do not implement is refused with the key that says
//! so. Writing produces a directory `transformers` loads with `AutoModelForCausalLM` /
//! `AutoModelForSequenceClassification`. Burn's `Linear` stores `[in, out]`, PyTorch's
//! `[out, in]`: weights are transposed both ways.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, Linear, RmsNorm};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

mod decoder;
mod encoder;
mod fits;
pub mod init;

pub use fits::check_fits;

use super::{Student, StudentArch};
use crate::cache::manifest::write_atomic;
use crate::error::{Error, Result};

/// The weights file written by [`write_checkpoint`].
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// A checkpoint read from disk: its architecture and its tensors as f32.
pub struct HfCheckpoint {
    pub dir: PathBuf,
    pub arch: StudentArch,
    /// `name -> (shape, values)` (PyTorch layout).
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    /// The checkpoint's own tokenizer.json, if it has one.
    pub tokenizer: Option<PathBuf>,
    /// Weights present in the files but not used (buffers such as rotary tables).
    pub unused: Vec<String>,
}

impl HfCheckpoint {
    /// Does the checkpoint hold a tensor of this name?
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Does `dir` look like a Hugging Face checkpoint (a `config.json` with a `model_type`)?
pub fn is_checkpoint(dir: &Path) -> bool {
    crate::untrusted::read(&dir.join("config.json"), crate::untrusted::Cap::Settings)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v.get("model_type").is_some())
}

fn cfg_err(dir: &Path, message: String) -> Error {
    Error::Config(format!("{}: {message}", dir.join("config.json").display()))
}

/// Read `config.json` into the architecture it describes, refusing what the students do
/// not implement.
pub fn read_arch(dir: &Path) -> Result<StudentArch> {
    let path = dir.join("config.json");
    let bytes = crate::untrusted::read(&path, crate::untrusted::Cap::Settings)?;
    let c: Value = serde_json::from_slice(&bytes).map_err(|e| cfg_err(dir, format!("not valid JSON: {e}")))?;
    let model_type = c.get("model_type").and_then(Value::as_str).unwrap_or("");
    match model_type {
        t if decoder::MODEL_TYPES.contains(&t) => Ok(StudentArch::Decoder(decoder::read_config(&c, dir, t)?)),
        t if encoder::MODEL_TYPES.contains(&t) => Ok(StudentArch::Encoder(encoder::read_config(&c, dir, t)?)),
        "" => Err(cfg_err(dir, "has no `model_type`".into())),
        other => {
            Err(cfg_err(dir, format!("model_type `{other}` is not supported (supported: llama, qwen2, qwen3, mistral, bert, distilbert)")))
        }
    }
}

/// The SHA-256 of a checkpoint's weights: of the name and SHA-256 of each of its
/// safetensors files, in order (a run's identity names the weights it started from).
pub fn weights_sha256(dir: &Path) -> Result<String> {
    let mut listing = String::new();
    for f in weight_files(dir)? {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        listing.push_str(&format!("{name} {}\n", crate::integrity::sha256_file(&f)?));
    }
    Ok(crate::integrity::sha256_bytes(listing.as_bytes()))
}

/// The safetensors files of a checkpoint: `model.safetensors`, or the shards its
/// `model.safetensors.index.json` names.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Ok(vec![dir.join(WEIGHTS_FILE)]);
    }
    let v: Value = serde_json::from_slice(&crate::untrusted::read(&index, crate::untrusted::Cap::Settings)?)
        .map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", index.display())))?;
    let map =
        v.get("weight_map").and_then(Value::as_object).ok_or_else(|| Error::Config(format!("{}: no `weight_map`", index.display())))?;
    let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
    names.sort();
    names.dedup();
    for n in &names {
        if n.contains('/') || n.contains("..") {
            return Err(Error::Config(format!("{}: shard name `{n}` is not a plain file name", index.display())));
        }
    }
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// Read a checkpoint directory: config and every safetensors file it is made of.
pub fn read_checkpoint(dir: &Path) -> Result<HfCheckpoint> {
    let arch = read_arch(dir)?;
    let files = weight_files(dir)?;
    let mut tensors = HashMap::new();
    for f in &files {
        let bytes = crate::untrusted::read(f, crate::untrusted::Cap::Weights)?;
        let st =
            SafeTensors::deserialize(&bytes).map_err(|e| Error::io(f, std::io::Error::other(format!("not a safetensors file: {e}"))))?;
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                Dtype::F64 => data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
                // Integer buffers (e.g. BERT's position_ids) are not weights.
                _ => continue,
            };
            tensors.insert(name, (view.shape().to_vec(), values));
        }
    }
    let held: u128 = tensors.values().map(|(_, v)| v.len() as u128).sum();
    arch.check_against_weights(held, &dir.join("config.json"))?;
    let mut arch = arch;
    if let StudentArch::Decoder(c) = &mut arch
        && !tensors.contains_key("lm_head.weight")
    {
        c.tie_embeddings = true; // no head of its own: transformers ties it to the embedding
    }
    let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
    Ok(HfCheckpoint { dir: dir.to_path_buf(), arch, tensors, tokenizer, unused: Vec::new() })
}

/// Takes tensors out of a checkpoint by name, checking shapes.
struct Take<'a> {
    ck: &'a mut HfCheckpoint,
    device: &'a Device,
}

impl Take<'_> {
    fn raw(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let dir = self.ck.dir.clone();
        let (s, v) = self
            .ck
            .tensors
            .remove(name)
            .ok_or_else(|| Error::Config(format!("{}: the checkpoint has no tensor `{name}`", dir.display())))?;
        if s != shape {
            return Err(Error::Config(format!(
                "{}: tensor `{name}` has shape {s:?}, the student (from config.json) expects {shape:?}",
                dir.display()
            )));
        }
        Ok(v)
    }
    fn vector(&mut self, name: &str, n: usize) -> Result<Param<Tensor<1>>> {
        let v = self.raw(name, &[n])?;
        Ok(Param::from_tensor(Tensor::from_data(TensorData::new(v, [n]), self.device)))
    }
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Param<Tensor<2>>> {
        let v = self.raw(name, &[rows, cols])?;
        Ok(Param::from_tensor(Tensor::from_data(TensorData::new(v, [rows, cols]), self.device)))
    }
    /// PyTorch `[out, in]` (+ bias) into Burn's `[in, out]`.
    fn linear(&mut self, lin: &mut Linear, prefix: &str) -> Result<()> {
        let [i, o] = lin.weight.dims();
        let w = self.raw(&format!("{prefix}.weight"), &[o, i])?;
        let t: Tensor<2> = Tensor::from_data(TensorData::new(w, [o, i]), self.device);
        lin.weight = Param::from_tensor(t.transpose());
        if lin.bias.is_some() {
            lin.bias = Some(self.vector(&format!("{prefix}.bias"), o)?);
        }
        Ok(())
    }
    fn embedding(&mut self, e: &mut Embedding, name: &str) -> Result<()> {
        let [n, d] = e.weight.dims();
        e.weight = self.matrix(name, n, d)?;
        Ok(())
    }
    fn rms(&mut self, n: &mut RmsNorm, name: &str) -> Result<()> {
        n.gamma = self.vector(name, n.gamma.dims()[0])?;
        Ok(())
    }
    fn layer_norm(&mut self, n: &mut LayerNorm, prefix: &str) -> Result<()> {
        let d = n.gamma.dims()[0];
        n.gamma = self.vector(&format!("{prefix}.weight"), d)?;
        n.beta = Some(self.vector(&format!("{prefix}.bias"), d)?);
        Ok(())
    }
}

/// Build the student a checkpoint describes, with its weights, on `device`. Returns the
/// student and notes for the user (tied embeddings copied, classifier initialised, unused
/// tensors).
pub fn load_student(mut ck: HfCheckpoint, device: &Device) -> Result<(Student, Vec<String>)> {
    let mut student = ck.arch.init(device);
    let mut notes = Vec::new();
    match &mut student {
        Student::Decoder(dec) => decoder::load(&mut ck, dec, device, &mut notes)?,
        Student::Encoder(enc) => encoder::load(&mut ck, enc, device, &mut notes)?,
        Student::Mlp(_) => unreachable!("read_arch never yields an MLP"),
    }
    let mut unused: Vec<String> = ck.tensors.keys().cloned().collect();
    unused.sort();
    if !unused.is_empty() {
        notes.push(format!("ignored {} tensor(s) the student has no place for: {}", unused.len(), unused.join(", ")));
    }
    ck.unused = unused;
    Ok((student, notes))
}

/// `Tensor -> (shape, f32 values)`.
fn values<const D: usize>(t: Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    let shape = t.dims().to_vec();
    (shape, t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 tensor data"))
}

fn put_linear(out: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>, lin: &Linear, prefix: &str) {
    out.insert(format!("{prefix}.weight"), values(lin.weight.val().transpose()));
    if let Some(b) = &lin.bias {
        out.insert(format!("{prefix}.bias"), values(b.val()));
    }
}

fn put_layer_norm(out: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>, n: &LayerNorm, prefix: &str) {
    out.insert(format!("{prefix}.weight"), values(n.gamma.val()));
    if let Some(b) = &n.beta {
        out.insert(format!("{prefix}.bias"), values(b.val()));
    }
}

/// The dtype of an exported checkpoint's weights (`--export-dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ExportDtype {
    F32,
    Bf16,
    F16,
}

impl ExportDtype {
    /// transformers' name (`torch_dtype` / `dtype` in config.json).
    pub fn torch_name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "float32",
            ExportDtype::Bf16 => "bfloat16",
            ExportDtype::F16 => "float16",
        }
    }

    /// The dtype a config.json says its weights are in (f32 when it says nothing else).
    fn of_config(c: &Value) -> ExportDtype {
        match c.get("torch_dtype").or_else(|| c.get("dtype")).and_then(Value::as_str) {
            Some("bfloat16") => ExportDtype::Bf16,
            Some("float16") => ExportDtype::F16,
            _ => ExportDtype::F32,
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            ExportDtype::F32 => Dtype::F32,
            ExportDtype::Bf16 => Dtype::BF16,
            ExportDtype::F16 => Dtype::F16,
        }
    }

    fn bytes(self, v: &[f32]) -> Vec<u8> {
        match self {
            ExportDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ExportDtype::Bf16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
            ExportDtype::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        }
    }
}

/// Files beside a checkpoint's weights that a trained copy keeps (the tokenizer's settings
/// and chat template, generation defaults).
const SIDE_FILES: [&str; 4] = ["tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja"];

/// Write `student` as a Hugging Face checkpoint in `dir` (config.json, model.safetensors
/// in `dtype`, and `tokenizer` copied as tokenizer.json, with a tokenizer_config.json
/// naming the generic tokenizer class unless the source has its own). `pad_id` goes into the config of
/// a fresh student; a student trained from the checkpoint `source` keeps that checkpoint's
/// config.json (its `model_type`, token ids, rope settings) and side files. `dtype`
/// `None`: the dtype the source came in, f32 for a fresh student.
pub fn write_checkpoint(
    student: &Student,
    arch: &StudentArch,
    dir: &Path,
    tokenizer: Option<&Path>,
    pad_id: Option<u32>,
    source: Option<&Path>,
    dtype: Option<ExportDtype>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let source_config: Option<Value> = match source {
        Some(src) => {
            let path = src.join("config.json");
            let bytes = crate::untrusted::read(&path, crate::untrusted::Cap::Settings)?;
            Some(serde_json::from_slice(&bytes).map_err(|e| cfg_err(src, format!("not valid JSON: {e}")))?)
        }
        None => None,
    };
    let dtype = dtype.unwrap_or_else(|| source_config.as_ref().map_or(ExportDtype::F32, ExportDtype::of_config));
    let mut t: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut config = match (student, arch) {
        (Student::Decoder(dec), StudentArch::Decoder(c)) => decoder::write(dec, c, &mut t, pad_id, source_config),
        (Student::Encoder(enc), StudentArch::Encoder(c)) => encoder::write(enc, c, &mut t, pad_id, source_config),
        _ => {
            return Err(Error::Config(format!(
                "only encoder and decoder students can be written as Hugging Face checkpoints (this one is {})",
                arch.kind_name()
            )));
        }
    };
    config["torch_dtype"] = serde_json::json!(dtype.torch_name());
    if config.get("dtype").is_some() {
        config["dtype"] = serde_json::json!(dtype.torch_name());
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = t.into_iter().map(|(name, (shape, v))| (name, shape, dtype.bytes(&v))).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(dtype.safetensors(), s.clone(), b).expect("shape matches bytes")))
        .collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let weights = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::io(dir.join(WEIGHTS_FILE), std::io::Error::other(e.to_string())))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &weights)?;
    write_atomic(&dir.join("config.json"), &serde_json::to_vec_pretty(&config).expect("serialises"))?;
    if let Some(tok) = tokenizer {
        let b = crate::untrusted::read(tok, crate::untrusted::Cap::Tokenizer)?;
        write_atomic(&dir.join("tokenizer.json"), &b)?;
    }
    for name in SIDE_FILES.iter().filter(|_| source.is_some()) {
        let from = source.expect("filtered").join(name);
        if from.is_file() {
            let b = crate::untrusted::read(&from, crate::untrusted::Cap::Tokenizer)?;
            write_atomic(&dir.join(name), &b)?;
        }
    }
    let tokenizer_config = dir.join("tokenizer_config.json");
    if tokenizer.is_some() && !tokenizer_config.is_file() {
        // Without one, AutoTokenizer reads tokenizer.json as the model type's tokenizer class
        // and adds that class's default special tokens (Llama's <s>, </s>, <unk>) as new ids
        // past the vocabulary; the generic class takes tokenizer.json as it is.
        write_atomic(&tokenizer_config, br#"{"tokenizer_class": "PreTrainedTokenizerFast"}"#)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::student::StudentSpec;
    use crate::student::decoder::RopeScaling;
    use burn::tensor::Int;
    use serde_json::json;

    fn dir_with_config(config: Value) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("temp dir");
        std::fs::write(d.path().join("config.json"), config.to_string()).expect("write config");
        d
    }

    /// The options of the small decoders people distil into, read as transformers reads
    /// them (values from the models' config.json files, widths shrunk).
    #[test]
    fn modern_decoder_configs_are_read_as_transformers_reads_them() {
        let read = |c: Value| match read_arch(dir_with_config(c).path()).unwrap() {
            StudentArch::Decoder(c) => c,
            other => panic!("{other:?}"),
        };
        // SmolLM2-135M: 9 heads over 3 K/V heads, tied.
        let c = read(json!({"model_type": "llama", "vocab_size": 64, "hidden_size": 36, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": true,
            "rope_theta": 100000.0, "rms_norm_eps": 1e-5}));
        assert_eq!((c.heads, c.kv_heads, c.head_dim, c.tie_embeddings, c.rope_theta), (9, Some(3), None, true, 100000.0));
        // Llama-3.2-1B: llama3 rope scaling, explicit head_dim equal to hidden / heads.
        let c = read(json!({"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"}}));
        assert_eq!(c.head_dim, None);
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Llama3 { factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_positions: 8192 })
        );
        // Qwen2.5-0.5B: Q/K/V biases; sliding window off.
        let c = read(json!({"model_type": "qwen2", "vocab_size": 64, "hidden_size": 28, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 14, "num_key_value_heads": 2, "sliding_window": 32768,
            "use_sliding_window": false, "max_window_layers": 21}));
        assert!(c.qkv_bias && !c.qk_norm && c.sliding_layers.is_empty() && c.sliding_window.is_none());
        // Qwen3-0.6B: head_dim 128 with 16 heads over a 1024 model width (here 16 x 4 over 32).
        let c = read(json!({"model_type": "qwen3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 4,
            "layer_types": ["full_attention", "full_attention"]}));
        assert!(c.qk_norm && !c.qkv_bias && c.head_dim == Some(4) && c.kv_heads == Some(8));
        // Mistral: a sliding window on every layer; yarn with its defaults.
        let c = read(json!({"model_type": "mistral", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1, "sliding_window": 16,
            "max_position_embeddings": 128, "rope_scaling": {"type": "yarn", "factor": 4.0}}));
        assert_eq!((c.sliding_layers.clone(), c.sliding_window), (vec![0, 1], Some(16)));
        // attention_factor = 0.1 * ln(4) + 1 (transformers' get_mscale), original = max_position_embeddings.
        match c.rope_scaling {
            Some(RopeScaling::Yarn { attention_factor, original_max_positions: 128, beta_fast, beta_slow, truncate: true, .. }) => {
                assert!((attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12 && beta_fast == 32.0 && beta_slow == 1.0)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unsupported_architectures_are_refused_naming_the_key() {
        let llama = |extra: Value| {
            let mut c = json!({"model_type": "llama", "vocab_size": 32, "hidden_size": 8, "intermediate_size": 16,
                               "num_hidden_layers": 1, "num_attention_heads": 2});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            read_arch(dir_with_config(c).path()).map(|_| ()).unwrap_err().to_string()
        };
        assert!(llama(json!({"num_key_value_heads": 3})).contains("not a multiple of num_key_value_heads = 3"));
        assert!(llama(json!({"attention_bias": true})).contains("`attention_bias` = true"));
        assert!(llama(json!({"rope_scaling": {"type": "longrope", "factor": 2.0}})).contains("rope_scaling type `longrope`"));
        assert!(llama(json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}})).contains("needs `low_freq_factor`"));
        assert!(llama(json!({"hidden_act": "gelu"})).contains("hidden_act = `gelu`"));
        assert!(llama(json!({"num_local_experts": 8})).contains("mixture-of-experts"));
        assert!(llama(json!({"partial_rotary_factor": 0.5})).contains("partial_rotary_factor"));
        let e = read_arch(dir_with_config(json!({"model_type": "gemma3"})).path()).unwrap_err().to_string();
        assert!(e.contains("model_type `gemma3` is not supported") && e.contains("config.json"), "{e}");
        let e = read_arch(dir_with_config(json!({"model_type": "bert", "hidden_size": 8})).path()).unwrap_err().to_string();
        assert!(e.contains("`num_attention_heads` is missing"), "{e}");
    }

    /// Write a random decoder and encoder as checkpoints, read them back: the same logits
    /// (to float rounding), and the architecture survives the config round trip.
    #[test]
    fn write_then_read_gives_the_same_model() {
        let device = Device::flex();
        device.seed(7);
        let archs = [
            StudentArch::resolve(
                &StudentSpec::Decoder { d_model: 16, layers: 4, heads: 4, d_ff: 24, kv_heads: Some(2) },
                &crate::student::CacheDims { outputs: 50, features: 0, tokens: 50, max_seq_len: 8 },
            ),
            StudentArch::resolve(
                &StudentSpec::Encoder { d_model: 16, layers: 2, heads: 2, d_ff: 24 },
                &crate::student::CacheDims { outputs: 3, features: 0, tokens: 50, max_seq_len: 8 },
            ),
        ];
        for arch in archs {
            let model = arch.init(&device);
            let d = tempfile::tempdir().unwrap();
            write_checkpoint(&model, &arch, d.path(), None, Some(0), None, None).unwrap();
            let back_arch = read_arch(d.path()).unwrap();
            assert_eq!(back_arch, arch);
            let (back, notes) = load_student(read_checkpoint(d.path()).unwrap(), &device).unwrap();
            assert!(notes.is_empty(), "{notes:?}");
            let tokens = || Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 2, 0, 3, 4, 0], [2, 4]), &device);
            let flat = |t: Tensor<2>| t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
            let (a, b) = match (&model, &back) {
                (Student::Decoder(x), Student::Decoder(y)) => {
                    (flat(x.forward(tokens(), &[4, 3]).reshape([8, 50])), flat(y.forward(tokens(), &[4, 3]).reshape([8, 50])))
                }
                (Student::Encoder(x), Student::Encoder(y)) => (flat(x.forward(tokens(), &[4, 3])), flat(y.forward(tokens(), &[4, 3]))),
                _ => panic!("kind changed"),
            };
            // The weights are the same f32 values, but a loaded Linear holds the transpose of
            // PyTorch's [out, in] layout, so the GEMM sums in another order: ~1e-7 apart.
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-5, "{}: max abs logit diff {worst}", arch.kind_name());
        }
    }
}

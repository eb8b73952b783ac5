//! Stage two's students (Burn modules): an MLP over numeric features and a Llama-style
//! decoder for causal LMs; how a student is specified, built, saved and loaded. The class
//! count / vocabulary always comes from the cache's manifest.

pub mod decoder;
pub mod mlp;

use std::path::Path;

use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

pub use decoder::{Decoder, DecoderConfig};
pub use mlp::{Mlp, MlpConfig};

use crate::error::{Error, Result};

/// A student of either kind.
#[derive(Module, Debug)]
pub enum Student {
    Mlp(Mlp),
    Decoder(Decoder),
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
    /// Llama-style causal decoder.
    Decoder {
        #[serde(default = "d64")]
        d_model: usize,
        #[serde(default = "d2")]
        layers: usize,
        #[serde(default = "d2")]
        heads: usize,
        #[serde(default = "d172")]
        d_ff: usize,
    },
}

fn default_hidden() -> Vec<usize> {
    vec![64]
}
fn d64() -> usize {
    64
}
fn d2() -> usize {
    2
}
fn d172() -> usize {
    172
}

impl StudentSpec {
    /// Parse `mlp:hidden=64,64` or `decoder:d_model=64,layers=2,heads=2,d_ff=172`.
    pub fn parse(s: &str) -> Result<StudentSpec> {
        let bad = |m: String| Error::Config(format!("--student `{s}`: {m}"));
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
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
            "decoder" => {
                let (mut d_model, mut layers, mut heads, mut d_ff) = (64, 2, 2, 172);
                for (k, v) in &pairs {
                    match k.as_str() {
                        "d_model" => d_model = num(v, k)?,
                        "layers" => layers = num(v, k)?,
                        "heads" => heads = num(v, k)?,
                        "d_ff" => d_ff = num(v, k)?,
                        other => return Err(bad(format!("unknown decoder key `{other}` (known: d_model, layers, heads, d_ff)"))),
                    }
                }
                Ok(StudentSpec::Decoder { d_model, layers, heads, d_ff })
            }
            other => Err(bad(format!("unknown student kind `{other}` (known: mlp, decoder)"))),
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
            StudentSpec::Decoder { d_model, layers, heads, d_ff } => {
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

/// The resolved architecture of a trained student, saved beside its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StudentArch {
    Mlp { input: usize, hidden: Vec<usize>, classes: usize },
    Decoder { vocab_size: usize, d_model: usize, layers: usize, heads: usize, d_ff: usize },
}

impl StudentArch {
    /// Resolve a spec against the cache: `width` is the feature count (MLP), `vocab` the
    /// class count or vocabulary.
    pub fn resolve(spec: &StudentSpec, width: usize, vocab: usize) -> StudentArch {
        match spec {
            StudentSpec::Mlp { hidden } => StudentArch::Mlp { input: width, hidden: hidden.clone(), classes: vocab },
            StudentSpec::Decoder { d_model, layers, heads, d_ff } => {
                StudentArch::Decoder { vocab_size: vocab, d_model: *d_model, layers: *layers, heads: *heads, d_ff: *d_ff }
            }
        }
    }

    /// Output classes / vocabulary.
    pub fn vocab(&self) -> usize {
        match self {
            StudentArch::Mlp { classes, .. } => *classes,
            StudentArch::Decoder { vocab_size, .. } => *vocab_size,
        }
    }

    pub fn init(&self, device: &Device) -> Student {
        match self {
            StudentArch::Mlp { input, hidden, classes } => Student::Mlp(MlpConfig::new(*input, hidden.clone(), *classes).init(device)),
            StudentArch::Decoder { vocab_size, d_model, layers, heads, d_ff } => Student::Decoder(
                DecoderConfig::new(*vocab_size)
                    .with_d_model(*d_model)
                    .with_layers(*layers)
                    .with_heads(*heads)
                    .with_d_ff(*d_ff)
                    .init(device),
            ),
        }
    }
}

/// Save weights in Burn's format (`.bpk`), keeping parameter ids for resuming.
pub fn save_burnpack(student: &Student, path: &Path) -> Result<()> {
    let mut store = BurnpackStore::from_file(path).overwrite(true).auto_extension(false);
    student.save_into(&mut store).map_err(|e| Error::io(path, std::io::Error::other(format!("{e:?}"))))
}

/// Load weights saved by [`save_burnpack`] into `student` (shapes are checked).
pub fn load_burnpack(student: &mut Student, path: &Path) -> Result<()> {
    let mut store = BurnpackStore::from_file(path).auto_extension(false);
    student
        .load_from(&mut store)
        .map(|_| ())
        .map_err(|e| Error::io(path, std::io::Error::other(format!("cannot load student weights: {e:?}"))))
}

/// Save weights as safetensors.
pub fn save_safetensors(student: &Student, path: &Path) -> Result<()> {
    let mut store = SafetensorsStore::from_file(path);
    student.save_into(&mut store).map_err(|e| Error::io(path, std::io::Error::other(format!("{e:?}"))))
}

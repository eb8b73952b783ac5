//! Pipeline settings: parsed (from a pipeline TOML file and/or the command line), then
//! validated into typed configs that the stages take. Errors name the key
//! (`cache.top_k must be >= 1`); unknown keys are errors, not silent defaults.

mod as_text;
mod cache;
mod generate;
mod onpolicy;
mod train;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::student::StudentSpec;

pub use cache::{CacheSettings, CacheTeacherConfig, LongSequences, Names, SoftLabels, Spin, TextConfig, TextPositions, TextSource, TopkIn};
pub use generate::{CACHE_DIR, COMPLETION_LOGPROBS, GENERATED_FILE, GenerateConfig, GenerateSettings, Generator, KvCache, PromptSource};
pub use onpolicy::{OnPolicyConfig, OnPolicySettings};
pub use train::{LossConfig, Schedule, TrainConfig, TrainDevice, TrainSettings};

/// The defaults of every setting, in one place.
pub mod defaults {
    pub use super::cache::defaults as cache;
    pub use super::generate::defaults as generate;
    pub use super::onpolicy::defaults as onpolicy;
    pub use super::train::defaults as train;
}

/// `flags` with every key it leaves unset (`null`, an empty list) taken from `file`: the
/// command line over a pipeline file, for any settings struct.
pub fn merge<T: Serialize + DeserializeOwned>(flags: T, file: T) -> T {
    let (serde_json::Value::Object(mut a), serde_json::Value::Object(b)) =
        (serde_json::to_value(flags).expect("settings serialise"), serde_json::to_value(file).expect("settings serialise"))
    else {
        unreachable!("settings are structs");
    };
    for (key, theirs) in b {
        let ours = a.entry(key).or_insert(serde_json::Value::Null);
        if ours.is_null() {
            *ours = theirs;
        }
    }
    serde_json::from_value(serde_json::Value::Object(a)).expect("merged settings deserialise")
}

/// A finite number from a flag (`nan` or `inf` would read as unset when merged with a
/// pipeline file).
fn finite<T: std::str::FromStr + Into<f64> + Copy>(s: &str) -> std::result::Result<T, String> {
    let v: T = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.into().is_finite() { Ok(v) } else { Err(format!("`{s}` is not a finite number")) }
}

fn finite_f32(s: &str) -> std::result::Result<f32, String> {
    finite(s)
}

fn finite_f64(s: &str) -> std::result::Result<f64, String> {
    finite(s)
}

/// A path given relative to `base` (a pipeline file's directory) made relative to the
/// working directory; absolute paths and URLs are kept.
fn relative_to(base: &Path) -> impl Fn(Option<PathBuf>) -> Option<PathBuf> + '_ {
    move |p| p.map(|p| if p.is_relative() && !crate::store::is_url(&p) { base.join(p) } else { p })
}

/// The shortest token sequence a text setting may allow: one token and the next.
pub const MIN_SEQ_LEN: usize = 2;

/// The cores this process may use: the default thread count.
fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Temperatures below this make `1 / T` times a logit overflow f32 (and the softmax NaN)
/// for logits of ordinary size; no distillation recipe uses one.
pub const MIN_TEMPERATURE: f32 = 1e-2;

fn check_temperature(key: &str, t: f32) -> Result<()> {
    if !(t.is_finite() && t >= MIN_TEMPERATURE) {
        return Err(Error::Config(format!(
            "{key} must be >= {MIN_TEMPERATURE} and finite (got {t}): smaller temperatures overflow the softmax"
        )));
    }
    Ok(())
}

/// `[eval]` of a pipeline file: held-out data and the seeds to average over.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSettings {
    /// Held-out data with the same columns as the training data.
    pub data: PathBuf,
    /// Seeds; each trains one distilled and one hard-label-only student (default: the
    /// `[train]` seed).
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
}

/// A pipeline file: the declarative form of an experiment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Stage one over the dataset as it is (the held-out data's columns, with `[generate]`).
    #[serde(default)]
    pub cache: CacheSettings,
    /// Stage one over completions the teacher writes (`distill generate`), in place of
    /// caching the dataset's own.
    pub generate: Option<GenerateSettings>,
    /// The student's architecture.
    pub student: Option<StudentSpec>,
    /// Stage two.
    pub train: Option<TrainSettings>,
    /// Evaluation of teacher, distilled and hard-label-only students.
    pub eval: Option<EvalSettings>,
    /// Rounds of on-policy distillation after each seed's distilled student.
    pub onpolicy: Option<OnPolicySettings>,
}

impl PipelineFile {
    /// Parse a pipeline file; relative paths in it are resolved against its directory.
    pub fn load(path: &Path) -> Result<PipelineFile> {
        let text = crate::untrusted::read_to_string(path, crate::untrusted::Cap::Settings)?;
        let raw: toml::Table =
            toml::from_str(&text).map_err(|e| Error::PipelineFile { path: path.to_path_buf(), message: e.to_string() })?;
        check_values(&raw, "").map_err(|message| Error::PipelineFile { path: path.to_path_buf(), message })?;
        let mut file: PipelineFile =
            toml::from_str(&text).map_err(|e| Error::PipelineFile { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.cache = file.cache.relative_to(base);
        file.generate = file.generate.map(|g| g.relative_to(base));
        file.train = file.train.map(|t| t.relative_to(base));
        file.onpolicy = file.onpolicy.map(|o| o.relative_to(base));
        if let Some(StudentSpec::Hf { path: p }) = &mut file.student
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        if let Some(e) = &mut file.eval
            && e.data.is_relative()
        {
            e.data = base.join(&e.data);
        }
        Ok(file)
    }

    /// Stage one's `[cache]`: with `[generate]` it describes how the held-out data is read
    /// for the teacher's metrics, its teacher, tokenizer and directory taken from
    /// `[generate]` where unset.
    pub fn cache_settings(&self) -> CacheSettings {
        let c = self.cache.clone();
        let Some(g) = &self.generate else { return c };
        CacheSettings {
            teacher: c.teacher.or(g.teacher.clone()),
            tokenizer: c.tokenizer.or(g.tokenizer.clone()),
            data: c.data.or(g.data.clone()),
            out: c.out.or(g.out.as_ref().map(|o| o.join(CACHE_DIR))),
            ..c
        }
    }

    /// `[train]`, training on what stage one made unless it names a cache and data:
    /// `[cache]`'s, or `[generate]`'s cache and generated dataset.
    pub fn train_settings(&self) -> TrainSettings {
        let t = self.train.clone().unwrap_or_default();
        let (cache, data) = match self.generate.as_ref().and_then(|g| g.out.as_ref()) {
            Some(out) => (Some(out.join(CACHE_DIR)), Some(out.join(GENERATED_FILE))),
            None => (self.cache.out.clone(), self.cache.data.clone()),
        };
        TrainSettings { cache: t.cache.clone().or(cache), data: t.data.clone().or(data), ..t }
    }
}

/// The keys of a pipeline file that name files or directories.
const PATH_KEYS: [&str; 6] = ["teacher", "tokenizer", "data", "out", "cache", "chat_template"];

/// Values the typed settings cannot tell from a real choice, refused as written: a number
/// that is NaN or infinite (settings pass through JSON, where it would become "unset" and
/// so the default), and an empty path (it would resolve to the pipeline's own directory).
fn check_values(table: &toml::Table, at: &str) -> std::result::Result<(), String> {
    for (key, value) in table {
        let name = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
        match value {
            toml::Value::Float(x) if !x.is_finite() => return Err(format!("`{name} = {x}` is not a finite number")),
            toml::Value::String(s) if s.trim().is_empty() && PATH_KEYS.contains(&key.as_str()) => {
                return Err(format!("`{name}` is empty: give a file or directory"));
            }
            toml::Value::Table(t) => check_values(t, &name)?,
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(t) = item {
                        check_values(t, &name)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    /// NaN and infinite numbers and empty paths in a pipeline file are refused by name.
    #[test]
    fn pipeline_values_that_would_become_defaults_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("p.toml");
        for (body, want) in [
            ("[cache]\ntemperature = nan\n", "`cache.temperature = NaN` is not a finite number"),
            ("[train]\nlr = inf\n", "`train.lr = inf` is not a finite number"),
            ("[train]\nalpha = -inf\n", "`train.alpha = -inf` is not a finite number"),
            ("[train]\nout = \"\"\n", "`train.out` is empty"),
        ] {
            std::fs::write(&p, body).unwrap();
            let e = PipelineFile::load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
    }

    /// Settings written as text and counts are refused when the file is read, with the key,
    /// the value and what it should be.
    #[test]
    fn malformed_settings_are_refused_where_the_file_is_read() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("p.toml");
        for (body, want) in [
            ("[cache]\ntop_k = 0\n", &["top_k", "nonzero"][..]),
            (
                "[cache]\nsoft_labels = \"sampled:0\"\n",
                &["soft_labels", "must be `topk`, `sampled:N` or `topk+sampled:K,N`", "`sampled:0`"],
            ),
            ("[cache]\ndevice = \"gpu\"\n", &["device", "must be `cpu`, `cuda` or `cuda:N` (got `gpu`)"]),
            ("[cache]\nshard = \"2/2\"\n", &["shard", "must be I/N with 0 <= I < N (got `2/2`)"]),
            ("[cache]\nhidden_states = \"a,a\"\n", &["hidden_states", "names `a` twice"]),
            ("[train]\ndevice = \"gpu\"\n", &["device", "must be `flex`, `tch` or `tch-cuda[:N]`"]),
            ("[train]\ndivergence = \"jsd:2\"\n", &["divergence", "strictly between 0 and 1"]),
            ("[train]\ntrain = \"last:0\"\n", &["train", "expected last:N with N >= 1"]),
            ("[train]\nhidden_layers = \"x:pooled\"\n", &["hidden_layers", "`x:pooled` is not LAYER:OUTPUT"]),
            ("[train]\ncheckpoint_every = 0\n", &["checkpoint_every", "nonzero"]),
            ("[generate]\nsamples_per_prompt = 0\n", &["samples_per_prompt", "nonzero"]),
        ] {
            std::fs::write(&p, body).unwrap();
            let e = PipelineFile::load(&p).unwrap_err().to_string();
            assert!(want.iter().all(|w| e.contains(w)), "{body}: {e}");
        }
    }

    fn base() -> CacheSettings {
        CacheSettings { teacher: Some("t.onnx".into()), data: Some("d.jsonl".into()), out: Some("o".into()), ..Default::default() }
    }

    #[test]
    fn errors_name_the_key() {
        let e = CacheSettings { temperature: Some(0.0), ..base() }.validate().unwrap_err().to_string();
        assert!(e.contains("cache.temperature must be >= 0.01"), "{e}");
        let e = CacheSettings { teacher: None, ..base() }.validate().unwrap_err().to_string();
        assert!(e.contains("cache.teacher is required"), "{e}");
        let e = CacheSettings { text_column: Some("t".into()), ..base() }.validate().unwrap_err().to_string();
        assert!(e.contains("cache.tokenizer is required"), "{e}");
    }

    #[test]
    fn prompt_completion_defaults_to_completion_positions() {
        let c = CacheSettings {
            tokenizer: Some("tok.json".into()),
            prompt_column: Some("prompt".into()),
            completion_column: Some("completion".into()),
            ..base()
        }
        .validate()
        .unwrap();
        assert_eq!(c.text.unwrap().positions, crate::cache::Positions::Completion);
    }

    #[test]
    fn spin_is_on_only_with_cores_to_spare_unless_given() {
        let spin = |spin: Option<Spin>, threads: usize| {
            CacheSettings { spin, threads: NonZeroUsize::new(threads), ..base() }.validate().map(|c| c.spin)
        };
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert!(!spin(None, 1).unwrap(), "one thread has no workers to spin");
        assert!(!spin(None, 2).unwrap(), "too few workers for spinning to pay");
        assert_eq!(spin(None, 4).unwrap(), cores >= 8);
        assert!(!spin(None, cores).unwrap(), "all cores busy with the teacher: the top-k needs some");
        assert!(spin(Some(Spin::On), 2).unwrap());
        assert!(!spin(Some(Spin::Off), 2).unwrap());
        let e = toml::from_str::<PipelineFile>("[cache]\nspin = \"yes\"\n").unwrap_err().to_string();
        assert!(e.contains("spin") && e.contains("`auto`, `on`, `off`"), "{e}");
    }

    /// A flag overrides the file's key; keys the flags leave unset (including an empty
    /// `--input` list) come from the file.
    #[test]
    fn flags_override_the_file_key_by_key() {
        let file =
            CacheSettings { top_k: NonZeroUsize::new(8), temperature: Some(2.0), inputs: vec![("x".into(), "pixels".into())], ..base() };
        let flags =
            CacheSettings { top_k: NonZeroUsize::new(16), soft_labels: Some("topk+sampled:2,6".parse().unwrap()), ..Default::default() };
        let m = merge(flags, file.clone());
        assert_eq!((m.top_k, m.temperature, m.teacher.clone()), (NonZeroUsize::new(16), Some(2.0), file.teacher.clone()));
        assert_eq!(m.soft_labels, Some(SoftLabels::Sampled { exact_top: 2, draws: 6 }));
        assert_eq!(m.inputs, file.inputs);
        let t = merge(
            TrainSettings { tail: Some(crate::loss::TailMode::Renormalize), ..Default::default() },
            TrainSettings { lr: Some(0.1), ..Default::default() },
        );
        assert_eq!((t.tail, t.lr), (Some(crate::loss::TailMode::Renormalize), Some(0.1)));
    }

    /// Each `[default: X]` that a flag's help states is the default that validation uses.
    #[test]
    fn help_states_the_defaults_validation_uses() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cache {
            #[command(flatten)]
            s: CacheSettings,
        }
        #[derive(clap::Parser)]
        struct Train {
            #[command(flatten)]
            s: TrainSettings,
        }
        let help = |cmd: clap::Command, id: &str| -> String {
            cmd.get_arguments().find(|a| a.get_id() == id).and_then(|a| a.get_help()).map(|h| h.to_string()).unwrap_or_default()
        };
        use defaults::{cache as c, train as t};
        let cache = [
            ("top_k", c::TOP_K.to_string()),
            ("temperature", c::TEMPERATURE.to_string()),
            ("batch_size", c::BATCH_SIZE.to_string()),
            ("rows_per_shard", c::ROWS_PER_SHARD.to_string()),
            ("max_seq_len", c::MAX_SEQ_LEN.to_string()),
        ];
        for (id, v) in cache {
            let h = help(Cache::command(), id);
            assert!(h.contains(&format!("[default: {v}")), "--{id}: {h}");
        }
        let train = [
            ("alpha", t::ALPHA.to_string()),
            ("batch_size", t::BATCH_SIZE.to_string()),
            ("weight_decay", t::WEIGHT_DECAY.to_string()),
            ("seed", t::SEED.to_string()),
            ("checkpoint_every", t::CHECKPOINT_EVERY.to_string()),
            ("shuffle_window", t::SHUFFLE_WINDOW.to_string()),
            ("prepared_rows_mb", t::PREPARED_ROWS_MB.to_string()),
        ];
        for (id, v) in train {
            let h = help(Train::command(), id);
            assert!(h.contains(&format!("[default: {v}]")), "--{id}: {h}");
        }
        // Defaults that depend on the student: the help says each one.
        let (epochs, lr) = (help(Train::command(), "epochs"), help(Train::command(), "lr"));
        assert!(
            epochs.contains(&format!("[default: {},", t::EPOCHS)) && epochs.contains(&format!("make {} steps", t::MIN_CLASSIFIER_STEPS)),
            "{epochs}"
        );
        assert!(
            lr.contains(&format!("[default: {:e} for a fresh", t::LR)) && lr.contains(&format!("{:e} for --student hf:", t::LR_PRETRAINED)),
            "{lr}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = toml::from_str::<PipelineFile>("[cache]\ntop_kk = 3\n").unwrap_err().to_string();
        assert!(e.contains("top_kk"), "{e}");
    }
}

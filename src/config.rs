//! Pipeline settings: parsed (from a pipeline TOML file and/or the command line), then
//! validated into typed configs that the stages take. Errors name the key
//! (`cache.top_k must be >= 1`); unknown keys are errors, not silent defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::{LogprobEncoding, Positions};
use crate::error::{Error, Result};
use crate::loss::TailMode;
use crate::student::StudentSpec;

/// `[cache]` of a pipeline file, or the flags of `cache-teacher`: every key optional
/// until validation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// The frozen teacher, an ONNX model.
    pub teacher: Option<PathBuf>,
    /// Training data: a `.parquet`, `.jsonl`, `.jsonl.gz` or `.jsonl.zst` file, a directory
    /// of them or a glob.
    pub data: Option<PathBuf>,
    /// Output cache directory.
    pub out: Option<PathBuf>,
    /// `tokenizer.json` for text data.
    pub tokenizer: Option<PathBuf>,
    pub text_column: Option<String>,
    pub prompt_column: Option<String>,
    pub completion_column: Option<String>,
    /// Column of conversations (`[{role, content}, ...]`), rendered with the chat template.
    pub messages_column: Option<String>,
    /// The chat template: a `.jinja` file or a `tokenizer_config.json` (default: the one
    /// beside the tokenizer).
    pub chat_template: Option<PathBuf>,
    /// Hard-label column of classification data (default `label`, when present).
    pub label_column: Option<String>,
    /// `completion` (default with prompt/completion), `assistant` (default with
    /// conversations) or `all`.
    pub positions: Option<String>,
    pub top_k: Option<usize>,
    pub temperature: Option<f32>,
    pub batch_size: Option<usize>,
    pub rows_per_shard: Option<u64>,
    pub max_seq_len: Option<usize>,
    /// `truncate` (default, with a warning and a count) or `refuse`.
    pub long_sequences: Option<String>,
    /// ONNX input name -> dataset column, for numeric models whose names differ.
    pub inputs: Option<BTreeMap<String, String>>,
    /// ONNX output holding the logits (default `logits`, else the first output).
    pub output: Option<String>,
    /// `delta_u16` (default) or `f32`.
    pub logprob_encoding: Option<String>,
    pub threads: Option<usize>,
    /// ONNX Runtime's intra-op threads spin-wait between operators: `auto` (default: with 4
    /// or more threads on a machine with at least twice `threads` cores), `on` or `off`.
    pub spin: Option<String>,
    /// Where the teacher runs: `cpu` (default), `cuda` or `cuda:N` (onnxruntime-gpu).
    pub device: Option<String>,
    /// `I/N`: compute only the shards `j` with `j % N == I` (one worker of N).
    pub shard: Option<String>,
}

impl CacheSettings {
    /// Fill every key that `self` leaves unset from `other` (command line over file).
    pub fn or(self, other: CacheSettings) -> CacheSettings {
        CacheSettings {
            teacher: self.teacher.or(other.teacher),
            data: self.data.or(other.data),
            out: self.out.or(other.out),
            tokenizer: self.tokenizer.or(other.tokenizer),
            text_column: self.text_column.or(other.text_column),
            prompt_column: self.prompt_column.or(other.prompt_column),
            completion_column: self.completion_column.or(other.completion_column),
            messages_column: self.messages_column.or(other.messages_column),
            chat_template: self.chat_template.or(other.chat_template),
            label_column: self.label_column.or(other.label_column),
            positions: self.positions.or(other.positions),
            top_k: self.top_k.or(other.top_k),
            temperature: self.temperature.or(other.temperature),
            batch_size: self.batch_size.or(other.batch_size),
            rows_per_shard: self.rows_per_shard.or(other.rows_per_shard),
            max_seq_len: self.max_seq_len.or(other.max_seq_len),
            long_sequences: self.long_sequences.or(other.long_sequences),
            inputs: self.inputs.or(other.inputs),
            output: self.output.or(other.output),
            logprob_encoding: self.logprob_encoding.or(other.logprob_encoding),
            threads: self.threads.or(other.threads),
            spin: self.spin.or(other.spin),
            device: self.device.or(other.device),
            shard: self.shard.or(other.shard),
        }
    }

    /// Resolve relative paths against `base` (a pipeline file's directory).
    pub fn relative_to(mut self, base: &Path) -> CacheSettings {
        let fix = |p: Option<PathBuf>| p.map(|p| if p.is_relative() && !crate::store::is_url(&p) { base.join(p) } else { p });
        self.teacher = fix(self.teacher);
        self.data = fix(self.data);
        self.out = fix(self.out);
        self.tokenizer = fix(self.tokenizer);
        self.chat_template = fix(self.chat_template);
        self
    }

    /// Check every key and produce the typed config.
    pub fn validate(self) -> Result<CacheTeacherConfig> {
        let need = |v: Option<PathBuf>, key: &str, flag: &str| {
            v.ok_or_else(|| Error::Config(format!("cache.{key} is required (--{flag} or `{key}` in the pipeline's [cache])")))
        };
        let teacher = need(self.teacher.clone(), "teacher", "teacher")?;
        let data = need(self.data.clone(), "data", "data")?;
        let out = need(self.out.clone(), "out", "out")?;

        let temperature = self.temperature.unwrap_or(1.0);
        check_temperature("cache.temperature", temperature)?;
        if self.top_k == Some(0) {
            return Err(Error::Config("cache.top_k must be >= 1".into()));
        }
        let batch_size = self.batch_size.unwrap_or(32);
        if batch_size == 0 {
            return Err(Error::Config("cache.batch_size must be >= 1".into()));
        }
        let rows_per_shard = self.rows_per_shard.unwrap_or(1024);
        if rows_per_shard == 0 {
            return Err(Error::Config("cache.rows_per_shard must be >= 1".into()));
        }
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = self.threads.unwrap_or(cores);
        if threads == 0 {
            return Err(Error::Config("cache.threads must be >= 1".into()));
        }
        // The top-k runs on `threads` threads of its own while the teacher computes the next
        // batch: spinning ORT workers would take those cores from it unless there are enough.
        // Measured on 16 cores: spinning gained 5-10 % at 4 and 8 threads, lost ~7 % at 2.
        let spin = match self.spin.as_deref().unwrap_or("auto") {
            "auto" => threads >= 4 && cores >= 2 * threads,
            "on" => true,
            "off" => false,
            other => return Err(Error::Config(format!("cache.spin must be `auto`, `on` or `off` (got `{other}`)"))),
        };
        let device = match self.device.as_deref() {
            None => crate::teacher::TeacherDevice::Cpu,
            Some(d) => crate::teacher::TeacherDevice::parse(d)
                .ok_or_else(|| Error::Config(format!("cache.device must be `cpu`, `cuda` or `cuda:N` (got `{d}`)")))?,
        };
        let encoding = match self.logprob_encoding.as_deref().unwrap_or("delta_u16") {
            "delta_u16" => LogprobEncoding::DeltaU16,
            "f32" => LogprobEncoding::F32,
            other => return Err(Error::Config(format!("cache.logprob_encoding must be `delta_u16` or `f32` (got `{other}`)"))),
        };

        let any_text = self.text_column.is_some()
            || self.prompt_column.is_some()
            || self.completion_column.is_some()
            || self.messages_column.is_some();
        if self.chat_template.is_some() && self.messages_column.is_none() && self.prompt_column.is_none() {
            return Err(Error::Config(
                "cache.chat_template applies to conversations only (--messages-column, or conversational --prompt-column/--completion-column)".into(),
            ));
        }
        let text = match (&self.tokenizer, any_text) {
            (None, false) => None,
            (None, true) => {
                return Err(Error::Config("cache.tokenizer is required with text columns (--tokenizer tokenizer.json)".into()));
            }
            (Some(tok), _) => {
                let source = match (&self.messages_column, &self.text_column, &self.prompt_column, &self.completion_column) {
                    (Some(m), None, None, None) => TextSource::Messages(m.clone()),
                    (Some(_), ..) => {
                        return Err(Error::Config(
                            "cache.messages_column cannot be combined with text_column or prompt_column/completion_column".into(),
                        ));
                    }
                    (None, Some(t), None, None) => TextSource::Text(t.clone()),
                    (None, None, Some(p), Some(c)) => TextSource::PromptCompletion { prompt: p.clone(), completion: c.clone() },
                    (None, None, None, None) => TextSource::Text("text".into()),
                    (None, Some(_), _, _) => {
                        return Err(Error::Config("cache.text_column cannot be combined with prompt_column/completion_column".into()));
                    }
                    _ => return Err(Error::Config("cache.prompt_column and cache.completion_column go together".into())),
                };
                let positions = match (self.positions.as_deref(), &source) {
                    (None | Some("completion"), TextSource::PromptCompletion { .. }) => Positions::Completion,
                    (None | Some("assistant"), TextSource::Messages(_)) => Positions::Assistant,
                    (Some("completion"), _) => {
                        return Err(Error::Config("cache.positions = \"completion\" needs prompt_column and completion_column".into()));
                    }
                    (Some("assistant"), _) => {
                        return Err(Error::Config("cache.positions = \"assistant\" needs messages_column (conversations)".into()));
                    }
                    (None, TextSource::Text(_)) | (Some("all"), _) => Positions::All,
                    (Some(other), _) => {
                        return Err(Error::Config(format!("cache.positions must be `completion`, `assistant` or `all` (got `{other}`)")));
                    }
                };
                let max_seq_len = self.max_seq_len.unwrap_or(512);
                if max_seq_len < 2 {
                    return Err(Error::Config("cache.max_seq_len must be >= 2".into()));
                }
                let long = match self.long_sequences.as_deref().unwrap_or("truncate") {
                    "truncate" => LongSequences::Truncate,
                    "refuse" => LongSequences::Refuse,
                    other => return Err(Error::Config(format!("cache.long_sequences must be `truncate` or `refuse` (got `{other}`)"))),
                };
                Some(TextConfig { tokenizer: tok.clone(), source, positions, max_seq_len, long, chat_template: self.chat_template.clone() })
            }
        };
        if text.is_none() && self.positions.is_some() {
            return Err(Error::Config("cache.positions applies to text data only".into()));
        }
        let part = match self.shard.as_deref() {
            None => None,
            Some(s) => {
                let parsed = s.split_once('/').and_then(|(i, n)| Some((i.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?)));
                match parsed {
                    Some((index, count)) if count >= 1 && index < count => Some(crate::cache::manifest::PartInfo { index, count }),
                    _ => return Err(Error::Config(format!("cache.shard must be I/N with 0 <= I < N (got `{s}`)"))),
                }
            }
        };
        let mut given = self.clone();
        given.shard = None; // every worker of a sharded capture records the same settings
        let settings = serde_json::to_value(&given).expect("settings serialise");
        Ok(CacheTeacherConfig {
            teacher,
            data,
            out,
            text,
            label_column: self.label_column.clone(),
            top_k: self.top_k,
            temperature,
            batch_size,
            rows_per_shard,
            inputs: self.inputs.clone().unwrap_or_default().into_iter().collect(),
            output: self.output.clone(),
            encoding,
            threads,
            spin,
            device,
            part,
            settings,
        })
    }
}

/// Where the text comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TextSource {
    Text(String),
    PromptCompletion {
        prompt: String,
        completion: String,
    },
    /// A column of conversations, rendered with the chat template.
    Messages(String),
}

/// What to do with a sequence longer than `max_seq_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongSequences {
    Truncate,
    Refuse,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub tokenizer: PathBuf,
    pub source: TextSource,
    pub positions: Positions,
    pub max_seq_len: usize,
    pub long: LongSequences,
    /// An explicit chat template (conversations); else the one beside the tokenizer.
    pub chat_template: Option<PathBuf>,
}

/// Validated settings of stage one.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheTeacherConfig {
    pub teacher: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    pub text: Option<TextConfig>,
    pub label_column: Option<String>,
    /// `None`: 64, or every class when the teacher has fewer.
    pub top_k: Option<usize>,
    pub temperature: f32,
    pub batch_size: usize,
    pub rows_per_shard: u64,
    pub inputs: Vec<(String, String)>,
    pub output: Option<String>,
    pub encoding: LogprobEncoding,
    pub threads: usize,
    /// Whether ONNX Runtime's intra-op threads spin-wait between operators.
    pub spin: bool,
    /// Where the teacher runs.
    pub device: crate::teacher::TeacherDevice,
    /// This worker's slice of a sharded capture.
    pub part: Option<crate::cache::manifest::PartInfo>,
    /// The settings as given (for the manifest).
    pub settings: serde_json::Value,
}

/// `[train]` of a pipeline file, or the flags of `train-student`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// The cache from stage one (default in a pipeline: `[cache].out`).
    pub cache: Option<PathBuf>,
    /// Training data, the file the cache was made from (default: `[cache].data`).
    pub data: Option<PathBuf>,
    /// Run directory.
    pub out: Option<PathBuf>,
    /// tokenizer.json (default: the copy inside the cache).
    pub tokenizer: Option<PathBuf>,
    /// Weight of the distillation term, 0..=1 (0 = hard labels only).
    pub alpha: Option<f32>,
    /// Training temperature (default: the cache's).
    pub temperature: Option<f32>,
    /// `bucket` (default) or `renormalize`.
    pub tail: Option<String>,
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps (overrides epochs).
    pub steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    pub seed: Option<u64>,
    /// `flex` (pure-Rust CPU, default), `tch` (libtorch CPU) or `tch-cuda[:N]`.
    pub device: Option<String>,
    pub checkpoint_every: Option<usize>,
    /// Train on the first N dataset rows only (a small labelled set).
    pub max_rows: Option<u64>,
    /// Use only the first k cached entries of each position (k <= the cache's top_k); the
    /// dropped entries' mass joins the tail.
    pub top_k: Option<usize>,
    /// Shards whose rows are shuffled together (default 4): a larger window mixes rows from
    /// farther apart in the data (a file sorted by class or source needs one) at the cost of
    /// holding that many shards in memory.
    pub shuffle_window: Option<usize>,
    /// Megabytes of prepared rows (token ids, or feature vectors) kept between epochs
    /// (default 64): a cache larger than the shuffle window is then tokenized once, not once
    /// per epoch. 0 prepares every epoch afresh. Results do not depend on it.
    pub prepared_rows_mb: Option<usize>,
}

impl TrainSettings {
    pub fn or(self, o: TrainSettings) -> TrainSettings {
        TrainSettings {
            cache: self.cache.or(o.cache),
            data: self.data.or(o.data),
            out: self.out.or(o.out),
            tokenizer: self.tokenizer.or(o.tokenizer),
            alpha: self.alpha.or(o.alpha),
            temperature: self.temperature.or(o.temperature),
            tail: self.tail.or(o.tail),
            epochs: self.epochs.or(o.epochs),
            steps: self.steps.or(o.steps),
            batch_size: self.batch_size.or(o.batch_size),
            lr: self.lr.or(o.lr),
            weight_decay: self.weight_decay.or(o.weight_decay),
            seed: self.seed.or(o.seed),
            device: self.device.or(o.device),
            checkpoint_every: self.checkpoint_every.or(o.checkpoint_every),
            max_rows: self.max_rows.or(o.max_rows),
            top_k: self.top_k.or(o.top_k),
            shuffle_window: self.shuffle_window.or(o.shuffle_window),
            prepared_rows_mb: self.prepared_rows_mb.or(o.prepared_rows_mb),
        }
    }

    pub fn relative_to(mut self, base: &Path) -> TrainSettings {
        let fix = |p: Option<PathBuf>| p.map(|p| if p.is_relative() && !crate::store::is_url(&p) { base.join(p) } else { p });
        self.cache = fix(self.cache);
        self.data = fix(self.data);
        self.out = fix(self.out);
        self.tokenizer = fix(self.tokenizer);
        self
    }

    pub fn validate(self, student: StudentSpec) -> Result<TrainConfig> {
        let need = |v: Option<PathBuf>, key: &str| {
            v.ok_or_else(|| Error::Config(format!("train.{key} is required (--{key} or `{key}` in the pipeline's [train])")))
        };
        let alpha = self.alpha.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&alpha) {
            return Err(Error::Config(format!("train.alpha must be in 0..=1 (got {alpha})")));
        }
        if let Some(t) = self.temperature {
            check_temperature("train.temperature", t)?;
        }
        let tail = match self.tail.as_deref().unwrap_or("bucket") {
            "bucket" => TailMode::Bucket,
            "renormalize" | "renormalise" => TailMode::Renormalize,
            other => return Err(Error::Config(format!("train.tail must be `bucket` or `renormalize` (got `{other}`)"))),
        };
        let batch_size = self.batch_size.unwrap_or(32);
        if batch_size == 0 {
            return Err(Error::Config("train.batch_size must be >= 1".into()));
        }
        let lr = self.lr.unwrap_or(1e-3);
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(Error::Config(format!("train.lr must be > 0 (got {lr})")));
        }
        let weight_decay = self.weight_decay.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&weight_decay) {
            return Err(Error::Config(format!("train.weight_decay must be in 0..=1 (got {weight_decay})")));
        }
        if self.checkpoint_every == Some(0) {
            return Err(Error::Config("train.checkpoint_every must be >= 1 (steps)".into()));
        }
        if self.max_rows == Some(0) {
            return Err(Error::Config("train.max_rows must be >= 1 (rows of the cache to train on)".into()));
        }
        let epochs = self.epochs.unwrap_or(10);
        if epochs == 0 || self.steps == Some(0) {
            return Err(Error::Config("train.epochs and train.steps must be >= 1".into()));
        }
        let device = TrainDevice::parse(self.device.as_deref().unwrap_or("flex"))?;
        student.validate()?;
        Ok(TrainConfig {
            cache: need(self.cache.clone(), "cache")?,
            data: need(self.data.clone(), "data")?,
            out: need(self.out.clone(), "out")?,
            tokenizer: self.tokenizer.clone(),
            student,
            alpha,
            temperature: self.temperature,
            tail,
            epochs,
            steps: self.steps,
            batch_size,
            lr,
            weight_decay,
            seed: self.seed.unwrap_or(0),
            device,
            checkpoint_every: self.checkpoint_every.unwrap_or(200),
            max_rows: self.max_rows,
            top_k: match self.top_k {
                Some(0) => return Err(Error::Config("train.top_k must be >= 1".into())),
                k => k,
            },
            shuffle_window: match self.shuffle_window {
                Some(0) => return Err(Error::Config("train.shuffle_window must be >= 1 (shards)".into())),
                w => w.unwrap_or(4),
            },
            prepared_rows_mb: self.prepared_rows_mb.unwrap_or(64),
        })
    }
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

/// Where the student trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainDevice {
    /// Burn's pure-Rust CPU backend.
    Flex,
    /// libtorch on the CPU (cargo feature `tch`).
    Tch,
    /// libtorch on CUDA device N (cargo feature `tch`).
    TchCuda(usize),
}

impl TrainDevice {
    pub fn parse(s: &str) -> Result<TrainDevice> {
        match s {
            "flex" | "cpu" => Ok(TrainDevice::Flex),
            "tch" => Ok(TrainDevice::Tch),
            "tch-cuda" | "cuda" => Ok(TrainDevice::TchCuda(0)),
            s if s.starts_with("tch-cuda:") || s.starts_with("cuda:") => s
                .split_once(':')
                .and_then(|(_, n)| n.parse().ok())
                .map(TrainDevice::TchCuda)
                .ok_or_else(|| Error::Config(format!("train.device `{s}`: expected tch-cuda:N"))),
            other => Err(Error::Config(format!("train.device must be `flex`, `tch` or `tch-cuda[:N]` (got `{other}`)"))),
        }
    }
}

/// Validated settings of stage two.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub cache: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub student: StudentSpec,
    pub alpha: f32,
    pub temperature: Option<f32>,
    pub tail: TailMode,
    pub epochs: usize,
    pub steps: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub device: TrainDevice,
    pub checkpoint_every: usize,
    pub max_rows: Option<u64>,
    pub top_k: Option<usize>,
    /// Shards shuffled together.
    pub shuffle_window: usize,
    /// Megabytes of prepared rows kept between epochs.
    pub prepared_rows_mb: usize,
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
    /// Stage one.
    pub cache: CacheSettings,
    /// The student's architecture.
    pub student: Option<StudentSpec>,
    /// Stage two.
    pub train: Option<TrainSettings>,
    /// Evaluation of teacher, distilled and hard-label-only students.
    pub eval: Option<EvalSettings>,
}

impl PipelineFile {
    /// Parse a pipeline file; relative paths in it are resolved against its directory.
    pub fn load(path: &Path) -> Result<PipelineFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut file: PipelineFile =
            toml::from_str(&text).map_err(|e| Error::PipelineFile { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.cache = file.cache.relative_to(base);
        file.train = file.train.map(|t| t.relative_to(base));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> CacheSettings {
        CacheSettings { teacher: Some("t.onnx".into()), data: Some("d.jsonl".into()), out: Some("o".into()), ..Default::default() }
    }

    #[test]
    fn errors_name_the_key() {
        let e = CacheSettings { temperature: Some(0.0), ..base() }.validate().unwrap_err().to_string();
        assert!(e.contains("cache.temperature must be >= 0.01"), "{e}");
        let e = CacheSettings { top_k: Some(0), ..base() }.validate().unwrap_err().to_string();
        assert!(e.contains("cache.top_k must be >= 1"), "{e}");
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
        assert_eq!(c.text.unwrap().positions, Positions::Completion);
    }

    #[test]
    fn spin_is_on_only_with_cores_to_spare_unless_given() {
        let spin = |spin: Option<&str>, threads: usize| {
            CacheSettings { spin: spin.map(str::to_string), threads: Some(threads), ..base() }.validate().map(|c| c.spin)
        };
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert!(!spin(None, 1).unwrap(), "one thread has no workers to spin");
        assert!(!spin(None, 2).unwrap(), "too few workers for spinning to pay");
        assert_eq!(spin(None, 4).unwrap(), cores >= 8);
        assert!(!spin(None, cores).unwrap(), "all cores busy with the teacher: the top-k needs some");
        assert!(spin(Some("on"), 2).unwrap());
        assert!(!spin(Some("off"), 2).unwrap());
        let e = spin(Some("yes"), 2).unwrap_err().to_string();
        assert!(e.contains("cache.spin must be `auto`, `on` or `off` (got `yes`)"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = toml::from_str::<PipelineFile>("[cache]\ntop_kk = 3\n").unwrap_err().to_string();
        assert!(e.contains("top_kk"), "{e}");
    }
}

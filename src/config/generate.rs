//! `distill generate`'s settings (flags, or a pipeline file's `[generate]`), validated.

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The generated dataset's file in a generate run's `--out`.
pub const GENERATED_FILE: &str = "generated.parquet";
/// The cache of the generated positions in a generate run's `--out`.
pub const CACHE_DIR: &str = "cache";
/// The generated dataset's column of a student generator's log-prob at temperature 1 of
/// each completion token (`generate --student`; read by `--divergence sampled-rkl`).
pub const COMPLETION_LOGPROBS: &str = "completion_logprobs";

/// The defaults of `generate`.
pub mod defaults {
    pub const PROMPT_COLUMN: &str = "prompt";
    pub const MAX_NEW_TOKENS: usize = 64;
    /// Entries cached per generated position: the same as stage one's.
    pub const CACHE_TOP_K: usize = crate::config::defaults::cache::TOP_K;
    pub const BATCH_SIZE: usize = 16;
    pub const MAX_SEQ_LEN: usize = 512;
    pub const SOFT_TEMPERATURE: f32 = 1.0;
    /// `--temperature 0`: greedy decoding, the most probable token.
    pub const GREEDY: f32 = 0.0;
    pub const TEMPERATURE: f32 = GREEDY;
    /// The whole distribution; also the largest `--top-p`.
    pub const TOP_P: f32 = 1.0;
    pub const SAMPLES_PER_PROMPT: u32 = 1;
    pub const SEED: u64 = 0;
    pub const ROWS_PER_SHARD: u64 = 1024;
}

/// How `generate` decodes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvCache {
    /// With the export's KV cache where it has one (`past_key_values.*` inputs).
    Auto,
    /// Rerun each whole sequence for every new token (any causal-LM export).
    Off,
}

/// Settings of `generate`, each optional until validation (a flag overrides the pipeline
/// file's key of the same name).
#[derive(Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSettings {
    /// The teacher, a causal-LM ONNX export; a with-past export (`optimum-cli export onnx
    /// --task text-generation-with-past`) decodes with its KV cache.
    #[arg(long, value_name = "MODEL.onnx")]
    pub teacher: Option<PathBuf>,
    /// A causal-LM student writes the completions instead of the teacher (on-policy data): a
    /// train-student run directory or a Hugging Face checkpoint directory. It writes
    /// OUT/generated.parquet with each token's log-prob under the student, and no cache
    /// (`distill cache-teacher --token-ids` over it is the teacher's scoring).
    #[arg(long, value_name = "RUN_DIR|HF_DIR", conflicts_with = "teacher")]
    pub student: Option<PathBuf>,
    /// The teacher's tokenizer.json [default with --student: the one in its directory].
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// The prompts (Parquet or JSONL; a file, a directory or a quoted glob).
    #[arg(long, value_name = "DATA")]
    pub data: Option<PathBuf>,
    /// Output directory: OUT/generated.parquet and OUT/cache.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The column of text prompts [default: prompt].
    #[arg(long, value_name = "COLUMN")]
    pub prompt_column: Option<String>,
    /// A column of conversations (lists of {role, content} turns) to complete instead:
    /// each is rendered with the chat template and its generation prompt.
    #[arg(long, value_name = "COLUMN", conflicts_with = "prompt_column")]
    pub messages_column: Option<String>,
    /// The chat template for --messages-column: a .jinja file or a tokenizer_config.json
    /// [default: chat_template.jinja or tokenizer_config.json beside the tokenizer].
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// Tokens generated at most per prompt [default: 64].
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<NonZeroUsize>,
    /// Sampling temperature of the generation; 0 is greedy, the most probable token
    /// [default: 0]. (The cached soft labels' temperature is --soft-temperature.)
    #[arg(long, value_name = "T", value_parser = super::finite_f32)]
    pub temperature: Option<f32>,
    /// Nucleus: draw among the most probable tokens holding this much of the mass [default: 1].
    #[arg(long, value_name = "P", value_parser = super::finite_f32)]
    pub top_p: Option<f32>,
    /// Completions per prompt [default: 1].
    #[arg(long, value_name = "S")]
    pub samples_per_prompt: Option<NonZeroU32>,
    /// Seed of the draws: they depend on it, the row, the sample and the step only [default: 0].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Sequences decoded together [default: 16].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<NonZeroUsize>,
    /// Longest prompt + completion, in tokens [default: 512].
    #[arg(long, value_name = "N")]
    pub max_seq_len: Option<usize>,
    /// End-of-sequence id [default: eos_token_id of the generation_config.json beside the
    /// teacher (one or several), else eos_token of the tokenizer_config.json beside the
    /// tokenizer, else the tokenizer's <|eos|>, </s>, <|endoftext|>, <|im_end|>, ...].
    #[arg(long, value_name = "ID")]
    pub eos_id: Option<u32>,
    /// Entries kept per cached position, the cache's top-k (not a sampling top-k: sampling
    /// is --temperature and --top-p) [default: 64].
    #[arg(long, visible_alias = "top-k", value_name = "K")]
    #[serde(alias = "top_k")]
    pub cache_top_k: Option<NonZeroUsize>,
    /// Temperature of the cached soft labels [default: 1].
    #[arg(long, value_name = "T", value_parser = super::finite_f32)]
    pub soft_temperature: Option<f32>,
    /// Sequences per cache shard [default: 1024]; a rerun resumes after the last finished shard.
    #[arg(long, value_name = "N")]
    pub rows_per_shard: Option<NonZeroU64>,
    /// `auto` [default]: decode with the export's KV cache when it has one; `off`: rerun each
    /// sequence for every new token.
    #[arg(long, value_name = "auto|off")]
    pub kv_cache: Option<KvCache>,
    /// Threads for ONNX Runtime [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<NonZeroUsize>,
    /// Where the teacher runs: cpu, cuda or cuda:N (CUDA needs onnxruntime-gpu; without a
    /// usable CUDA execution provider the run says why and continues on the CPU).
    #[arg(long, value_name = "DEVICE")]
    #[serde(default, with = "super::as_text")]
    pub device: Option<crate::teacher::TeacherDevice>,
}

/// Where the prompts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptSource {
    /// A text column, encoded with the tokenizer's special tokens.
    Text(String),
    /// A column of conversations, rendered with the chat template and the generation prompt.
    Messages { column: String, chat_template: Option<PathBuf> },
}

impl PromptSource {
    pub fn column(&self) -> &str {
        match self {
            PromptSource::Text(c) | PromptSource::Messages { column: c, .. } => c,
        }
    }
}

/// Which model writes the completions.
#[derive(Debug, Clone, PartialEq)]
pub enum Generator {
    /// The teacher's ONNX export: the completions and their soft labels (a cache).
    Teacher(PathBuf),
    /// A student's directory (run or checkpoint): the completions and its log-prob of each
    /// token, to be scored by the teacher.
    Student(PathBuf),
}

/// Validated settings of `generate`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    pub model: Generator,
    pub tokenizer: PathBuf,
    pub data: PathBuf,
    pub prompts: PromptSource,
    pub out: PathBuf,
    pub max_new_tokens: usize,
    /// 0: greedy (the most probable token, the lowest id on ties).
    pub temperature: f32,
    pub top_p: f32,
    pub samples: u32,
    pub seed: u64,
    pub batch_size: usize,
    pub max_seq_len: usize,
    /// End of sequence; `None`: the tokenizer's.
    pub eos: Option<u32>,
    /// The cache's top-k [default 64, at most the tokenizer's size] and temperature.
    pub top_k: Option<usize>,
    pub soft_temperature: f32,
    pub rows_per_shard: u64,
    pub kv_cache: KvCache,
    pub threads: usize,
    pub device: crate::teacher::TeacherDevice,
}

/// `file:///x` as the directory it names (generate writes only local directories).
fn local_dir(out: PathBuf) -> PathBuf {
    match out.to_str().and_then(|s| s.strip_prefix("file://")) {
        Some(rest) => PathBuf::from(rest),
        None => out,
    }
}

impl GenerateSettings {
    /// Paths of a pipeline file made relative to the working directory.
    pub fn relative_to(self, base: &Path) -> GenerateSettings {
        let r = super::relative_to(base);
        GenerateSettings {
            teacher: r(self.teacher),
            student: r(self.student),
            tokenizer: r(self.tokenizer),
            data: r(self.data),
            out: r(self.out),
            chat_template: r(self.chat_template),
            ..self
        }
    }

    pub fn validate(self) -> Result<GenerateConfig> {
        let need =
            |v: Option<PathBuf>, key: &str, flag: &str| v.ok_or_else(|| Error::Config(format!("generate.{key} is required (--{flag})")));
        let temperature = self.temperature.unwrap_or(defaults::TEMPERATURE);
        if temperature != defaults::GREEDY {
            super::check_temperature("generate.temperature (0 for greedy)", temperature)?;
        }
        let top_p = self.top_p.unwrap_or(defaults::TOP_P);
        if !(top_p > 0.0 && top_p <= defaults::TOP_P) {
            return Err(Error::Config(format!("generate.top_p must be in (0, 1] (got {top_p})")));
        }
        let soft_temperature = self.soft_temperature.unwrap_or(defaults::SOFT_TEMPERATURE);
        super::check_temperature("generate.soft_temperature", soft_temperature)?;
        let max_seq_len = self.max_seq_len.unwrap_or(defaults::MAX_SEQ_LEN);
        if max_seq_len < super::MIN_SEQ_LEN {
            return Err(Error::Config(format!("generate.max_seq_len must be >= {} (a prompt token and a new one)", super::MIN_SEQ_LEN)));
        }
        if self.chat_template.is_some() && self.messages_column.is_none() {
            return Err(Error::Config("generate.chat_template applies to conversations only (--messages-column)".into()));
        }
        let prompts = match (self.messages_column, self.prompt_column) {
            (Some(_), Some(_)) => {
                return Err(Error::Config("generate.messages_column and generate.prompt_column cannot be combined".into()));
            }
            (Some(column), None) => PromptSource::Messages { column, chat_template: self.chat_template },
            (None, p) => PromptSource::Text(p.unwrap_or_else(|| defaults::PROMPT_COLUMN.into())),
        };
        let device = self.device.unwrap_or_default();
        if let Some(out) = self.out.as_deref().filter(|o| crate::store::is_url(o) && !o.starts_with("file:")) {
            return Err(Error::Config(format!(
                "generate.out `{}` is an object-storage URL: generate writes a local directory (copy it to the bucket once it is complete)",
                out.display()
            )));
        }
        let (model, tokenizer) = match (self.teacher, self.student) {
            (Some(_), Some(_)) => return Err(Error::Config("generate.teacher and generate.student cannot be combined".into())),
            (None, Some(dir)) => {
                let teacher_only = [
                    ("cache_top_k", self.cache_top_k.is_some()),
                    ("soft_temperature", self.soft_temperature.is_some()),
                    ("kv_cache", self.kv_cache.is_some()),
                    ("device", self.device.is_some()),
                ];
                if let Some((key, _)) = teacher_only.iter().find(|(_, set)| *set) {
                    return Err(Error::Config(format!(
                        "generate.{key} applies to the teacher's generation (its cache); a student's writes no cache"
                    )));
                }
                let tokenizer = self.tokenizer.unwrap_or_else(|| dir.join("tokenizer.json"));
                (Generator::Student(dir), tokenizer)
            }
            (teacher, None) => (
                Generator::Teacher(need(teacher, "teacher", "teacher MODEL.onnx, or --student DIR")?),
                need(self.tokenizer, "tokenizer", "tokenizer tokenizer.json")?,
            ),
        };
        Ok(GenerateConfig {
            model,
            tokenizer,
            data: need(self.data, "data", "data PROMPTS")?,
            out: local_dir(need(self.out, "out", "out DIR")?),
            prompts,
            max_new_tokens: self.max_new_tokens.map_or(defaults::MAX_NEW_TOKENS, NonZeroUsize::get),
            temperature,
            top_p,
            samples: self.samples_per_prompt.map_or(defaults::SAMPLES_PER_PROMPT, NonZeroU32::get),
            seed: self.seed.unwrap_or(defaults::SEED),
            batch_size: self.batch_size.map_or(defaults::BATCH_SIZE, NonZeroUsize::get),
            max_seq_len,
            eos: self.eos_id,
            top_k: self.cache_top_k.map(NonZeroUsize::get),
            soft_temperature,
            rows_per_shard: self.rows_per_shard.map_or(defaults::ROWS_PER_SHARD, NonZeroU64::get),
            kv_cache: self.kv_cache.unwrap_or(KvCache::Auto),
            threads: self.threads.map_or(super::cores(), NonZeroUsize::get),
            device,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> GenerateSettings {
        GenerateSettings {
            teacher: Some("t.onnx".into()),
            tokenizer: Some("tok.json".into()),
            data: Some("p.jsonl".into()),
            out: Some("o".into()),
            ..Default::default()
        }
    }

    /// Defaults fill what is unset; errors name the key.
    #[test]
    fn validates_and_names_the_key() {
        let c = base().validate().unwrap();
        assert_eq!((c.max_new_tokens, c.temperature, c.top_p, c.samples, c.kv_cache), (64, 0.0, 1.0, 1, KvCache::Auto));
        assert_eq!(c.prompts, PromptSource::Text("prompt".into()));
        let err = |s: GenerateSettings| s.validate().unwrap_err().to_string();
        assert!(err(GenerateSettings { top_p: Some(0.0), ..base() }).contains("generate.top_p"));
        assert!(err(GenerateSettings { temperature: Some(0.001), ..base() }).contains("generate.temperature"));
        assert!(err(GenerateSettings { teacher: None, ..base() }).contains("generate.teacher is required"));
        let student = GenerateSettings { teacher: None, tokenizer: None, student: Some("run".into()), ..base() };
        let c = student.clone().validate().unwrap();
        assert_eq!((c.model, c.tokenizer), (Generator::Student("run".into()), PathBuf::from("run/tokenizer.json")));
        assert!(err(GenerateSettings { soft_temperature: Some(2.0), ..student.clone() }).contains("generate.soft_temperature applies"));
        assert!(err(GenerateSettings { student: Some("run".into()), ..base() }).contains("cannot be combined"));
        assert!(err(GenerateSettings { out: Some("s3://bucket/gen".into()), ..base() }).contains("generate writes a local directory"));
        assert!(err(GenerateSettings { chat_template: Some("t.jinja".into()), ..base() }).contains("conversations only"));
        let m = GenerateSettings { messages_column: Some("messages".into()), ..base() }.validate().unwrap();
        assert_eq!(m.prompts, PromptSource::Messages { column: "messages".into(), chat_template: None });
    }
}

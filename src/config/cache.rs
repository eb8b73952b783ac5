//! `[cache]` of a pipeline file and the flags of `cache-teacher`: one declaration for both
//! (clap and serde derives on the same struct), validated into [`CacheTeacherConfig`].

use std::collections::BTreeMap;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

pub use crate::cache::identity::TopkIn;
use crate::cache::manifest::{PartInfo, SampledInfo};
use crate::cache::{LogprobEncoding, Positions};
use crate::error::{Error, Result};
use crate::teacher::TeacherDevice;

use super::check_temperature;

/// Defaults of stage one's settings (the `[default: ...]` of each flag's help says the same;
/// a test checks it).
pub mod defaults {
    pub const TOP_K: usize = 64;
    pub const TEMPERATURE: f32 = 1.0;
    /// `--spin auto` spins with at least this many threads (and twice as many cores).
    pub const SPIN_MIN_THREADS: usize = 4;
    /// Seed of sampled soft labels.
    pub const SEED: u64 = 0;
    pub const BATCH_SIZE: usize = 32;
    pub const ROWS_PER_SHARD: u64 = 1024;
    pub const MAX_SEQ_LEN: usize = 512;
    /// Bytes of f32 logits one teacher batch may produce by default: 256 MiB measured
    /// faster than 1 GiB (18.6 s against 25.9 s, peak RSS 2.5 against 5.3 GB) on the
    /// 49152-token fixture of benches/real_sizes.sh, 2 threads.
    pub const LOGITS_BUDGET_BYTES: usize = 256 << 20;

    /// The default `--max-batch-tokens` for a teacher of `vocab` logits per position.
    pub fn logits_budget_tokens(vocab: usize) -> usize {
        (LOGITS_BUDGET_BYTES / (4 * vocab.max(1))).max(1)
    }
}

/// Stage one's settings, every one optional until validation (a flag overrides the pipeline
/// file's key of the same name).
#[derive(Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// The frozen teacher, an ONNX model (classifier [batch, classes] or causal LM [batch, seq, vocab]).
    #[arg(long, value_name = "MODEL.onnx")]
    pub teacher: Option<PathBuf>,
    /// Training data: a .parquet (any codec), .jsonl, .jsonl.gz or .jsonl.zst file, a
    /// directory of them, or a quoted glob ('data/train-*.parquet'); several files are one
    /// dataset, read in name order.
    #[arg(long, value_name = "DATA")]
    pub data: Option<PathBuf>,
    /// Output cache directory (created; resumed if it holds a partial cache of the same settings).
    #[arg(long, value_name = "CACHE_DIR")]
    pub out: Option<PathBuf>,
    /// tokenizer.json for text data (Hugging Face tokenizers format).
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: Option<PathBuf>,
    /// Column of plain text (every position is cached). Default `text` when a tokenizer is given.
    #[arg(long, value_name = "COLUMN")]
    pub text_column: Option<String>,
    /// Column of prompts; with --completion-column only completion positions are cached.
    #[arg(long, value_name = "COLUMN", requires = "completion_column")]
    pub prompt_column: Option<String>,
    /// Column of completions (appended to the prompt).
    #[arg(long, value_name = "COLUMN", requires = "prompt_column")]
    pub completion_column: Option<String>,
    /// The text column (or the prompt and completion columns) holds token ids, lists of
    /// integers below the tokenizer's size, used as they are: no tokenization, no special
    /// tokens added (pre-tokenized data; `distill generate` writes prompt_ids and
    /// completion_ids).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub token_ids: Option<bool>,
    /// Column of conversations, lists of {role, content} turns (TRL/Hugging Face chat data),
    /// rendered with the tokenizer's chat template; only assistant tokens are cached unless
    /// --positions all.
    #[arg(long, value_name = "COLUMN")]
    pub messages_column: Option<String>,
    /// The chat template for --messages-column: a .jinja file or a tokenizer_config.json
    /// [default: chat_template.jinja or tokenizer_config.json beside the tokenizer].
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// Column of integer class labels, carried into the cache as hard labels (default `label` if present).
    #[arg(long, value_name = "COLUMN")]
    pub label_column: Option<String>,
    /// Which positions to cache for text: `completion` (default with prompt/completion),
    /// `assistant` (default with conversations) or `all` (default with plain text).
    #[arg(long, value_name = "WHICH")]
    pub positions: Option<TextPositions>,
    /// Entries kept per position [default: 64, or every class when fewer].
    #[arg(long, value_name = "K")]
    pub top_k: Option<NonZeroUsize>,
    /// What each position stores: `topk` [default], the top-k of the teacher's distribution
    /// with the exact tail mass; `sampled:N`, N tokens drawn from it (the distinct ids with
    /// their share of the draws), an unbiased estimate of the whole distribution (Anshumann
    /// et al. 2025) that the default forward KL with the tail bucket learns from; or
    /// `topk+sampled:K,N`, the exact top K and N draws from the rest (exact head, unbiased tail).
    #[arg(long, value_name = "topk|sampled:N|topk+sampled:K,N")]
    #[serde(default, with = "super::as_text")]
    pub soft_labels: Option<SoftLabels>,
    /// Seed of --soft-labels sampled:N and topk+sampled:K,N: draws depend on it, the row and the position only
    /// [default: 0].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Softening temperature T >= 0.01 of the cached soft labels, applied to the teacher's
    /// logits before the log-softmax [default: 1]. (train-student's --temperature is the
    /// training one; generate's is for sampling.)
    #[arg(long, value_name = "T", value_parser = super::finite_f32)]
    pub temperature: Option<f32>,
    /// Rows per teacher batch [default: 32].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<NonZeroUsize>,
    /// Most padded tokens in one text batch (rows x its longest row) [default: as many as
    /// keep the batch's f32 logits under 256 MiB, 2^26 / vocabulary, 441 at 152k]. Rows are
    /// grouped by length within each shard, so batches carry little padding; a longer row
    /// runs alone. The cache does not depend on it.
    #[arg(long, value_name = "TOKENS")]
    pub max_batch_tokens: Option<NonZeroUsize>,
    /// Dataset rows per Parquet shard [default: 1024]. Part of the cache's identity.
    #[arg(long, value_name = "N")]
    pub rows_per_shard: Option<NonZeroU64>,
    /// Longest token sequence fed to the teacher [default: 512].
    #[arg(long, value_name = "N")]
    pub max_seq_len: Option<usize>,
    /// Longer sequences: `truncate` (default, counted and warned) or `refuse`.
    #[arg(long, value_name = "POLICY")]
    pub long_sequences: Option<LongSequences>,
    /// Feed ONNX input INPUT from dataset column COLUMN (numeric models; default: same name).
    /// In a pipeline file: a table `[cache.inputs]` of INPUT = "COLUMN".
    #[arg(long = "input", value_name = "INPUT=COLUMN", value_parser = parse_pair)]
    #[serde(default, with = "pairs_as_table")]
    pub inputs: Vec<(String, String)>,
    /// ONNX output holding the logits [default: `logits`, else the first output].
    #[arg(long, value_name = "NAME")]
    pub output: Option<String>,
    /// Teacher outputs to store beside the soft labels, for hidden-state distillation
    /// (train-student --hidden-layers), comma-separated, e.g. `pooled` or `hidden`: each
    /// `[batch, dim]` (a classifier's pooled output) or `[batch, seq, dim]` (taken at each
    /// cached position; a classifier's first token), stored as f16. The outputs must exist
    /// in the ONNX file (docs/cache-format.md shows how to add one to an export).
    #[arg(long, value_name = "NAME,...")]
    #[serde(default, with = "super::as_text")]
    pub hidden_states: Option<Names>,
    /// Store each --hidden-states output through a fixed random projection to R values
    /// per position (seeded; distances and angles are kept to within about 1/sqrt(R)),
    /// bounding the bytes per position [default: the output's own width].
    #[arg(long, value_name = "R")]
    pub hidden_dim: Option<NonZeroUsize>,
    /// Storage of log-probs: `delta_u16` (compact, error <= 1/512 nat; default) or `f32` (lossless).
    #[arg(long, value_name = "ENCODING")]
    pub logprob_encoding: Option<LogprobEncoding>,
    /// Threads for ONNX Runtime and the top-k [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<NonZeroUsize>,
    /// ONNX Runtime's worker threads spin-wait between operators: `on` is faster when the
    /// teacher has cores of its own, `off` when they share cores with the top-k. `auto`
    /// [default]: on with 4 or more --threads on a machine with at least twice that many cores.
    #[arg(long, value_name = "auto|on|off")]
    pub spin: Option<Spin>,
    /// Where the teacher runs: cpu, cuda or cuda:N (CUDA needs onnxruntime-gpu; without a
    /// usable CUDA execution provider the run says why and continues on the CPU).
    #[arg(long, value_name = "DEVICE")]
    #[serde(default, with = "super::as_text")]
    pub device: Option<TeacherDevice>,
    /// Where the soft labels are computed: `rust` [default], from the logits copied out of
    /// ONNX Runtime (measured faster on the CPU); `onnxruntime`, by nodes appended to the
    /// teacher's graph in memory (log-softmax, top-k, tail, entropy), so only [positions, k]
    /// values leave the session: for a teacher on a GPU. Needs opset >= 13.
    #[arg(long, value_name = "rust|onnxruntime")]
    pub topk_in: Option<TopkIn>,
    /// Compute only part I of N (shards j with j % N == I), e.g. one task of a Slurm job
    /// array or a Kubernetes Indexed Job; writes manifest.part-I-of-N.json. Combine the
    /// parts with `distill merge`.
    #[arg(long, visible_alias = "shard", value_name = "I/N")]
    #[serde(default, alias = "shard", with = "super::as_text")]
    pub part: Option<PartInfo>,
}

/// `--soft-labels`: what each cached position stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftLabels {
    /// The top-k of the teacher's distribution, with the exact tail mass.
    TopK,
    /// `draws` ids drawn from the distribution outside its `exact_top` most probable ones,
    /// which are kept exactly (`sampled:N` has none).
    Sampled { exact_top: usize, draws: usize },
}

impl std::str::FromStr for SoftLabels {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<SoftLabels, String> {
        let bad = || format!("must be `topk`, `sampled:N` or `topk+sampled:K,N` with K, N >= 1 (got `{s}`)");
        if s == "topk" {
            return Ok(SoftLabels::TopK);
        }
        let count = |n: &str| n.trim().parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(bad);
        let (exact_top, draws) = match (s.strip_prefix("topk+sampled:"), s.strip_prefix("sampled:")) {
            (Some(kn), _) => {
                let (k, n) = kn.split_once(',').ok_or_else(bad)?;
                (count(k)?, count(n)?)
            }
            (None, Some(n)) => (0, count(n)?),
            (None, None) => return Err(bad()),
        };
        let max = crate::cache::manifest::MAX_VOCAB;
        if exact_top.checked_add(draws).is_none_or(|n| n > max) {
            return Err(format!("`{s}`: K + N must be at most {max} (entries per position)"));
        }
        Ok(SoftLabels::Sampled { exact_top, draws })
    }
}

impl std::fmt::Display for SoftLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SoftLabels::TopK => f.write_str("topk"),
            SoftLabels::Sampled { exact_top: 0, draws } => write!(f, "sampled:{draws}"),
            SoftLabels::Sampled { exact_top, draws } => write!(f, "topk+sampled:{exact_top},{draws}"),
        }
    }
}

/// Comma-separated names, each once (`--hidden-states pooled,hidden`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names(pub Vec<String>);

impl std::str::FromStr for Names {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Names, String> {
        let names: Vec<String> = s.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect();
        if let Some(dup) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)).map(|(_, n)| n) {
            return Err(format!("names `{dup}` twice"));
        }
        if names.is_empty() {
            return Err(format!("`{s}` names nothing: give comma-separated output names"));
        }
        Ok(Names(names))
    }
}

impl std::fmt::Display for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// `--positions`: which positions of a text row are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TextPositions {
    /// Positions that predict a completion token (prompt/completion data).
    Completion,
    /// Positions that predict a token of an assistant turn (conversations).
    Assistant,
    /// Every position that predicts a next token.
    All,
}

/// What to do with a sequence longer than `max_seq_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LongSequences {
    Truncate,
    Refuse,
}

/// `--spin`: whether ONNX Runtime's intra-op threads spin-wait between operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Spin {
    Auto,
    On,
    Off,
}

fn parse_pair(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| format!("expected INPUT=COLUMN, got `{s}`"))
}

/// `--input A=B` pairs as a TOML/JSON table (`null` when there are none).
mod pairs_as_table {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        let table: Option<BTreeMap<&str, &str>> =
            (!pairs.is_empty()).then(|| pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect());
        table.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default().into_iter().collect())
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

#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub tokenizer: PathBuf,
    pub source: TextSource,
    pub positions: Positions,
    pub max_seq_len: usize,
    pub long: LongSequences,
    /// The text columns hold token ids (`--token-ids`).
    pub token_ids: bool,
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
    /// `None`: [`defaults::TOP_K`], or every class when the teacher has fewer.
    pub top_k: Option<usize>,
    pub temperature: f32,
    pub batch_size: usize,
    /// `None`: [`defaults::logits_budget_tokens`] of the teacher's vocabulary.
    pub max_batch_tokens: Option<usize>,
    pub rows_per_shard: u64,
    pub inputs: Vec<(String, String)>,
    pub output: Option<String>,
    pub encoding: LogprobEncoding,
    pub threads: usize,
    /// Whether ONNX Runtime's intra-op threads spin-wait between operators.
    pub spin: bool,
    /// Where the teacher runs.
    pub device: TeacherDevice,
    /// Where the soft labels are computed.
    pub topk_in: TopkIn,
    /// This worker's slice of a sharded capture.
    pub part: Option<PartInfo>,
    /// Soft labels sampled from the teacher instead of its top-k.
    pub sampled: Option<SampledInfo>,
    /// Teacher outputs stored beside the soft labels (`--hidden-states`).
    pub hidden_states: Vec<String>,
    /// Width of the fixed random projection they are stored through (`--hidden-dim`).
    pub hidden_dim: Option<usize>,
    /// The settings as given (for the manifest).
    pub settings: serde_json::Value,
}

impl CacheSettings {
    /// Resolve relative paths against `base` (a pipeline file's directory).
    pub fn relative_to(mut self, base: &std::path::Path) -> CacheSettings {
        let fix = super::relative_to(base);
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
        let temperature = self.temperature.unwrap_or(defaults::TEMPERATURE);
        check_temperature("cache.temperature", temperature)?;
        let batch_size = self.batch_size.map_or(defaults::BATCH_SIZE, NonZeroUsize::get);
        let rows_per_shard = self.rows_per_shard.map_or(defaults::ROWS_PER_SHARD, NonZeroU64::get);
        let cores = super::cores();
        let threads = self.threads.map_or(cores, NonZeroUsize::get);
        // The top-k runs on `threads` threads of its own while the teacher computes the next
        // batch: spinning ORT workers would take those cores from it unless there are enough.
        // Measured on 16 cores: spinning gained 5-10 % at 4 and 8 threads, lost ~7 % at 2.
        let spin = match self.spin.unwrap_or(Spin::Auto) {
            Spin::Auto => threads >= defaults::SPIN_MIN_THREADS && cores >= 2 * threads,
            Spin::On => true,
            Spin::Off => false,
        };
        let device = self.device.unwrap_or_default();
        let text = self.text_config()?;
        let part = self.part;
        let sampled = self.sampling()?;
        let topk_in = self.topk_in.unwrap_or_default();
        if topk_in == TopkIn::Onnxruntime && sampled.is_some() {
            return Err(Error::Config("cache.topk_in = \"onnxruntime\" computes the top-k; sampled soft labels are drawn in Rust".into()));
        }
        let (hidden_states, hidden_dim) = self.hidden()?;
        let mut given = self.clone();
        given.part = None; // every worker of a sharded capture records the same settings
        let settings = serde_json::to_value(&given).expect("settings serialise");
        let inputs: BTreeMap<String, String> = self.inputs.into_iter().collect();
        Ok(CacheTeacherConfig {
            teacher: need(self.teacher, "teacher", "teacher")?,
            data: need(self.data, "data", "data")?,
            out: need(self.out, "out", "out")?,
            text,
            label_column: self.label_column,
            top_k: self.top_k.map(NonZeroUsize::get),
            temperature,
            batch_size,
            max_batch_tokens: self.max_batch_tokens.map(NonZeroUsize::get),
            rows_per_shard,
            inputs: inputs.into_iter().collect(),
            output: self.output,
            encoding: self.logprob_encoding.unwrap_or(LogprobEncoding::DeltaU16),
            threads,
            spin,
            device,
            topk_in,
            part,
            sampled,
            hidden_states,
            hidden_dim,
            settings,
        })
    }

    /// `--hidden-states` and `--hidden-dim`.
    fn hidden(&self) -> Result<(Vec<String>, Option<usize>)> {
        let names = self.hidden_states.as_ref().map(|n| n.0.clone()).unwrap_or_default();
        match self.hidden_dim {
            Some(_) if names.is_empty() => Err(Error::Config("cache.hidden_dim applies to --hidden-states only".into())),
            r => Ok((names, r.map(NonZeroUsize::get))),
        }
    }

    /// `--soft-labels` and `--seed`: `None` for the top-k.
    fn sampling(&self) -> Result<Option<SampledInfo>> {
        let sampled = match self.soft_labels {
            None | Some(SoftLabels::TopK) => None,
            Some(SoftLabels::Sampled { exact_top, draws }) => {
                if self.top_k.is_some() {
                    return Err(Error::Config(
                        "cache.top_k does not apply to sampled soft labels: each position holds the exact top K and the N drawn ids".into(),
                    ));
                }
                Some(SampledInfo { draws, seed: self.seed.unwrap_or(defaults::SEED), exact_top })
            }
        };
        if sampled.is_none() && self.seed.is_some() {
            return Err(Error::Config("cache.seed applies to --soft-labels sampled:N and topk+sampled:K,N only".into()));
        }
        Ok(sampled)
    }

    /// The text settings: `None` for numeric data; errors name the conflicting keys.
    fn text_config(&self) -> Result<Option<TextConfig>> {
        let any_text = self.text_column.is_some()
            || self.prompt_column.is_some()
            || self.completion_column.is_some()
            || self.messages_column.is_some();
        if self.chat_template.is_some() && self.messages_column.is_none() && self.prompt_column.is_none() {
            return Err(Error::Config(
                "cache.chat_template applies to conversations only (--messages-column, or conversational --prompt-column/--completion-column)".into(),
            ));
        }
        let tok = match (&self.tokenizer, any_text) {
            (None, false) if self.positions.is_some() => return Err(Error::Config("cache.positions applies to text data only".into())),
            (None, false) => return Ok(None),
            (None, true) => return Err(Error::Config("cache.tokenizer is required with text columns (--tokenizer tokenizer.json)".into())),
            (Some(tok), _) => tok,
        };
        let source = self.text_source()?;
        let positions = match (self.positions, &source) {
            (None | Some(TextPositions::Completion), TextSource::PromptCompletion { .. }) => Positions::Completion,
            (None | Some(TextPositions::Assistant), TextSource::Messages(_)) => Positions::Assistant,
            (Some(TextPositions::Completion), _) => {
                return Err(Error::Config("cache.positions = \"completion\" needs prompt_column and completion_column".into()));
            }
            (Some(TextPositions::Assistant), _) => {
                return Err(Error::Config("cache.positions = \"assistant\" needs messages_column (conversations)".into()));
            }
            (None, TextSource::Text(_)) | (Some(TextPositions::All), _) => Positions::All,
        };
        let max_seq_len = self.max_seq_len.unwrap_or(defaults::MAX_SEQ_LEN);
        if max_seq_len < super::MIN_SEQ_LEN {
            return Err(Error::Config(format!("cache.max_seq_len must be >= {}", super::MIN_SEQ_LEN)));
        }
        let long = self.long_sequences.unwrap_or(LongSequences::Truncate);
        let token_ids = self.token_ids.unwrap_or(false);
        if token_ids && matches!(source, TextSource::Messages(_)) {
            return Err(Error::Config("cache.token_ids applies to text or prompt/completion columns, not conversations".into()));
        }
        Ok(Some(TextConfig {
            tokenizer: tok.clone(),
            source,
            positions,
            max_seq_len,
            long,
            token_ids,
            chat_template: self.chat_template.clone(),
        }))
    }

    /// Which columns hold the text: one of text, prompt + completion, or messages.
    fn text_source(&self) -> Result<TextSource> {
        Ok(match (&self.messages_column, &self.text_column, &self.prompt_column, &self.completion_column) {
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
        })
    }
}

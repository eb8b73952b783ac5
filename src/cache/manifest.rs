//! The manifest: the cache's self-description, written beside the shards.
//!
//! `manifest.json` exists only once a cache is complete; while `cache-teacher` runs,
//! `manifest.partial.json` records the shards finished so far (written atomically after
//! each shard), which is what a rerun resumes from.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cache::identity::CacheIdentity;
use crate::cache::schema::LogprobEncoding;
use crate::error::{Error, Result};

/// How a cache's sampled soft labels were drawn: `draws` tokens per position from the
/// teacher's distribution at the cache's temperature (outside its `exact_top` most probable
/// ids, which are kept exactly), seeded by (`seed`, row, position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampledInfo {
    pub draws: usize,
    pub seed: u64,
    /// `topk+sampled:K,N`: the K most probable ids are kept exactly and the draws come from
    /// the rest of the distribution (0: every entry is drawn).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exact_top: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A teacher output stored beside the soft labels (`cache-teacher --hidden-states`): one
/// `List<Float16>` column of `dim` values per cached position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiddenStateInfo {
    /// The teacher's output it comes from.
    pub output: String,
    /// The shard column holding it ([`crate::cache::schema::hidden_column`]).
    pub column: String,
    /// Width of the teacher's output.
    pub teacher_dim: usize,
    /// Values stored per position: `teacher_dim`, or the projection's width.
    pub dim: usize,
    /// Seed of the fixed random projection the values went through (`None`: stored as
    /// the teacher computed them); see [`crate::teacher::hidden::Projection`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection_seed: Option<u64>,
}

/// Version of the shard schema and manifest layout. Readers refuse other versions.
pub const SCHEMA_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
/// The most shards one cache may have: bounds what a dataset's row count (its Parquet
/// footer's claim) can make a run plan, and what a manifest may list.
pub const MAX_SHARDS: u64 = 1_000_000;
/// The largest vocabulary (or class count) a manifest may declare: students are sized from
/// it, so a forged one must not become an allocation.
pub const MAX_VOCAB: usize = 1 << 24;
/// Every manifest file name (complete, partial, part) starts with this.
pub const MANIFEST_STEM: &str = "manifest";
pub const PARTIAL_MANIFEST_FILE: &str = "manifest.partial.json";
/// The teacher's tokenizer, copied into the cache so the cache is self-contained.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// What the teacher predicts, which decides what a cached row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One soft label per example (`logits [batch, classes]`).
    Classification,
    /// One soft label per predicted token (`logits [batch, seq, vocab]`).
    CausalLm,
}

/// Which positions of a sequence are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// Classification: one row per example.
    Example,
    /// Causal LM: only positions that predict a completion token.
    Completion,
    /// Causal LM: every position that predicts a next token.
    All,
    /// Causal LM over chat data: positions that predict a token of an assistant turn.
    Assistant,
}

/// Where a row's text comes from, and which positions are trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextColumns {
    /// Plain text column (every position), or `None` with prompt/completion.
    pub text: Option<String>,
    pub prompt: Option<String>,
    pub completion: Option<String>,
    /// Chat data: the column of conversations, rendered with the chat template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<String>,
    /// The prompt and completion columns hold conversations (TRL's conversational
    /// prompt/completion): both are rendered with the chat template.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conversational: bool,
    /// The text (or prompt and completion) columns hold token ids, lists of integers,
    /// used as they are (no tokenization): pre-tokenized data, and `distill generate`'s
    /// output, whose ids are the generated ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub token_ids: bool,
    /// Chat data: SHA-256 of the saved chat template (`chat_template.json` in the cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_sha256: Option<String>,
    pub positions: Positions,
    /// Sequences are cut to this many tokens.
    pub max_seq_len: usize,
}

impl TextColumns {
    /// Names of the columns to read, in the order [`tokenize`] expects the fields.
    pub fn column_names(&self) -> Vec<String> {
        self.columns().into_iter().map(|c| c.name).collect()
    }

    /// The columns to read, with their kinds, in the order [`tokenize`] expects the fields.
    pub fn columns(&self) -> Vec<crate::data::Column> {
        match (&self.messages, &self.text, &self.prompt, &self.completion) {
            (Some(m), ..) => vec![crate::data::Column::new(m, crate::data::Kind::Messages)],
            (None, Some(t), _, _) if self.token_ids => vec![crate::data::Column::new(t, crate::data::Kind::Numbers)],
            (None, Some(t), _, _) => vec![crate::data::Column::new(t, crate::data::Kind::Text)],
            (None, None, Some(p), Some(c)) => {
                let kind = match (self.conversational, self.token_ids) {
                    (true, _) => crate::data::Kind::Messages,
                    (false, true) => crate::data::Kind::Numbers,
                    (false, false) => crate::data::Kind::Text,
                };
                vec![crate::data::Column::new(p, kind), crate::data::Column::new(c, kind)]
            }
            _ => Vec::new(),
        }
    }
}

/// How `distill generate` made a cache's dataset and soft labels (both from the same
/// forward passes of the teacher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationInfo {
    /// The prompts' dataset.
    pub prompts: DatasetInfo,
    /// The column the prompts came from, and whether it holds conversations (rendered
    /// with the chat template and its generation prompt).
    pub prompt_column: String,
    pub chat: bool,
    /// The generated dataset, relative to the cache directory.
    pub dataset_file: String,
    pub max_new_tokens: usize,
    /// 0: greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub samples_per_prompt: u32,
    pub seed: u64,
    /// The ids that end a sequence.
    pub eos_ids: Vec<u32>,
    /// Decoded with the export's KV cache (`past_key_values.*`), or by rerunning each sequence.
    pub kv_cache: bool,
    /// Sequences that ended at the end-of-sequence token (the rest at the length limit).
    pub stopped_at_eos: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

/// One ONNX input or output as the model declares it (`-1` = dynamic dimension).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
    /// How stage one fills an input (`column:NAME`, `input_ids`, `attention_mask`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filled_from: Option<String>,
}

/// One external-data file of the teacher (where the weights of a model over 2 GB live).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalDataInfo {
    /// Location as the graph names it, relative to the graph's directory.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherInfo {
    /// File name of the model as given (informational; the hash identifies it).
    pub file: String,
    /// SHA-256 of the graph file.
    pub sha256: String,
    pub bytes: u64,
    /// The external-data files the graph names, each hashed: part of the teacher's identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_data: Vec<ExternalDataInfo>,
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
    /// The output the soft labels come from.
    pub logits_output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerInfo {
    pub file: String,
    /// SHA-256 of the tokenizer.json bytes: the tokenizer fingerprint.
    pub sha256: String,
    /// Vocabulary size of the tokenizer including added tokens.
    pub vocab_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodingInfo {
    pub logprobs: LogprobEncoding,
    /// Quantisation step in nats (`delta_u16`), 0 for `f32`.
    pub logprob_step: f64,
    /// Largest absolute error of a stored log-prob, nats.
    pub max_abs_error: f64,
    pub compression: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    /// File name inside the cache directory (`shard-NNNNN.parquet`, no directories).
    pub file: String,
    /// First dataset row of the shard; the shard holds rows `first_row..first_row + rows`.
    pub first_row: u64,
    pub rows: u64,
    /// Parquet rows (cached positions) in the shard.
    pub positions: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Counts gathered while caching.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub rows: u64,
    pub positions: u64,
    /// Rows whose token sequence was cut to `max_seq_len`.
    pub truncated_rows: u64,
    /// Rows that produced no cached position (e.g. an empty completion).
    pub rows_without_positions: u64,
}

/// Which slice of a sharded capture (`cache-teacher --part I/N`) a part manifest covers:
/// the shards whose index `j` has `j % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartInfo {
    pub index: usize,
    pub count: usize,
}

/// `I/N` with `0 <= I < N` (`--part`).
impl std::str::FromStr for PartInfo {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<PartInfo, String> {
        let parsed = s.split_once('/').and_then(|(i, n)| Some((i.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(PartInfo { index, count }),
            _ => Err(format!("must be I/N with 0 <= I < N (got `{s}`)")),
        }
    }
}

impl std::fmt::Display for PartInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl PartInfo {
    /// `manifest.part-I-of-N.json`, and with `.partial` while the part runs.
    pub fn file_name(&self, partial: bool) -> String {
        format!("manifest.part-{}-of-{}{}.json", self.index, self.count, if partial { ".partial" } else { "" })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    pub complete: bool,
    /// Set on the manifest of one part of a sharded capture; `distill merge` combines parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<PartInfo>,
    pub tool: ToolInfo,
    pub task: Task,
    pub teacher: TeacherInfo,
    pub tokenizer: Option<TokenizerInfo>,
    /// True class count / vocabulary size: the last dimension of the teacher's logits.
    pub vocab_size: usize,
    pub top_k: usize,
    pub temperature: f32,
    pub positions: Positions,
    pub encoding: EncodingInfo,
    pub dataset: DatasetInfo,
    /// Text columns and tokenization (token models); stage two tokenizes the same way.
    pub text: Option<TextColumns>,
    /// Numeric dataset columns fed to the teacher (numeric models), in input order.
    pub features: Vec<String>,
    /// Hard-label column of classification data.
    pub label_column: Option<String>,
    /// Soft labels sampled from the teacher (`--soft-labels sampled:N`) rather than its top-k:
    /// each position's `top_k` entries are the distinct drawn ids with `log(count / N)`; with
    /// `exact_top = K` (`topk+sampled:K,N`) the top K exactly, then the ids drawn from the
    /// rest with `log(rest_mass * count / N)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<SampledInfo>,
    /// Teacher outputs stored beside the soft labels, in column order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden_states: Vec<HiddenStateInfo>,
    /// A cache `distill generate` made: the generation settings and the prompts; `dataset`
    /// is the generated dataset, whose rows are the sequences in (prompt row, sample) order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationInfo>,
    pub rows_per_shard: u64,
    /// SHA-256 over everything that decides the cache's content; a rerun resumes only
    /// into a cache with the same fingerprint.
    pub fingerprint: String,
    /// The resolved settings that produced the cache.
    pub settings: serde_json::Value,
    /// The command line that produced the cache.
    pub command: Vec<String>,
    pub totals: Totals,
    pub shards: Vec<ShardInfo>,
    /// SHA-256 of this manifest's JSON with `checksum` set to "": a hand edit that does not
    /// recompute it is detected.
    #[serde(default)]
    pub checksum: String,
}

/// What a cache holds and how it was made, beside its identity: the part of a manifest
/// the command that makes the cache decides ([`Manifest::new`] adds the rest).
#[derive(Debug, Clone)]
pub struct CacheContents {
    pub part: Option<PartInfo>,
    pub task: Task,
    pub teacher: TeacherInfo,
    pub tokenizer: Option<TokenizerInfo>,
    pub vocab_size: usize,
    pub top_k: usize,
    pub temperature: f32,
    pub positions: Positions,
    pub encoding: EncodingInfo,
    pub dataset: DatasetInfo,
    pub text: Option<TextColumns>,
    pub features: Vec<String>,
    pub label_column: Option<String>,
    pub sampled: Option<SampledInfo>,
    pub hidden_states: Vec<HiddenStateInfo>,
    pub generation: Option<GenerationInfo>,
    pub rows_per_shard: u64,
}

impl Manifest {
    /// The manifest of a cache before its first shard (the one place a manifest is made):
    /// its contents, the fingerprint of its identity, the settings as given (recorded beside
    /// the identity) and the command line.
    pub fn new(contents: CacheContents, identity: &CacheIdentity, given: Option<&serde_json::Value>, command: Vec<String>) -> Manifest {
        let CacheContents {
            part,
            task,
            teacher,
            tokenizer,
            vocab_size,
            top_k,
            temperature,
            positions,
            encoding,
            dataset,
            text,
            features,
            label_column,
            sampled,
            hidden_states,
            generation,
            rows_per_shard,
        } = contents;
        let identity_json = identity.to_json();
        let settings = match given {
            Some(given) => serde_json::json!({ "given": given, "identity": identity_json }),
            None => serde_json::json!({ "identity": identity_json }),
        };
        Manifest {
            schema_version: SCHEMA_VERSION,
            complete: false,
            part,
            tool: ToolInfo { name: "distill".into(), version: super::identity::tool_version() },
            task,
            teacher,
            tokenizer,
            vocab_size,
            top_k,
            temperature,
            positions,
            encoding,
            dataset,
            text,
            features,
            label_column,
            sampled,
            hidden_states,
            generation,
            rows_per_shard,
            fingerprint: sha256_canonical_json(&identity_json),
            settings,
            command,
            totals: Totals::default(),
            shards: Vec::new(),
            checksum: String::new(),
        }
    }

    /// Publish the complete manifest, checked, under `complete` in `dir`, and remove the
    /// partial one the run resumed from (`partial`; a merge has none): the last step of
    /// every command that makes or merges a cache. Shards must all be on disk before.
    pub fn publish(&mut self, dir: &Path, complete: &str, partial: Option<&str>) -> Result<()> {
        self.complete = true;
        self.validate(&dir.join(complete))?;
        self.write_atomic(dir, complete)?;
        if let Some(partial) = partial.map(|p| dir.join(p)).filter(|p| p.exists()) {
            std::fs::remove_file(&partial).map_err(|e| Error::io(&partial, e))?;
        }
        Ok(())
    }
}

impl Manifest {
    /// One past the largest token id the soft labels may name: the tokenizer's size when
    /// the teacher's logits are wider (padding ids are never kept), else the logits' width.
    pub fn cached_id_bound(&self) -> usize {
        self.tokenizer.as_ref().map_or(self.vocab_size, |t| t.vocab_size.min(self.vocab_size))
    }

    /// Read and validate `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        if !path.exists() {
            let has_parts = std::fs::read_dir(dir)
                .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("manifest.part-")))
                .unwrap_or(false);
            if has_parts {
                return Err(Error::cache(
                    dir,
                    "holds part manifests of a sharded capture (cache-teacher --part I/N) but no manifest.json; \
                     combine the parts with `distill merge --out DIR PART_DIR...`",
                ));
            }
            if dir.join(PARTIAL_MANIFEST_FILE).exists() {
                return Err(Error::cache(
                    dir,
                    "incomplete cache: cache-teacher did not finish (manifest.partial.json \
                     but no manifest.json); rerun the same cache-teacher command to resume it",
                ));
            }
            return Err(Error::cache(dir, "no manifest.json: not a distill cache directory"));
        }
        let path = crate::untrusted::inside(dir, MANIFEST_FILE, "the cache")?;
        let manifest = Self::read_file(&path)?;
        if !manifest.complete {
            return Err(Error::cache(&path, "manifest.json says complete: false; a cache being written has only manifest.partial.json"));
        }
        Ok(manifest)
    }

    /// Read and validate one manifest file (complete or partial).
    pub fn read_file(path: &Path) -> Result<Manifest> {
        let bytes = crate::untrusted::read(path, crate::untrusted::Cap::Manifest)?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::cache(path, format!("manifest is not valid: {e}")))?;
        let want = manifest.compute_checksum();
        if manifest.checksum != want {
            return Err(Error::cache(
                path,
                format!(
                    "manifest checksum mismatch (records {:?}, content hashes to {want}): the manifest was edited or damaged",
                    manifest.checksum
                ),
            ));
        }
        manifest.validate(path)?;
        Ok(manifest)
    }

    /// Structural checks that keep an untrusted manifest from steering the reader:
    /// known schema version, shard file names that cannot leave the directory, shards
    /// that tile the dataset rows in order, totals that add up.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::cache(path, m));
        if self.schema_version != SCHEMA_VERSION {
            return bad(format!("schema_version {} is not supported (this distill reads {SCHEMA_VERSION})", self.schema_version));
        }
        if self.vocab_size > MAX_VOCAB {
            return bad(format!(
                "vocab_size {} is over the limit of {MAX_VOCAB} (the largest real vocabularies are ~262k): a damaged or forged manifest",
                self.vocab_size
            ));
        }
        if self.top_k == 0 || self.top_k > self.vocab_size {
            return bad(format!("top_k {} must be in 1..={} (vocab_size)", self.top_k, self.vocab_size));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature {} must be > 0", self.temperature));
        }
        if let Some(s) = &self.sampled
            && s.exact_top.checked_add(s.draws) != Some(self.top_k)
        {
            return bad(format!("sampled soft labels of {} exact + {} drawn entries, but top_k is {}", s.exact_top, s.draws, self.top_k));
        }
        if let Some(part) = self.part {
            return self.validate_part(path, part);
        }
        let mut next_row = 0u64;
        let mut positions = 0u64;
        for (i, shard) in self.shards.iter().enumerate() {
            if !is_shard_file_name(&shard.file) {
                return bad(format!("shard {i} file {:?} is not a plain shard-NNNNN.parquet name", shard.file));
            }
            if shard.first_row != next_row {
                return bad(format!(
                    "shard {} starts at row {} but the previous shard ended at row {next_row}",
                    shard.file, shard.first_row
                ));
            }
            next_row = shard
                .first_row
                .checked_add(shard.rows)
                .ok_or_else(|| Error::cache(path, format!("shard {} row count overflows", shard.file)))?;
            positions = positions.saturating_add(shard.positions);
        }
        if self.complete {
            if next_row != self.dataset.rows || next_row != self.totals.rows {
                return bad(format!(
                    "shards cover {next_row} rows but the dataset has {} (totals say {})",
                    self.dataset.rows, self.totals.rows
                ));
            }
            if positions != self.totals.positions {
                return bad(format!("shards hold {positions} positions but totals say {}", self.totals.positions));
            }
        }
        Ok(())
    }

    /// A part manifest holds the shards `j` with `j % count == index`, each at row
    /// `j * rows_per_shard`, in increasing order.
    fn validate_part(&self, path: &Path, part: PartInfo) -> Result<()> {
        let bad = |m: String| Err(Error::cache(path, m));
        if part.count == 0 || part.index >= part.count {
            return bad(format!("part {}/{} is not a valid slice", part.index, part.count));
        }
        let mut last: Option<usize> = None;
        let (mut rows, mut positions) = (0u64, 0u64);
        for shard in &self.shards {
            let Some(j) = shard_index(&shard.file) else {
                return bad(format!("shard file {:?} is not a plain shard-NNNNN.parquet name", shard.file));
            };
            if j % part.count != part.index || last.is_some_and(|l| j <= l) {
                return bad(format!("shard {} does not belong to part {}/{} in order", shard.file, part.index, part.count));
            }
            if Some(shard.first_row) != (j as u64).checked_mul(self.rows_per_shard) || shard.rows > self.rows_per_shard {
                return bad(format!("shard {} does not start at row {} x {}", shard.file, j, self.rows_per_shard));
            }
            last = Some(j);
            rows = rows.saturating_add(shard.rows);
            positions = positions.saturating_add(shard.positions);
        }
        if self.complete && (rows != self.totals.rows || positions != self.totals.positions) {
            return bad(format!(
                "part shards hold {rows} rows / {positions} positions but totals say {} / {}",
                self.totals.rows, self.totals.positions
            ));
        }
        Ok(())
    }

    /// SHA-256 of the canonical JSON of this manifest with an empty `checksum`.
    pub fn compute_checksum(&self) -> String {
        let mut copy = self.clone();
        copy.checksum.clear();
        sha256_bytes(&serde_json::to_vec(&copy).expect("manifest serialises"))
    }

    /// Write to `dir/name` atomically (temporary file, fsync, rename, fsync dir), with a
    /// fresh checksum.
    pub fn write_atomic(&self, dir: &Path, name: &str) -> Result<()> {
        let mut m = self.clone();
        m.checksum = m.compute_checksum();
        let json = serde_json::to_vec_pretty(&m).expect("manifest serialises");
        write_atomic(&dir.join(name), &json)
    }
}

impl Manifest {
    /// A minimal complete manifest around one shard, for benchmarks and tests of the reader.
    #[doc(hidden)]
    pub fn synthetic_for_bench(top_k: usize, vocab_size: usize, encoding: LogprobEncoding, step: f64, shard: ShardInfo) -> Manifest {
        let encoding = EncodingInfo { logprobs: encoding, logprob_step: step, max_abs_error: step / 2.0, compression: "zstd".into() };
        let identity = CacheIdentity::Captured(super::identity::CapturedIdentity {
            schema_version: SCHEMA_VERSION,
            tool_version: super::identity::tool_version(),
            teacher_sha256: String::new(),
            logits_output: "logits".into(),
            inputs: vec![],
            tokenizer_sha256: None,
            dataset_sha256: String::new(),
            columns: vec![],
            top_k,
            temperature: 1.0,
            positions: Positions::All,
            max_seq_len: None,
            encoding: encoding.clone(),
            rows_per_shard: shard.rows,
            teacher_external_data: vec![],
            selectable_ids: None,
            sampled: None,
            hidden_states: vec![],
            token_ids: false,
            topk_in: super::identity::TopkIn::Rust,
            chat_template_sha256: None,
        });
        let contents = CacheContents {
            part: None,
            task: Task::CausalLm,
            teacher: TeacherInfo {
                file: "synthetic".into(),
                sha256: String::new(),
                bytes: 0,
                external_data: vec![],
                inputs: vec![],
                outputs: vec![],
                logits_output: "logits".into(),
            },
            tokenizer: None,
            vocab_size,
            top_k,
            temperature: 1.0,
            positions: Positions::All,
            encoding,
            dataset: DatasetInfo {
                file: "synthetic".into(),
                format: "none".into(),
                sha256: String::new(),
                rows: shard.rows,
                files: vec![],
            },
            text: None,
            features: vec![],
            label_column: None,
            sampled: None,
            hidden_states: Vec::new(),
            generation: None,
            rows_per_shard: shard.rows,
        };
        let mut m = Manifest::new(contents, &identity, None, vec![]);
        m.complete = true;
        m.totals = Totals { rows: shard.rows, positions: shard.positions, ..Default::default() };
        m.shards = vec![shard];
        m
    }
}

pub use super::dataset_info::{DataFileInfo, DatasetInfo};
pub use super::stamp::{ShardStamp, is_shard_file_name, shard_file_name, shard_index};
pub use crate::integrity::{hex, sha256_bytes, sha256_canonical_json, sha256_file, sync_dir, temporary_name, write_atomic};

#[cfg(test)]
mod tests {
    use super::*;

    /// Every manifest written reads back with a matching checksum, whatever float its
    /// settings hold: f32 settings are stored as their f64 widening (`1.95f32` is
    /// `1.9500000476837158`), which must parse back to the same f64 (serde_json's
    /// `float_roundtrip`), or the re-serialised bytes differ and the checksum fails. Covers
    /// the 27 of 418 temperatures 0.025..10.45 that failed without it (0.975, 1.95, 3.65,
    /// 9.025, ...) and 2000 pseudo-random f32 and f64 values.
    #[test]
    fn every_written_manifest_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let shard = ShardInfo { file: "shard-00000.parquet".into(), first_row: 0, rows: 1, positions: 1, bytes: 1, sha256: String::new() };
        let mut m = Manifest::synthetic_for_bench(1, 10, LogprobEncoding::DeltaU16, 1.0 / 256.0, shard);
        let mut state = 7u64;
        let mut values: Vec<f32> = (1..=418).map(|i| i as f32 * 0.025).collect();
        values.extend((0..2000).map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            f32::from_bits(((state >> 40) as u32 & 0x7fffff) | (0x3c00_0000 + (((state >> 20) as u32 & 0xf) << 23)))
        }));
        for t in values {
            m.temperature = t;
            m.settings = serde_json::json!({ "given": { "temperature": t }, "identity": { "temperature": t, "as_f64": (t as f64) / 3.0 } });
            m.write_atomic(dir.path(), MANIFEST_FILE).unwrap();
            let back = Manifest::read_file(&dir.path().join(MANIFEST_FILE)).unwrap_or_else(|e| panic!("temperature {t}: {e}"));
            assert_eq!(back.temperature.to_bits(), t.to_bits());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, failure_persistence: None, ..Default::default() })]
        /// Random settings (floats of every magnitude included), whole caches and parts of
        /// sharded captures, partial and complete: every manifest written reads back equal
        /// and passes its checks.
        #[test]
        fn every_manifest_and_part_manifest_reads_back(
            temperature in 0.01f32..1e6,
            step_bits in 1u64..(1u64 << 52),
            vocab in 1usize..300_000,
            k_frac in 0.0f64..1.0,
            rows_per_shard in 1u64..5000,
            shards in 0usize..12,
            count in 1usize..5,
            index_frac in 0.0f64..1.0,
            complete in proptest::bool::ANY,
            extra in -1e300f64..1e300,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let top_k = 1 + ((vocab - 1) as f64 * k_frac) as usize;
            let step = f64::from_bits(0x3f00_0000_0000_0000 | step_bits); // 2^-15 .. 2^-14
            let index = ((count as f64 * index_frac) as usize).min(count - 1);
            let part = (count > 1).then_some(PartInfo { index, count });
            let mine: Vec<usize> = (0..shards).filter(|j| j % count == index).collect();
            let infos: Vec<ShardInfo> = mine
                .iter()
                .map(|&j| ShardInfo {
                    file: shard_file_name(j),
                    first_row: j as u64 * rows_per_shard,
                    rows: rows_per_shard,
                    positions: rows_per_shard * 3,
                    bytes: 1000 + j as u64,
                    sha256: format!("{j:064x}"),
                })
                .collect();
            let first = infos.first().cloned().unwrap_or(ShardInfo { file: shard_file_name(0), first_row: 0, rows: 0, positions: 0, bytes: 0, sha256: String::new() });
            let mut m = Manifest::synthetic_for_bench(top_k, vocab, LogprobEncoding::DeltaU16, step, first);
            m.temperature = temperature;
            m.part = part;
            m.complete = complete;
            m.rows_per_shard = rows_per_shard;
            m.shards = if part.is_none() && infos.iter().enumerate().any(|(i, s)| s.first_row != i as u64 * rows_per_shard) { vec![] } else { infos };
            m.totals = Totals {
                rows: m.shards.iter().map(|s| s.rows).sum(),
                positions: m.shards.iter().map(|s| s.positions).sum(),
                ..Totals::default()
            };
            m.dataset.rows = if part.is_none() { m.totals.rows } else { shards as u64 * rows_per_shard };
            m.settings = serde_json::json!({ "given": { "temperature": temperature, "logprob_step": step, "other": extra }, "identity": { "t": temperature } });
            let name = part.map(|p| p.file_name(!complete)).unwrap_or_else(|| (if complete { MANIFEST_FILE } else { PARTIAL_MANIFEST_FILE }).to_string());
            m.write_atomic(dir.path(), &name).unwrap();
            let back = Manifest::read_file(&dir.path().join(&name));
            proptest::prop_assert!(back.is_ok(), "{:?}", back.err());
            let mut want = m.clone();
            want.checksum = back.as_ref().unwrap().checksum.clone();
            proptest::prop_assert_eq!(back.unwrap(), want);
        }
    }

    #[test]
    fn shard_names_cannot_escape_the_directory() {
        assert!(is_shard_file_name("shard-00000.parquet"));
        assert!(!is_shard_file_name("../shard-00000.parquet"));
        assert!(!is_shard_file_name("shard-/../x.parquet"));
        assert!(!is_shard_file_name("/etc/shard-1.parquet"));
        assert!(!is_shard_file_name("shard-.parquet"));
        assert!(!is_shard_file_name("shard-1.parquet.partial"));
    }
}

//! A cache's identity: every setting and input hash its content depends on. The fingerprint
//! is the SHA-256 of its canonical JSON; a run resumes, and `distill merge` combines parts,
//! only into a cache of the same fingerprint.
//!
//! The commands build these from their validated configs by destructuring every field
//! (`stage::cache_teacher::identity`, `stage::generate`), so a new setting does not compile
//! until someone decides whether the cache depends on it. The JSON keys are the ones every
//! fingerprint has been computed over: a key only some caches have is left out when unused,
//! so older caches keep their fingerprints (`tests/cache_teacher.rs`
//! `fingerprints_do_not_change`).

use serde::{Deserialize, Serialize};

use crate::cache::manifest::{EncodingInfo, ExternalDataInfo, HiddenStateInfo, IoInfo, SampledInfo, sha256_canonical_json};

/// The identity of a cache: captured over a dataset (`cache-teacher`) or generated with the
/// teacher (`generate`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum CacheIdentity {
    Captured(CapturedIdentity),
    Generated(GeneratedIdentity),
}

impl CacheIdentity {
    /// The identity as the JSON the manifest records under `settings.identity`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("an identity serialises")
    }

    /// SHA-256 of the identity's canonical JSON.
    pub fn fingerprint(&self) -> String {
        sha256_canonical_json(&self.to_json())
    }
}

/// What a `cache-teacher` cache depends on.
#[derive(Debug, Clone, Serialize)]
pub struct CapturedIdentity {
    pub schema_version: u32,
    pub tool_version: String,
    pub teacher_sha256: String,
    pub logits_output: String,
    pub inputs: Vec<IoInfo>,
    pub tokenizer_sha256: Option<String>,
    pub dataset_sha256: String,
    /// The dataset columns read, in order (features or text, then the label).
    pub columns: Vec<String>,
    pub top_k: usize,
    pub temperature: f32,
    pub positions: crate::cache::Positions,
    pub max_seq_len: Option<usize>,
    pub encoding: EncodingInfo,
    pub rows_per_shard: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub teacher_external_data: Vec<ExternalDataInfo>,
    /// Ids the top-k may choose from, when fewer than the teacher's outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selectable_ids: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled: Option<SampledInfo>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hidden_states: Vec<HiddenStateInfo>,
    /// The text columns hold token ids.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub token_ids: bool,
    /// Where the soft labels were computed, when not in Rust (ONNX Runtime rounds differently).
    #[serde(skip_serializing_if = "is_rust")]
    pub topk_in: TopkIn,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_template_sha256: Option<String>,
}

/// `--topk-in`: where the soft labels are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TopkIn {
    #[default]
    Rust,
    Onnxruntime,
}

fn is_rust(t: &TopkIn) -> bool {
    *t == TopkIn::Rust
}

/// What a `generate` cache depends on: the generation decides the dataset, so its every
/// setting and the prompts' hash stand where a captured cache has the dataset's hash.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratedIdentity {
    pub schema_version: u32,
    pub tool_version: String,
    /// Always `true`: no captured identity has this key.
    pub generated: bool,
    pub teacher_sha256: String,
    pub teacher_external_data: Vec<ExternalDataInfo>,
    pub logits_output: String,
    pub inputs: Vec<IoInfo>,
    pub tokenizer_sha256: String,
    pub chat_template_sha256: Option<String>,
    pub prompts_sha256: String,
    pub prompt_column: String,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub samples_per_prompt: u32,
    pub seed: u64,
    pub eos_ids: Vec<u32>,
    pub kv_cache: bool,
    pub max_seq_len: usize,
    pub top_k: usize,
    pub soft_temperature: f32,
    pub selectable_ids: usize,
    pub encoding: EncodingInfo,
    pub rows_per_shard: u64,
}

/// The version every identity records.
pub fn tool_version() -> String {
    env!("CARGO_PKG_VERSION").into()
}

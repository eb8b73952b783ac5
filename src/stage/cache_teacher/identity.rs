//! A cache's identity: the settings and input hashes its fingerprint covers, and the
//! manifest a run starts from.

use std::path::Path;

use crate::cache::manifest::{self, DatasetInfo, EncodingInfo, HiddenStateInfo, Manifest, SCHEMA_VERSION, TokenizerInfo, ToolInfo, Totals};
use crate::cache::{LogprobEncoding, schema, writer};
use crate::config::CacheTeacherConfig;
use crate::data::Kind;
use crate::error::{Error, Result};

use super::RunOptions;
use super::inputs::Inputs;

/// The manifest of the cache `cfg` makes from `inputs`, with no shards yet.
pub(super) fn new_manifest(cfg: &CacheTeacherConfig, opts: &RunOptions, inputs: &Inputs) -> Result<Manifest> {
    let dataset = DatasetInfo::of(&cfg.data)?;
    if dataset.rows == 0 {
        return Err(Error::data(&cfg.data, "has no rows: there is nothing to cache"));
    }
    let shards = dataset.rows.div_ceil(cfg.rows_per_shard);
    if shards > manifest::MAX_SHARDS {
        return Err(Error::data(
            &cfg.data,
            format!(
                "has {} rows: {shards} shards of --rows-per-shard {}, over the limit of {} shards per cache; raise --rows-per-shard",
                dataset.rows,
                cfg.rows_per_shard,
                manifest::MAX_SHARDS
            ),
        ));
    }
    let encoding = encoding_of(cfg.encoding);
    let hidden_states = hidden_states(cfg, inputs)?;
    let identity = identity(cfg, inputs, &dataset, &encoding, &hidden_states);
    let fingerprint = manifest::sha256_canonical_json(&identity);
    let (teacher, tok) = (&inputs.teacher, inputs.tok.as_ref());
    Ok(Manifest {
        schema_version: SCHEMA_VERSION,
        complete: false,
        part: cfg.part,
        tool: ToolInfo { name: "distill".into(), version: env!("CARGO_PKG_VERSION").into() },
        task: teacher.task,
        teacher: teacher.manifest_info(file_name(&cfg.teacher)),
        tokenizer: tok.map(|t| TokenizerInfo { file: file_name(&t.path), sha256: t.sha256.clone(), vocab_size: t.vocab_size() }),
        vocab_size: teacher.vocab_size,
        top_k: inputs.top_k,
        temperature: cfg.temperature,
        positions: inputs.positions,
        encoding,
        dataset,
        text: inputs.text_columns.clone(),
        features: inputs.columns.iter().filter(|c| c.kind == Kind::Numbers).map(|c| c.name.clone()).collect(),
        label_column: inputs.label_column.clone(),
        sampled: cfg.sampled,
        hidden_states,
        generation: None,
        rows_per_shard: cfg.rows_per_shard,
        fingerprint,
        settings: serde_json::json!({ "given": cfg.settings, "identity": identity }),
        command: opts.command.clone(),
        totals: Totals::default(),
        shards: Vec::new(),
        checksum: String::new(),
    })
}

/// The stored hidden states: each `--hidden-states` output, at its own width or through
/// the `--hidden-dim` projection (seed 0).
fn hidden_states(cfg: &CacheTeacherConfig, inputs: &Inputs) -> Result<Vec<HiddenStateInfo>> {
    inputs
        .teacher
        .hidden
        .iter()
        .map(|h| {
            if let Some(r) = cfg.hidden_dim
                && r > h.dim
            {
                return Err(Error::Config(format!(
                    "cache.hidden_dim = {r} is wider than the teacher output `{}` ({} values): a projection only narrows",
                    h.name, h.dim
                )));
            }
            Ok(HiddenStateInfo {
                output: h.name.clone(),
                column: schema::hidden_column(&h.name),
                teacher_dim: h.dim,
                dim: cfg.hidden_dim.unwrap_or(h.dim),
                projection_seed: cfg.hidden_dim.map(|_| 0),
            })
        })
        .collect()
}

/// How log-probs are stored: the quantisation step of `delta-u16` (0 for `f32`).
pub(crate) fn encoding_of(logprobs: LogprobEncoding) -> EncodingInfo {
    let step = match logprobs {
        LogprobEncoding::DeltaU16 => schema::DEFAULT_LOGPROB_STEP,
        LogprobEncoding::F32 => 0.0,
    };
    EncodingInfo { logprobs, logprob_step: step, max_abs_error: step / 2.0, compression: format!("zstd({})", writer::ZSTD_LEVEL) }
}

/// Everything the cache's content depends on (its fingerprint is the hash of this).
fn identity(
    cfg: &CacheTeacherConfig,
    inputs: &Inputs,
    dataset: &DatasetInfo,
    encoding: &EncodingInfo,
    hidden: &[HiddenStateInfo],
) -> serde_json::Value {
    let teacher = &inputs.teacher;
    let mut identity = serde_json::json!({
        "schema_version": SCHEMA_VERSION,
        "tool_version": env!("CARGO_PKG_VERSION"),
        "teacher_sha256": teacher.sha256,
        "logits_output": teacher.output_name(),
        "inputs": teacher.inputs_info(),
        "tokenizer_sha256": inputs.tok.as_ref().map(|t| t.sha256.clone()),
        "dataset_sha256": dataset.sha256,
        "columns": inputs.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "top_k": inputs.top_k,
        "temperature": cfg.temperature,
        "positions": inputs.positions,
        "max_seq_len": cfg.text.as_ref().map(|t| t.max_seq_len),
        "encoding": encoding,
        "rows_per_shard": cfg.rows_per_shard,
    });
    // Keys that only some caches have (older fingerprints stay as they were without them).
    if !teacher.external_data.is_empty() {
        identity["teacher_external_data"] = serde_json::json!(teacher.external_data);
    }
    if inputs.selectable.ids < teacher.vocab_size {
        identity["selectable_ids"] = serde_json::json!(inputs.selectable.ids);
    }
    if let Some(s) = cfg.sampled {
        identity["sampled"] = serde_json::json!(s);
    }
    if !hidden.is_empty() {
        identity["hidden_states"] = serde_json::json!(hidden);
    }
    if inputs.text_columns.as_ref().is_some_and(|t| t.token_ids) {
        identity["token_ids"] = serde_json::json!(true);
    }
    if cfg.topk_in != crate::config::TopkIn::Rust {
        identity["topk_in"] = serde_json::json!(cfg.topk_in);
    }
    if let Some(sha) = inputs.text_columns.as_ref().and_then(|t| t.chat_template_sha256.clone()) {
        identity["chat_template_sha256"] = serde_json::json!(sha);
    }
    identity
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

//! A cache's identity: the settings and input hashes its fingerprint covers, and the
//! manifest a run starts from.

use std::path::Path;

use crate::cache::identity::{CacheIdentity, CapturedIdentity, tool_version};
use crate::cache::manifest::{self, CacheContents, DatasetInfo, EncodingInfo, HiddenStateInfo, Manifest, SCHEMA_VERSION, TokenizerInfo};
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
    let (teacher, tok) = (&inputs.teacher, inputs.tok.as_ref());
    let contents = CacheContents {
        part: cfg.part,
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
    };
    Ok(Manifest::new(contents, &identity, Some(&cfg.settings), opts.command.clone()))
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

/// Everything the cache's content depends on (its fingerprint is the hash of this). Every
/// setting is named here: a new one does not compile until it is placed in the identity or
/// said to leave the content as it is.
fn identity(
    cfg: &CacheTeacherConfig,
    inputs: &Inputs,
    dataset: &DatasetInfo,
    encoding: &EncodingInfo,
    hidden: &[HiddenStateInfo],
) -> CacheIdentity {
    let CacheTeacherConfig {
        teacher: _,          // its hash and its external data's, below
        data: _,             // the dataset's hash
        out: _,              // where the cache goes
        text,                // max_seq_len and token_ids here; the tokenizer's and template's hashes, the columns, the positions below
        label_column: _,     // one of the columns read
        top_k: _,            // resolved in `inputs.top_k`
        temperature,         //
        batch_size: _,       // batching does not change a row's soft labels
        max_batch_tokens: _, // nor does the padding budget
        rows_per_shard,      //
        inputs: _,           // how each teacher input is filled, in `inputs`
        output: _,           // the logits output's name
        encoding: _,         // the encoding info
        threads: _,          // scheduling only
        spin: _,             // scheduling only
        device: _,           // where the teacher runs
        topk_in,             //
        part: _,             // every part of a sharded capture shares one identity
        sampled,             //
        hidden_states: _,    // resolved in `hidden`
        hidden_dim: _,       // resolved in `hidden`
        settings: _,         // recorded as given, beside the identity
    } = cfg;
    let teacher = &inputs.teacher;
    let text_columns = inputs.text_columns.as_ref();
    CacheIdentity::Captured(CapturedIdentity {
        schema_version: SCHEMA_VERSION,
        tool_version: tool_version(),
        teacher_sha256: teacher.sha256.clone(),
        logits_output: teacher.output_name().to_string(),
        inputs: teacher.inputs_info().to_vec(),
        tokenizer_sha256: inputs.tok.as_ref().map(|t| t.sha256.clone()),
        dataset_sha256: dataset.sha256.clone(),
        columns: inputs.columns.iter().map(|c| c.name.clone()).collect(),
        top_k: inputs.top_k,
        temperature: *temperature,
        positions: inputs.positions,
        max_seq_len: text.as_ref().map(|t| t.max_seq_len),
        encoding: encoding.clone(),
        rows_per_shard: *rows_per_shard,
        teacher_external_data: teacher.external_data.clone(),
        selectable_ids: (inputs.selectable.ids < teacher.vocab_size).then_some(inputs.selectable.ids),
        sampled: *sampled,
        hidden_states: hidden.to_vec(),
        token_ids: text_columns.is_some_and(|t| t.token_ids),
        topk_in: *topk_in,
        chat_template_sha256: text_columns.and_then(|t| t.chat_template_sha256.clone()),
    })
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

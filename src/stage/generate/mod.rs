//! `distill generate`: sequence-level distillation data. The teacher writes completions of
//! the prompts (greedy, or sampled at a temperature with top-p, each draw seeded by the
//! row, sample and step, not by the batching), and the logits that chose each token
//! are cached as its soft label, from the same forward passes.
//!
//! Out: `OUT/generated.parquet` (prompt, completion, prompt_ids, completion_ids,
//! stop_reason, row, sample) and `OUT/cache`, whose text columns are the token ids, so
//! `train-student` trains on exactly the generated tokens. The work goes shard by shard:
//! each shard's sequences are written as a part of the dataset and a cache shard, and the
//! partial manifest records them, so a rerun of the same command resumes after the last
//! finished shard; the parts become one file when the last shard is done.
//!
//! The steps: load the tokenizer and the teacher, count the prompts, make the cache's
//! identity, decide what the output directory holds, then decode and write the shards left,
//! reading the prompts as each shard needs them (only one shard's sequences are held).

mod decode;
mod output;
mod prompts;
mod student;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cache::identity::{CacheIdentity, GeneratedIdentity, tool_version};
use crate::cache::manifest::{self, CacheContents, DatasetInfo, EncodingInfo, GenerationInfo, Manifest, SCHEMA_VERSION, TokenizerInfo};
use crate::cache::out_dir::{ManifestNames, OutState, prepare_out_dir};
use crate::cache::{LogprobEncoding, Positions, Task};
use crate::chat::ChatTemplate;
use crate::config::{GenerateConfig, Generator, KvCache, PromptSource};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::teacher::{InputMapping, Teacher, TopKScratch};
use crate::text::{TextColumns, Tokenizer};

use super::cache_teacher::{CacheSummary, RunOptions, Timings};
use decode::Decoder;

pub use crate::config::{CACHE_DIR, COMPLETION_LOGPROBS, GENERATED_FILE};
pub use student::GENERATION_FILE;
/// The dataset's parts while a run goes, one per cache shard.
pub const PARTS_DIR: &str = "generated.parts";

/// What a run made.
#[derive(Debug)]
pub struct GenerateSummary {
    pub dataset: PathBuf,
    pub sequences: u64,
    /// Tokens generated, in all (= the cache's positions).
    pub tokens: u64,
    pub stopped_at_eos: u64,
    /// Decoded with the export's KV cache.
    pub kv_cache: bool,
    /// This run's tokens and the seconds spent decoding them (0 when resumed complete), of
    /// which on soft labels and picking tokens (the rest is the teacher and its inputs).
    pub tokens_this_run: u64,
    pub decode_seconds: f64,
    pub label_seconds: f64,
    pub seconds: f64,
    /// The soft labels' cache (the teacher's generation; a student's writes none).
    pub cache: Option<CacheSummary>,
    /// What the user should know (the teacher fell back to the CPU, no KV cache, prompts cut).
    pub warnings: Vec<String>,
}

/// Generate, cache the soft labels, write the dataset; or, with a student as the
/// generator, write its completions ([`student::generate`]).
pub fn generate(cfg: &GenerateConfig, opts: &RunOptions) -> Result<GenerateSummary> {
    match &cfg.model {
        Generator::Teacher(teacher) => generate_with_teacher(cfg, teacher, opts),
        Generator::Student(dir) => student::generate(cfg, dir, opts),
    }
}

fn generate_with_teacher(cfg: &GenerateConfig, teacher_path: &Path, opts: &RunOptions) -> Result<GenerateSummary> {
    let inputs = [("--data", cfg.data.as_path()), ("--teacher", teacher_path), ("--tokenizer", cfg.tokenizer.as_path())];
    crate::untrusted::refuse_overlap(("--out", &cfg.out), &inputs)?;
    let started = Instant::now();
    let tok = load_tokenizer(cfg)?;
    let eos = end_ids(cfg, teacher_path, &tok)?;
    let mut teacher = load_teacher(cfg, teacher_path, opts)?;
    let mut warnings: Vec<String> = teacher.device_note.iter().cloned().collect();
    let (kv_cache, rerun_note) = use_kv_cache(cfg, &teacher);
    warnings.extend(rerun_note);
    let selectable = tok.vocab_size().min(teacher.vocab_size);
    let top_k = top_k(cfg, selectable)?;
    let sequences = prompts::count(cfg)?;
    let cache_dir = cfg.out.join(CACHE_DIR);
    let _lock = crate::lock::DirLock::acquire(&cfg.out, ".generate", "a generate run")?;
    let resolved = Resolved { eos: &eos, kv_cache, top_k, selectable };
    let mut man = new_manifest(cfg, teacher_path, opts, &teacher, &tok, &resolved, sequences)?;
    let names = ManifestNames::of(None);
    let resumed = match prepare_out_dir(&cache_dir, &man, opts.overwrite, &names, manifest::PartInfo { index: 0, count: 1 })? {
        OutState::Complete(existing) => return already_complete(cfg, &cache_dir, existing, started),
        OutState::Partial(existing, _) => keep_shards_with_parts(cfg, &mut man, existing),
        OutState::Fresh => 0,
    };
    let parts = start_outputs(cfg, &cache_dir, &tok)?;

    let mut decoder = Decoder {
        cfg,
        eos,
        pad: tok.pad_id,
        selectable,
        top_k,
        scratch: TopKScratch::default(),
        row: Vec::with_capacity(teacher.vocab_size),
        label_seconds: 0.0,
    };
    let per = cfg.rows_per_shard as usize;
    let shards = sequences.div_ceil(cfg.rows_per_shard) as usize;
    let progress = Progress::new(sequences, "generating", opts.quiet);
    progress.set_position((resumed * per) as u64);
    let mut prompts = prompts::Prompts::open(cfg, &tok)?;
    prompts.skip(resumed * per)?;
    let mut tally = Tally::default();
    for index in resumed..shards {
        let mut shard = prompts.take(per)?;
        for batch in shard.chunks_mut(cfg.batch_size) {
            decode_batch(&mut decoder, &mut teacher, batch, kv_cache, &mut tally)?;
            progress.inc(batch.len() as u64, tally.tokens, tally.seconds, tally.rows);
        }
        record_shard(&cache_dir, &parts, &names, &mut man, index, &shard, &tok)?;
        if let Some(hook) = &opts.on_shard {
            (hook.0)()?;
        }
    }
    progress.finish();
    let cut = prompts.finish(sequences)?;
    warnings.extend((cut > 0).then(|| {
        format!(
            "{cut} prompts were longer than max_seq_len - 1 = {} tokens: their first tokens were cut \
             (prompt_ids holds what the teacher saw; the prompt column the whole text)",
            cfg.max_seq_len - 1
        )
    }));
    man.totals.truncated_rows = cut * u64::from(cfg.samples);
    let cache = finish(cfg, &cache_dir, &names, &mut man, shards, resumed, started)?;
    Ok(GenerateSummary {
        dataset: cfg.out.join(GENERATED_FILE),
        sequences: man.totals.rows,
        tokens: man.totals.positions,
        stopped_at_eos: man.generation.as_ref().map_or(0, |g| g.stopped_at_eos),
        kv_cache,
        tokens_this_run: tally.tokens,
        decode_seconds: tally.seconds,
        label_seconds: decoder.label_seconds,
        seconds: started.elapsed().as_secs_f64(),
        cache: Some(cache),
        warnings,
    })
}

/// The cache's tokenizer, and the directory of the dataset's parts (returned).
fn start_outputs(cfg: &GenerateConfig, cache_dir: &Path, tok: &Tokenizer) -> Result<PathBuf> {
    let bytes = crate::untrusted::read(&tok.path, crate::untrusted::Cap::Tokenizer)?;
    manifest::write_atomic(&cache_dir.join(manifest::TOKENIZER_FILE), &bytes)?;
    let parts = cfg.out.join(PARTS_DIR);
    std::fs::create_dir_all(&parts).map_err(|e| Error::io(&parts, e))?;
    Ok(parts)
}

/// What this run decoded: tokens, sequences and the seconds it took.
#[derive(Default)]
struct Tally {
    tokens: u64,
    rows: u64,
    seconds: f64,
}

/// Decode one batch of sequences to their ends, with the KV cache or by rerunning.
fn decode_batch(
    decoder: &mut Decoder<'_>,
    teacher: &mut Teacher,
    batch: &mut [decode::Sequence],
    kv_cache: bool,
    tally: &mut Tally,
) -> Result<()> {
    let t = Instant::now();
    if kv_cache {
        decoder.with_past(teacher, batch)?
    } else {
        decoder.rerun(teacher, batch)?
    }
    tally.seconds += t.elapsed().as_secs_f64();
    tally.tokens += batch.iter().map(|s| s.generated.len() as u64).sum::<u64>();
    tally.rows += batch.len() as u64;
    Ok(())
}

/// Shard `index`'s sequences as a part of the dataset and a cache shard, recorded in the
/// partial manifest: once this returns, a rerun resumes after them.
fn record_shard(
    cache_dir: &Path,
    parts: &Path,
    names: &ManifestNames,
    man: &mut Manifest,
    index: usize,
    shard: &[decode::Sequence],
    tok: &Tokenizer,
) -> Result<()> {
    output::write_part(&output::part_path(parts, index), shard, tok, false)?;
    let info = output::write_shard(cache_dir, man, index, index as u64 * man.rows_per_shard, shard)?;
    man.totals.rows += shard.len() as u64;
    man.totals.positions += info.positions;
    man.shards.push(info);
    man.write_atomic(cache_dir, &names.partial)
}

/// The tokenizer, with the chat template when the prompts are conversations.
fn load_tokenizer(cfg: &GenerateConfig) -> Result<Tokenizer> {
    let mut tok = Tokenizer::load(&cfg.tokenizer)?;
    if let PromptSource::Messages { chat_template, .. } = &cfg.prompts {
        tok.chat = Some(ChatTemplate::find(chat_template.as_deref(), &cfg.tokenizer)?);
    }
    Ok(tok)
}

/// The teacher, which must be a causal LM.
fn load_teacher(cfg: &GenerateConfig, path: &Path, opts: &RunOptions) -> Result<Teacher> {
    let mapping = InputMapping { tokens: true, ..InputMapping::default() };
    // Spinning intra-op threads: decoding steps are many short runs (measured at 2 threads
    // on the with-past fixture: the rerun path 0.77-0.96x raw ONNX Runtime without, 1.05x with).
    let teacher = Teacher::load(path, &mapping, cfg.threads, true, opts.ort_lib.as_deref(), cfg.device)?;
    if teacher.task != Task::CausalLm {
        return Err(Error::teacher(path, "outputs [batch, classes] logits: generate needs a causal LM ([batch, seq, vocab])"));
    }
    Ok(teacher)
}

/// Decode with the KV cache when the export has one and it is not turned off; otherwise a
/// note that each token reruns the whole sequence.
fn use_kv_cache(cfg: &GenerateConfig, teacher: &Teacher) -> (bool, Option<String>) {
    let kv = cfg.kv_cache == KvCache::Auto && teacher.has_kv_cache();
    if kv {
        return (true, None);
    }
    let why = if cfg.kv_cache == KvCache::Off {
        "--kv-cache off"
    } else {
        "the export has no past_key_values inputs with present outputs, attention_mask and position_ids (export with \
         `optimum-cli export onnx --task text-generation-with-past` for them)"
    };
    (false, Some(format!("each new token reruns the whole sequence through the teacher ({why}): slower than decoding with a KV cache")))
}

/// `--cache-top-k`, at most the ids a soft label may name; by default 64 or fewer.
fn top_k(cfg: &GenerateConfig, selectable: usize) -> Result<usize> {
    match cfg.top_k {
        Some(k) if k > selectable => Err(Error::Config(format!(
            "generate.cache_top_k = {k} is larger than the {selectable} ids the tokenizer and the teacher share"
        ))),
        Some(k) => Ok(k),
        None => Ok(selectable.min(crate::config::defaults::generate::CACHE_TOP_K)),
    }
}

/// The ids that end a sequence: `--eos-id`; else `eos_token_id` (one or a list) of the
/// `generation_config.json` beside the teacher (as Optimum exports it: Qwen's lists
/// `<|im_end|>` and `<|endoftext|>`); else `eos_token` of the `tokenizer_config.json` beside
/// the tokenizer; else the first of the usual names the tokenizer has.
fn end_ids(cfg: &GenerateConfig, model: &Path, tok: &Tokenizer) -> Result<Vec<u32>> {
    let vocab = tok.vocab_size();
    if let Some(id) = cfg.eos {
        if id as usize >= vocab {
            return Err(Error::Config(format!("generate.eos_id = {id} is outside the tokenizer's {vocab} tokens")));
        }
        return Ok(vec![id]);
    }
    let beside = |file: &Path, name: &str| crate::integrity::parent_dir(file).join(name);
    let generation_config = beside(model, "generation_config.json");
    if let Some(g) = optional_json(&generation_config)? {
        let ids = eos_ids_of(&g["eos_token_id"], vocab).map_err(|m| Error::Config(format!("{}: {m}", generation_config.display())))?;
        if !ids.is_empty() {
            return Ok(ids);
        }
    }
    if let Some(c) = optional_json(&beside(&cfg.tokenizer, "tokenizer_config.json"))? {
        let name = c["eos_token"].as_str().or_else(|| c["eos_token"]["content"].as_str()).map(str::to_string);
        if let Some(id) = name.and_then(|n| tok.inner.token_to_id(&n)) {
            return Ok(vec![id]);
        }
    }
    Ok(["<|eos|>", "</s>", "<|endoftext|>", "<|im_end|>", "<eos>", "<|end_of_text|>", "<|eot_id|>"]
        .iter()
        .find_map(|t| tok.inner.token_to_id(t))
        .into_iter()
        .collect())
}

/// A JSON file beside the teacher or tokenizer, if there is one; one that is there but is not
/// a readable JSON file is an error, not a silence.
fn optional_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let bytes = crate::untrusted::read(path, crate::untrusted::Cap::Settings)?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", path.display())))
}

/// `eos_token_id` of a `generation_config.json`: absent (`null`), one id or a list, each a
/// token of the `vocab` the tokenizer has.
fn eos_ids_of(v: &serde_json::Value, vocab: usize) -> std::result::Result<Vec<u32>, String> {
    let items: Vec<&serde_json::Value> = match v {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    items
        .into_iter()
        .map(|x| match x.as_u64().and_then(|id| u32::try_from(id).ok()) {
            Some(id) if (id as usize) < vocab => Ok(id),
            _ => Err(format!("eos_token_id {x} is not a token id of the tokenizer's {vocab} tokens; pass --eos-id to choose one")),
        })
        .collect()
}

/// What `new_manifest` needs beyond the config: the end-of-sequence ids, whether the KV
/// cache decodes, the cache's top-k and the ids it may choose from.
struct Resolved<'a> {
    eos: &'a [u32],
    kv_cache: bool,
    top_k: usize,
    selectable: usize,
}

/// The cache's manifest before any shard: its identity is the generation's (the teacher,
/// tokenizer, prompts and every setting), since they decide the generated dataset; its
/// `dataset` is filled in when that dataset is complete.
fn new_manifest(
    cfg: &GenerateConfig,
    teacher_path: &Path,
    opts: &RunOptions,
    teacher: &Teacher,
    tok: &Tokenizer,
    r: &Resolved<'_>,
    sequences: u64,
) -> Result<Manifest> {
    let prompts = DatasetInfo::of(&cfg.data)?;
    let encoding = super::cache_teacher::encoding_of(LogprobEncoding::DeltaU16);
    let identity = identity(cfg, teacher, tok, r, &prompts, &encoding);
    let generation = GenerationInfo {
        prompts,
        prompt_column: cfg.prompts.column().to_string(),
        chat: matches!(cfg.prompts, PromptSource::Messages { .. }),
        dataset_file: format!("../{GENERATED_FILE}"),
        max_new_tokens: cfg.max_new_tokens,
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        samples_per_prompt: cfg.samples,
        seed: cfg.seed,
        eos_ids: r.eos.to_vec(),
        kv_cache: r.kv_cache,
        stopped_at_eos: 0,
    };
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let contents = CacheContents {
        part: None,
        task: Task::CausalLm,
        teacher: teacher.manifest_info(file_name(teacher_path)),
        tokenizer: Some(TokenizerInfo { file: file_name(&tok.path), sha256: tok.sha256.clone(), vocab_size: tok.vocab_size() }),
        vocab_size: teacher.vocab_size,
        top_k: r.top_k,
        temperature: cfg.soft_temperature,
        positions: Positions::Completion,
        encoding,
        // The generated dataset, known once it is complete.
        dataset: DatasetInfo {
            file: GENERATED_FILE.into(),
            format: "parquet".into(),
            sha256: String::new(),
            rows: sequences,
            files: vec![],
        },
        text: Some(TextColumns {
            text: None,
            prompt: Some("prompt_ids".into()),
            completion: Some("completion_ids".into()),
            messages: None,
            conversational: false,
            token_ids: true,
            chat_template_sha256: None,
            positions: Positions::Completion,
            max_seq_len: cfg.max_seq_len,
        }),
        features: Vec::new(),
        label_column: None,
        sampled: None,
        hidden_states: Vec::new(),
        generation: Some(generation),
        rows_per_shard: cfg.rows_per_shard,
    };
    Ok(Manifest::new(contents, &identity, None, opts.command.clone()))
}

/// Everything the generated dataset and its soft labels depend on. Every setting is named
/// here: a new one does not compile until it is placed in the identity or said to leave
/// the content as it is.
fn identity(
    cfg: &GenerateConfig,
    teacher: &Teacher,
    tok: &Tokenizer,
    r: &Resolved<'_>,
    prompts: &DatasetInfo,
    encoding: &EncodingInfo,
) -> CacheIdentity {
    let GenerateConfig {
        model: _,     // the teacher: its hash and its external data's
        tokenizer: _, // its hash, and its chat template's
        data: _,      // the prompts' hash
        prompts: source,
        out: _, // where it goes
        max_new_tokens,
        temperature,
        top_p,
        samples,
        seed,
        batch_size: _, // each draw is seeded by row, sample and step, not by the batching
        max_seq_len,
        eos: _,   // resolved in `r.eos`
        top_k: _, // resolved in `r.top_k`
        soft_temperature,
        rows_per_shard,
        kv_cache: _, // resolved in `r.kv_cache`
        threads: _,  // scheduling only
        device: _,   // where the teacher runs
    } = cfg;
    CacheIdentity::Generated(GeneratedIdentity {
        schema_version: SCHEMA_VERSION,
        tool_version: tool_version(),
        generated: true,
        teacher_sha256: teacher.sha256.clone(),
        teacher_external_data: teacher.external_data.clone(),
        logits_output: teacher.output_name().to_string(),
        inputs: teacher.inputs_info().to_vec(),
        tokenizer_sha256: tok.sha256.clone(),
        chat_template_sha256: tok.chat.as_ref().map(|c| c.sha256.clone()),
        prompts_sha256: prompts.sha256.clone(),
        prompt_column: source.column().to_string(),
        max_new_tokens: *max_new_tokens,
        temperature: *temperature,
        top_p: *top_p,
        samples_per_prompt: *samples,
        seed: *seed,
        eos_ids: r.eos.to_vec(),
        kv_cache: r.kv_cache,
        max_seq_len: *max_seq_len,
        top_k: r.top_k,
        soft_temperature: *soft_temperature,
        selectable_ids: r.selectable,
        encoding: encoding.clone(),
        rows_per_shard: *rows_per_shard,
    })
}

/// Resume after the finished shards whose dataset part is on disk too (a shard is written
/// after its part, so only a part removed by hand is missing); returns the first shard to do.
fn keep_shards_with_parts(cfg: &GenerateConfig, man: &mut Manifest, existing: Manifest) -> usize {
    let parts = cfg.out.join(PARTS_DIR);
    for (index, shard) in existing.shards.into_iter().enumerate() {
        if !output::part_path(&parts, index).is_file() {
            break;
        }
        man.totals.rows += shard.rows;
        man.totals.positions += shard.positions;
        man.shards.push(shard);
    }
    man.shards.len()
}

/// The last step: the parts as one dataset file, the manifest complete and pointing at it,
/// the parts removed.
fn finish(
    cfg: &GenerateConfig,
    cache_dir: &Path,
    names: &ManifestNames,
    man: &mut Manifest,
    shards: usize,
    resumed: usize,
    started: Instant,
) -> Result<CacheSummary> {
    let parts_dir = cfg.out.join(PARTS_DIR);
    let parts: Vec<PathBuf> = (0..shards).map(|i| output::part_path(&parts_dir, i)).collect();
    let dataset = cfg.out.join(GENERATED_FILE);
    let (eos, ..) = output::assemble(&parts, &dataset, false)?;
    man.dataset = DatasetInfo::of(&dataset)?;
    if let Some(g) = &mut man.generation {
        g.stopped_at_eos = eos;
    }
    man.publish(cache_dir, &names.complete, Some(&names.partial))?;
    std::fs::remove_dir_all(&parts_dir).map_err(|e| Error::io(&parts_dir, e))?;
    Ok(cache_summary(cache_dir, man, resumed, started.elapsed().as_secs_f64(), false))
}

/// A run whose cache was complete before it: the dataset must be the one the cache records.
fn already_complete(cfg: &GenerateConfig, cache_dir: &Path, man: Manifest, started: Instant) -> Result<GenerateSummary> {
    let dataset = cfg.out.join(GENERATED_FILE);
    let found = if dataset.is_file() { DatasetInfo::of(&dataset)?.difference(&man.dataset) } else { Some("it is missing".into()) };
    if let Some(why) = found {
        return Err(Error::data(
            &dataset,
            format!("is not the dataset the complete cache in {} was generated with ({why}); rerun with --overwrite", cache_dir.display()),
        ));
    }
    // Left by a run stopped between the complete manifest and its cleanup.
    let parts = cfg.out.join(PARTS_DIR);
    if parts.exists() {
        std::fs::remove_dir_all(&parts).map_err(|e| Error::io(&parts, e))?;
    }
    let partial = cache_dir.join(manifest::PARTIAL_MANIFEST_FILE);
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    Ok(GenerateSummary {
        dataset,
        sequences: man.totals.rows,
        tokens: man.totals.positions,
        stopped_at_eos: man.generation.as_ref().map_or(0, |g| g.stopped_at_eos),
        kv_cache: man.generation.as_ref().is_some_and(|g| g.kv_cache),
        tokens_this_run: 0,
        decode_seconds: 0.0,
        label_seconds: 0.0,
        seconds: started.elapsed().as_secs_f64(),
        cache: Some(cache_summary(cache_dir, &man, man.shards.len(), 0.0, true)),
        warnings: Vec::new(),
    })
}

fn cache_summary(dir: &Path, man: &Manifest, resumed: usize, seconds: f64, already_complete: bool) -> CacheSummary {
    let computed = &man.shards[resumed.min(man.shards.len())..];
    CacheSummary {
        dir: dir.to_path_buf(),
        rows: man.totals.rows,
        positions: man.totals.positions,
        shards: man.shards.len(),
        bytes: man.shards.iter().map(|s| s.bytes).sum(),
        resumed_shards: resumed,
        rows_computed: computed.iter().map(|s| s.rows).sum(),
        tokens_computed: computed.iter().map(|s| s.positions).sum(),
        seconds,
        already_complete,
        warnings: Vec::new(),
        timings: Timings::default(),
    }
}

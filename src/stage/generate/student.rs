//! `distill generate --student`: the student writes completions of the prompts (on-policy
//! data), decoded with the Burn decoder's KV cache (a prefill of the right-padded prompts,
//! then one token per row per step), greedy or drawn exactly as the teacher's generate draws
//! (seeded by row, sample and step, so the draws do not depend on the batching).
//!
//! Out: `OUT/generated.parquet` in the teacher's generate layout plus `completion_logprobs`
//! (the student's log-prob at temperature 1 of each token it wrote, what a
//! staleness-corrected on-policy loss needs) and `OUT/generation.json` (what made it). No
//! cache: `distill cache-teacher --token-ids` over the dataset is the teacher's scoring.
//!
//! Shard by shard: each shard's sequences are written as a part (`generated.parts/`) beside
//! the identity of the run, so a rerun of the same command resumes after the last part; the
//! parts become one file when the last is done.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::config::{GenerateConfig, PromptSource};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::student::Student;
use crate::student::decoder::Decoder;
use crate::student::load::{LoadedStudent, Reading};
use crate::text::Tokenizer;

use super::decode::{Sequence, pick};
use super::{GENERATED_FILE, GenerateSummary, PARTS_DIR, RunOptions, output, prompts};

/// What a student's generation records beside its dataset.
pub const GENERATION_FILE: &str = "generation.json";
/// The identity of the run the parts belong to, while it goes.
const PARTS_IDENTITY: &str = "identity.json";

/// Everything a student's generated dataset depends on. Every setting is named where it is
/// built: a new one does not compile until it is placed here or said to leave the dataset
/// as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudentGeneration {
    pub tool_version: String,
    /// The student's files (weights, architecture, tokenizer), each by name and hash.
    pub student_files: Vec<(String, String)>,
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
    pub max_seq_len: usize,
    pub rows_per_shard: u64,
}

/// `OUT/generation.json`: the identity and what the run made.
#[derive(Debug, Serialize, Deserialize)]
struct GenerationRecord {
    identity: StudentGeneration,
    dataset_sha256: String,
    sequences: u64,
    tokens: u64,
    stopped_at_eos: u64,
}

/// Generate with the student in `dir`.
pub(super) fn generate(cfg: &GenerateConfig, dir: &Path, opts: &RunOptions) -> Result<GenerateSummary> {
    let inputs = [("--data", cfg.data.as_path()), ("--student", dir), ("--tokenizer", cfg.tokenizer.as_path())];
    crate::untrusted::refuse_overlap(("--out", &cfg.out), &inputs)?;
    let started = Instant::now();
    let device = Device::flex();
    let (model, tok) = load(cfg, dir, &device)?;
    let eos = super::end_ids(cfg, &dir.join("config.json"), &tok)?;
    let identity = identity(cfg, dir, &tok, &eos)?;
    let sequences = prompts::count(cfg)?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let _lock = crate::lock::DirLock::acquire(&cfg.out, ".generate", "a generate run")?;
    if let Some(done) = already_complete(cfg, &identity, opts.overwrite)? {
        return Ok(summary(cfg, done, 0, 0.0, started, Vec::new()));
    }
    let parts = cfg.out.join(PARTS_DIR);
    let resumed = resume_point(&parts, &identity, opts.overwrite)?;
    let per = cfg.rows_per_shard as usize;
    let shards = sequences.div_ceil(cfg.rows_per_shard) as usize;
    let selectable = tok.vocab_size().min(model_vocab(&model));
    let decoder = StudentDecoder { cfg, model: &model, eos: &eos, pad: tok.pad_id, selectable, device: &device };
    let progress = Progress::new(sequences, "generating", opts.quiet);
    progress.set_position((resumed * per) as u64);
    let mut prompts = prompts::Prompts::open(cfg, &tok)?;
    prompts.skip(resumed * per)?;
    let (mut tokens, mut rows, t0) = (0u64, 0u64, Instant::now());
    for index in resumed..shards {
        let mut shard = prompts.take(per)?;
        for batch in shard.chunks_mut(cfg.batch_size) {
            decoder.decode(batch);
            tokens += batch.iter().map(|s| s.generated.len() as u64).sum::<u64>();
            rows += batch.len() as u64;
            progress.inc(batch.len() as u64, tokens, t0.elapsed().as_secs_f64(), rows);
        }
        output::write_part(&output::part_path(&parts, index), &shard, &tok, true)?;
    }
    progress.finish();
    let cut = prompts.finish(sequences)?;
    let record = finish(cfg, &parts, shards, identity)?;
    let warnings = (cut > 0)
        .then(|| format!("{cut} prompts were longer than max_seq_len - 1 = {} tokens: their first tokens were cut", cfg.max_seq_len - 1))
        .into_iter()
        .collect();
    Ok(summary(cfg, record, tokens, t0.elapsed().as_secs_f64(), started, warnings))
}

/// The student, which must be a causal-LM decoder, and the prompts' tokenizer (the one in
/// its directory unless `--tokenizer` names the same vocabulary in another file).
fn load(cfg: &GenerateConfig, dir: &Path, device: &Device) -> Result<(Student, Tokenizer)> {
    let reading = Reading { text_column: Reading::TEXT_COLUMN.into(), max_seq_len: cfg.max_seq_len };
    let st = LoadedStudent::open(dir, &reading, device)?;
    if !matches!(st.model, Student::Decoder(_)) {
        return Err(Error::Config(format!("{}: generate --student needs a causal-LM (decoder) student", dir.display())));
    }
    let own = dir.join("tokenizer.json");
    let mut tok = Tokenizer::load(&cfg.tokenizer)?;
    if cfg.tokenizer != own && own.is_file() {
        crate::text::same_tokenizer(&own, &tok)?;
    }
    if let PromptSource::Messages { chat_template, .. } = &cfg.prompts {
        tok.chat = Some(crate::chat::ChatTemplate::find(chat_template.as_deref(), &cfg.tokenizer)?);
    }
    let vocab = model_vocab(&st.model);
    if tok.vocab_size() > vocab {
        return Err(Error::Config(format!(
            "{}: the tokenizer has {} ids but the student's embedding {vocab}: its prompts could name ids the student has no row for",
            cfg.tokenizer.display(),
            tok.vocab_size()
        )));
    }
    Ok((st.model, tok))
}

fn model_vocab(model: &Student) -> usize {
    match model {
        Student::Decoder(d) => d.embed.weight.dims()[0],
        _ => unreachable!("checked by load"),
    }
}

/// The run's identity, built from every setting.
fn identity(cfg: &GenerateConfig, dir: &Path, tok: &Tokenizer, eos: &[u32]) -> Result<StudentGeneration> {
    let GenerateConfig {
        model: _,     // the student's files, hashed below
        tokenizer: _, // its hash, and its chat template's
        data,
        prompts: source,
        out: _, // where it goes
        max_new_tokens,
        temperature,
        top_p,
        samples,
        seed,
        batch_size: _, // each draw is seeded by row, sample and step, not by the batching
        max_seq_len,
        eos: _, // resolved in `eos`
        top_k: _,
        soft_temperature: _,
        kv_cache: _,
        device: _, // the teacher's settings, refused with --student
        rows_per_shard,
        threads: _, // scheduling only
    } = cfg;
    Ok(StudentGeneration {
        tool_version: crate::cache::identity::tool_version(),
        student_files: student_files(dir)?,
        tokenizer_sha256: tok.sha256.clone(),
        chat_template_sha256: tok.chat.as_ref().map(|c| c.sha256.clone()),
        prompts_sha256: crate::cache::manifest::DatasetInfo::of(data)?.sha256,
        prompt_column: source.column().to_string(),
        max_new_tokens: *max_new_tokens,
        temperature: *temperature,
        top_p: *top_p,
        samples_per_prompt: *samples,
        seed: *seed,
        eos_ids: eos.to_vec(),
        max_seq_len: *max_seq_len,
        rows_per_shard: *rows_per_shard,
    })
}

/// The files that decide the student's outputs: its architecture, weights and tokenizer,
/// by name and hash, in name order (a directory's other files do not count).
fn student_files(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let counts = name.ends_with(".safetensors")
            || name.ends_with(".bpk")
            || ["config.json", "student.json", "tokenizer.json", "model.safetensors.index.json"].contains(&name.as_str());
        if counts && path.is_file() {
            files.push((name, crate::integrity::sha256_file(&path)?));
        }
    }
    files.sort();
    Ok(files)
}

/// A dataset already complete for this identity (`None`: there is work to do). A
/// different one is replaced only with `--overwrite`.
fn already_complete(cfg: &GenerateConfig, identity: &StudentGeneration, overwrite: bool) -> Result<Option<GenerationRecord>> {
    let record_path = cfg.out.join(GENERATION_FILE);
    if std::fs::symlink_metadata(&record_path).is_err() {
        // A teacher's generation (its dataset and cache), or a dataset from elsewhere.
        let theirs: Vec<PathBuf> = [GENERATED_FILE, super::CACHE_DIR].iter().map(|n| cfg.out.join(n)).filter(|p| p.exists()).collect();
        if let Some(first) = theirs.first() {
            if !overwrite {
                return Err(Error::Config(format!(
                    "{} holds another generation ({} is not this student's); pass --overwrite to replace it",
                    cfg.out.display(),
                    first.display()
                )));
            }
            for p in &theirs {
                let removed = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
                removed.map_err(|e| Error::io(p, e))?;
            }
        }
        return Ok(None);
    }
    let bytes = crate::untrusted::read(&record_path, crate::untrusted::Cap::Settings)?;
    let record: GenerationRecord =
        serde_json::from_slice(&bytes).map_err(|e| Error::Config(format!("{}: not a generation record: {e}", record_path.display())))?;
    let dataset = cfg.out.join(GENERATED_FILE);
    if record.identity != *identity {
        if overwrite {
            return Ok(None);
        }
        return Err(Error::Config(format!(
            "{} holds another generation (other student, prompts or settings); pass --overwrite to replace it",
            cfg.out.display()
        )));
    }
    if dataset.is_file() && crate::integrity::sha256_file(&dataset)? == record.dataset_sha256 {
        return Ok(Some(record));
    }
    Ok(None)
}

/// The first shard without a part from this identity's run. Parts of another run are
/// removed with `--overwrite`, refused without; a fresh start removes the dataset and record
/// it replaces.
fn resume_point(parts: &Path, identity: &StudentGeneration, overwrite: bool) -> Result<usize> {
    let id_path = parts.join(PARTS_IDENTITY);
    let json = serde_json::to_vec_pretty(identity).expect("an identity serializes");
    if std::fs::symlink_metadata(&id_path).is_ok() {
        let theirs = crate::untrusted::read(&id_path, crate::untrusted::Cap::Settings)?;
        if theirs == json {
            return Ok((0..).take_while(|&i| output::part_path(parts, i).is_file()).count());
        }
        if !overwrite {
            return Err(Error::Config(format!(
                "{} holds the parts of another generation (other student, prompts or settings); pass --overwrite to replace them",
                parts.display()
            )));
        }
    } else if parts.exists() && !overwrite {
        return Err(Error::Config(format!(
            "{} holds the parts of another generation (not this student's); pass --overwrite to replace them",
            parts.display()
        )));
    }
    if parts.exists() {
        std::fs::remove_dir_all(parts).map_err(|e| Error::io(parts, e))?;
    }
    // The generation this run replaces (its dataset and record), so that a rerun after a
    // kill finds only this run's parts.
    let out = crate::integrity::parent_dir(parts);
    for old in [out.join(GENERATION_FILE), out.join(GENERATED_FILE)] {
        if std::fs::symlink_metadata(&old).is_ok() {
            std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
        }
    }
    std::fs::create_dir_all(parts).map_err(|e| Error::io(parts, e))?;
    crate::integrity::write_atomic(&id_path, &json)?;
    Ok(0)
}

/// The parts as one dataset file and the record beside it; the parts removed.
fn finish(cfg: &GenerateConfig, parts: &Path, shards: usize, identity: StudentGeneration) -> Result<GenerationRecord> {
    let files: Vec<PathBuf> = (0..shards).map(|i| output::part_path(parts, i)).collect();
    let dataset = cfg.out.join(GENERATED_FILE);
    let (stopped_at_eos, sequences, tokens) = output::assemble(&files, &dataset, true)?;
    let record = GenerationRecord { identity, dataset_sha256: crate::integrity::sha256_file(&dataset)?, sequences, tokens, stopped_at_eos };
    let json = serde_json::to_vec_pretty(&record).expect("a record serializes");
    crate::integrity::write_atomic(&cfg.out.join(GENERATION_FILE), &json)?;
    std::fs::remove_dir_all(parts).map_err(|e| Error::io(parts, e))?;
    Ok(record)
}

fn summary(
    cfg: &GenerateConfig,
    r: GenerationRecord,
    tokens_this_run: u64,
    decode_seconds: f64,
    started: Instant,
    warnings: Vec<String>,
) -> GenerateSummary {
    GenerateSummary {
        dataset: cfg.out.join(GENERATED_FILE),
        sequences: r.sequences,
        tokens: r.tokens,
        stopped_at_eos: r.stopped_at_eos,
        kv_cache: true,
        tokens_this_run,
        decode_seconds,
        label_seconds: 0.0,
        seconds: started.elapsed().as_secs_f64(),
        cache: None,
        warnings,
    }
}

/// What every step of a student's decoding needs.
struct StudentDecoder<'a> {
    cfg: &'a GenerateConfig,
    model: &'a Student,
    eos: &'a [u32],
    pad: u32,
    /// Ids a token may be (the tokenizer's; ids past it pad the student's head).
    selectable: usize,
    device: &'a Device,
}

impl StudentDecoder<'_> {
    /// Decode `seqs` to their ends: one prefill of the right-padded prompts, then one token
    /// per sequence per step; a finished sequence is fed padding, its logits ignored.
    ///
    /// # Shapes
    /// - prefill: tokens `[b, longest prompt]`; each step: tokens `[b, 1]`; logits `[b, vocab]`
    fn decode(&self, seqs: &mut [Sequence]) {
        let Student::Decoder(model) = self.model else { unreachable!("checked by load") };
        let b = seqs.len();
        let p = seqs.iter().map(|q| q.prompt.len()).max().unwrap_or(1);
        let mut ids = vec![self.pad as i64; b * p];
        for (i, q) in seqs.iter().enumerate() {
            for (j, &t) in q.prompt.iter().enumerate() {
                ids[i * p + j] = t as i64;
            }
        }
        let lengths: Vec<usize> = seqs.iter().map(|q| q.prompt.len()).collect();
        let (mut logits, mut cache) = model.prefill(Tensor::<2, Int>::from_data(TensorData::new(ids, [b, p]), self.device), &lengths);
        loop {
            self.advance(seqs, logits);
            if seqs.iter().all(|q| q.done.is_some()) {
                return;
            }
            let next: Vec<i64> =
                seqs.iter().map(|q| if q.done.is_none() { *q.generated.last().expect("a token") } else { self.pad } as i64).collect();
            logits = step(model, next, &mut cache, self.device);
        }
    }

    /// One new token for every unfinished sequence from its row of `logits` (`[b, vocab]`):
    /// the token drawn (or the arg-max) among the selectable ids, its log-prob at
    /// temperature 1, then whether the sequence ends.
    fn advance(&self, seqs: &mut [Sequence], logits: Tensor<2>) {
        let vocab = logits.dims()[1];
        let logprobs: Vec<f32> = log_softmax(logits.clone().narrow(1, 0, self.selectable), 1).into_data().try_to_vec().expect("f32 logits");
        let logits: Vec<f32> = logits.into_data().try_to_vec().expect("f32 logits");
        for (i, q) in seqs.iter_mut().enumerate().filter(|(_, q)| q.done.is_none()) {
            let row = &logits[i * vocab..i * vocab + self.selectable];
            let token = pick(row, self.cfg, (q.row, q.sample, q.generated.len() as u32));
            q.generated.push(token);
            q.logprobs.push(logprobs[i * self.selectable + token as usize]);
            if self.eos.contains(&token) {
                q.done = Some("eos");
            } else if q.generated.len() >= self.cfg.max_new_tokens || q.prompt.len() + q.generated.len() >= self.cfg.max_seq_len {
                q.done = Some("length");
            }
        }
    }
}

fn step(model: &Decoder, next: Vec<i64>, cache: &mut crate::student::decoder::KvCache, device: &Device) -> Tensor<2> {
    let b = next.len();
    model.step(Tensor::from_data(TensorData::new(next, [b, 1]), device), cache)
}

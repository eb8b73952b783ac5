//! `distill generate`: sequence-level distillation data. The teacher writes completions of
//! the prompts (greedy, or sampled at a temperature with top-p, seeded per row, sample and
//! step, so the tokens do not depend on the batching), written as a Parquet dataset of
//! prompt + completion; then the soft labels of the generated positions are cached from it
//! exactly as `cache-teacher` caches a prompt/completion dataset (the same code), so
//! `train-student` trains on the pair unchanged.
//!
//! Decoding reruns the whole sequence for each new token (no KV cache: a with-past export
//! is fed an empty past, as `cache-teacher` feeds it), and the soft labels come from a
//! second, teacher-forced pass over the generated text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, ListBuilder, RecordBatch, StringBuilder, UInt32Builder, UInt64Builder};
use arrow::datatypes::{DataType, Field as ArrowField, Schema};

use crate::config::CacheSettings;
use crate::data::{self, Column, Field, Kind};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::rng::Rng;
use crate::teacher::{InputMapping, Teacher, TeacherBatch, TeacherDevice};
use crate::text::Tokenizer;

use super::cache_teacher::{CacheSummary, RunOptions};

/// The generated dataset's file in `--out`.
pub const GENERATED_FILE: &str = "generated.parquet";
/// The cache of the generated positions in `--out`.
pub const CACHE_DIR: &str = "cache";

/// Validated settings of `generate`.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub teacher: PathBuf,
    pub tokenizer: PathBuf,
    pub data: PathBuf,
    pub prompt_column: String,
    pub out: PathBuf,
    pub max_new_tokens: usize,
    /// 0: greedy (the most probable token, the lowest id on ties).
    pub temperature: f32,
    pub top_p: f32,
    pub samples: usize,
    pub seed: u64,
    pub batch_size: usize,
    pub max_seq_len: usize,
    /// End of sequence; `None`: the tokenizer's (`<|eos|>`, `</s>`, `<|endoftext|>`, ...).
    pub eos: Option<u32>,
    /// The cache's top-k and temperature.
    pub top_k: Option<usize>,
    pub soft_temperature: f32,
    pub threads: usize,
}

/// What a run made.
#[derive(Debug)]
pub struct GenerateSummary {
    pub dataset: PathBuf,
    pub sequences: usize,
    pub tokens: usize,
    pub stopped_at_eos: usize,
    pub seconds: f64,
    pub cache: CacheSummary,
}

/// One sequence being generated: dataset row, sample, prompt ids, generated ids.
struct Sequence {
    row: u64,
    sample: u32,
    prompt_text: String,
    prompt: Vec<u32>,
    generated: Vec<u32>,
    done: Option<&'static str>,
}

/// Generate, write the dataset, cache its soft labels.
pub fn generate(cfg: &GenerateConfig, opts: &RunOptions) -> Result<GenerateSummary> {
    let started = std::time::Instant::now();
    let tok = Tokenizer::load(&cfg.tokenizer)?;
    let eos = eos_id(cfg, &tok)?;
    let mapping = InputMapping { tokens: true, ..InputMapping::default() };
    let mut teacher = Teacher::load(&cfg.teacher, &mapping, cfg.threads, false, opts.ort_lib.as_deref(), TeacherDevice::Cpu)?;
    if !opts.quiet {
        eprintln!("generate: each new token reruns the whole sequence through the teacher (no KV cache): slower than with-past decoding");
    }
    let mut seqs = prompts(cfg, &tok)?;
    let progress = Progress::new(seqs.len() as u64, "generating", opts.quiet);
    for chunk in seqs.chunks_mut(cfg.batch_size) {
        decode(cfg, &mut teacher, &tok, eos, chunk)?;
        progress.inc(chunk.len() as u64, 0, started.elapsed().as_secs_f64(), 0);
    }
    progress.finish();
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let dataset = cfg.out.join(GENERATED_FILE);
    write_dataset(&dataset, &seqs, &tok)?;
    let cache = cache_generated(cfg, &dataset, opts)?;
    Ok(GenerateSummary {
        dataset,
        sequences: seqs.len(),
        tokens: seqs.iter().map(|s| s.generated.len()).sum(),
        stopped_at_eos: seqs.iter().filter(|s| s.done == Some("eos")).count(),
        seconds: started.elapsed().as_secs_f64(),
        cache,
    })
}

/// `--eos-id`, else the tokenizer's end-of-sequence token by its usual names.
fn eos_id(cfg: &GenerateConfig, tok: &Tokenizer) -> Result<Option<u32>> {
    if let Some(id) = cfg.eos {
        if id as usize >= tok.vocab_size() {
            return Err(Error::Config(format!("generate.eos_id = {id} is outside the tokenizer's {} tokens", tok.vocab_size())));
        }
        return Ok(Some(id));
    }
    Ok(["<|eos|>", "</s>", "<|endoftext|>", "<|im_end|>", "<eos>", "<|end_of_text|>"].iter().find_map(|t| tok.inner.token_to_id(t)))
}

/// The prompts, each `samples` times, tokenized as the cache tokenizes a prompt (with the
/// tokenizer's special tokens) and cut to leave room for one new token.
fn prompts(cfg: &GenerateConfig, tok: &Tokenizer) -> Result<Vec<Sequence>> {
    let mut seqs = Vec::new();
    for row in data::read_rows(&cfg.data, &[Column::new(&cfg.prompt_column, Kind::Text)])? {
        let row = row?;
        let Field::Text(text) = &row.fields[0] else {
            return Err(Error::data(&cfg.data, format!("row {}: column `{}` is not text", row.index, cfg.prompt_column)));
        };
        let enc = tok
            .inner
            .encode(text.as_str(), true)
            .map_err(|e| Error::Tokenizer { path: cfg.tokenizer.clone(), message: format!("row {}: {e}", row.index) })?;
        let mut prompt = enc.get_ids().to_vec();
        prompt.truncate(cfg.max_seq_len.saturating_sub(1).max(1));
        for sample in 0..cfg.samples as u32 {
            seqs.push(Sequence {
                row: row.index,
                sample,
                prompt_text: text.clone(),
                prompt: prompt.clone(),
                generated: Vec::new(),
                done: None,
            });
        }
    }
    if seqs.is_empty() {
        return Err(Error::data(&cfg.data, "has no rows: there is nothing to generate from"));
    }
    Ok(seqs)
}

/// Decode one batch of sequences to the end: each step runs the unfinished ones, right
/// padded, and appends one token to each.
fn decode(cfg: &GenerateConfig, teacher: &mut Teacher, tok: &Tokenizer, eos: Option<u32>, seqs: &mut [Sequence]) -> Result<()> {
    let vocab = teacher.vocab_size;
    let selectable = tok.vocab_size().min(vocab);
    let path = teacher.path().to_path_buf();
    for step in 0..cfg.max_new_tokens {
        let active: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].done.is_none()).collect();
        if active.is_empty() {
            break;
        }
        let lens: Vec<usize> = active.iter().map(|&i| seqs[i].prompt.len() + seqs[i].generated.len()).collect();
        let s = lens.iter().copied().max().unwrap_or(1);
        let mut ids = vec![tok.pad_id as i64; active.len() * s];
        let mut mask = vec![0i64; active.len() * s];
        for (b, &i) in active.iter().enumerate() {
            for (p, &t) in seqs[i].prompt.iter().chain(&seqs[i].generated).enumerate() {
                ids[b * s + p] = t as i64;
                mask[b * s + p] = 1;
            }
        }
        let next: Vec<u32> =
            teacher.run(&TeacherBatch::Tokens { batch: active.len(), seq: s, ids: &ids, mask: &mask }, |shape, logits, _| {
                if shape != [active.len(), s, vocab] {
                    return Err(Error::teacher(&path, format!("logits have shape {shape:?}, expected [{}, {s}, {vocab}]", active.len())));
                }
                let mut row = Vec::with_capacity(vocab);
                Ok(active
                    .iter()
                    .enumerate()
                    .map(|(b, &i)| {
                        row.clear();
                        let at = (b * s + lens[b] - 1) * vocab;
                        logits.extend_f32(at..at + selectable, &mut row);
                        pick(&row, cfg, (seqs[i].row, seqs[i].sample, step as u32))
                    })
                    .collect())
            })?;
        for (&i, t) in active.iter().zip(next) {
            let seq = &mut seqs[i];
            seq.generated.push(t);
            if Some(t) == eos {
                seq.done = Some("eos");
            } else if seq.generated.len() >= cfg.max_new_tokens || seq.prompt.len() + seq.generated.len() >= cfg.max_seq_len {
                seq.done = Some("length");
            }
        }
    }
    for seq in seqs.iter_mut().filter(|s| s.done.is_none()) {
        seq.done = Some("length");
    }
    Ok(())
}

/// The next token from one position's logits: the arg-max (lowest id on ties) at
/// temperature 0, else a draw from `softmax(logits / T)` cut to its top-p nucleus, seeded by
/// (seed, row, sample, step) alone.
fn pick(logits: &[f32], cfg: &GenerateConfig, (row, sample, step): (u64, u32, u32)) -> u32 {
    if cfg.temperature == 0.0 {
        return logits.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |best, (j, &z)| if z > best.1 { (j, z) } else { best }).0
            as u32;
    }
    let t = cfg.temperature as f64;
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64 / t));
    let mut probs: Vec<(u32, f64)> = logits.iter().enumerate().map(|(j, &z)| (j as u32, (z as f64 / t - max).exp())).collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let (mut kept, mut mass) = (0, 0.0);
    for p in &probs {
        kept += 1;
        mass += p.1 / total;
        if mass >= cfg.top_p as f64 {
            break;
        }
    }
    let kept_total: f64 = probs[..kept].iter().map(|p| p.1).sum();
    let key = splitmix(splitmix(splitmix(splitmix(cfg.seed) ^ row) ^ sample as u64) ^ step as u64);
    let u = (Rng::new(key, 0).next() >> 11) as f64 / (1u64 << 53) as f64 * kept_total;
    let mut acc = 0.0;
    for p in &probs[..kept] {
        acc += p.1;
        if u < acc {
            return p.0;
        }
    }
    probs[kept - 1].0
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `generated.parquet`: prompt, completion (the generated tokens decoded, without the end
/// token), completion_ids (as generated, with it), stop_reason (`eos` or `length`), row,
/// sample; one row per sequence, in (row, sample) order.
fn write_dataset(path: &Path, seqs: &[Sequence], tok: &Tokenizer) -> Result<()> {
    let (mut prompt, mut completion, mut stop) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let mut ids = ListBuilder::new(UInt32Builder::new()).with_field(Arc::new(ArrowField::new("item", DataType::UInt32, false)));
    let (mut row, mut sample) = (UInt64Builder::new(), UInt32Builder::new());
    for s in seqs {
        let text_ids: &[u32] = if s.done == Some("eos") { &s.generated[..s.generated.len() - 1] } else { &s.generated };
        let text = tok.inner.decode(text_ids, true).map_err(|e| Error::Tokenizer {
            path: tok.path.clone(),
            message: format!("row {}: cannot decode the completion: {e}", s.row),
        })?;
        prompt.append_value(&s.prompt_text);
        completion.append_value(text);
        ids.values().append_slice(&s.generated);
        ids.append(true);
        stop.append_value(s.done.unwrap_or("length"));
        row.append_value(s.row);
        sample.append_value(s.sample);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(prompt.finish()),
        Arc::new(completion.finish()),
        Arc::new(ids.finish()),
        Arc::new(stop.finish()),
        Arc::new(row.finish()),
        Arc::new(sample.finish()),
    ];
    let schema = Schema::new(vec![
        ArrowField::new("prompt", DataType::Utf8, false),
        ArrowField::new("completion", DataType::Utf8, false),
        ArrowField::new("completion_ids", DataType::List(Arc::new(ArrowField::new("item", DataType::UInt32, false))), false),
        ArrowField::new("stop_reason", DataType::Utf8, false),
        ArrowField::new("row", DataType::UInt64, false),
        ArrowField::new("sample", DataType::UInt32, false),
    ]);
    let batch = RecordBatch::try_new(Arc::new(schema), columns).expect("columns match the schema");
    let mut bytes = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::try_new(3).expect("valid level")))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props)).map_err(|e| Error::parquet(path, e))?;
    w.write(&batch).map_err(|e| Error::parquet(path, e))?;
    w.close().map_err(|e| Error::parquet(path, e))?;
    crate::integrity::write_atomic(path, &bytes)
}

/// The soft labels of the generated positions: `cache-teacher` over the generated dataset's
/// prompt and completion columns.
fn cache_generated(cfg: &GenerateConfig, dataset: &Path, opts: &RunOptions) -> Result<CacheSummary> {
    let settings = CacheSettings {
        teacher: Some(cfg.teacher.clone()),
        tokenizer: Some(cfg.tokenizer.clone()),
        data: Some(dataset.to_path_buf()),
        out: Some(cfg.out.join(CACHE_DIR)),
        prompt_column: Some("prompt".into()),
        completion_column: Some("completion".into()),
        top_k: cfg.top_k,
        temperature: Some(cfg.soft_temperature),
        max_seq_len: Some(cfg.max_seq_len),
        threads: Some(cfg.threads),
        ..CacheSettings::default()
    };
    super::cache_teacher(&settings.validate()?, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32, top_p: f32) -> GenerateConfig {
        GenerateConfig {
            teacher: PathBuf::new(),
            tokenizer: PathBuf::new(),
            data: PathBuf::new(),
            prompt_column: "prompt".into(),
            out: PathBuf::new(),
            max_new_tokens: 1,
            temperature,
            top_p,
            samples: 1,
            seed: 3,
            batch_size: 1,
            max_seq_len: 16,
            eos: None,
            top_k: None,
            soft_temperature: 1.0,
            threads: 1,
        }
    }

    /// Greedy takes the arg-max (the lowest id on ties); top-p = 0 keeps only the most
    /// probable token; a draw depends on (seed, row, sample, step) alone, and over many
    /// keys its shares follow the softmax (logits ln 1, ln 3: shares 1/4, 3/4, within 0.02
    /// of 4000 draws: six standard errors).
    #[test]
    fn picks_are_greedy_nucleus_or_seeded_draws() {
        assert_eq!(pick(&[0.5, 2.0, 2.0, 1.0], &cfg(0.0, 1.0), (0, 0, 0)), 1);
        assert_eq!(pick(&[0.5, 2.0, 1.0], &cfg(1.0, 0.0), (5, 0, 0)), 1);
        let logits = [1f32.ln(), 3f32.ln()];
        let c = cfg(1.0, 1.0);
        assert_eq!(pick(&logits, &c, (1, 2, 3)), pick(&logits, &c, (1, 2, 3)));
        let ones = (0..4000u32).filter(|&s| pick(&logits, &c, (7, s, 0)) == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.02, "share of the more probable token: {ones}");
    }
}

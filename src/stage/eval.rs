//! `distill eval`: a trained student on held-out data (accuracy, or perplexity over the
//! trained positions), its agreement with the teacher's top-1 from a cache of the same data,
//! and the teacher's own metrics read from such a cache. The teacher is never loaded.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::cache::manifest::{DatasetInfo, TOKENIZER_FILE};
use crate::cache::{CacheReader, Task};
use crate::error::{Error, Result};
use crate::stage::train_student::{PreparedRow, StudentFile, prepare_rows, token_tensor};
use crate::student::{self, Student, StudentArch};
use crate::text::Tokenizer;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct EvalReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Share of positions where the student's top-1 equals the teacher's (from a cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    pub positions: u64,
}

/// Teacher top-1 per (row, position), from a cache of the evaluation data.
fn teacher_top1(cache: &Path, data: &Path) -> Result<HashMap<(u64, u32), u32>> {
    let reader = CacheReader::open(&crate::store::local_copy(cache)?)?;
    if let Some(why) = DatasetInfo::of(data)?.difference(&reader.manifest().dataset) {
        return Err(Error::cache(cache, format!("was not made from {}: {why}", data.display())));
    }
    let mut top = HashMap::new();
    for shard in &reader.manifest().shards {
        for b in reader.read_shard(shard, 8192)? {
            let b = b?;
            for i in 0..b.len() {
                top.insert((b.rows[i], b.positions[i]), b.ids[i * b.k]);
            }
        }
    }
    Ok(top)
}

/// Evaluate the student saved in `run_dir` on `data`.
pub fn eval_student(run_dir: &Path, data: &Path, cache: Option<&Path>) -> Result<EvalReport> {
    let sf_path = run_dir.join("student.json");
    let sf: StudentFile = serde_json::from_slice(&std::fs::read(&sf_path).map_err(|e| Error::io(&sf_path, e))?)
        .map_err(|e| Error::Config(format!("{}: not a student description: {e}", sf_path.display())))?;
    let device = Device::flex();
    let mut model = sf.arch.init(&device);
    student::load_burnpack(&mut model, &run_dir.join("student.bpk"))?;
    let tok = match &sf.data.text {
        Some(text) => {
            let mut tok = Tokenizer::load(&run_dir.join(TOKENIZER_FILE))?;
            crate::text::attach_chat_template(&mut tok, text, run_dir)?;
            Some(tok)
        }
        None => None,
    };
    let top1 = cache.map(|c| teacher_top1(c, data)).transpose()?;
    let rows = prepare_rows(data, &sf.data, tok.as_ref(), 0, u64::MAX, None)?;
    if rows.is_empty() {
        return Err(Error::data(data, "has no rows to evaluate"));
    }
    check_rows(&rows, &sf.arch, data, sf.data.task == Task::Classification)?;
    let mut report = EvalReport::default();
    let (mut correct, mut agree, mut agree_n, mut nll, mut n) = (0u64, 0u64, 0u64, 0f64, 0u64);
    for chunk in rows.chunks(64) {
        match (&model, sf.data.task) {
            (Student::Mlp(mlp), Task::Classification) => {
                let width = chunk[0].features.len();
                let x: Vec<f32> = chunk.iter().flat_map(|r| r.features.iter().copied()).collect();
                let pred = argmax_rows(mlp.forward(Tensor::from_data(TensorData::new(x, [chunk.len(), width]), &device)));
                score_classes(chunk, &pred, top1.as_ref(), data, &mut correct, &mut agree, &mut agree_n, &mut n)?;
            }
            (Student::Encoder(enc), Task::Classification) => {
                let (tokens, lengths) = token_tensor(chunk.iter().map(|r| r.tokens.as_slice()), &device);
                let pred = argmax_rows(enc.forward(tokens, &lengths));
                score_classes(chunk, &pred, top1.as_ref(), data, &mut correct, &mut agree, &mut agree_n, &mut n)?;
            }
            (Student::Decoder(dec), Task::CausalLm) => {
                let chunk: Vec<_> = chunk.iter().filter(|r| !r.positions.is_empty()).collect();
                if chunk.is_empty() {
                    continue;
                }
                let (tokens, lengths) = token_tensor(chunk.iter().map(|r| r.tokens.as_slice()), &device);
                let s = tokens.dims()[1];
                let logits = dec.forward(tokens, &lengths);
                let logits = match sf.output_vocab {
                    Some(v) => logits.narrow(2, 0, v), // a padded vocabulary, see StudentFile
                    None => logits,
                };
                let vocab = logits.dims()[2];
                let lp: Vec<f32> = log_softmax(logits, 2).into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
                for (i, r) in chunk.iter().enumerate() {
                    for &p in &r.positions {
                        let row = &lp[(i * s + p) * vocab..(i * s + p + 1) * vocab];
                        nll -= row[r.tokens[p + 1] as usize] as f64;
                        n += 1;
                        if let Some(t) = top1.as_ref().and_then(|t| t.get(&(r.index, p as u32))) {
                            let arg = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |a, (j, &v)| if v > a.1 { (j, v) } else { a }).0;
                            agree += (arg as u32 == *t) as u64;
                            agree_n += 1;
                        }
                    }
                }
            }
            _ => return Err(Error::Config(format!("{}: student and data task do not match", sf_path.display()))),
        }
    }
    report.positions = n;
    match sf.data.task {
        Task::Classification => report.accuracy = Some(correct as f64 / n.max(1) as f64),
        Task::CausalLm => report.perplexity = Some((nll / n.max(1) as f64).exp()),
    }
    if agree_n > 0 {
        report.top1_agreement = Some(agree as f64 / agree_n as f64);
    }
    Ok(report)
}

/// Index of the largest logit of each row. `[b, classes] -> b`
fn argmax_rows(logits: Tensor<2>) -> Vec<i64> {
    logits.argmax(1).into_data().convert::<i64>().try_into_vec::<i64>().unwrap_or_default()
}

/// Rows a student can be run on: as many features as its input (an MLP), and, when they
/// are scored, labels among its classes. Messages name the row.
fn check_rows(rows: &[PreparedRow], arch: &StudentArch, data: &Path, scored: bool) -> Result<()> {
    for r in rows {
        if let StudentArch::Mlp { input, .. } = arch
            && r.features.len() != *input
        {
            return Err(Error::data(data, format!("row {}: {} feature values, but the student takes {input}", r.index, r.features.len())));
        }
        if scored
            && let Some(l) = r.label
            && !(0..arch.vocab() as i64).contains(&l)
        {
            return Err(Error::data(
                data,
                format!("row {}: label {l} is outside the student's {} classes (0..{})", r.index, arch.vocab(), arch.vocab()),
            ));
        }
    }
    Ok(())
}

/// Count correct predictions and agreement with the teacher's top-1 for classifier rows.
#[allow(clippy::too_many_arguments)]
fn score_classes(
    rows: &[PreparedRow],
    pred: &[i64],
    top1: Option<&HashMap<(u64, u32), u32>>,
    data: &Path,
    correct: &mut u64,
    agree: &mut u64,
    agree_n: &mut u64,
    n: &mut u64,
) -> Result<()> {
    for (r, &p) in rows.iter().zip(pred) {
        let label = r.label.ok_or_else(|| Error::data(data, format!("row {}: label is missing", r.index)))?;
        *correct += (p == label) as u64;
        if let Some(t) = top1.and_then(|t| t.get(&(r.index, 0))) {
            *agree += (p == *t as i64) as u64;
            *agree_n += 1;
        }
        *n += 1;
    }
    Ok(())
}

/// The teacher's metrics on the data a cache was made from, read from the cache alone:
/// accuracy (top-1 equals the label) for classifiers; perplexity from the stored log-prob of
/// each next token for LMs (exact at the cache's temperature; use a T = 1 cache).
pub fn teacher_metrics(cache: &Path) -> Result<EvalReport> {
    let reader = CacheReader::open(&crate::store::local_copy(cache)?)?;
    let m = reader.manifest();
    let (mut correct, mut nll, mut n) = (0u64, 0f64, 0u64);
    for shard in &m.shards {
        for b in reader.read_shard(shard, 8192)? {
            let b = b?;
            for i in 0..b.len() {
                if let (Some(h), Some(lp)) = (b.hard_labels[i], b.hard_label_logprobs[i]) {
                    correct += (b.ids[i * b.k] as i64 == h) as u64;
                    nll -= lp as f64;
                    n += 1;
                }
            }
        }
    }
    let mut r = EvalReport { positions: n, top1_agreement: Some(1.0), ..Default::default() };
    match m.task {
        Task::Classification => r.accuracy = Some(correct as f64 / n.max(1) as f64),
        Task::CausalLm => r.perplexity = Some((nll / n.max(1) as f64).exp()),
    }
    Ok(r)
}

/// How `predict` reads data for a Hugging Face checkpoint (a run directory carries its own).
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// Text column (checkpoints only).
    pub text_column: String,
    /// Longest sequence fed to the model (checkpoints only; longer rows are cut).
    pub max_seq_len: usize,
    /// Only the first N rows.
    pub max_rows: Option<u64>,
}

/// Run a student (a train-student run directory or a Hugging Face checkpoint directory)
/// over `data` and write its raw logits as JSONL to `out`: per row
/// `{"row", "tokens", "logits"}` with logits `[classes]` (classifier) or
/// `[len, vocab]` (LM, every position). Returns the number of rows written.
pub fn predict(student_dir: &Path, data: &Path, out: &Path, opts: &PredictOptions) -> Result<u64> {
    use crate::cache::Positions;
    use crate::stage::train_student::DataSpec;
    use crate::student::hf;
    use crate::text::TextColumns;
    let device = Device::flex();
    let sf_path = student_dir.join("student.json");
    let mut arch = None;
    let (model, spec, tok) = if sf_path.is_file() {
        let sf: StudentFile = serde_json::from_slice(&std::fs::read(&sf_path).map_err(|e| Error::io(&sf_path, e))?)
            .map_err(|e| Error::Config(format!("{}: not a student description: {e}", sf_path.display())))?;
        let mut model = sf.arch.init(&device);
        student::load_burnpack(&mut model, &student_dir.join("student.bpk"))?;
        let tok = match &sf.data.text {
            Some(text) => {
                let mut tok = Tokenizer::load(&student_dir.join(TOKENIZER_FILE))?;
                crate::text::attach_chat_template(&mut tok, text, student_dir)?;
                Some(tok)
            }
            None => None,
        };
        arch = Some(sf.arch.clone());
        (model, sf.data, tok)
    } else if hf::is_checkpoint(student_dir) {
        let ck = hf::read_checkpoint(student_dir)?;
        let tok_path = ck.tokenizer.clone().ok_or_else(|| {
            Error::Config(format!("{}: the checkpoint has no tokenizer.json to tokenize the data with", student_dir.display()))
        })?;
        let (task, positions) = match ck.arch {
            StudentArch::Decoder { .. } => (Task::CausalLm, Positions::All),
            _ => (Task::Classification, Positions::Example),
        };
        let (model, _) = hf::load_student(ck, &device)?;
        let spec = DataSpec {
            task,
            features: Vec::new(),
            label_column: None,
            text: Some(TextColumns {
                text: Some(opts.text_column.clone()),
                prompt: None,
                completion: None,
                messages: None,
                conversational: false,
                chat_template_sha256: None,
                positions,
                max_seq_len: opts.max_seq_len,
            }),
            tokenizer_sha256: None,
        };
        (model, spec, Some(Tokenizer::load(&tok_path)?))
    } else {
        return Err(Error::Config(format!(
            "{}: neither a train-student run directory (student.json) nor a Hugging Face checkpoint (config.json)",
            student_dir.display()
        )));
    };
    let rows = prepare_rows(data, &spec, tok.as_ref(), 0, opts.max_rows.unwrap_or(u64::MAX), None)?;
    if let Some(arch) = &arch {
        check_rows(&rows, arch, data, false)?;
    }
    let mut text = String::new();
    for chunk in rows.chunks(16) {
        let lines: Vec<serde_json::Value> = match &model {
            Student::Mlp(mlp) => {
                let width = chunk[0].features.len();
                let x: Vec<f32> = chunk.iter().flat_map(|r| r.features.iter().copied()).collect();
                let logits = rows_of(mlp.forward(Tensor::from_data(TensorData::new(x, [chunk.len(), width]), &device)));
                chunk.iter().zip(logits).map(|(r, l)| serde_json::json!({"row": r.index, "logits": l})).collect()
            }
            Student::Encoder(enc) => {
                let (tokens, lengths) = token_tensor(chunk.iter().map(|r| r.tokens.as_slice()), &device);
                let logits = rows_of(enc.forward(tokens, &lengths));
                chunk.iter().zip(logits).map(|(r, l)| serde_json::json!({"row": r.index, "tokens": r.tokens, "logits": l})).collect()
            }
            Student::Decoder(dec) => {
                let (tokens, lengths) = token_tensor(chunk.iter().map(|r| r.tokens.as_slice()), &device);
                let [b, s] = tokens.dims();
                let logits = dec.forward(tokens, &lengths);
                let v = logits.dims()[2];
                let flat = rows_of(logits.reshape([b * s, v]));
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, r)| serde_json::json!({"row": r.index, "tokens": r.tokens, "logits": &flat[i * s..i * s + r.tokens.len()]}))
                    .collect()
            }
        };
        for l in lines {
            text.push_str(&l.to_string());
            text.push('\n');
        }
    }
    crate::cache::manifest::write_atomic(out, text.as_bytes())?;
    Ok(rows.len() as u64)
}

/// `[n, m]` tensor -> n rows.
fn rows_of(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, m] = t.dims();
    let v: Vec<f32> = t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
    v.chunks(m.max(1)).map(<[f32]>::to_vec).collect()
}

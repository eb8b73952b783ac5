//! `distill eval`: a trained student on held-out data (accuracy, or perplexity over the
//! trained positions; NLL and the calibration error of its top-1), its agreement with the
//! teacher's top-1 and its KL to the teacher's soft labels from a cache of the same data, and
//! the teacher's own metrics read from such a cache. The teacher is never loaded.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};
use serde::Serialize;

use crate::cache::manifest::DatasetInfo;
use crate::cache::{CacheReader, Task};
use crate::error::{Error, Result};
use crate::student::load::{LoadedStudent, Reading};
use crate::student::{Positions, RowInput, StudentArch};
use crate::student::{PreparedRow, prepare_rows};

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct EvalReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Mean negative log-likelihood of the label / next token (nats).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nll: Option<f64>,
    /// Expected calibration error of the top-1: over 15 equal-width confidence bins, the
    /// positions' share times |accuracy - mean confidence| in each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ece: Option<f64>,
    /// Share of positions where the student's top-1 equals the teacher's (from a cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    /// Mean KL(teacher || student) over the cache's support (its top-k and the rest bucket),
    /// both at the cache's temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_to_teacher: Option<f64>,
    pub positions: u64,
    /// What the user should know about the student that was scored (e.g. a classification
    /// head the checkpoint did not have, so it is untrained).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The teacher's soft label at one (row, position) of a cache.
struct TeacherLabel {
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    tail: f32,
}

/// The teacher's soft labels per (row, position) and the cache's temperature, from a cache
/// of the evaluation data.
fn teacher_labels(cache: &Path, data: &Path) -> Result<Teacher> {
    let reader = CacheReader::open(&crate::store::local_copy(cache)?)?;
    if let Some(why) = DatasetInfo::of(data)?.difference(&reader.manifest().dataset) {
        return Err(Error::cache(cache, format!("was not made from {}: {why}", data.display())));
    }
    let mut labels = HashMap::new();
    for shard in &reader.manifest().shards {
        for b in reader.read_shard(shard, 8192)? {
            let b = b?;
            for i in 0..b.len() {
                let (ids, logprobs) = (b.ids[i * b.k..(i + 1) * b.k].to_vec(), b.logprobs[i * b.k..(i + 1) * b.k].to_vec());
                labels.insert((b.rows[i], b.positions[i]), TeacherLabel { ids, logprobs, tail: b.tail_logmass[i] });
            }
        }
    }
    if reader.manifest().sampled.is_some() {
        // Its entries are draws: the most drawn id is not the teacher's top-1, and a KL to the
        // draw shares is not the KL to the teacher. Those figures are left out.
        labels.clear();
    }
    Ok((labels, reader.manifest().temperature))
}

/// A cache's soft labels by (row, position), and its temperature.
type Teacher = (HashMap<(u64, u32), TeacherLabel>, f32);

/// Evaluate a student on `data`: a train-student run directory, or a Hugging Face
/// checkpoint (read with the cache's columns and tokenizer when `cache` is given, else with
/// `opts`' text column, and `label` as the classes' column).
pub fn eval_student(run_dir: &Path, data: &Path, cache: Option<&Path>, opts: &PredictOptions) -> Result<EvalReport> {
    let device = Device::flex();
    let cache_dir = cache.map(crate::store::local_copy).transpose()?;
    let st = LoadedStudent::for_eval(run_dir, cache_dir.as_deref(), &opts.reading(), &device)?;
    let teacher = cache.map(|c| teacher_labels(c, data)).transpose()?;
    let rows = prepare_rows(data, &st.spec, st.tok.as_ref(), 0, u64::MAX, None)?;
    if rows.is_empty() {
        return Err(Error::data(data, "has no rows to evaluate"));
    }
    if let Some(arch) = &st.arch {
        check_rows(&rows, arch, data, st.spec.task == Task::Classification)?;
    }
    let mut tally = Tally::default();
    for chunk in rows.chunks(64) {
        match (st.model.task(), st.spec.task) {
            (Task::Classification, Task::Classification) => {
                let logits = st.model.logits(&inputs(chunk.iter()), Positions::All, &device);
                tally.classes(chunk, logits, teacher.as_ref(), data)?;
            }
            (Task::CausalLm, Task::CausalLm) => {
                let chunk: Vec<&PreparedRow> = chunk.iter().filter(|r| !r.positions.is_empty()).collect();
                if !chunk.is_empty() {
                    let logits = st.model.logits(&inputs(chunk.iter().copied()), Positions::All, &device);
                    tally.next_tokens(&chunk, logits, st.output_vocab, teacher.as_ref())?;
                }
            }
            _ => {
                return Err(Error::Config(format!(
                    "{}: the student's kind does not fit the data's task ({:?})",
                    run_dir.display(),
                    st.spec.task
                )));
            }
        }
    }
    if tally.n == 0 {
        return Err(Error::data(
            data,
            format!(
                "{} rows but no position to score (every row too short after --max-seq-len {}, or none labelled): \
                 a score over nothing would read as perfect",
                rows.len(),
                opts.max_seq_len
            ),
        ));
    }
    Ok(EvalReport { notes: st.notes, ..tally.report(st.spec.task) })
}

/// The student inputs of some prepared rows.
fn inputs<'a>(rows: impl Iterator<Item = &'a PreparedRow>) -> Vec<RowInput<'a>> {
    rows.map(|r| RowInput { features: &r.features, tokens: &r.tokens }).collect()
}

/// Confidence bins of the calibration error.
const ECE_BINS: usize = 15;

/// Counts behind an [`EvalReport`].
#[derive(Default)]
struct Tally {
    correct: u64,
    agree: u64,
    agree_n: u64,
    nll: f64,
    n: u64,
    /// Per confidence bin: positions, summed confidence, correct top-1s.
    bins: [(u64, f64, u64); ECE_BINS],
    kl: f64,
}

impl Tally {
    /// One position: the student's log-probs at T = 1 over its outputs, the right answer, and
    /// the teacher's soft label there (with the cache's temperature). `top1` is the student's
    /// top-1 (for classes, Burn's argmax of the logits).
    fn score(&mut self, logp: &[f32], target: usize, top1: usize, teacher: Option<(&TeacherLabel, f32)>) {
        self.nll -= logp[target] as f64;
        self.n += 1;
        let hit = top1 == target;
        self.correct += hit as u64;
        let confidence = (logp[top1] as f64).exp();
        let bin = ((confidence * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
        let b = &mut self.bins[bin];
        (b.0, b.1, b.2) = (b.0 + 1, b.1 + confidence, b.2 + hit as u64);
        if let Some((t, temperature)) = teacher {
            self.agree += (top1 as u32 == t.ids[0]) as u64;
            self.agree_n += 1;
            self.kl += kl_on_support(logp, t, temperature);
        }
    }

    /// Classifier rows.
    ///
    /// # Shapes
    /// - `logits`: `[b, classes]`
    fn classes(&mut self, rows: &[PreparedRow], logits: Tensor<2>, teacher: Option<&Teacher>, data: &Path) -> Result<()> {
        let classes = logits.dims()[1];
        let pred = argmax_rows(logits.clone());
        let lp: Vec<f32> = log_softmax(logits, 1).into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
        for (i, (r, &p)) in rows.iter().zip(&pred).enumerate() {
            let label = r.label.ok_or_else(|| Error::data(data, format!("row {}: label is missing", r.index)))?;
            let t = teacher.and_then(|(m, temp)| m.get(&(r.index, 0)).map(|t| (t, *temp)));
            self.score(&lp[i * classes..(i + 1) * classes], label as usize, p as usize, t);
        }
        Ok(())
    }

    /// The next token at each trained position.
    ///
    /// # Shapes
    /// - `logits`: `[b * s, vocab]` (row `i`, position `p` at `i * s + p`), sliced to
    ///   `output_vocab` when the student's vocabulary is padded past the cache's
    fn next_tokens(
        &mut self,
        rows: &[&PreparedRow],
        logits: Tensor<2>,
        output_vocab: Option<usize>,
        teacher: Option<&Teacher>,
    ) -> Result<()> {
        let s = logits.dims()[0] / rows.len();
        let logits = match output_vocab {
            Some(v) => logits.narrow(1, 0, v), // a padded vocabulary, see StudentFile
            None => logits,
        };
        let vocab = logits.dims()[1];
        let lp: Vec<f32> = log_softmax(logits, 1).into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
        for (i, r) in rows.iter().enumerate() {
            for &p in &r.positions {
                let row = &lp[(i * s + p) * vocab..(i * s + p + 1) * vocab];
                let top1 = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |a, (j, &v)| if v > a.1 { (j, v) } else { a }).0;
                let t = teacher.and_then(|(m, temp)| m.get(&(r.index, p as u32)).map(|t| (t, *temp)));
                let next = r.tokens[p + 1] as usize;
                if next >= vocab {
                    return Err(Error::Config(format!(
                        "row {} position {p}: token id {next} is past the student's {vocab} outputs (a tokenizer larger than the model)",
                        r.index
                    )));
                }
                self.score(row, next, top1, t);
            }
        }
        Ok(())
    }

    fn report(&self, task: Task) -> EvalReport {
        let n = self.n.max(1) as f64;
        let mut report = EvalReport { positions: self.n, nll: Some(self.nll / n), ..Default::default() };
        match task {
            Task::Classification => report.accuracy = Some(self.correct as f64 / n),
            Task::CausalLm => report.perplexity = Some((self.nll / n).exp()),
        }
        let ece = self
            .bins
            .iter()
            .filter(|b| b.0 > 0)
            .map(|&(c, conf, hits)| (c as f64 / n) * (hits as f64 / c as f64 - conf / c as f64).abs())
            .sum();
        report.ece = Some(ece);
        if self.agree_n > 0 {
            report.top1_agreement = Some(self.agree as f64 / self.agree_n as f64);
            report.kl_to_teacher = Some(self.kl / self.agree_n as f64);
        }
        report
    }
}

/// KL(teacher || student) over a cached soft label's support (its ids and the rest bucket)
/// at the cache's temperature `t`, from the student's log-probs at T = 1: at `t` they are
/// `logp / t - logsumexp(logp / t)` (the logits' shift cancels). In f64.
fn kl_on_support(logp: &[f32], teacher: &TeacherLabel, t: f32) -> f64 {
    let t = t as f64;
    let max = logp.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64 / t));
    let lse = max + logp.iter().map(|&v| (v as f64 / t - max).exp()).sum::<f64>().ln();
    let mut kl = 0.0;
    let mut inside = 0.0;
    for (&id, &lp) in teacher.ids.iter().zip(&teacher.logprobs) {
        let q = logp[id as usize] as f64 / t - lse;
        inside += q.exp();
        kl += (lp as f64).exp() * (lp as f64 - q);
    }
    let p_rest = (teacher.tail as f64).exp();
    if p_rest > 0.0 {
        kl += p_rest * (teacher.tail as f64 - (1.0 - inside).max(1e-12).ln());
    }
    kl
}

/// Index of the largest logit of each row. `[b, classes] -> b`
fn argmax_rows(logits: Tensor<2>) -> Vec<i64> {
    logits.argmax(1).into_data().convert::<i64>().try_into_vec::<i64>().unwrap_or_default()
}

/// Rows a student can be run on: as many features as its input (an MLP), and, when they
/// are scored, labels among its classes. Messages name the row.
fn check_rows(rows: &[PreparedRow], arch: &StudentArch, data: &Path, scored: bool) -> Result<()> {
    for r in rows {
        if let Some(input) = arch.feature_width()
            && r.features.len() != input
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
    if n == 0 {
        return Err(Error::cache(reader.dir(), "no cached position has a hard label to score the teacher on"));
    }
    let sampled = m.sampled.is_some(); // entries are draws: ids[0] is not the teacher's top-1
    let mut r =
        EvalReport { positions: n, top1_agreement: (!sampled).then_some(1.0), nll: Some(nll / n.max(1) as f64), ..Default::default() };
    match m.task {
        Task::Classification if sampled => {}
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

impl Default for PredictOptions {
    fn default() -> PredictOptions {
        PredictOptions { text_column: Reading::TEXT_COLUMN.into(), max_seq_len: Reading::MAX_SEQ_LEN, max_rows: None }
    }
}

impl PredictOptions {
    fn reading(&self) -> Reading {
        Reading { text_column: self.text_column.clone(), max_seq_len: self.max_seq_len }
    }
}

/// Run a student (a train-student run directory or a Hugging Face checkpoint directory)
/// over `data` and write its raw logits as JSONL to `out`: per row
/// `{"row", "tokens", "logits"}` with logits `[classes]` (classifier) or
/// `[len, vocab]` (LM, every position). Returns the number of rows written and the notes
/// from loading the student.
pub fn predict(student_dir: &Path, data: &Path, out: &Path, opts: &PredictOptions) -> Result<(u64, Vec<String>)> {
    crate::untrusted::refuse_overlap(("--out", out), &[("--data", data), ("--student", student_dir)])?;
    let device = Device::flex();
    let st = LoadedStudent::open(student_dir, &opts.reading(), &device)?;
    let rows = prepare_rows(data, &st.spec, st.tok.as_ref(), 0, opts.max_rows.unwrap_or(u64::MAX), None)?;
    if let Some(arch) = &st.arch {
        check_rows(&rows, arch, data, false)?;
    }
    let mut text = String::new();
    for chunk in rows.chunks(16) {
        let logits = rows_of(st.model.logits(&inputs(chunk.iter()), Positions::All, &device));
        let lines: Vec<serde_json::Value> = match (st.model.task(), st.model.reads_tokens()) {
            (Task::Classification, false) => {
                chunk.iter().zip(logits).map(|(r, l)| serde_json::json!({"row": r.index, "logits": l})).collect()
            }
            (Task::Classification, true) => {
                chunk.iter().zip(logits).map(|(r, l)| serde_json::json!({"row": r.index, "tokens": r.tokens, "logits": l})).collect()
            }
            (Task::CausalLm, _) => {
                let s = logits.len() / chunk.len();
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, r)| serde_json::json!({"row": r.index, "tokens": r.tokens, "logits": &logits[i * s..i * s + r.tokens.len()]}))
                    .collect()
            }
        };
        for l in lines {
            text.push_str(&l.to_string());
            text.push('\n');
        }
    }
    crate::cache::manifest::write_atomic(out, text.as_bytes())?;
    Ok((rows.len() as u64, st.notes))
}

/// `[n, m]` tensor -> n rows.
fn rows_of(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, m] = t.dims();
    let v: Vec<f32> = t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
    v.chunks(m.max(1)).map(<[f32]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ECE by hand: confidence 0.9 and right (bin 13: |1 - 0.9|), confidence 0.6 and wrong
    /// (bin 9: |0 - 0.6|), each half the positions: (0.1 + 0.6) / 2 = 0.35. NLL: the mean of
    /// -ln 0.9 and -ln 0.4.
    #[test]
    fn calibration_error_and_nll_by_hand() {
        let mut t = Tally::default();
        t.score(&[0.9f32.ln(), 0.1f32.ln()], 0, 0, None);
        t.score(&[0.6f32.ln(), 0.4f32.ln()], 1, 0, None);
        let r = t.report(Task::Classification);
        assert!((r.ece.unwrap() - 0.35).abs() < 1e-6, "{r:?}");
        assert!((r.nll.unwrap() - (-(0.9f64.ln() + 0.4f64.ln()) / 2.0)).abs() < 1e-6, "{r:?}");
        assert_eq!((r.accuracy, r.top1_agreement, r.kl_to_teacher), (Some(0.5), None, None));
    }

    /// The KL over a cached support, from the student's log-probs at T = 1, equals the
    /// PyTorch figure of the loss tests' `matches_pytorch_on_a_truncated_support` (teacher and
    /// student at T = 1.5 over ids 0, 3, 2 and the rest bucket): 0.30920493602752686.
    #[test]
    fn kl_to_the_teacher_on_the_cached_support() {
        let lse = |v: &[f64], t: f64| {
            let m = v.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b / t));
            m + v.iter().map(|&x| (x / t - m).exp()).sum::<f64>().ln()
        };
        let (teacher, student) = ([3.0, -1.0, 0.5, 2.0, 0.0, -2.0], [1.0, 0.0, 1.0, 1.0, 0.5, 0.0]);
        let tl: Vec<f64> = teacher.iter().map(|&x| x / 1.5 - lse(&teacher, 1.5)).collect();
        let logp: Vec<f32> = student.iter().map(|&x| (x - lse(&student, 1.0)) as f32).collect();
        let label = TeacherLabel {
            ids: vec![0, 3, 2],
            logprobs: [0, 3, 2].iter().map(|&i| tl[i] as f32).collect(),
            tail: [1usize, 4, 5].iter().map(|&i| tl[i].exp()).sum::<f64>().ln() as f32,
        };
        let kl = kl_on_support(&logp, &label, 1.5);
        assert!((kl - 0.309_204_936).abs() < 1e-5, "{kl}");
    }
}

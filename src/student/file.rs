//! What a training run leaves beside its weights for `eval` and `predict`: `student.json`
//! (the architecture, how it reads data, what it was trained from); and the dataset rows a
//! student reads, prepared as its inputs the way the cache read them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cache::{Manifest, Task};
use crate::data::{self, Column, Field, Kind};
use crate::error::{Error, Result};
use crate::loss::TailMode;
use crate::student::StudentArch;
use crate::text::{self, TextColumns, Tokenizer};

/// What the student reads from a dataset: saved beside it so `eval` reads data the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub task: Task,
    pub features: Vec<String>,
    pub label_column: Option<String>,
    pub text: Option<TextColumns>,
    /// SHA-256 of the tokenizer (copied into the run directory as tokenizer.json).
    pub tokenizer_sha256: Option<String>,
}

impl DataSpec {
    /// The data as the cache read it.
    pub fn of(m: &Manifest) -> DataSpec {
        DataSpec {
            task: m.task,
            features: m.features.clone(),
            label_column: m.label_column.clone(),
            text: m.text.clone(),
            tokenizer_sha256: m.tokenizer.as_ref().map(|t| t.sha256.clone()),
        }
    }
}

/// `student.json`: everything needed to rebuild and use the trained student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudentFile {
    pub arch: StudentArch,
    pub data: DataSpec,
    /// Fingerprint of the cache it was trained from.
    pub cache_fingerprint: String,
    pub alpha: f32,
    pub temperature: f32,
    pub tail: TailMode,
    /// The cache's class count / vocabulary when the student's is larger (a padded
    /// embedding): logits are sliced to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_vocab: Option<usize>,
}

impl StudentFile {
    /// The description of `arch` trained from the cache `m` describes, with the loss's
    /// `alpha`, temperature and tail.
    pub fn of(arch: StudentArch, m: &Manifest, alpha: f32, temperature: f32, tail: TailMode) -> StudentFile {
        let output_vocab = (arch.vocab() > m.vocab_size).then_some(m.vocab_size);
        StudentFile { arch, data: DataSpec::of(m), cache_fingerprint: m.fingerprint.clone(), alpha, temperature, tail, output_vocab }
    }
}

/// Columns to read for a data spec: features or text, then the label.
fn columns_of(spec: &DataSpec) -> Vec<Column> {
    let mut cols: Vec<Column> = match &spec.text {
        Some(t) => t.columns(),
        None => spec.features.iter().map(|c| Column::new(c, Kind::Numbers)).collect(),
    };
    if let Some(l) = &spec.label_column {
        cols.push(Column::new(l, Kind::Label));
    }
    cols
}

/// Dataset rows `first..first + count` turned into student inputs.
#[derive(Clone)]
pub struct PreparedRow {
    pub index: u64,
    pub features: Vec<f32>,
    pub tokens: Vec<u32>,
    pub positions: Vec<usize>,
    pub label: Option<i64>,
    /// A student's generation ([`prepare_rows_with_logprobs`]): its log-prob of each
    /// completion token, the first predicted by position `.0` (the first cached one).
    pub generated: Option<(usize, Vec<f32>)>,
}

pub fn prepare_rows(
    path: &Path,
    spec: &DataSpec,
    tok: Option<&Tokenizer>,
    first: u64,
    count: u64,
    start: Option<data::RowStart>,
) -> Result<Vec<PreparedRow>> {
    prepare_rows_with_logprobs(path, spec, tok, first, count, start, None)
}

/// [`prepare_rows`], with each row's generation log-probs from the list column `logprobs`
/// (`completion_logprobs` of `generate --student`), one per completion token.
pub fn prepare_rows_with_logprobs(
    path: &Path,
    spec: &DataSpec,
    tok: Option<&Tokenizer>,
    first: u64,
    count: u64,
    start: Option<data::RowStart>,
    logprobs: Option<&str>,
) -> Result<Vec<PreparedRow>> {
    let mut cols = columns_of(spec);
    let label_slot = spec.label_column.as_ref().map(|_| cols.len() - 1);
    let logprobs_slot = logprobs.map(|name| {
        cols.push(Column::new(name, Kind::Numbers));
        cols.len() - 1
    });
    let mut out = Vec::with_capacity(count.min(1 << 16) as usize);
    let rows = match start {
        Some(at) if at.row == first => data::read_jsonl_at(path, &cols, at)?,
        _ => data::read_rows_from(path, &cols, first)?,
    };
    for row in rows.take(count as usize) {
        let row = row?;
        let label = match label_slot.map(|s| &row.fields[s]) {
            Some(Field::Label(l)) => Some(*l),
            _ => None,
        };
        let generated = match logprobs_slot.map(|s| &row.fields[s]) {
            Some(Field::Numbers(v)) => Some(v.clone()),
            _ => None,
        };
        match (&spec.text, tok) {
            (Some(t), Some(tok)) => {
                let tk = text::tokenize(tok, t, &row.fields, row.index, path)?;
                let generated = generated.map(|v| (tk.first_position, v));
                out.push(PreparedRow { index: row.index, features: vec![], positions: tk.positions(), tokens: tk.ids, label, generated });
            }
            _ => {
                let mut features = Vec::new();
                for (slot, name) in spec.features.iter().enumerate() {
                    match &row.fields[slot] {
                        Field::Numbers(v) => {
                            if let Some(bad) = v.iter().position(|x| !x.is_finite()) {
                                return Err(Error::data(path, format!("row {}, column `{name}`: value {bad} is {}", row.index, v[bad])));
                            }
                            features.extend_from_slice(v)
                        }
                        _ => return Err(Error::data(path, format!("row {}, column `{name}`: value is missing (null)", row.index))),
                    }
                }
                out.push(PreparedRow { index: row.index, features, tokens: vec![], positions: vec![0], label, generated: None });
            }
        }
    }
    Ok(out)
}

impl PreparedRow {
    /// Bytes this row holds.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + 4 * (self.tokens.len() + self.features.len() + self.generated.as_ref().map_or(0, |g| g.1.len()))
    }
}

//! Stage one's teacher runs: a batch of rows through ONNX Runtime, and the logits of its
//! cached positions copied out for the worker ([`Pending`]).

use crate::config::CacheTeacherConfig;
use crate::data::{Column, Field, Kind, Row};
use crate::error::{Error, Result};
use crate::teacher::{Teacher, TeacherBatch, hidden};

use super::reader::Tokens;
use super::sink::Pending;

pub(super) fn numeric_batch(
    cfg: &CacheTeacherConfig,
    teacher: &mut Teacher,
    batch: &[Row],
    columns: &[Column],
    hard: &[Option<i64>],
) -> Result<Pending> {
    let widths = teacher.feature_columns();
    let mut feeds: Vec<(String, Vec<f32>, usize)> = Vec::new();
    for (slot, c) in columns.iter().enumerate().filter(|(_, c)| c.kind == Kind::Numbers) {
        let declared = widths.iter().find(|(n, _)| *n == c.name).and_then(|(_, w)| *w);
        let mut width = declared;
        let mut values = Vec::new();
        for r in batch {
            let v = match &r.fields[slot] {
                Field::Numbers(v) => v,
                _ => return Err(Error::data(&cfg.data, format!("row {}, column `{}`: value is missing (null)", r.index, c.name))),
            };
            let w = *width.get_or_insert(v.len());
            if v.len() != w {
                return Err(Error::data(
                    &cfg.data,
                    format!("row {}, column `{}`: {} values, but the teacher's input expects {w}", r.index, c.name, v.len()),
                ));
            }
            if let Some(bad) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::data(&cfg.data, format!("row {}, column `{}`: value {bad} is {}", r.index, c.name, v[bad])));
            }
            values.extend_from_slice(v);
        }
        feeds.push((c.name.clone(), values, width.unwrap_or(0)));
    }
    check_labels(cfg, batch, hard, teacher.vocab_size)?;
    per_row_pending(teacher, &TeacherBatch::Numeric { batch: batch.len(), columns: &feeds }, batch, hard)
}

/// Every hard label must be one of the teacher's classes.
pub(super) fn check_labels(cfg: &CacheTeacherConfig, batch: &[Row], hard: &[Option<i64>], vocab: usize) -> Result<()> {
    for (r, h) in batch.iter().zip(hard) {
        if let Some(h) = h
            && !(0..vocab as i64).contains(h)
        {
            return Err(Error::data(
                &cfg.data,
                format!("row {}: label {h} is outside the teacher's {vocab} classes (0..{vocab})", r.index),
            ));
        }
    }
    Ok(())
}

/// Run a classifier teacher: logits `[batch, classes]`, one cached soft label per row.
pub(super) fn per_row_pending(teacher: &mut Teacher, input: &TeacherBatch<'_>, batch: &[Row], hard: &[Option<i64>]) -> Result<Pending> {
    let vocab = teacher.vocab_size;
    let teacher_path = teacher.path().to_path_buf();
    let outputs = teacher.hidden.clone();
    teacher.run(input, |shape, logits, values| {
        if shape != [batch.len(), vocab] {
            return Err(Error::teacher(&teacher_path, format!("logits have shape {shape:?}, expected [{}, {vocab}]", batch.len())));
        }
        // A `[batch, seq, dim]` output of a classifier: its first token, as BERT pools it.
        let hidden = outputs
            .iter()
            .zip(values)
            .map(|(o, v)| {
                let seq = v.shape.get(1).copied().unwrap_or(1);
                let first = (0..batch.len()).map(|r| if o.per_position { r * seq } else { r });
                hidden::gather(&teacher_path, o, v, batch.len(), None, first)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Pending {
            logits: logits.to_f32_vec(),
            hidden,
            meta: batch.iter().zip(hard).map(|(r, h)| (r.index, 0u32, *h)).collect(),
            rows: batch.iter().map(|r| r.index).collect(),
        })
    })
}

/// Run a causal-LM teacher and copy the logits of the cached positions into `buffer`.
///
/// # Shapes
/// - logits from the teacher: `[batch, seq, vocab]`; `Pending::logits`: `[positions, vocab]`
pub(super) fn lm_pending(teacher: &mut Teacher, batch: &[Row], t: &Tokens, mut buffer: Vec<f32>) -> Result<Pending> {
    let vocab = teacher.vocab_size;
    let teacher_path = teacher.path().to_path_buf();
    let teacher_output = &teacher.output_name().to_string();
    let outputs = teacher.hidden.clone();
    teacher.run(&TeacherBatch::Tokens { batch: batch.len(), seq: t.seq, ids: &t.ids, mask: &t.mask }, |shape, logits, values| {
        if shape.len() == 3 && shape[1] == 1 && t.seq > 1 {
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            return Err(Error::teacher(&teacher_path, crate::teacher::model::last_position_only(teacher_output, &dims)));
        }
        if shape != [batch.len(), t.seq, vocab] {
            return Err(Error::teacher(
                &teacher_path,
                format!("logits have shape {shape:?}, expected [{}, {}, {vocab}]", batch.len(), t.seq),
            ));
        }
        buffer.clear();
        buffer.reserve(t.wanted.len() * vocab);
        for w in &t.wanted {
            logits.extend_f32(w.0 * vocab..(w.0 + 1) * vocab, &mut buffer);
        }
        let hidden = outputs
            .iter()
            .zip(values)
            .map(|(o, v)| hidden::gather(&teacher_path, o, v, batch.len(), Some(t.seq), t.wanted.iter().map(|w| w.0)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Pending {
            logits: buffer,
            hidden,
            meta: t.wanted.iter().map(|w| (w.1, w.2, Some(w.3))).collect(),
            rows: batch.iter().map(|r| r.index).collect(),
        })
    })
}

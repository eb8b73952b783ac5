//! Stage one's teacher runs: a batch of rows through ONNX Runtime, and the logits of its
//! cached positions copied out for the worker ([`Pending`]).

use crate::config::CacheTeacherConfig;
use crate::data::{Column, Field, Kind, Row};
use crate::error::{Error, Result};
use crate::teacher::{GraphSoftLabels, SoftLabel, Teacher, TeacherBatch, hidden};

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
    let first_tokens = |values: &[crate::teacher::HiddenValues<'_>]| {
        // A `[batch, seq, dim]` output of a classifier: its first token, as BERT pools it.
        outputs
            .iter()
            .zip(values)
            .map(|(o, v)| {
                let seq = v.shape.get(1).copied().unwrap_or(1);
                let first = (0..batch.len()).map(|r| if o.per_position { r * seq } else { r });
                hidden::gather(&teacher_path, o, v, batch.len(), None, first)
            })
            .collect::<Result<Vec<_>>>()
    };
    let meta: Vec<(u64, u32, Option<i64>)> = batch.iter().zip(hard).map(|(r, h)| (r.index, 0u32, *h)).collect();
    if teacher.soft_labels_in_graph() {
        let labels: Vec<i64> = hard.iter().map(|h| h.filter(|l| (0..vocab as i64).contains(l)).unwrap_or(0)).collect();
        return teacher.run_soft_labels(input, &labels, |lead, soft, values| {
            if lead != [batch.len()] {
                return Err(Error::teacher(&teacher_path, format!("soft labels have shape {lead:?}, expected [{}]", batch.len())));
            }
            let at: Vec<usize> = (0..batch.len()).collect();
            let fed: Vec<bool> = hard.iter().map(|h| h.is_some_and(|l| (0..vocab as i64).contains(&l))).collect();
            Ok(Pending {
                logits: Vec::new(),
                soft: Some(graph_labels(&soft, &at, &fed)),
                hidden: first_tokens(values)?,
                meta,
                rows: batch.iter().map(|r| r.index).collect(),
            })
        });
    }
    teacher.run(input, |shape, logits, values| {
        if shape != [batch.len(), vocab] {
            return Err(Error::teacher(&teacher_path, format!("logits have shape {shape:?}, expected [{}, {vocab}]", batch.len())));
        }
        Ok(Pending {
            logits: logits.to_f32_vec(),
            soft: None,
            hidden: first_tokens(values)?,
            meta,
            rows: batch.iter().map(|r| r.index).collect(),
        })
    })
}

/// The soft labels at flat positions `at` of a batch's in-graph soft labels, each with the
/// log-prob of its hard label (NaN where `fed` says the label was not one of the logits'
/// ids and 0 was fed in its place, as the Rust kernel records it).
fn graph_labels(soft: &GraphSoftLabels<'_>, at: &[usize], fed: &[bool]) -> Vec<(SoftLabel, f32)> {
    let k = soft.k;
    at.iter()
        .zip(fed)
        .map(|(&i, &fed)| {
            let label = SoftLabel {
                ids: soft.ids[i * k..(i + 1) * k].iter().map(|&id| id as u32).collect(),
                logprobs: soft.logprobs[i * k..(i + 1) * k].to_vec(),
                tail_logmass: soft.tail_logmass[i],
                entropy: soft.entropy[i],
            };
            (label, if fed { soft.label_logprob[i] } else { f32::NAN })
        })
        .collect()
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
    let meta: Vec<(u64, u32, Option<i64>)> = t.wanted.iter().map(|w| (w.1, w.2, Some(w.3))).collect();
    if teacher.soft_labels_in_graph() {
        let mut labels = vec![0i64; batch.len() * t.seq];
        for w in &t.wanted {
            labels[w.0] = if (0..vocab as i64).contains(&w.3) { w.3 } else { 0 };
        }
        let input = TeacherBatch::Tokens { batch: batch.len(), seq: t.seq, ids: &t.ids, mask: &t.mask };
        return teacher.run_soft_labels(&input, &labels, |lead, soft, values| {
            if lead.len() == 2 && lead[1] == 1 && t.seq > 1 {
                return Err(Error::teacher(&teacher_path, crate::teacher::last_position_only(teacher_output, &[-1, 1, -1])));
            }
            if lead != [batch.len(), t.seq] {
                return Err(Error::teacher(
                    &teacher_path,
                    format!("soft labels have shape {lead:?}, expected [{}, {}]", batch.len(), t.seq),
                ));
            }
            let at: Vec<usize> = t.wanted.iter().map(|w| w.0).collect();
            let fed: Vec<bool> = t.wanted.iter().map(|w| (0..vocab as i64).contains(&w.3)).collect();
            let hidden = outputs
                .iter()
                .zip(values)
                .map(|(o, v)| hidden::gather(&teacher_path, o, v, batch.len(), Some(t.seq), at.iter().copied()))
                .collect::<Result<Vec<_>>>()?;
            Ok(Pending {
                logits: buffer,
                soft: Some(graph_labels(&soft, &at, &fed)),
                hidden,
                meta,
                rows: batch.iter().map(|r| r.index).collect(),
            })
        });
    }
    teacher.run(&TeacherBatch::Tokens { batch: batch.len(), seq: t.seq, ids: &t.ids, mask: &t.mask }, |shape, logits, values| {
        if shape.len() == 3 && shape[1] == 1 && t.seq > 1 {
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            return Err(Error::teacher(&teacher_path, crate::teacher::last_position_only(teacher_output, &dims)));
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
        Ok(Pending { logits: buffer, soft: None, hidden, meta, rows: batch.iter().map(|r| r.index).collect() })
    })
}

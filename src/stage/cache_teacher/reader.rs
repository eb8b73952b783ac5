//! Stage one's reading side: rows of the planned shards in batches that never cross a shard
//! boundary (so shards depend on rows only), tokenized and right-padded for token models,
//! grouped by length and bounded in padded tokens.

use std::time::Instant;

use crate::config::{CacheTeacherConfig, LongSequences};
use crate::data::{Field, Row};
use crate::error::{Error, Result};
use crate::text::{self, TextColumns, Tokenizer};

use super::batches::check_labels;
use super::plan::shard_len;

/// One batch as the reader hands it to the teacher.
pub(super) struct Prepared {
    pub rows: Vec<Row>,
    pub hard: Vec<Option<i64>>,
    /// Token models: the padded batch.
    pub tokens: Option<Tokens>,
}

/// A tokenized, right-padded batch.
pub(super) struct Tokens {
    pub seq: usize,
    /// `[batch, seq]` each.
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    /// LM: (flat index into `[batch, seq]`, dataset row, position, hard label = next token)
    /// of each cached position; position p predicts token p + 1.
    pub wanted: Vec<(usize, u64, u32, i64)>,
    pub count: u64,
    pub truncated: u64,
}

pub(super) enum Feed {
    Batch(Prepared),
    /// Every row of shard `index` has been sent.
    EndOfShard {
        index: usize,
        first_row: u64,
        rows: u64,
    },
}

/// The reading side of stage one: rows of the planned shards, in batches that never cross
/// a shard boundary (so shards depend on rows only), tokenized for token models.
pub(super) struct Reader<'a> {
    pub cfg: &'a CacheTeacherConfig,
    pub tokens: Option<(&'a Tokenizer, &'a TextColumns)>,
    pub label_slot: Option<usize>,
    pub vocab: usize,
    pub classify: bool,
    pub plan: &'a [usize],
    pub rows_per_shard: u64,
    pub total_rows: u64,
    /// Padded tokens (rows x the longest row) a text batch may hold.
    pub max_batch_tokens: usize,
}

impl Reader<'_> {
    /// Sends the batches; a failure is sent as the last item. Returns the seconds spent
    /// reading and tokenizing.
    pub fn run(self, mut rows: Box<dyn Iterator<Item = Result<Row>> + Send>, feed: std::sync::mpsc::SyncSender<Result<Feed>>) -> f64 {
        let mut seconds = 0.0;
        if let Err(e) = self.send_all(&mut rows, &feed, &mut seconds) {
            let _ = feed.send(Err(e));
        }
        seconds
    }

    fn send_all(
        &self,
        rows: &mut Box<dyn Iterator<Item = Result<Row>> + Send>,
        feed: &std::sync::mpsc::SyncSender<Result<Feed>>,
        seconds: &mut f64,
    ) -> Result<()> {
        let per = self.rows_per_shard;
        let mut cursor = 0u64; // next dataset row the reader would return
        for &j in self.plan {
            let shard_first_row = j as u64 * per;
            let shard_len = shard_len(j, per, self.total_rows);
            let t = Instant::now();
            // Skip the rows of shards that are finished or belong to other workers.
            for row in rows.by_ref().take((shard_first_row - cursor) as usize) {
                row?;
            }
            cursor = shard_first_row;
            let shard_rows = rows.by_ref().take(shard_len as usize).collect::<Result<Vec<Row>>>()?;
            cursor += shard_rows.len() as u64;
            let count = shard_rows.len() as u64;
            let batches = self.batches(shard_rows)?;
            *seconds += t.elapsed().as_secs_f64();
            for batch in batches {
                if feed.send(Ok(Feed::Batch(batch))).is_err() {
                    return Ok(()); // the main thread stopped; it reports why
                }
            }
            if count > 0 && feed.send(Ok(Feed::EndOfShard { index: j, first_row: shard_first_row, rows: count })).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One shard's rows as teacher batches. Numeric rows: `batch_size` at a time, in order.
    /// Text rows: tokenized, then taken longest first and packed into batches of at most
    /// `batch_size` rows and `max_batch_tokens` padded tokens (a longer row goes alone), so
    /// rows of similar length share a batch; the shard builder puts the positions back in
    /// dataset order, so the shard does not depend on the batching.
    fn batches(&self, rows: Vec<Row>) -> Result<Vec<Prepared>> {
        let cfg = self.cfg;
        let hard_of = |r: &Row| match self.label_slot.map(|s| &r.fields[s]) {
            Some(Field::Label(l)) => Some(*l),
            _ => None,
        };
        let Some((ts, cols)) = self.tokens else {
            let mut out = Vec::new();
            let mut rows = rows.into_iter().peekable();
            while rows.peek().is_some() {
                let batch: Vec<Row> = rows.by_ref().take(cfg.batch_size).collect();
                let hard = batch.iter().map(hard_of).collect();
                out.push(Prepared { rows: batch, hard, tokens: None });
            }
            return Ok(out);
        };
        if self.classify {
            let hard: Vec<Option<i64>> = rows.iter().map(hard_of).collect();
            check_labels(cfg, &rows, &hard, self.vocab)?;
        }
        let seqs = rows.iter().map(|r| tokenize_row(cfg, ts, cols, r, self.vocab, self.classify)).collect::<Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by(|&a, &b| seqs[b].ids.len().cmp(&seqs[a].ids.len()).then(a.cmp(&b)));
        let mut rows: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
        let mut seqs: Vec<Option<Tokenized>> = seqs.into_iter().map(Some).collect();
        let mut out = Vec::new();
        let mut start = 0;
        while start < order.len() {
            // Longest first: the batch's first row sets its padded length.
            let longest = seqs[order[start]].as_ref().map_or(1, |t| t.ids.len().max(1));
            let fit = (self.max_batch_tokens / longest).clamp(1, cfg.batch_size);
            let end = (start + fit).min(order.len());
            let batch: Vec<Row> = order[start..end].iter().map(|&i| rows[i].take().expect("each row once")).collect();
            let tokenized: Vec<Tokenized> = order[start..end].iter().map(|&i| seqs[i].take().expect("each row once")).collect();
            let hard = batch.iter().map(hard_of).collect();
            let tokens = pad_batch(ts.pad_id, &batch, tokenized, self.classify);
            out.push(Prepared { rows: batch, hard, tokens: Some(tokens) });
            start = end;
        }
        Ok(out)
    }
}

/// One row's tokens and the positions of them that are cached.
struct Tokenized {
    ids: Vec<u32>,
    positions: Vec<usize>,
    truncated: bool,
}

/// Tokenize one row, checking it against `max_seq_len` and the teacher's vocabulary.
fn tokenize_row(cfg: &CacheTeacherConfig, ts: &Tokenizer, cols: &TextColumns, r: &Row, vocab: usize, classify: bool) -> Result<Tokenized> {
    let text = cfg.text.as_ref().expect("token batch has text settings");
    let t = text::tokenize(ts, cols, &r.fields, r.index, &cfg.data)?;
    if t.truncated && text.long == LongSequences::Refuse {
        return Err(Error::data(
            &cfg.data,
            format!("row {}: longer than max_seq_len = {} tokens (long_sequences = \"refuse\")", r.index, text.max_seq_len),
        ));
    }
    if !classify && let Some(&bad) = t.ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::Tokenizer {
            path: text.tokenizer.clone(),
            message: format!("row {}: token id {bad} is outside the teacher's vocabulary of {vocab}", r.index),
        });
    }
    let positions = t.positions();
    Ok(Tokenized { truncated: t.truncated, ids: t.ids, positions })
}

/// Right-pad one batch of tokenized rows (pad id, attention mask 0).
fn pad_batch(pad_id: u32, batch: &[Row], seqs: Vec<Tokenized>, classify: bool) -> Tokens {
    let seq = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id as i64; batch.len() * seq];
    let mut mask = vec![0i64; batch.len() * seq];
    let (mut count, mut truncated) = (0u64, 0u64);
    for (b, s) in seqs.iter().enumerate() {
        for (t, &id) in s.ids.iter().enumerate() {
            ids[b * seq + t] = id as i64;
            mask[b * seq + t] = 1;
        }
        count += s.ids.len() as u64;
        truncated += s.truncated as u64;
    }
    let mut wanted = Vec::new();
    if !classify {
        for (b, s) in seqs.iter().enumerate() {
            for &p in &s.positions {
                wanted.push((b * seq + p, batch[b].index, p as u32, s.ids[p + 1] as i64));
            }
        }
    }
    Tokens { seq, ids, mask, wanted, count, truncated }
}

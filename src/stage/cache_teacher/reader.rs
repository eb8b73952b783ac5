//! Stage one's reading side: rows of the planned shards in batches that never cross a shard
//! boundary (so shards depend on rows only), tokenized and right-padded for token models.

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
        let (cfg, per) = (self.cfg, self.rows_per_shard);
        let mut cursor = 0u64; // next dataset row the reader would return
        for &j in self.plan {
            let shard_first_row = j as u64 * per;
            let shard_len = shard_len(j, per, self.total_rows);
            let t = Instant::now();
            // Skip the rows of shards that are finished or belong to other workers.
            for row in rows.by_ref().take((shard_first_row - cursor) as usize) {
                row?;
            }
            *seconds += t.elapsed().as_secs_f64();
            cursor = shard_first_row;
            let mut shard_rows = 0u64;
            while shard_rows < shard_len {
                let t = Instant::now();
                let room = (shard_len - shard_rows).min(cfg.batch_size as u64) as usize;
                let batch = rows.by_ref().take(room).collect::<Result<Vec<Row>>>()?;
                if batch.is_empty() {
                    break;
                }
                cursor += batch.len() as u64;
                let hard: Vec<Option<i64>> = batch
                    .iter()
                    .map(|r| match self.label_slot.map(|s| &r.fields[s]) {
                        Some(Field::Label(l)) => Some(*l),
                        _ => None,
                    })
                    .collect();
                let tokens = match self.tokens {
                    None => None,
                    Some((ts, cols)) => {
                        if self.classify {
                            check_labels(cfg, &batch, &hard, self.vocab)?;
                        }
                        Some(tokenize_batch(cfg, ts, cols, &batch, self.vocab, self.classify)?)
                    }
                };
                *seconds += t.elapsed().as_secs_f64();
                shard_rows += batch.len() as u64;
                if feed.send(Ok(Feed::Batch(Prepared { rows: batch, hard, tokens }))).is_err() {
                    return Ok(()); // the main thread stopped; it reports why
                }
            }
            if shard_rows > 0 && feed.send(Ok(Feed::EndOfShard { index: j, first_row: shard_first_row, rows: shard_rows })).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Tokenize and right-pad one batch (pad id, attention mask 0).
fn tokenize_batch(
    cfg: &CacheTeacherConfig,
    ts: &Tokenizer,
    cols: &TextColumns,
    batch: &[Row],
    vocab: usize,
    classify: bool,
) -> Result<Tokens> {
    let text = cfg.text.as_ref().expect("token batch has text settings");
    let mut truncated = 0u64;
    let mut seqs: Vec<(Vec<u32>, Vec<usize>)> = Vec::with_capacity(batch.len()); // (ids, cached positions)
    for r in batch {
        let t = text::tokenize(ts, cols, &r.fields, r.index, &cfg.data)?;
        if t.truncated {
            if text.long == LongSequences::Refuse {
                return Err(Error::data(
                    &cfg.data,
                    format!("row {}: longer than max_seq_len = {} tokens (long_sequences = \"refuse\")", r.index, text.max_seq_len),
                ));
            }
            truncated += 1;
        }
        if !classify && let Some(&bad) = t.ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::Tokenizer {
                path: text.tokenizer.clone(),
                message: format!("row {}: token id {bad} is outside the teacher's vocabulary of {vocab}", r.index),
            });
        }
        let positions = t.positions();
        seqs.push((t.ids, positions));
    }
    let seq = seqs.iter().map(|(s, _)| s.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![ts.pad_id as i64; batch.len() * seq];
    let mut mask = vec![0i64; batch.len() * seq];
    let mut count = 0u64;
    for (b, (s, _)) in seqs.iter().enumerate() {
        for (t, &id) in s.iter().enumerate() {
            ids[b * seq + t] = id as i64;
            mask[b * seq + t] = 1;
        }
        count += s.len() as u64;
    }
    let mut wanted = Vec::new();
    if !classify {
        for (b, (s, positions)) in seqs.iter().enumerate() {
            for &p in positions {
                wanted.push((b * seq + p, batch[b].index, p as u32, s[p + 1] as i64));
            }
        }
    }
    Ok(Tokens { seq, ids, mask, wanted, count, truncated })
}

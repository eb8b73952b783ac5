//! `distill generate`'s prompts, read as decoding reaches them: each row of the prompts'
//! dataset gives `samples` sequences, in (row, sample) order, and only the sequences of the
//! shard being decoded are held, so the prompts' count (rows × samples) is bounded by the
//! disk, not by memory.

use crate::cache::manifest::MAX_SHARDS;
use crate::config::{GenerateConfig, PromptSource};
use crate::data::{self, Column, Field, Kind, Row, Rows};
use crate::error::{Error, Result};
use crate::text::Tokenizer;

use super::decode::Sequence;

/// The sequences a run generates: rows × samples, checked to fit the cache's shards.
pub(super) fn count(cfg: &GenerateConfig) -> Result<u64> {
    let rows = data::count_rows(&cfg.data)?;
    if rows == 0 {
        return Err(Error::data(&cfg.data, "has no rows: there is nothing to generate from"));
    }
    let sequences = rows.checked_mul(u64::from(cfg.samples)).filter(|n| n.div_ceil(cfg.rows_per_shard) <= MAX_SHARDS).ok_or_else(|| {
        Error::data(
            &cfg.data,
            format!(
                "{rows} prompts x {} samples over shards of {} sequences is more than {MAX_SHARDS} shards; raise --rows-per-shard",
                cfg.samples, cfg.rows_per_shard
            ),
        )
    })?;
    Ok(sequences)
}

/// The prompts of a run, read, rendered and tokenized in order.
pub(super) struct Prompts<'a> {
    cfg: &'a GenerateConfig,
    tok: &'a Tokenizer,
    rows: Rows,
    /// The row read last: its index, text, tokens, and the next sample to give.
    current: Option<(u64, String, Vec<u32>, u32)>,
    /// Sequences given so far (skipped ones included).
    given: u64,
    /// Prompts cut to their last `max_seq_len - 1` tokens.
    cut: u64,
}

impl<'a> Prompts<'a> {
    pub fn open(cfg: &'a GenerateConfig, tok: &'a Tokenizer) -> Result<Prompts<'a>> {
        let kind = if matches!(cfg.prompts, PromptSource::Messages { .. }) { Kind::Messages } else { Kind::Text };
        let rows = data::read_rows(&cfg.data, &[Column::new(cfg.prompts.column(), kind)])?;
        Ok(Prompts { cfg, tok, rows, current: None, given: 0, cut: 0 })
    }

    /// The next `n` sequences (fewer at the end of the prompts).
    pub fn take(&mut self, n: usize) -> Result<Vec<Sequence>> {
        let mut out = Vec::with_capacity(n.min(1 << 16));
        while out.len() < n {
            let Some(seq) = self.next_sequence()? else { break };
            out.push(seq);
        }
        Ok(out)
    }

    /// Pass over the first `n` sequences (finished shards of a resumed run). Their rows are
    /// still read and tokenized, so the count of cut prompts covers every row.
    pub fn skip(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            if self.next_sequence()?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// After the last shard: the sequences given must be the `expected` count (a dataset
    /// that yields fewer rows than its footer or line count said is refused); returns how
    /// many prompts were cut.
    pub fn finish(mut self, expected: u64) -> Result<u64> {
        while self.next_sequence()?.is_some() {}
        if self.given != expected {
            return Err(Error::data(
                &self.cfg.data,
                format!("gave {} prompts x samples while reading, but counted {expected} before (changed while read?)", self.given),
            ));
        }
        Ok(self.cut)
    }

    fn next_sequence(&mut self) -> Result<Option<Sequence>> {
        if self.current.as_ref().is_none_or(|c| c.3 == self.cfg.samples) {
            let Some(row) = self.rows.next() else { return Ok(None) };
            let row = row?;
            let (text, prompt, cut) = prompt_of(self.cfg, self.tok, &row)?;
            self.cut += u64::from(cut);
            self.current = Some((row.index, text, prompt, 0));
        }
        let (row, text, prompt, sample) = self.current.as_mut().expect("set above");
        let seq = Sequence {
            row: *row,
            sample: *sample,
            prompt_text: text.clone(),
            prompt: prompt.clone(),
            generated: Vec::new(),
            labels: Vec::new(),
            logprobs: Vec::new(),
            done: None,
        };
        *sample += 1;
        self.given += 1;
        Ok(Some(seq))
    }
}

/// One prompt: text encoded with the tokenizer's special tokens, or a conversation rendered
/// with the chat template and its generation prompt (encoded without them: the template
/// writes its own). A prompt longer than `max_seq_len - 1` tokens keeps its last ones (where
/// the generation prompt is). Returns the text, its tokens and whether they were cut.
fn prompt_of(cfg: &GenerateConfig, tok: &Tokenizer, row: &Row) -> Result<(String, Vec<u32>, bool)> {
    let column = cfg.prompts.column();
    let kind = if matches!(cfg.prompts, PromptSource::Messages { .. }) { Kind::Messages } else { Kind::Text };
    let text = match (&row.fields[0], tok.chat.as_ref()) {
        (Field::Text(text), _) => text.clone(),
        (Field::Json(messages), Some(chat)) => {
            chat.render(messages, true).map_err(|m| Error::data(&cfg.data, format!("row {}, column `{column}`: {m}", row.index)))?.text
        }
        _ => {
            let want = if kind == Kind::Text { "string" } else { "conversation" };
            return Err(Error::data(&cfg.data, format!("row {}: column `{column}` is null or not a {want}", row.index)));
        }
    };
    let enc = tok
        .inner
        .encode(text.as_str(), kind == Kind::Text)
        .map_err(|e| Error::Tokenizer { path: cfg.tokenizer.clone(), message: format!("row {}: {e}", row.index) })?;
    let mut prompt = enc.get_ids().to_vec();
    if prompt.is_empty() {
        return Err(Error::data(&cfg.data, format!("row {}: the prompt has no tokens: there is nothing to continue", row.index)));
    }
    let keep = cfg.max_seq_len - 1;
    let cut = prompt.len() > keep;
    if cut {
        prompt.drain(..prompt.len() - keep);
    }
    Ok((text, prompt, cut))
}

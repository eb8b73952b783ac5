//! Tokenization shared by both stages and `eval`: the same text columns must produce the
//! same token ids and the same cached positions in stage one and stage two.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::Positions;
use crate::data::Field;
use crate::error::{Error, Result};

/// Where a row's text comes from, and which positions are trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextColumns {
    /// Plain text column (every position), or `None` with prompt/completion.
    pub text: Option<String>,
    pub prompt: Option<String>,
    pub completion: Option<String>,
    pub positions: Positions,
    /// Sequences are cut to this many tokens.
    pub max_seq_len: usize,
}

impl TextColumns {
    /// Names of the columns to read, in the order [`tokenize`] expects the fields.
    pub fn column_names(&self) -> Vec<String> {
        match (&self.text, &self.prompt, &self.completion) {
            (Some(t), _, _) => vec![t.clone()],
            (None, Some(p), Some(c)) => vec![p.clone(), c.clone()],
            _ => Vec::new(),
        }
    }
}

/// A loaded tokenizer and where it came from.
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub path: PathBuf,
    /// SHA-256 of the tokenizer.json bytes: the fingerprint recorded in manifests.
    pub sha256: String,
    pub pad_id: u32,
}

impl Tokenizer {
    pub fn load(path: &Path) -> Result<Tokenizer> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::Tokenizer { path: path.to_path_buf(), message: format!("not a valid tokenizer.json: {e}") })?;
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| ["<|pad|>", "<pad>", "[PAD]", "<|endoftext|>"].iter().find_map(|t| inner.token_to_id(t)))
            .unwrap_or(0);
        Ok(Tokenizer { inner, path: path.to_path_buf(), sha256: crate::cache::manifest::sha256_bytes(&bytes), pad_id })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// One tokenized row.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    /// First position that is trained on / cached (position `p` predicts token `p + 1`).
    pub first_position: usize,
    /// The row was longer than `max_seq_len` and was cut.
    pub truncated: bool,
}

impl Tokenized {
    /// Positions that are cached / trained on: `first_position .. len - 1`.
    pub fn positions(&self) -> std::ops::Range<usize> {
        self.first_position..self.ids.len().saturating_sub(1)
    }
}

/// Tokenize one row: `fields` holds the values of [`TextColumns::column_names`], in order.
/// Text is encoded with the tokenizer's special tokens; a completion is encoded without them
/// and appended to its prompt.
pub fn tokenize(tok: &Tokenizer, cols: &TextColumns, fields: &[Field], row: u64, data: &Path) -> Result<Tokenized> {
    let names = cols.column_names();
    let get = |i: usize| match fields.get(i) {
        Some(Field::Text(s)) => Ok(s.as_str()),
        _ => Err(Error::data(data, format!("row {row}, column `{}`: value is missing (null)", names[i]))),
    };
    let enc = |s: &str, special: bool| {
        tok.inner
            .encode(s, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer { path: tok.path.clone(), message: format!("row {row}: {e}") })
    };
    let (mut ids, first) = if cols.text.is_some() {
        (enc(get(0)?, true)?, 0)
    } else {
        let mut ids = enc(get(0)?, true)?;
        let m = ids.len();
        ids.extend(enc(get(1)?, false)?);
        let first = if cols.positions == Positions::Completion { m.saturating_sub(1) } else { 0 };
        (ids, first)
    };
    let truncated = ids.len() > cols.max_seq_len;
    ids.truncate(cols.max_seq_len);
    Ok(Tokenized { ids, first_position: first, truncated })
}

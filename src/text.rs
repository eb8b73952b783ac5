//! Tokenization shared by both stages and `eval`: the same text columns must produce the
//! same token ids and the same cached positions in stage one and stage two. Text is a plain
//! column, a prompt and a completion, or a conversation rendered with a chat template
//! ([`crate::chat`]).

use std::path::{Path, PathBuf};

use crate::cache::Positions;
pub use crate::cache::manifest::TextColumns;
use crate::chat::{ChatTemplate, assistant_mask};
use crate::data::Field;
use crate::error::{Error, Result};

/// A loaded tokenizer and where it came from.
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub path: PathBuf,
    /// SHA-256 of the tokenizer.json bytes: the fingerprint recorded in manifests.
    pub sha256: String,
    pub pad_id: u32,
    /// The chat template conversations are rendered with (chat data only).
    pub chat: Option<ChatTemplate>,
}

impl Tokenizer {
    pub fn load(path: &Path) -> Result<Tokenizer> {
        let bytes = crate::untrusted::read(path, crate::untrusted::Cap::Tokenizer)?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::Tokenizer { path: path.to_path_buf(), message: format!("not a valid tokenizer.json: {e}") })?;
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| ["<|pad|>", "<pad>", "[PAD]", "<|endoftext|>"].iter().find_map(|t| inner.token_to_id(t)))
            .unwrap_or(0);
        // As transformers applies a tokenizer.json: its `padding` and `truncation` keys
        // (all-MiniLM-L6-v2 ships `Fixed: 128` and `max_length: 128`) act only when a call
        // asks for them, and distill never does: `--max-seq-len` and the batching decide.
        let mut inner = inner;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer { path: path.to_path_buf(), message: format!("cannot turn truncation off: {e}") })?;
        Ok(Tokenizer { inner, path: path.to_path_buf(), sha256: crate::integrity::sha256_bytes(&bytes), pad_id, chat: None })
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
    /// Chat data with `positions = assistant`: which tokens are assistant tokens; a
    /// position is trained on when the token it predicts is one.
    pub targets: Option<Vec<bool>>,
    /// The row was longer than `max_seq_len` and was cut.
    pub truncated: bool,
}

impl Tokenized {
    /// Positions that are cached / trained on, ascending: `first_position .. len - 1`, less
    /// those predicting a token that is not a target.
    pub fn positions(&self) -> Vec<usize> {
        let all = self.first_position..self.ids.len().saturating_sub(1);
        match &self.targets {
            None => all.collect(),
            Some(t) => all.filter(|&p| t[p + 1]).collect(),
        }
    }
}

/// Tokenize one row: `fields` holds the values of [`TextColumns::columns`], in order.
/// Text is encoded with the tokenizer's special tokens; a completion is encoded without them
/// and appended to its prompt; a conversation is rendered with the chat template and encoded
/// without them (the template writes its own, as `apply_chat_template` does). Token-id
/// columns ([`TextColumns::token_ids`]) are taken as they are.
pub fn tokenize(tok: &Tokenizer, cols: &TextColumns, fields: &[Field], row: u64, data: &Path) -> Result<Tokenized> {
    let names = cols.column_names();
    let missing = |i: usize| Error::data(data, format!("row {row}, column `{}`: value is missing (null)", names[i]));
    let get = |i: usize| match fields.get(i) {
        Some(Field::Text(s)) => Ok(s.as_str()),
        _ => Err(missing(i)),
    };
    let enc = |s: &str, special: bool| {
        tok.inner.encode(s, special).map_err(|e| Error::Tokenizer { path: tok.path.clone(), message: format!("row {row}: {e}") })
    };
    let chat = || tok.chat.as_ref().ok_or_else(|| Error::Config("chat data needs a chat template (--chat-template)".into()));
    let turns = |i: usize| match fields.get(i) {
        Some(Field::Json(v)) => Ok(v),
        _ => Err(missing(i)),
    };
    let render = |messages: &serde_json::Value, generation_prompt: bool| {
        chat()?.render(messages, generation_prompt).map_err(|m| Error::data(data, format!("row {row}, column `{}`: {m}", names[0])))
    };
    // Not per id: the tokenizer counts its vocabulary by building it.
    let vocab = if cols.token_ids { tok.vocab_size() } else { 0 };
    let token_ids = |i: usize| match fields.get(i) {
        Some(Field::Numbers(v)) => ids_of(v, vocab).map_err(|x| {
            Error::data(data, format!("row {row}, column `{}`: {x} is not a token id of the tokenizer (0..{vocab})", names[i]))
        }),
        _ => Err(missing(i)),
    };
    let mut cut_before_specials = false;
    let (mut ids, first, mut targets) = if cols.token_ids && cols.text.is_some() {
        (token_ids(0)?, 0, None)
    } else if cols.token_ids {
        let mut ids = token_ids(0)?;
        let m = ids.len();
        ids.extend(token_ids(1)?);
        let first = if cols.positions == Positions::Completion { m.saturating_sub(1) } else { 0 };
        (ids, first, None)
    } else if cols.messages.is_some() {
        let rendered = render(turns(0)?, false)?;
        let e = enc(&rendered.text, false)?;
        let targets = (cols.positions == Positions::Assistant).then(|| assistant_mask(e.get_offsets(), &rendered.assistant));
        (e.get_ids().to_vec(), 0, targets)
    } else if cols.conversational {
        // As TRL: the prompt rendered with the generation prompt, then the whole
        // conversation; completion positions start where the prompt's tokens end.
        let prompt = render(turns(0)?, true)?;
        let prompt_ids = enc(&prompt.text, false)?.get_ids().to_vec();
        let m = prompt_ids.len();
        let whole: Vec<serde_json::Value> = [turns(0)?, turns(1)?].iter().flat_map(|v| v.as_array().cloned().unwrap_or_default()).collect();
        let rendered = render(&serde_json::Value::Array(whole), false)?;
        let e = enc(&rendered.text, false)?;
        if !e.get_ids().starts_with(&prompt_ids) {
            return Err(Error::data(
                data,
                format!(
                    "row {row}: the prompt's {m} tokens are not the start of the conversation's (the chat template renders \
                     the prompt turns differently once a completion follows), so the completion positions cannot be \
                     placed; use --messages-column with a template that marks {{% generation %}} blocks instead"
                ),
            ));
        }
        let first = if cols.positions == Positions::Completion { m.saturating_sub(1) } else { 0 };
        let targets = (cols.positions == Positions::Assistant).then(|| assistant_mask(e.get_offsets(), &rendered.assistant));
        (e.get_ids().to_vec(), first, targets)
    } else if cols.text.is_some() {
        let (ids, cut) = encode_within(tok, get(0)?, cols.max_seq_len)
            .map_err(|message| Error::Tokenizer { path: tok.path.clone(), message: format!("row {row}: {message}") })?;
        cut_before_specials = cut;
        (ids, 0, None)
    } else {
        let mut ids = enc(get(0)?, true)?.get_ids().to_vec();
        let m = ids.len();
        ids.extend(enc(get(1)?, false)?.get_ids());
        let first = if cols.positions == Positions::Completion { m.saturating_sub(1) } else { 0 };
        (ids, first, None)
    };
    let truncated = cut_before_specials || ids.len() > cols.max_seq_len;
    ids.truncate(cols.max_seq_len);
    if let Some(t) = &mut targets {
        t.truncate(cols.max_seq_len);
    }
    Ok(Tokenized { ids, first_position: first, targets, truncated })
}

/// A token-id column's values as ids below `vocab`; the first value that is not one is the
/// error.
fn ids_of(values: &[f32], vocab: usize) -> std::result::Result<Vec<u32>, f32> {
    values
        .iter()
        .map(|&x| {
            let id = x as u32;
            if x >= 0.0 && id as f32 == x && (id as usize) < vocab { Ok(id) } else { Err(x) }
        })
        .collect()
}

/// Encode `text` with the tokenizer's special tokens in at most `max_len` tokens, as
/// transformers does with `truncation=True, max_length=max_len`: the text's own tokens are
/// cut first, then the special tokens are added, so BERT's `[SEP]` survives a long row.
/// Returns the ids and whether the text was cut.
fn encode_within(tok: &Tokenizer, text: &str, max_len: usize) -> std::result::Result<(Vec<u32>, bool), String> {
    let mut e = tok.inner.encode(text, false).map_err(|e| e.to_string())?;
    let added = tok.inner.get_post_processor().map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
    let keep = max_len.saturating_sub(added);
    let cut = e.len() > keep;
    e.truncate(keep, 0, tokenizers::TruncationDirection::Right);
    let e = tok.inner.post_process(e, None, true).map_err(|e| e.to_string())?;
    Ok((e.get_ids().to_vec(), cut))
}

/// For conversations, attach the chat template saved in `dir` (a cache or a run
/// directory), checking it is the one `cols` records.
pub fn attach_chat_template(tok: &mut Tokenizer, cols: &TextColumns, dir: &Path) -> Result<()> {
    if cols.messages.is_none() && !cols.conversational {
        return Ok(());
    }
    let path = dir.join(crate::chat::CHAT_TEMPLATE_FILE);
    let chat = ChatTemplate::load_saved(&path)?;
    if let Some(want) = &cols.chat_template_sha256
        && *want != chat.sha256
    {
        return Err(Error::Config(format!(
            "{}: is not the chat template the cache was made with (sha256 {} vs {})",
            path.display(),
            crate::integrity::short(&chat.sha256),
            crate::integrity::short(want)
        )));
    }
    tok.chat = Some(chat);
    Ok(())
}

/// The checkpoint's tokenizer must give every token of the cache's the same id.
pub fn same_tokenizer(theirs: &Path, ours: &Tokenizer) -> Result<()> {
    let theirs_tok = Tokenizer::load(theirs)?;
    if theirs_tok.sha256 != ours.sha256 {
        let (a, b) = (theirs_tok.inner.get_vocab(true), ours.inner.get_vocab(true));
        let mut diff: Vec<String> = b
            .iter()
            .filter(|(t, id)| a.get(*t) != Some(id))
            .map(|(t, id)| format!("`{t}` is {id} in the cache's tokenizer but {:?} in the checkpoint's", a.get(t)))
            .collect();
        diff.sort();
        if !diff.is_empty() || a.len() != b.len() {
            return Err(Error::Tokenizer {
                path: theirs.to_path_buf(),
                message: format!(
                    "the checkpoint's tokenizer ({} tokens) is not the cache's ({} tokens): {}",
                    a.len(),
                    b.len(),
                    diff.first().cloned().unwrap_or_else(|| "the checkpoint's has extra tokens".into())
                ),
            });
        }
    }
    Ok(())
}

//! Stage one's inputs, checked before anything is written: the teacher, the tokenizer and
//! chat template, the top-k, the cached positions and the columns to read.

use std::path::Path;

use crate::cache::manifest;
use crate::cache::{Positions, Task};
use crate::chat::ChatTemplate;
use crate::config::{CacheTeacherConfig, TextSource};
use crate::data::{self, Column, Kind};
use crate::error::{Error, Result};
use crate::teacher::{InputMapping, Teacher};
use crate::text::{TextColumns, Tokenizer};

use super::RunOptions;

/// How stage two is to read and tokenize the text (recorded in the manifest).
fn text_columns_of(t: &crate::config::TextConfig, conversational: bool, chat: Option<&ChatTemplate>, positions: Positions) -> TextColumns {
    let (mut text, mut prompt, mut completion, mut messages) = (None, None, None, None);
    match &t.source {
        TextSource::Text(c) => text = Some(c.clone()),
        TextSource::PromptCompletion { prompt: p, completion: c } => (prompt, completion) = (Some(p.clone()), Some(c.clone())),
        TextSource::Messages(m) => messages = Some(m.clone()),
    }
    TextColumns {
        text,
        prompt,
        completion,
        messages,
        conversational,
        token_ids: t.token_ids,
        chat_template_sha256: chat.map(|c| c.sha256.clone()),
        positions,
        max_seq_len: t.max_seq_len,
    }
}

/// A teacher exported with its tokenizer (`tokenizer.json` beside the model, as Optimum
/// writes it) is run with that tokenizer: another one given with `--tokenizer` is refused.
fn refuse_other_tokenizer(teacher: &Path, tok: &Tokenizer) -> Result<()> {
    let beside = teacher.parent().unwrap_or(Path::new(".")).join(manifest::TOKENIZER_FILE);
    if !beside.is_file() || manifest::sha256_file(&beside)? == tok.sha256 {
        return Ok(());
    }
    Err(Error::Tokenizer {
        path: tok.path.clone(),
        message: format!(
            "is not the tokenizer beside the teacher ({}, which differs); pass that one with --tokenizer, \
             or move it away if the teacher really was trained with this one",
            beside.display()
        ),
    })
}

/// Which ids a soft label may name, and what the user should know about it.
pub(super) struct Selectable {
    pub ids: usize,
    pub warning: Option<String>,
}

/// A causal LM's logits may be wider than its tokenizer (vocabularies padded to a round
/// size: Qwen2.5-7B has 152064 logits for 151665 tokens): ids past the tokenizer are
/// padding, never chosen for the top-k; their probability is part of the tail mass. A
/// tokenizer larger than the logits is refused; one much smaller (more than 1 % of the
/// logits and 128 ids of padding) is more likely the wrong tokenizer: a warning says so.
pub(super) fn selectable_ids(cfg: &CacheTeacherConfig, teacher: &Teacher, tok: Option<&Tokenizer>) -> Result<Selectable> {
    let vocab = teacher.vocab_size;
    let (Some(ts), Task::CausalLm) = (tok, teacher.task) else {
        return Ok(Selectable { ids: vocab, warning: None });
    };
    let tokens = ts.vocab_size();
    let path = || cfg.text.as_ref().expect("a tokenizer comes with text settings").tokenizer.clone();
    if tokens > vocab {
        return Err(Error::Tokenizer {
            path: path(),
            message: format!(
                "tokenizer has {tokens} tokens but the teacher's logits have {vocab}: ids would fall outside the teacher's vocabulary"
            ),
        });
    }
    let padding = vocab - tokens;
    let warning = (padding > 128 && padding * 100 > vocab).then(|| {
        format!(
            "the tokenizer ({}) has {tokens} tokens but the teacher's logits have {vocab}: {padding} ids are taken as padding \
             (more than padding usually is); check that this is the teacher's own tokenizer",
            path().display()
        )
    });
    Ok(Selectable { ids: tokens, warning })
}

/// What stage one runs on, checked.
pub(super) struct Inputs {
    pub teacher: Teacher,
    /// Token models: the tokenizer (with its chat template for conversations).
    pub tok: Option<Tokenizer>,
    pub selectable: Selectable,
    pub top_k: usize,
    pub positions: Positions,
    pub text_columns: Option<TextColumns>,
    /// The columns read, in order: features or text, then the label.
    pub columns: Vec<Column>,
    pub label_column: Option<String>,
}

impl Inputs {
    /// Open and check the inputs. Nothing is created before they are known to be usable.
    pub fn open(cfg: &CacheTeacherConfig, opts: &RunOptions) -> Result<Inputs> {
        data::dataset_format(&cfg.data)?;
        if !cfg.teacher.is_file() {
            return Err(Error::io(&cfg.teacher, std::io::Error::new(std::io::ErrorKind::NotFound, "teacher model not found")));
        }
        // Prompt and completion columns of conversations (TRL's conversational format).
        let conversational = match cfg.text.as_ref() {
            Some(t @ crate::config::TextConfig { source: TextSource::PromptCompletion { prompt, .. }, .. }) if !t.token_ids => {
                data::column_holds_lists(&cfg.data, prompt)?
            }
            _ => false,
        };
        let tok = tokenizer(cfg, conversational)?;
        let mapping = InputMapping {
            tokens: cfg.text.is_some(),
            columns: cfg.inputs.clone(),
            output: cfg.output.clone(),
            hidden: cfg.hidden_states.clone(),
        };
        let teacher = Teacher::load(&cfg.teacher, &mapping, cfg.threads, cfg.spin, opts.ort_lib.as_deref(), cfg.device)?;
        let selectable = selectable_ids(cfg, &teacher, tok.as_ref())?;
        let top_k = top_k(cfg, &teacher, &selectable)?;
        let mut teacher = teacher;
        if cfg.topk_in == crate::config::TopkIn::Onnxruntime {
            teacher.compute_soft_labels_in_graph(top_k, cfg.temperature, selectable.ids)?;
        }
        let positions = positions_mode(cfg, &teacher)?;
        let chat = tok.as_ref().and_then(|ts| ts.chat.as_ref());
        let text_columns = cfg.text.as_ref().map(|t| text_columns_of(t, conversational, chat, positions));
        let (columns, label_column) = columns(cfg, &teacher, text_columns.as_ref())?;
        Ok(Inputs { teacher, tok, selectable, top_k, positions, text_columns, columns, label_column })
    }
}

/// The tokenizer of a token model, with the chat template when the data is conversations.
fn tokenizer(cfg: &CacheTeacherConfig, conversational: bool) -> Result<Option<Tokenizer>> {
    let Some(t) = &cfg.text else { return Ok(None) };
    let mut tok = Tokenizer::load(&t.tokenizer)?;
    refuse_other_tokenizer(&cfg.teacher, &tok)?;
    if matches!(t.source, TextSource::Messages(_)) || conversational {
        tok.chat = Some(ChatTemplate::find(t.chat_template.as_deref(), &t.tokenizer)?);
    } else if t.chat_template.is_some() {
        return Err(Error::Config(format!(
            "cache.chat_template applies to conversations, but the prompt column of {} holds plain text",
            cfg.data.display()
        )));
    }
    Ok(Some(tok))
}

/// `--top-k`, at most the logits' width and the selectable ids; by default 64 or fewer.
/// Sampled soft labels hold `N` entries (`K + N` with an exact top K).
fn top_k(cfg: &CacheTeacherConfig, teacher: &Teacher, selectable: &Selectable) -> Result<usize> {
    let vocab = teacher.vocab_size;
    if let Some(s) = cfg.sampled {
        // Each position holds the K exact and the N drawn ids, padded to K + N distinct ones.
        let entries = s.exact_top + s.draws;
        if entries > selectable.ids {
            return Err(Error::Config(format!(
                "--soft-labels: {entries} entries per position ({} exact + {} drawn) are more than the {} ids a label may name",
                s.exact_top, s.draws, selectable.ids
            )));
        }
        return Ok(entries);
    }
    match cfg.top_k {
        Some(k) if k > vocab => Err(Error::Config(format!(
            "cache.top_k = {k} is larger than the teacher's {} of {vocab} (output `{}`)",
            if teacher.task == Task::Classification { "class count" } else { "vocabulary" },
            teacher.output_name()
        ))),
        Some(k) if k > selectable.ids => {
            Err(Error::Config(format!("cache.top_k = {k} is larger than the tokenizer's {} tokens", selectable.ids)))
        }
        Some(k) => Ok(k),
        None => Ok(selectable.ids.min(crate::config::defaults::cache::TOP_K)),
    }
}

/// Which positions are cached: one per row for a classifier, `--positions` for an LM.
fn positions_mode(cfg: &CacheTeacherConfig, teacher: &Teacher) -> Result<Positions> {
    match (&cfg.text, teacher.task) {
        (Some(t), Task::CausalLm) => Ok(t.positions),
        (_, Task::Classification) => Ok(Positions::Example),
        (None, Task::CausalLm) => Err(Error::teacher(
            &cfg.teacher,
            "the model outputs [batch, seq, vocab] logits (a causal LM) but no tokenizer/text column was given",
        )),
    }
}

/// The columns to read (the text's, or the teacher's feature columns, which the file must
/// have), then the label column: `--label-column`, or `label` for a classifier that has one.
fn columns(cfg: &CacheTeacherConfig, teacher: &Teacher, text: Option<&TextColumns>) -> Result<(Vec<Column>, Option<String>)> {
    let names = data::column_names(&cfg.data)?;
    let mut columns = Vec::new();
    match text {
        Some(t) => columns.extend(t.columns()),
        None => {
            for (col, _) in teacher.feature_columns() {
                if !names.contains(&col) {
                    return Err(Error::data(
                        &cfg.data,
                        format!(
                            "the teacher's input is fed from column `{col}`, which the file does not have (columns: {}); \
                             map it with --input INPUT=COLUMN",
                            names.join(", ")
                        ),
                    ));
                }
                columns.push(Column::new(col, Kind::Numbers));
            }
        }
    }
    let label_column = match (&cfg.label_column, teacher.task) {
        (Some(l), _) => Some(l.clone()),
        (None, Task::Classification) if names.iter().any(|n| n == "label") => Some("label".to_string()),
        _ => None,
    };
    if let Some(l) = &label_column {
        columns.push(Column::new(l, Kind::Label));
    }
    Ok((columns, label_column))
}

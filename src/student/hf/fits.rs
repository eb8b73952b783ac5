//! Whether a pretrained checkpoint can learn from a cache (`train-student --student hf:`).

use crate::cache::Manifest;
use crate::error::{Error, Result};
use crate::student::StudentArch;
use crate::text::Tokenizer;

use super::HfCheckpoint;

/// Check that a pretrained checkpoint can learn from this cache: vocabulary, classes,
/// positions, tokenizer. A vocabulary padded past the cache's is sliced (noted); one smaller
/// than the tokens the cache may name, another tokenizer or another class count is refused.
pub fn check_fits(ck: &mut HfCheckpoint, m: &Manifest, tok: Option<&Tokenizer>, notes: &mut Vec<String>) -> Result<()> {
    let dir = ck.dir.display().to_string();
    if let (Some(theirs), Some(ours)) = (&ck.tokenizer, tok) {
        crate::text::same_tokenizer(theirs, ours)?;
    }
    let tokens = tok.map(|t| t.vocab_size()).unwrap_or(0);
    let has_classifier = ck.has("classifier.weight");
    match &mut ck.arch {
        StudentArch::Decoder(c) => {
            let vocab_size = c.vocab_size;
            // Cached ids are tokens of the tokenizer: a teacher's logits padded past it (a
            // 7B's 152064 over a 0.5B's 151936, the same tokenizer) never put padding ids in
            // the top-k, their mass is in the tail. What must hold is that every token the
            // cache may name has a logit.
            let ids = m.cached_id_bound();
            if vocab_size < ids {
                let lost = tok.and_then(|t| t.inner.id_to_token(vocab_size as u32)).map(|t| format!(" (`{t}`)")).unwrap_or_default();
                return Err(Error::Config(format!(
                    "{dir}: the student's vocab_size is {vocab_size} but the cache's soft labels may name token ids up to {}: token {vocab_size}{lost} and those after it would have no logit",
                    ids - 1
                )));
            }
            if vocab_size > m.vocab_size {
                notes.push(format!(
                    "the student's vocabulary ({vocab_size}) is padded past the cache's ({}): its logits are sliced to the first {} (the padding rows get no gradient and are kept in the export)",
                    m.vocab_size, m.vocab_size
                ));
            } else if vocab_size < m.vocab_size {
                notes.push(format!(
                    "the teacher's logits ({}) are padded past the student's vocabulary ({vocab_size}); the cache names only the tokenizer's {ids} ids, and the padding's mass is in its tail",
                    m.vocab_size
                ));
            }
        }
        StudentArch::Encoder(c) => {
            let crate::student::EncoderConfig { vocab_size, classes, max_positions, .. } = c;
            if *vocab_size < tokens {
                return Err(Error::Config(format!(
                    "{dir}: the student's vocab_size is {vocab_size} but the cache's tokenizer has {tokens} tokens"
                )));
            }
            if !has_classifier && *classes != m.vocab_size {
                // A bare encoder (no head yet): the head is made for the cache's classes.
                *classes = m.vocab_size;
            } else if *classes != m.vocab_size {
                return Err(Error::Config(format!(
                    "{dir}: the checkpoint classifies into {classes} classes (id2label / num_labels) but the cache has {}",
                    m.vocab_size
                )));
            }
            let need = m.text.as_ref().map(|t| t.max_seq_len).unwrap_or(0);
            if *max_positions < need {
                return Err(Error::Config(format!(
                    "{dir}: max_position_embeddings is {max_positions} but the cache's sequences are up to {need} tokens"
                )));
            }
        }
        StudentArch::Mlp(_) => unreachable!("checkpoints are encoders or decoders"),
    }
    Ok(())
}

//! Stage two's checks before training: the cache serves this run (data, temperature, task,
//! tokenizer) and a pretrained checkpoint fits the cache.

use std::path::Path;

use crate::cache::manifest::DatasetInfo;
use crate::cache::manifest::TOKENIZER_FILE;
use crate::cache::{CacheReader, Manifest, Task};
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::loss::TailMode;
use crate::student::{self, hf};
use crate::text::{self, Tokenizer};

/// Every `--hidden-layers` pair names a hidden state the cache holds.
fn check_hidden_states(cfg: &TrainConfig, m: &Manifest) -> Result<()> {
    for p in &cfg.loss.hidden {
        if !m.hidden_states.iter().any(|h| h.output == p.output) {
            let held = if m.hidden_states.is_empty() {
                "it holds none".to_string()
            } else {
                format!("it holds: {}", m.hidden_states.iter().map(|h| h.output.as_str()).collect::<Vec<_>>().join(", "))
            };
            return Err(Error::cache(
                &cfg.cache,
                format!(
                    "train.hidden_layers pairs layer {} with the teacher output `{}`, but the cache stores no such hidden \
                     state ({held}); make the cache with `cache-teacher --hidden-states {}`",
                    p.layer, p.output, p.output
                ),
            ));
        }
    }
    Ok(())
}

/// The student's layers that `--hidden-layers` names exist.
pub(super) fn check_hidden_layers(cfg: &TrainConfig, model: &crate::student::Student) -> Result<Vec<usize>> {
    let widths = model.layer_widths();
    cfg.loss
        .hidden
        .iter()
        .map(|p| {
            widths.iter().find(|(l, _)| *l == p.layer).map(|(_, w)| *w).ok_or_else(|| {
                let layers = widths.iter().map(|(l, _)| l.to_string()).collect::<Vec<_>>().join(", ");
                Error::Config(format!("train.hidden_layers: the student has no layer {} (its layers: {layers})", p.layer))
            })
        })
        .collect()
}

/// Open the cache and check that it serves this run: data, tokenizer, temperature, task.
pub(super) fn check_cache(cfg: &TrainConfig, dir: &Path) -> Result<(CacheReader, f32)> {
    // A remote cache's shards are still arriving: they are checked as they are read.
    let reader = if crate::store::is_url(&cfg.cache) { CacheReader::open_lazy(dir)? } else { CacheReader::open(dir)? };
    let outputs: Vec<&str> = cfg.loss.hidden.iter().map(|p| p.output.as_str()).collect();
    let reader = reader.with_hidden(&outputs);
    let m = reader.manifest();
    if let Some(why) = DatasetInfo::of(&cfg.data)?.difference(&m.dataset) {
        return Err(Error::cache(&cfg.cache, format!("was made from another dataset than {}: {why}", cfg.data.display())));
    }
    if let Some(k) = cfg.top_k
        && k > m.top_k
    {
        return Err(Error::Config(format!("train.top_k = {k} but the cache holds only the top {} entries per position", m.top_k)));
    }
    if m.sampled.is_some() && cfg.top_k.is_some_and(|k| k < m.top_k) {
        return Err(Error::Config(
            "train.top_k cannot narrow a cache of sampled soft labels: dropping drawn ids would bias the estimate".into(),
        ));
    }
    let t = cfg.loss.temperature.unwrap_or(m.temperature);
    if m.sampled.is_some() && (t - m.temperature).abs() > 1e-6 {
        return Err(Error::Config(format!(
            "train.temperature = {t} differs from the cache's {}: sampled soft labels are draws at the cache's temperature and cannot be re-tempered",
            m.temperature
        )));
    }
    if cfg.loss.divergence == crate::loss::Divergence::SampledRkl {
        if m.task != Task::CausalLm {
            return Err(Error::Config(
                "train.divergence = sampled-rkl needs a causal-LM cache of text the student wrote (generate --student, then cache-teacher --token-ids)".into(),
            ));
        }
        if !m.text.as_ref().is_some_and(|c| c.token_ids && c.positions == crate::cache::Positions::Completion) {
            return Err(Error::Config(
                "train.divergence = sampled-rkl needs a cache of the completion positions of token ids (cache-teacher --token-ids \
                 --prompt-column prompt_ids --completion-column completion_ids over generated.parquet): its hard labels must be \
                 the tokens the student drew"
                    .into(),
            ));
        }
        if (t - m.temperature).abs() > 1e-6 {
            return Err(Error::Config(format!(
                "train.temperature = {t} differs from the cache's {}: sampled-rkl reads the teacher's log-prob of each drawn token, stored at the cache's temperature only",
                m.temperature
            )));
        }
    }
    if (t - m.temperature).abs() > 1e-6 && cfg.loss.tail == TailMode::Bucket && m.top_k < m.vocab_size {
        return Err(Error::Config(format!(
            "train.temperature = {t} differs from the cache's temperature {}: the tail mass at {t} cannot be \
             recovered from the cache, so tail = \"bucket\" cannot serve it; use tail = \"renormalize\" (the top-k is \
             re-tempered exactly) or train at T = {}",
            m.temperature, m.temperature
        )));
    }
    check_hidden_states(cfg, m)?;
    use student::StudentSpec as S;
    let kind = match &cfg.student {
        S::Mlp { .. } => "mlp",
        S::Encoder { .. } => "encoder",
        S::Decoder { .. } => "decoder",
        S::Hf { path } => hf::read_arch(path)?.kind_name(),
    };
    let fits = match (kind, m.task) {
        ("mlp", Task::Classification) => m.text.is_none(),
        ("encoder", Task::Classification) => m.text.is_some(),
        ("decoder", Task::CausalLm) => true,
        _ => false,
    };
    if !fits {
        let cache_kind = match (m.task, m.text.is_some()) {
            (Task::Classification, false) => "classification over numeric features (student kind `mlp`)",
            (Task::Classification, true) => "classification over tokens (student kind `encoder`)",
            (Task::CausalLm, _) => "causal LM (student kind `decoder`)",
        };
        return Err(Error::Config(format!("student kind `{kind}` cannot learn this cache: it holds {cache_kind}")));
    }
    Ok((reader, t))
}

/// The cache's tokenizer (a text cache), with its chat template: `--tokenizer` or the copy
/// in the cache, checked against the manifest's hash.
pub(super) fn tokenizer_for(cfg: &TrainConfig, m: &Manifest, cache_dir: &Path) -> Result<Option<Tokenizer>> {
    let (Some(text), Some(info)) = (&m.text, &m.tokenizer) else { return Ok(None) };
    let mut tok = load_tokenizer(cfg.tokenizer.as_deref(), cache_dir, &info.sha256)?;
    text::attach_chat_template(&mut tok, text, cache_dir)?;
    Ok(Some(tok))
}

fn load_tokenizer(cfg_tokenizer: Option<&Path>, dir: &Path, expected: &str) -> Result<Tokenizer> {
    let path = cfg_tokenizer.map(Path::to_path_buf).unwrap_or_else(|| dir.join(TOKENIZER_FILE));
    let tok = Tokenizer::load(&path)?;
    if tok.sha256 != expected {
        return Err(Error::Tokenizer {
            path,
            message: format!(
                "is not the tokenizer the cache was made with (sha256 {} vs {} in the manifest)",
                crate::integrity::short(&tok.sha256),
                crate::integrity::short(expected)
            ),
        });
    }
    Ok(tok)
}

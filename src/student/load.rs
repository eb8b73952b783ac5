//! Loading a student to run: a train-student run directory (`student.json`, its weights
//! and tokenizer) or a Hugging Face checkpoint directory, with how it reads data.

use std::path::Path;

use burn::tensor::Device;

use crate::cache::manifest::TOKENIZER_FILE;
use crate::cache::{CacheReader, Task};
use crate::error::{Error, Result};
use crate::student::{self, DataSpec, Student, StudentArch, StudentFile, hf};
use crate::text::{TextColumns, Tokenizer};

/// How a Hugging Face checkpoint reads data when nothing else says (a run directory
/// carries its own): the text column, and the longest sequence fed to it.
#[derive(Debug, Clone)]
pub struct Reading {
    pub text_column: String,
    pub max_seq_len: usize,
}

impl Reading {
    pub const TEXT_COLUMN: &str = "text";
    pub const MAX_SEQ_LEN: usize = 512;
}

/// A student ready to run, and how it reads data.
pub struct LoadedStudent {
    pub model: Student,
    pub spec: DataSpec,
    pub tok: Option<Tokenizer>,
    /// A run directory's architecture (a checkpoint's rows are not checked against it).
    pub arch: Option<StudentArch>,
    pub output_vocab: Option<usize>,
    /// Notes from loading a Hugging Face checkpoint (weights it lacked, ties).
    pub notes: Vec<String>,
}

impl LoadedStudent {
    /// A run directory or a checkpoint directory.
    pub fn open(dir: &Path, reading: &Reading, device: &Device) -> Result<LoadedStudent> {
        open(dir, reading, device)
    }

    /// The student `eval` scores: a run directory; or a checkpoint read as `cache` (a cache
    /// of the evaluation data) reads its rows, else with `reading`'s column (and `label`
    /// as a classifier's classes). A student trained on token ids reads text as the cache
    /// of it does.
    pub fn for_eval(dir: &Path, cache: Option<&Path>, reading: &Reading, device: &Device) -> Result<LoadedStudent> {
        let mut st = match (cache, dir.join("student.json").is_file()) {
            (Some(c), false) if hf::is_checkpoint(dir) => load_checkpoint_for_cache(dir, c, device)?,
            (None, false) if hf::is_checkpoint(dir) => {
                let mut st = load_checkpoint(dir, reading, device)?;
                if st.spec.task == Task::Classification {
                    st.spec.label_column = Some("label".into());
                }
                st
            }
            _ => open(dir, reading, device)?,
        };
        if let Some(c) = cache {
            read_text_as_the_cache(&mut st, c)?;
        }
        Ok(st)
    }
}

/// A train-student run directory: `student.json`, `student.bpk` and the tokenizer.
fn load_run(dir: &Path, device: &Device) -> Result<LoadedStudent> {
    let sf_path = dir.join("student.json");
    let sf: StudentFile = serde_json::from_slice(&crate::untrusted::read(&sf_path, crate::untrusted::Cap::Settings)?)
        .map_err(|e| Error::Config(format!("{}: not a student description: {e}", sf_path.display())))?;
    let weights = dir.join("student.bpk");
    let (_, bytes) = crate::untrusted::open(&weights, crate::untrusted::Cap::Weights)?;
    // At least 2 bytes per stored value (f16); Burn stores f32, so this bound is generous.
    sf.arch.check_against_weights(u128::from(bytes / 2), &sf_path)?;
    let mut model = sf.arch.init(device);
    student::load_burnpack(&mut model, &weights)?;
    let tok = match &sf.data.text {
        Some(text) => {
            let mut tok = Tokenizer::load(&dir.join(TOKENIZER_FILE))?;
            crate::text::attach_chat_template(&mut tok, text, dir)?;
            Some(tok)
        }
        None => None,
    };
    Ok(LoadedStudent { model, spec: sf.data, tok, arch: Some(sf.arch), output_vocab: sf.output_vocab, notes: Vec::new() })
}

/// A Hugging Face checkpoint directory, reading `opts.text_column` with its tokenizer.
fn load_checkpoint(dir: &Path, opts: &Reading, device: &Device) -> Result<LoadedStudent> {
    use crate::cache::Positions as CachedPositions;
    let ck = hf::read_checkpoint(dir)?;
    let tok_path = ck
        .tokenizer
        .clone()
        .ok_or_else(|| Error::Config(format!("{}: the checkpoint has no tokenizer.json to tokenize the data with", dir.display())))?;
    let (task, positions) = match ck.arch {
        StudentArch::Decoder(_) => (Task::CausalLm, CachedPositions::All),
        _ => (Task::Classification, CachedPositions::Example),
    };
    let arch = ck.arch.clone();
    let (model, notes) = hf::load_student(ck, device)?;
    let text = TextColumns {
        text: Some(opts.text_column.clone()),
        prompt: None,
        completion: None,
        messages: None,
        conversational: false,
        token_ids: false,
        chat_template_sha256: None,
        positions,
        max_seq_len: opts.max_seq_len,
    };
    let spec = DataSpec { task, features: Vec::new(), label_column: None, text: Some(text), tokenizer_sha256: None };
    Ok(LoadedStudent { model, spec, tok: Some(Tokenizer::load(&tok_path)?), arch: Some(arch), output_vocab: None, notes })
}

/// A Hugging Face checkpoint read as a cache of the evaluation data reads its rows: the
/// cache's columns, positions and tokenizer (which must be the checkpoint's).
fn load_checkpoint_for_cache(dir: &Path, cache: &Path, device: &Device) -> Result<LoadedStudent> {
    let m = CacheReader::open(cache)?.manifest().clone();
    let ck = hf::read_checkpoint(dir)?;
    let fits = matches!((&ck.arch, m.task), (StudentArch::Decoder(_), Task::CausalLm) | (StudentArch::Encoder(_), Task::Classification));
    let ids = m.cached_id_bound();
    if !fits || ck.arch.vocab() < ids {
        return Err(Error::Config(format!(
            "{}: a {} with {} outputs cannot be scored on {} ({:?} over {} outputs)",
            dir.display(),
            ck.arch.kind_name(),
            ck.arch.vocab(),
            cache.display(),
            m.task,
            ids
        )));
    }
    let tok = match &m.text {
        Some(text) => {
            let mut tok = Tokenizer::load(&cache.join(TOKENIZER_FILE))?;
            crate::text::attach_chat_template(&mut tok, text, cache)?;
            Some(tok)
        }
        None => None,
    };
    if let (Some(theirs), Some(ours)) = (&ck.tokenizer, &tok) {
        crate::text::same_tokenizer(theirs, ours)?;
    }
    let output_vocab = (ck.arch.vocab() > m.vocab_size && m.task == Task::CausalLm).then_some(m.vocab_size);
    let arch = ck.arch.clone();
    let (model, notes) = hf::load_student(ck, device)?;
    Ok(LoadedStudent { model, spec: DataSpec::of(&m), tok, arch: Some(arch), output_vocab, notes })
}

/// A student trained on token ids (`distill generate`'s data) reads text data as the
/// teacher's cache of it does: that cache's text columns, with its chat template.
fn read_text_as_the_cache(st: &mut LoadedStudent, cache: &Path) -> Result<()> {
    let (Some(text), Some(tok)) = (&st.spec.text, &mut st.tok) else { return Ok(()) };
    if !text.token_ids {
        return Ok(());
    }
    if let Some(cached) = CacheReader::open(cache)?.manifest().text.clone() {
        crate::text::attach_chat_template(tok, &cached, cache)?;
        st.spec.text = Some(cached);
    }
    Ok(())
}

/// A run directory or a checkpoint directory.
fn open(dir: &Path, opts: &Reading, device: &Device) -> Result<LoadedStudent> {
    if dir.join("student.json").is_file() {
        load_run(dir, device)
    } else if hf::is_checkpoint(dir) {
        load_checkpoint(dir, opts, device)
    } else {
        Err(Error::Config(format!(
            "{}: neither a train-student run directory (student.json) nor a Hugging Face checkpoint (config.json)",
            dir.display()
        )))
    }
}

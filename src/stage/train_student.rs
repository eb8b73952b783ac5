//! Stage two orchestration: a cache + the training data in, a trained student out.
//!
//! The teacher is never loaded. Shards are streamed in a seeded order, joined with the
//! dataset rows they were made from, and shuffled together `shuffle_window` shards at a time
//! before they are cut into batches (memory is bounded by that window and one shard, whatever
//! the cache size). A loader thread reads and tokenizes shards one shard ahead of training;
//! prepared rows (token ids, features) are kept between epochs up to a byte budget.
//! Checkpoints every N steps and at the end; `--resume` continues from the last one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::cache::manifest::{self, DatasetInfo, TOKENIZER_FILE, write_atomic};
use crate::cache::{CacheReader, Manifest, ShardInfo, Task};
use crate::config::{TrainConfig, TrainDevice};
use crate::data::{self, Column, Field, Kind};
use crate::error::{Error, Result};
use crate::loss::{self, SoftTargets, TailMode};
use crate::progress::Progress;
use crate::student::adamw::FusedAdamW;
use crate::student::{self, Student, StudentArch, StudentSpec, hf};
use crate::text::{self, TextColumns, Tokenizer};

/// What the student reads from a dataset: saved beside it so `eval` reads data the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub task: Task,
    pub features: Vec<String>,
    pub label_column: Option<String>,
    pub text: Option<TextColumns>,
    /// SHA-256 of the tokenizer (copied into the run directory as tokenizer.json).
    pub tokenizer_sha256: Option<String>,
}

/// `student.json`: everything needed to rebuild and use the trained student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudentFile {
    pub arch: StudentArch,
    pub data: DataSpec,
    /// Fingerprint of the cache it was trained from.
    pub cache_fingerprint: String,
    pub alpha: f32,
    pub temperature: f32,
    pub tail: TailMode,
    /// The cache's class count / vocabulary when the student's is larger (a padded
    /// embedding): logits are sliced to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_vocab: Option<usize>,
}

/// The checkpoint pointer, `checkpoint.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    /// Steps into the epoch `epoch` that were done (batches are skipped on resume).
    epoch: usize,
    step_in_epoch: usize,
    dir: String,
    config_sha256: String,
}

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub quiet: bool,
    pub resume: bool,
    pub command: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub out: PathBuf,
    pub steps: usize,
    pub epochs: usize,
    pub seconds: f64,
    /// Trained positions (classification: rows) per second of this run.
    pub positions_per_second: f64,
    /// The same, over the time not spent waiting for data (the rate of the training steps
    /// themselves: what a side-by-side with another trainer's step loop compares).
    pub training_positions_per_second: f64,
    /// Seconds the loader thread spent reading and decoding the cache (and, for a remote
    /// cache, waiting for its download); overlapped with training.
    pub cache_read_seconds: f64,
    /// Seconds training waited for the loader (the data's share of the run's time).
    pub data_wait_seconds: f64,
    pub final_loss: f64,
    pub resumed_from: Option<usize>,
    /// Things the user should know (pretrained weights adapted, vocabulary sliced).
    pub notes: Vec<String>,
}

/// Where a trained encoder or decoder student is also written as a Hugging Face checkpoint.
pub const HF_DIR: &str = "hf";

/// One dataset row joined with its cached positions.
struct Example {
    features: Vec<f32>,
    tokens: Vec<u32>,
    targets: Vec<Target>,
}

struct Target {
    position: usize,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    tail: f32,
    /// `None`: an unlabelled classification row (soft label only).
    hard: Option<i64>,
}

/// Open the cache and check that it serves this run: data, tokenizer, temperature, task.
fn check_cache(cfg: &TrainConfig, dir: &Path) -> Result<(CacheReader, f32)> {
    // A remote cache's shards are still arriving: they are checked as they are read.
    let reader = if crate::store::is_url(&cfg.cache) { CacheReader::open_lazy(dir)? } else { CacheReader::open(dir)? };
    let m = reader.manifest();
    if let Some(why) = DatasetInfo::of(&cfg.data)?.difference(&m.dataset) {
        return Err(Error::cache(&cfg.cache, format!("was made from another dataset than {}: {why}", cfg.data.display())));
    }
    if let Some(k) = cfg.top_k
        && k > m.top_k
    {
        return Err(Error::Config(format!("train.top_k = {k} but the cache holds only the top {} entries per position", m.top_k)));
    }
    let t = cfg.temperature.unwrap_or(m.temperature);
    if (t - m.temperature).abs() > 1e-6 && cfg.tail == TailMode::Bucket && m.top_k < m.vocab_size {
        return Err(Error::Config(format!(
            "train.temperature = {t} differs from the cache's temperature {}: the tail mass at {t} cannot be \
             recovered from the cache, so tail = \"bucket\" cannot serve it; use tail = \"renormalize\" (the top-k is \
             re-tempered exactly) or train at T = {}",
            m.temperature, m.temperature
        )));
    }
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

/// Check that a pretrained checkpoint can learn from this cache: vocabulary, classes,
/// positions, tokenizer. A vocabulary padded past the cache's is sliced (noted); a smaller
/// one, another tokenizer or another class count is refused.
fn check_hf_fits(ck: &mut hf::HfCheckpoint, m: &Manifest, tok: Option<&Tokenizer>, notes: &mut Vec<String>) -> Result<()> {
    let dir = ck.dir.display().to_string();
    if let (Some(theirs), Some(ours)) = (&ck.tokenizer, tok) {
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
                    path: theirs.clone(),
                    message: format!(
                        "the checkpoint's tokenizer ({} tokens) is not the cache's ({} tokens): {}",
                        a.len(),
                        b.len(),
                        diff.first().cloned().unwrap_or_else(|| "the checkpoint's has extra tokens".into())
                    ),
                });
            }
        }
    }
    let tokens = tok.map(|t| t.vocab_size()).unwrap_or(0);
    let has_classifier = ck.has("classifier.weight");
    match &mut ck.arch {
        StudentArch::Decoder { vocab_size, .. } => {
            if *vocab_size < m.vocab_size {
                return Err(Error::Config(format!(
                    "{dir}: the student's vocab_size is {vocab_size} but the cache's vocabulary (the teacher's logits) has {} entries: cached token ids >= {vocab_size} would have no logit",
                    m.vocab_size
                )));
            }
            if *vocab_size > m.vocab_size {
                notes.push(format!(
                    "the student's vocabulary ({vocab_size}) is padded past the cache's ({}): its logits are sliced to the first {} (the padding rows get no gradient and are kept in the export)",
                    m.vocab_size, m.vocab_size
                ));
            }
        }
        StudentArch::Encoder { vocab_size, classes, max_positions, .. } => {
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
        StudentArch::Mlp { .. } => unreachable!("checkpoints are encoders or decoders"),
    }
    Ok(())
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

/// Columns to read for a data spec: features or text, then the label.
fn columns_of(spec: &DataSpec) -> Vec<Column> {
    let mut cols: Vec<Column> = match &spec.text {
        Some(t) => t.columns(),
        None => spec.features.iter().map(|c| Column::new(c, Kind::Numbers)).collect(),
    };
    if let Some(l) = &spec.label_column {
        cols.push(Column::new(l, Kind::Label));
    }
    cols
}

/// Dataset rows `first..first + count` turned into student inputs.
#[derive(Clone)]
pub(crate) struct PreparedRow {
    pub index: u64,
    pub features: Vec<f32>,
    pub tokens: Vec<u32>,
    pub positions: Vec<usize>,
    pub label: Option<i64>,
}

pub(crate) fn prepare_rows(
    path: &Path,
    spec: &DataSpec,
    tok: Option<&Tokenizer>,
    first: u64,
    count: u64,
    start: Option<data::RowStart>,
) -> Result<Vec<PreparedRow>> {
    let cols = columns_of(spec);
    let label_slot = spec.label_column.as_ref().map(|_| cols.len() - 1);
    let mut out = Vec::with_capacity(count.min(1 << 16) as usize);
    let rows = match start {
        Some(at) if at.row == first => data::read_jsonl_at(path, &cols, at)?,
        _ => data::read_rows_from(path, &cols, first)?,
    };
    for row in rows.take(count as usize) {
        let row = row?;
        let label = match label_slot.map(|s| &row.fields[s]) {
            Some(Field::Label(l)) => Some(*l),
            _ => None,
        };
        match (&spec.text, tok) {
            (Some(t), Some(tok)) => {
                let tk = text::tokenize(tok, t, &row.fields, row.index, path)?;
                out.push(PreparedRow { index: row.index, features: vec![], positions: tk.positions(), tokens: tk.ids, label });
            }
            _ => {
                let mut features = Vec::new();
                for (slot, name) in spec.features.iter().enumerate() {
                    match &row.fields[slot] {
                        Field::Numbers(v) => {
                            if let Some(bad) = v.iter().position(|x| !x.is_finite()) {
                                return Err(Error::data(path, format!("row {}, column `{name}`: value {bad} is {}", row.index, v[bad])));
                            }
                            features.extend_from_slice(v)
                        }
                        _ => return Err(Error::data(path, format!("row {}, column `{name}`: value is missing (null)", row.index))),
                    }
                }
                out.push(PreparedRow { index: row.index, features, tokens: vec![], positions: vec![0], label });
            }
        }
    }
    Ok(out)
}

impl PreparedRow {
    /// Bytes this row holds.
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + 4 * (self.tokens.len() + self.features.len())
    }
}

/// The prepared rows of shards, kept between epochs up to a byte budget (first come, first
/// kept), so that a cache larger than the shuffle window is read from the data and tokenized
/// once rather than every epoch. A shard's rows are the same whenever they are prepared, so
/// what is kept changes the work, not the batches.
struct PreparedMemo {
    /// By the shard's first dataset row.
    shards: std::collections::HashMap<u64, Vec<PreparedRow>>,
    bytes: usize,
    budget: usize,
}

impl PreparedMemo {
    fn new(budget_mb: usize) -> PreparedMemo {
        PreparedMemo { shards: Default::default(), bytes: 0, budget: budget_mb << 20 }
    }

    /// The rows of the shard starting at `first_row`: kept ones, or `prepare()`'s (kept
    /// while the budget allows).
    fn rows(&mut self, first_row: u64, prepare: impl FnOnce() -> Result<Vec<PreparedRow>>) -> Result<Vec<PreparedRow>> {
        if let Some(rows) = self.shards.get(&first_row) {
            return Ok(rows.clone());
        }
        let rows = prepare()?;
        let size: usize = rows.iter().map(PreparedRow::bytes).sum();
        if self.bytes + size <= self.budget {
            self.bytes += size;
            self.shards.insert(first_row, rows.clone());
        }
        Ok(rows)
    }
}

/// What the loader thread hands the training loop, in order.
enum Loaded {
    /// One shard's examples (shared with the loader's copy of a cache kept whole), and the
    /// seconds spent reading them.
    Shard {
        examples: std::sync::Arc<Vec<Example>>,
        read_seconds: f64,
    },
    /// The shards since the last group end make up shuffle group `index` of `epoch`.
    GroupEnd {
        epoch: usize,
        index: usize,
    },
    /// The epoch's last group has been handed over.
    EpochEnd,
    Failed(Error),
}

/// Join one shard with its dataset rows. Every cached hard label must agree with the data
/// (a different tokenizer or dataset shows up here, naming the row).
#[allow(clippy::too_many_arguments)]
fn load_shard(
    reader: &CacheReader,
    shard: &ShardInfo,
    cfg: &TrainConfig,
    spec: &DataSpec,
    tok: Option<&Tokenizer>,
    train_t: f32,
    starts: &std::collections::HashMap<u64, data::RowStart>,
    memo: &mut PreparedMemo,
    read_seconds: &mut f64,
) -> Result<Vec<Example>> {
    let m = reader.manifest();
    let limit = cfg.max_rows.unwrap_or(u64::MAX);
    if shard.first_row >= limit {
        return Ok(Vec::new());
    }
    let count = shard.rows.min(limit - shard.first_row);
    let rows =
        memo.rows(shard.first_row, || prepare_rows(&cfg.data, spec, tok, shard.first_row, count, starts.get(&shard.first_row).copied()))?;
    let labels: Vec<Option<i64>> = rows.iter().map(|r| r.label).collect();
    let mut examples: Vec<Example> =
        rows.into_iter().map(|r| Example { features: r.features, tokens: r.tokens, targets: Vec::new() }).collect();
    let t0 = Instant::now();
    let k = m.top_k;
    let k_used = cfg.top_k.unwrap_or(k);
    let retemper = (train_t - m.temperature).abs() > 1e-6;
    for batch in reader.read_shard(shard, 8192)? {
        let b = batch?;
        for i in 0..b.len() {
            let r = b.rows[i];
            if r >= shard.first_row + count {
                continue;
            }
            let ex = &mut examples[(r - shard.first_row) as usize];
            let position = b.positions[i] as usize;
            let hard = b.hard_labels[i];
            // As the next tokens of an LM: the cached hard label is the data's label.
            if m.task == Task::Classification && m.label_column.is_some() && hard != labels[(r - shard.first_row) as usize] {
                return Err(Error::cache(
                    reader.shard_path(shard),
                    format!(
                        "row {r}: the cache's hard label is {hard:?} but the data's `{}` is {:?}; the data differs from the \
                         one the cache was made with (rows reordered or relabelled)",
                        m.label_column.as_deref().unwrap_or("label"),
                        labels[(r - shard.first_row) as usize]
                    ),
                ));
            }
            if m.task == Task::CausalLm {
                let hard =
                    hard.ok_or_else(|| Error::cache(reader.shard_path(shard), format!("row {r} position {position} has no next token")))?;
                let want = ex.tokens.get(position + 1).copied();
                if want != Some(hard as u32) {
                    return Err(Error::cache(
                        reader.shard_path(shard),
                        format!(
                            "row {r} position {position}: the cache's next token is {hard} but the data tokenizes to {want:?}; \
                             the data or tokenizer differs from the one the cache was made with"
                        ),
                    ));
                }
            }
            let all = &b.logprobs[i * k..(i + 1) * k];
            let mut logprobs = all[..k_used].to_vec();
            // A smaller k: the dropped entries' mass joins the tail (log-sum-exp, f64).
            let mut tail = b.tail_logmass[i] as f64;
            if k_used < k {
                let terms = all[k_used..].iter().map(|&v| v as f64).chain((tail.is_finite()).then_some(tail));
                let max = terms.clone().fold(f64::NEG_INFINITY, f64::max);
                tail = max + terms.map(|v| (v - max).exp()).sum::<f64>().ln();
            }
            if retemper {
                loss::retemper(&mut logprobs, m.temperature, train_t);
            }
            ex.targets.push(Target {
                position,
                ids: b.ids[i * k..i * k + k_used].to_vec(),
                logprobs,
                tail: if tail.is_finite() { tail as f32 } else { -1e4 },
                hard,
            });
        }
    }
    *read_seconds += t0.elapsed().as_secs_f64();
    examples.retain(|e| !e.targets.is_empty());
    if cfg.alpha == 0.0 {
        // Hard labels only: unlabelled rows teach nothing; leave them out so batches are
        // full of labelled rows (the same batches as training on the labelled rows alone).
        examples.retain(|e| e.targets.iter().all(|t| t.hard.is_some()));
    }
    Ok(examples)
}

/// A small deterministic generator (SplitMix64) for shuffles: the order depends on the
/// seed and epoch only, so a resumed run sees the same batches.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Tells glibc's malloc to keep freed memory for reuse instead of returning it to the
/// system. A training step allocates and frees the same large tensors every step (flex
/// allocates every intermediate); by default glibc maps blocks over its adaptive threshold
/// fresh from the kernel and trims the heap's free top, so each step paid page faults and
/// zeroing for memory it had just given back (~15 % of a flex encoder step in `perf`).
/// Blocks up to 32 MiB (glibc's maximum) now come from the heap, which is trimmed only past
/// 1 GiB free. `benches/stage_two.sh`: flex encoder 750-780 -> 900-1 020 rows/s, LM
/// 3 700-4 200 -> 4 300-4 700 positions/s. Peak memory is unchanged; the process keeps it.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: mallopt only sets two of malloc's tuning parameters; called before training
        // allocates, and valid values (it returns 0, ignored, for values it refuses).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

/// Lower the calling thread's scheduling priority (nice 19): the loader thread then runs in
/// the gaps the training threads leave instead of taking turns with them (on 2 cores a
/// loader at normal priority slowed the training steps by more than its own work).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            fn setpriority(which: std::ffi::c_int, who: std::ffi::c_uint, prio: std::ffi::c_int) -> std::ffi::c_int;
            fn gettid() -> std::ffi::c_int;
        }
        const PRIO_PROCESS: std::ffi::c_int = 0;
        // SAFETY: on Linux, setpriority(PRIO_PROCESS, tid) changes only this thread's nice
        // value; raising it needs no privilege. A failure (ignored) leaves the priority as is.
        unsafe {
            setpriority(PRIO_PROCESS, gettid() as std::ffi::c_uint, 19);
        }
    }
}

/// The training device (with autodiff).
#[allow(deprecated)] // burn-tch is deprecated upstream; the project keeps it as the libtorch backend
pub fn device_for(choice: TrainDevice) -> Result<Device> {
    match choice {
        TrainDevice::Flex => Ok(Device::flex()),
        #[cfg(feature = "tch")]
        TrainDevice::Tch => Ok(Device::libtorch()),
        #[cfg(feature = "tch")]
        TrainDevice::TchCuda(n) => Ok(Device::libtorch_cuda(n)),
        #[cfg(not(feature = "tch"))]
        TrainDevice::Tch | TrainDevice::TchCuda(_) => Err(Error::Config(
            "train.device = tch needs a build with the `tch` cargo feature (cargo build --release --features tch; see README)".into(),
        )),
    }
}

/// Build the tensors of one batch and compute the loss parts.
///
/// # Shapes
/// - MLP: features `[b, input]` -> logits `[b, classes]`, one target per row
/// - encoder: tokens `[b, s]` -> logits `[b, classes]`, one target per row
/// - decoder: tokens `[b, s]` -> hidden `[b * s, d_model]` -> the `[m, d_model]` rows of the
///   m cached positions -> logits `[m, vocab]`
fn batch_loss(
    model: &Student,
    batch: &[&Example],
    k: usize,
    vocab: usize,
    cfg: &TrainConfig,
    train_t: f32,
    device: &Device,
) -> (loss::LossParts, usize) {
    let b = batch.len();
    // Only the positions with a cached soft label enter the loss. A decoder's batch is mostly
    // prompt and padding positions, so its hidden states are narrowed to the cached ones
    // before the final norm and the LM head (the largest matrix product of the step).
    let mut cached: Vec<(usize, usize)> = Vec::new(); // (row in the batch, position)
    let (mut ids, mut lps, mut tail, mut hard, mut labelled) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (r, e) in batch.iter().enumerate() {
        for t in &e.targets {
            cached.push((r, t.position));
            ids.extend(t.ids.iter().map(|&i| i as i64));
            lps.extend_from_slice(&t.logprobs);
            tail.push(t.tail);
            hard.push(t.hard.unwrap_or(0));
            labelled.push(if t.hard.is_some() { 1f32 } else { 0.0 });
        }
    }
    let count = cached.len();
    let logits = match model {
        Student::Mlp(mlp) => {
            let width = batch[0].features.len();
            let x: Vec<f32> = batch.iter().flat_map(|e| e.features.iter().copied()).collect();
            let x: Tensor<2> = Tensor::from_data(TensorData::new(x, [b, width]), device);
            mlp.forward(x)
        }
        Student::Encoder(enc) => {
            let (tokens, lengths) = token_tensor(batch.iter().map(|e| e.tokens.as_slice()), device);
            enc.forward(tokens, &lengths)
        }
        Student::Decoder(dec) => {
            let (tokens, lengths) = token_tensor(batch.iter().map(|e| e.tokens.as_slice()), device);
            let h = dec.hidden(tokens, &lengths);
            let [_, s, d] = h.dims();
            let flat: Vec<i64> = cached.iter().map(|&(r, p)| (r * s + p) as i64).collect();
            let idx: Tensor<1, Int> = Tensor::from_data(TensorData::new(flat, [count]), device);
            dec.logits(h.reshape([b * s, d]).select(0, idx))
        }
    };
    // A student vocabulary padded past the cache's (checked in check_hf_fits): the padding
    // columns are not part of the distribution.
    let logits = if logits.dims()[1] > vocab { logits.narrow(1, 0, vocab) } else { logits };
    let soft = SoftTargets {
        ids: Tensor::from_data(TensorData::new(ids, [count, k]), device),
        logprobs: Tensor::from_data(TensorData::new(lps, [count, k]), device),
        tail_logmass: Tensor::from_data(TensorData::new(tail, [count]), device),
    };
    let hard: Tensor<1, Int> = Tensor::from_data(TensorData::new(hard, [count]), device);
    let mask: Tensor<1> = Tensor::ones([count], device);
    let labelled: Tensor<1> = Tensor::from_data(TensorData::new(labelled, [count]), device);
    (loss::fused_distillation_loss(logits, &soft, hard, mask, labelled, cfg.alpha, train_t, cfg.tail), count)
}

/// Rows of token ids, right-padded with id 0 (padding is masked by the lengths).
///
/// # Shapes
/// - returns tokens `[b, s]` with `s` the longest row (at least 1), and each row's length
pub(crate) fn token_tensor<'a>(rows: impl ExactSizeIterator<Item = &'a [u32]> + Clone, device: &Device) -> (Tensor<2, Int>, Vec<usize>) {
    let b = rows.len();
    let s = rows.clone().map(<[u32]>::len).max().unwrap_or(1).max(1);
    let mut ids = vec![0i64; b * s];
    let mut lengths = Vec::with_capacity(b);
    for (r, row) in rows.enumerate() {
        for (t, &id) in row.iter().enumerate() {
            ids[r * s + t] = id as i64;
        }
        lengths.push(row.len());
    }
    (Tensor::from_data(TensorData::new(ids, [b, s]), device), lengths)
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.to_data().try_to_vec::<f32>().map(|v| v[0] as f64).unwrap_or(f64::NAN)
}

/// Learning rate at `step` of `total`: 5% linear warm-up, then cosine to 10%.
fn lr_at(base: f64, step: usize, total: usize) -> f64 {
    let warm = (total / 20).max(1);
    if step < warm {
        return base * (step + 1) as f64 / warm as f64;
    }
    let p = (step - warm) as f64 / (total.saturating_sub(warm)).max(1) as f64;
    base * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos()))
}

/// Run stage two.
pub fn train_student(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainSummary> {
    let opened = crate::store::open_for_reading(&cfg.cache)?;
    let (reader, train_t) = check_cache(cfg, &opened.dir)?;
    // Every shard's checksum before the first step: a damaged cache is refused up front,
    // not after hours of training (shards are checked again as they are read). A remote
    // cache is checked shard by shard as the prefetcher brings it in.
    if opened.remote.is_none() {
        reader.verify(|_| {})?;
    }
    let m: Manifest = reader.manifest().clone();
    let tok = match (&m.text, &m.tokenizer) {
        (Some(text), Some(info)) => {
            let mut tok = load_tokenizer(cfg.tokenizer.as_deref(), &opened.dir, &info.sha256)?;
            text::attach_chat_template(&mut tok, text, &opened.dir)?;
            Some(tok)
        }
        _ => None,
    };
    let spec = DataSpec {
        task: m.task,
        features: m.features.clone(),
        label_column: m.label_column.clone(),
        text: m.text.clone(),
        tokenizer_sha256: m.tokenizer.as_ref().map(|t| t.sha256.clone()),
    };
    let width = match (m.task, &m.text) {
        (Task::Classification, None) => prepare_rows(&cfg.data, &spec, None, 0, 1, None)?.first().map(|r| r.features.len()).unwrap_or(0),
        _ => 0,
    };
    let dims = student::CacheDims {
        outputs: m.vocab_size,
        features: width,
        tokens: tok.as_ref().map(|t| t.vocab_size()).unwrap_or(0),
        max_seq_len: m.text.as_ref().map(|t| t.max_seq_len).unwrap_or(0),
    };
    let mut notes = Vec::new();
    let (arch, hf_start) = match &cfg.student {
        StudentSpec::Hf { path } => {
            let mut ck = hf::read_checkpoint(path)?;
            check_hf_fits(&mut ck, &m, tok.as_ref(), &mut notes)?;
            (ck.arch.clone(), Some(ck))
        }
        spec => (StudentArch::resolve(spec, &dims), None),
    };
    let student_file = StudentFile {
        arch: arch.clone(),
        data: spec.clone(),
        cache_fingerprint: m.fingerprint.clone(),
        alpha: cfg.alpha,
        temperature: train_t,
        tail: cfg.tail,
        output_vocab: (arch.vocab() > m.vocab_size).then_some(m.vocab_size),
    };
    let mut config = serde_json::json!({
        "student": student_file,
        "train": {
            "alpha": cfg.alpha, "temperature": train_t, "tail": cfg.tail, "epochs": cfg.epochs, "steps": cfg.steps,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "seed": cfg.seed,
            "device": cfg.device, "checkpoint_every": cfg.checkpoint_every, "max_rows": cfg.max_rows, "top_k": cfg.top_k,
            "shuffle_window": cfg.shuffle_window,
            "cache": cfg.cache, "data": cfg.data,
        },
    });
    // The settings' identity (a resumed run must match it); the command line is recorded
    // beside it but may differ (it carries --resume).
    let config_sha = manifest::sha256_canonical_json(&config);
    config["command"] = serde_json::json!(opts.command);
    let config_json = serde_json::to_vec_pretty(&config).expect("serialises");

    // Run directory: new, or resumed from a checkpoint made with the same config.
    let out = &cfg.out;
    let _lock = crate::lock::DirLock::acquire(out, "", "a training run")?;
    let pointer = out.join("checkpoint.json");
    let resume_state: Option<CheckpointState> = if opts.resume && pointer.exists() {
        let s: CheckpointState = serde_json::from_slice(&std::fs::read(&pointer).map_err(|e| Error::io(&pointer, e))?)
            .map_err(|e| Error::Config(format!("{}: not a checkpoint pointer: {e}", pointer.display())))?;
        if s.config_sha256 != config_sha {
            return Err(Error::Config(format!(
                "{}: the checkpoint was made with other settings (config.json differs); resume with the same settings",
                out.display()
            )));
        }
        Some(s)
    } else {
        if !opts.resume && out.join("config.json").exists() {
            return Err(Error::Config(format!(
                "{} already holds a training run; pass --resume to continue it or choose another --out",
                out.display()
            )));
        }
        None
    };
    write_atomic(&out.join("config.json"), &config_json)?;
    if let Some(t) = &tok {
        let bytes = std::fs::read(&t.path).map_err(|e| Error::io(&t.path, e))?;
        write_atomic(&out.join(TOKENIZER_FILE), &bytes)?;
        if let Some(chat) = &t.chat {
            chat.save(out)?;
        }
    }

    let base = device_for(cfg.device)?;
    base.seed(cfg.seed);
    keep_freed_memory();
    let device = base.autodiff();
    let mut model = match hf_start {
        // A resumed run loads its checkpoint below; the pretrained weights only start a run.
        Some(ck) if resume_state.is_none() => {
            let (model, more) = hf::load_student(ck, &device)?;
            notes.extend(more);
            model
        }
        _ => arch.init(&device),
    };
    let mut optim = FusedAdamW::new(cfg.weight_decay as f32).init();
    let (mut step, start_epoch, mut skip) = match &resume_state {
        Some(s) => {
            let dir = out.join(&s.dir);
            student::load_burnpack(&mut model, &dir.join("model.bpk"))?;
            optim =
                optim.load(dir.join("optim.bpk")).map_err(|e| Error::io(dir.join("optim.bpk"), std::io::Error::other(format!("{e:?}"))))?;
            (s.step, s.epoch, s.step_in_epoch)
        }
        None => (0, 0, 0),
    };
    let resumed_from = resume_state.as_ref().map(|s| s.step);

    // Metrics: keep the rows up to the checkpoint, append from there.
    let metrics_path = out.join("metrics.csv");
    let kept = match std::fs::read_to_string(&metrics_path) {
        Ok(text) if resumed_from.is_some() => text
            .lines()
            .filter(|l| l.starts_with("step") || l.split(',').next().and_then(|s| s.parse::<usize>().ok()).is_some_and(|s| s <= step))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
        _ => "step,epoch,loss,kl,ce,lr,positions,seconds\n".to_string(),
    };
    std::fs::write(&metrics_path, kept).map_err(|e| Error::io(&metrics_path, e))?;
    let mut metrics = std::fs::OpenOptions::new().append(true).open(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;

    let limit = cfg.max_rows.unwrap_or(u64::MAX);
    // Rows each shard trains on: all of them, or at alpha = 0 the labelled ones (read from
    // the data's label column; unlabelled rows are skipped, see load_shard).
    let labelled = match (&m.label_column, m.task) {
        (Some(col), Task::Classification) if cfg.alpha == 0.0 => {
            let mut flags = Vec::new();
            for row in data::read_rows(&cfg.data, &[Column::new(col, Kind::Label)])?.take(limit.min(m.dataset.rows) as usize) {
                flags.push(matches!(row?.fields[0], Field::Label(_)));
            }
            Some(flags)
        }
        _ => None,
    };
    // Rows each shard trains on (after --max-rows and, at alpha = 0, the labelled filter).
    let shard_rows = |s: &ShardInfo| -> usize {
        if s.first_row >= limit {
            return 0;
        }
        let end = s.first_row + s.rows.min(limit - s.first_row);
        match &labelled {
            Some(f) => f[s.first_row as usize..end as usize].iter().filter(|&&l| l).count(),
            None => (end - s.first_row) as usize,
        }
    };
    let shard_order = |epoch: usize| {
        let mut order: Vec<usize> = (0..m.shards.len()).collect();
        Rng::new(cfg.seed, 1 + epoch as u64).shuffle(&mut order);
        order
    };
    // Batches never straddle a shuffle group (`shuffle_window` shards shuffled together), so
    // an epoch's step count depends on how its shard order groups the shards.
    let epoch_steps = |epoch: usize| -> usize {
        shard_order(epoch)
            .chunks(cfg.shuffle_window)
            .map(|g| g.iter().map(|&i| shard_rows(&m.shards[i])).sum::<usize>().div_ceil(cfg.batch_size))
            .sum()
    };
    if m.shards.iter().map(shard_rows).sum::<usize>() == 0 {
        return Err(Error::cache(
            &cfg.cache,
            format!(
                "holds no rows to train on ({} rows cached{}{})",
                m.totals.rows,
                if cfg.alpha == 0.0 { ", none of them labelled" } else { "" },
                cfg.max_rows.map(|r| format!(", --max-rows {r}")).unwrap_or_default()
            ),
        ));
    }
    let total = cfg.steps.unwrap_or_else(|| (0..cfg.epochs).map(epoch_steps).sum()).max(1);
    if resumed_from.is_some_and(|r| r >= total) {
        notes.push(format!("{}: the run had finished (step {total} of {total}); its student is exported again", out.display()));
    }
    // A remote cache: fetch shards in the first epoch's order, two ahead of training.
    let prefetch = opened.remote.map(|remote| {
        let names = shard_order(start_epoch)
            .into_iter()
            .map(|i| &m.shards[i])
            .filter(|s| s.first_row < limit)
            .map(|s| (s.file.clone(), s.bytes))
            .collect();
        crate::store::Prefetcher::start(remote, opened.dir.clone(), names, 2)
    });
    // A JSONL file: where each shard's first row starts, found in one pass, so reading a
    // shard's rows is a seek (Parquet skips row groups by itself).
    let files = data::resolve(&cfg.data)?;
    let row_starts: std::collections::HashMap<u64, data::RowStart> =
        if files.len() == 1 && data::Format::of(&files[0])? == data::Format::Jsonl {
            let mut firsts: Vec<u64> = m.shards.iter().map(|s| s.first_row).collect();
            firsts.sort_unstable();
            data::jsonl_row_starts(&cfg.data, &firsts)?.into_iter().map(|s| (s.row, s)).collect()
        } else {
            Default::default()
        };
    let progress = Progress::new(total as u64, "training", opts.quiet);
    progress.set_position(step as u64);
    let started = Instant::now();
    let (mut read_seconds, mut wait_seconds, mut trained_positions, mut last_loss) = (0.0, 0.0, 0usize, f64::NAN);
    let mut epoch = start_epoch;
    // Shards are read, joined and tokenized on a loader thread, one shard ahead of training:
    // while a shuffle group trains, the next group's first shard is prepared (so at most a
    // window and one shard are held). `stop` ends the loader between shards once training is
    // done or has failed.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let model = std::thread::scope(|scope| -> Result<Student> {
        let mut model = model;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Loaded>(0);
        let m = &m;
        let (stop, shard_order, reader, spec, tok, prefetch, row_starts) =
            (&stop, &shard_order, &reader, &spec, tok.as_ref(), prefetch.as_ref(), &row_starts);
        scope.spawn(move || {
            lower_priority();
            // A cache that fits in one shuffle window is the same group every epoch: its
            // shards are loaded once and kept (held anyway, and shared, not copied), then
            // regrouped in each epoch's shard order and shuffled as if read again.
            let mut kept: Option<Vec<Option<std::sync::Arc<Vec<Example>>>>> =
                (m.shards.len() <= cfg.shuffle_window).then(|| vec![None; m.shards.len()]);
            // Otherwise each shard is joined afresh every epoch, from its prepared rows (kept
            // up to the budget) and the cache.
            let mut memo = PreparedMemo::new(if kept.is_some() { 0 } else { cfg.prepared_rows_mb });
            for epoch in start_epoch.. {
                for (group_index, group) in shard_order(epoch).chunks(cfg.shuffle_window).enumerate() {
                    for &si in group {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        if let Some(Some(examples)) = kept.as_ref().map(|k| &k[si]) {
                            if tx.send(Loaded::Shard { examples: examples.clone(), read_seconds: 0.0 }).is_err() {
                                return;
                            }
                            continue;
                        }
                        let shard = &m.shards[si];
                        let mut read = 0.0;
                        let loaded = (|| {
                            if let Some(p) = prefetch
                                && shard.first_row < limit
                            {
                                let t = Instant::now();
                                p.wait(&shard.file)?;
                                read += t.elapsed().as_secs_f64();
                            }
                            load_shard(reader, shard, cfg, spec, tok, train_t, row_starts, &mut memo, &mut read)
                        })();
                        let examples = match loaded {
                            Ok(examples) => std::sync::Arc::new(examples),
                            Err(e) => {
                                let _ = tx.send(Loaded::Failed(e));
                                return;
                            }
                        };
                        if let Some(kept) = &mut kept {
                            kept[si] = Some(examples.clone());
                        }
                        if tx.send(Loaded::Shard { examples, read_seconds: read }).is_err() {
                            return;
                        }
                    }
                    if tx.send(Loaded::GroupEnd { epoch, index: group_index }).is_err() {
                        return;
                    }
                }
                if tx.send(Loaded::EpochEnd).is_err() {
                    return;
                }
            }
        });
        // However training ends, the loader stops at its next shard (or its next send).
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(stop);
        let (mut step_in_epoch, mut group) = (0, Vec::new());
        'train: while step < total {
            let t = Instant::now();
            let loaded = rx.recv().map_err(|_| Error::Config("the training data loader stopped unexpectedly".into()))?;
            wait_seconds += t.elapsed().as_secs_f64();
            let (shards, order) = match loaded {
                Loaded::Failed(e) => return Err(e),
                Loaded::EpochEnd => {
                    epoch += 1;
                    skip = 0;
                    step_in_epoch = 0;
                    if step % cfg.checkpoint_every != 0 {
                        checkpoint(out, &model, &optim, step, epoch, 0, &config_sha)?;
                    }
                    continue;
                }
                Loaded::Shard { examples, read_seconds: r } => {
                    read_seconds += r;
                    group.push(examples);
                    continue;
                }
                Loaded::GroupEnd { epoch, index } => {
                    // The group's rows in shard order, shuffled (as (shard, row) pairs, so the
                    // shards are not copied).
                    let shards = std::mem::take(&mut group);
                    let mut order: Vec<(u32, u32)> =
                        shards.iter().enumerate().flat_map(|(s, v)| (0..v.len()).map(move |i| (s as u32, i as u32))).collect();
                    Rng::new(cfg.seed, ((epoch as u64) << 32) | index as u64).shuffle(&mut order);
                    (shards, order)
                }
            };
            for chunk in order.chunks(cfg.batch_size) {
                if skip > 0 {
                    skip -= 1;
                    step_in_epoch += 1;
                    continue;
                }
                let refs: Vec<&Example> = chunk.iter().map(|&(s, i)| &shards[s as usize][i as usize]).collect();
                let (parts, count) = batch_loss(&model, &refs, cfg.top_k.unwrap_or(m.top_k), m.vocab_size, cfg, train_t, &device);
                let lr = lr_at(cfg.lr, step, total);
                let (l, kl, ce) = (scalar(&parts.loss), scalar(&parts.kl), scalar(&parts.ce));
                if !l.is_finite() {
                    return Err(Error::Config(format!(
                        "the loss became {l} at step {step} (kl {kl}, ce {ce}); likely causes, most likely first: \
                         train.lr too high (now {}), non-finite values in the cache (check it with `distill verify`) \
                         or in the data's features, train.weight_decay (now {})",
                        cfg.lr, cfg.weight_decay
                    )));
                }
                let grads = GradientsParams::from_grads(parts.loss.backward(), &model);
                model = optim.step(lr, model, grads);
                step += 1;
                step_in_epoch += 1;
                trained_positions += count;
                last_loss = l;
                writeln!(metrics, "{step},{epoch},{l:.6},{kl:.6},{ce:.6},{lr:.3e},{count},{:.3}", started.elapsed().as_secs_f64())
                    .map_err(|e| Error::io(&metrics_path, e))?;
                progress.tick_to(step as u64, format!("epoch {epoch} loss {l:.4}"));
                if step % cfg.checkpoint_every == 0 || step == total {
                    checkpoint(out, &model, &optim, step, epoch, step_in_epoch, &config_sha)?;
                }
                if step >= total {
                    break 'train;
                }
            }
        }
        Ok(model)
    })?;
    progress.finish();
    metrics.flush().map_err(|e| Error::io(&metrics_path, e))?;

    // The trained student, in Burn's format and as safetensors, with its description.
    // Each file is written under a temporary name and renamed, so a kill leaves the old file
    // or the new one, and a resumed (or finished) run exports again over what is there.
    let valid = model.valid();
    export_atomic(&out.join("student.bpk"), |p| student::save_burnpack(&Student::clone(&valid), p))?;
    export_atomic(&out.join("student.safetensors"), |p| student::save_safetensors(&valid, p))?;
    if matches!(arch, StudentArch::Encoder { .. } | StudentArch::Decoder { .. }) {
        let tokenizer = out.join(TOKENIZER_FILE);
        hf::write_checkpoint(
            &valid,
            &arch,
            &out.join(HF_DIR),
            Some(&tokenizer).filter(|p| p.is_file()).map(|p| p.as_path()),
            tok.as_ref().map(|t| t.pad_id),
        )?;
    }
    write_atomic(&out.join("student.json"), &serde_json::to_vec_pretty(&student_file).expect("serialises"))?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(TrainSummary {
        out: out.clone(),
        steps: step,
        epochs: epoch,
        seconds,
        positions_per_second: trained_positions as f64 / seconds.max(1e-9),
        training_positions_per_second: trained_positions as f64 / (seconds - wait_seconds).max(1e-9),
        cache_read_seconds: read_seconds,
        data_wait_seconds: wait_seconds,
        final_loss: last_loss,
        resumed_from,
        notes,
    })
}

/// Save model + optimizer under `checkpoint-STEP/`, then point `checkpoint.json` at it
/// (atomically), then remove older checkpoints.
/// Write `path` through `write` at its temporary name, then rename it into place.
fn export_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = manifest::temporary_name(path);
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn checkpoint(
    out: &Path,
    model: &Student,
    optim: &burn::optim::ModuleOptimizer,
    step: usize,
    epoch: usize,
    step_in_epoch: usize,
    config_sha: &str,
) -> Result<()> {
    let name = format!("checkpoint-{step:08}");
    let dir = out.join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    student::save_burnpack(model, &dir.join("model.bpk"))?;
    optim.save(dir.join("optim.bpk")).map_err(|e| Error::io(dir.join("optim.bpk"), std::io::Error::other(format!("{e:?}"))))?;
    for f in ["model.bpk", "optim.bpk"] {
        let p = dir.join(f);
        std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(|e| Error::io(&p, e))?;
    }
    manifest::sync_dir(&dir)?;
    let state = CheckpointState { step, epoch, step_in_epoch, dir: name.clone(), config_sha256: config_sha.to_string() };
    write_atomic(&out.join("checkpoint.json"), &serde_json::to_vec_pretty(&state).expect("serialises"))?;
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with("checkpoint-") && n != name {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule by hand, base 1e-3 over 200 steps: warm-up of 200 / 20 = 10 steps rising
    /// linearly to the base (step 0: 1e-4, step 9: 1e-3), then a cosine from the base to a
    /// tenth of it: halfway through the decay (step 10 + 95) it is 0.1 + 0.9 * 0.5 = 0.55
    /// of the base, at the last step 0.1.
    #[test]
    fn the_schedule_warms_up_then_decays_to_a_tenth() {
        let lr = |s| lr_at(1e-3, s, 200);
        assert!((lr(0) - 1e-4).abs() < 1e-12 && (lr(9) - 1e-3).abs() < 1e-12);
        assert!((lr(10) - 1e-3).abs() < 1e-12);
        assert!((lr(105) - 0.55e-3).abs() < 1e-9, "{}", lr(105));
        assert!((lr(200) - 1e-4).abs() < 1e-12 && (lr(10_000) - 1e-4).abs() < 1e-12, "never below a tenth");
        assert!((1..200).all(|s| lr(s) <= lr(s.min(9)) + 1e-15), "no step after the warm-up exceeds the base");
        // One step in all: a warm-up of one step, at the base.
        assert!((lr_at(1e-3, 0, 1) - 1e-3).abs() < 1e-12);
    }

    /// The shuffle is a permutation that depends on the seed and stream only (a resumed run
    /// sees the same batches), and different streams give different orders.
    #[test]
    fn shuffles_are_permutations_fixed_by_seed_and_stream() {
        let order = |seed, stream| {
            let mut v: Vec<usize> = (0..50).collect();
            Rng::new(seed, stream).shuffle(&mut v);
            v
        };
        let a = order(7, 1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, order(7, 1));
        assert_ne!(a, order(7, 2));
        assert_ne!(a, order(8, 1));
        assert_ne!(a, (0..50).collect::<Vec<_>>());
    }
}

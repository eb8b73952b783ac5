//! Stage two orchestration: a cache + the training data in, a trained student out.
//!
//! The teacher is never loaded. Shards are streamed one at a time (memory is bounded by a
//! shard), joined with the dataset rows they were made from, shuffled with the seed, and
//! fed to the student in batches. Checkpoints every N steps and at the end; `--resume`
//! continues from the last one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::cache::manifest::{self, TOKENIZER_FILE, sha256_file, write_atomic};
use crate::cache::{CacheReader, Manifest, ShardInfo, Task};
use crate::config::{TrainConfig, TrainDevice};
use crate::data::{self, Column, Field, Kind};
use crate::error::{Error, Result};
use crate::loss::{self, SoftTargets, TailMode};
use crate::progress::Progress;
use crate::student::{self, Student, StudentArch};
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
    /// Seconds spent reading and decoding the cache (share of the run).
    pub cache_read_seconds: f64,
    pub final_loss: f64,
    pub resumed_from: Option<usize>,
}

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
    hard: i64,
}

/// Open the cache and check that it serves this run: data, tokenizer, temperature, task.
fn check_cache(cfg: &TrainConfig) -> Result<(CacheReader, f32)> {
    let reader = CacheReader::open(&cfg.cache)?;
    let m = reader.manifest();
    let sha = sha256_file(&cfg.data)?;
    if sha != m.dataset.sha256 {
        return Err(Error::cache(
            &cfg.cache,
            format!(
                "was made from another dataset: {} has sha256 {}, the manifest records {} ({}, {} rows)",
                cfg.data.display(),
                &sha[..12],
                &m.dataset.sha256[..12.min(m.dataset.sha256.len())],
                m.dataset.file,
                m.dataset.rows
            ),
        ));
    }
    let rows = data::count_rows(&cfg.data)?;
    if rows != m.dataset.rows {
        return Err(Error::cache(&cfg.cache, format!("dataset has {rows} rows, the manifest records {}", m.dataset.rows)));
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
    match (&cfg.student, m.task) {
        (student::StudentSpec::Mlp { .. }, Task::Classification) | (student::StudentSpec::Decoder { .. }, Task::CausalLm) => {}
        (s, task) => {
            return Err(Error::Config(format!(
                "student kind `{}` cannot learn a {task:?} cache",
                match s {
                    student::StudentSpec::Mlp { .. } => "mlp",
                    student::StudentSpec::Decoder { .. } => "decoder",
                }
            )));
        }
    }
    Ok((reader, t))
}

fn load_tokenizer(cfg_tokenizer: Option<&Path>, dir: &Path, expected: &str) -> Result<Tokenizer> {
    let path = cfg_tokenizer.map(Path::to_path_buf).unwrap_or_else(|| dir.join(TOKENIZER_FILE));
    let tok = Tokenizer::load(&path)?;
    if tok.sha256 != expected {
        return Err(Error::Tokenizer {
            path,
            message: format!(
                "is not the tokenizer the cache was made with (sha256 {} vs {} in the manifest)",
                &tok.sha256[..12],
                &expected[..12.min(expected.len())]
            ),
        });
    }
    Ok(tok)
}

/// Columns to read for a data spec: features or text, then the label.
fn columns_of(spec: &DataSpec) -> Vec<Column> {
    let mut cols: Vec<Column> = match &spec.text {
        Some(t) => t.column_names().into_iter().map(|c| Column::new(c, Kind::Text)).collect(),
        None => spec.features.iter().map(|c| Column::new(c, Kind::Numbers)).collect(),
    };
    if let Some(l) = &spec.label_column {
        cols.push(Column::new(l, Kind::Label));
    }
    cols
}

/// Dataset rows `first..first + count` turned into student inputs.
pub(crate) struct PreparedRow {
    pub index: u64,
    pub features: Vec<f32>,
    pub tokens: Vec<u32>,
    pub positions: std::ops::Range<usize>,
    pub label: Option<i64>,
}

pub(crate) fn prepare_rows(
    path: &Path,
    spec: &DataSpec,
    tok: Option<&Tokenizer>,
    first: u64,
    count: u64,
) -> Result<Vec<PreparedRow>> {
    let cols = columns_of(spec);
    let label_slot = spec.label_column.as_ref().map(|_| cols.len() - 1);
    let mut out = Vec::with_capacity(count.min(1 << 16) as usize);
    for row in data::read_rows(path, &cols)?.skip(first as usize).take(count as usize) {
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
                        Field::Numbers(v) => features.extend_from_slice(v),
                        _ => return Err(Error::data(path, format!("row {}, column `{name}`: value is missing (null)", row.index))),
                    }
                }
                out.push(PreparedRow { index: row.index, features, tokens: vec![], positions: 0..1, label });
            }
        }
    }
    Ok(out)
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
    read_seconds: &mut f64,
) -> Result<Vec<Example>> {
    let m = reader.manifest();
    let limit = cfg.max_rows.unwrap_or(u64::MAX);
    if shard.first_row >= limit {
        return Ok(Vec::new());
    }
    let count = shard.rows.min(limit - shard.first_row);
    let rows = prepare_rows(&cfg.data, spec, tok, shard.first_row, count)?;
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
            let hard = b.hard_labels[i].ok_or_else(|| {
                Error::cache(reader.shard_path(shard), format!("row {r} position {position} has no hard label"))
            })?;
            if m.task == Task::CausalLm {
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
/// - decoder: tokens `[b, s]` -> logits `[b * s, vocab]` -> the `[m, vocab]` rows of the m
///   cached positions
fn batch_loss(
    model: &Student,
    batch: &[&Example],
    k: usize,
    cfg: &TrainConfig,
    train_t: f32,
    device: &Device,
) -> (loss::LossParts, usize) {
    let b = batch.len();
    let (logits, n) = match model {
        Student::Mlp(mlp) => {
            let width = batch[0].features.len();
            let x: Vec<f32> = batch.iter().flat_map(|e| e.features.iter().copied()).collect();
            let x: Tensor<2> = Tensor::from_data(TensorData::new(x, [b, width]), device);
            (mlp.forward(x), b)
        }
        Student::Decoder(dec) => {
            let s = batch.iter().map(|e| e.tokens.len()).max().unwrap_or(1);
            let mut ids = vec![0i64; b * s];
            let mut lengths = Vec::with_capacity(b);
            for (r, e) in batch.iter().enumerate() {
                for (t, &id) in e.tokens.iter().enumerate() {
                    ids[r * s + t] = id as i64;
                }
                lengths.push(e.tokens.len());
            }
            let tokens: Tensor<2, Int> = Tensor::from_data(TensorData::new(ids, [b, s]), device);
            let logits = dec.forward(tokens, &lengths);
            let vocab = logits.dims()[2];
            (logits.reshape([b * s, vocab]), b * s)
        }
    };
    // Only the positions with a cached soft label enter the loss: the decoder's logits are
    // narrowed to those rows first (an LM batch is mostly prompt and padding positions).
    let seq = n / b;
    let mut rows_idx: Vec<i64> = Vec::new();
    let (mut ids, mut lps, mut tail, mut hard) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (r, e) in batch.iter().enumerate() {
        for t in &e.targets {
            rows_idx.push(if seq == 1 { r } else { r * seq + t.position } as i64);
            ids.extend(t.ids.iter().map(|&i| i as i64));
            lps.extend_from_slice(&t.logprobs);
            tail.push(t.tail);
            hard.push(t.hard);
        }
    }
    let count = rows_idx.len();
    let logits = if seq == 1 {
        logits
    } else {
        let idx: Tensor<1, Int> = Tensor::from_data(TensorData::new(rows_idx, [count]), device);
        logits.select(0, idx)
    };
    let soft = SoftTargets {
        ids: Tensor::from_data(TensorData::new(ids, [count, k]), device),
        logprobs: Tensor::from_data(TensorData::new(lps, [count, k]), device),
        tail_logmass: Tensor::from_data(TensorData::new(tail, [count]), device),
    };
    let hard: Tensor<1, Int> = Tensor::from_data(TensorData::new(hard, [count]), device);
    let mask: Tensor<1> = Tensor::ones([count], device);
    (loss::distillation_loss(logits, &soft, hard, mask, cfg.alpha, train_t, cfg.tail), count)
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
    let (reader, train_t) = check_cache(cfg)?;
    // Every shard's checksum before the first step: a damaged cache is refused up front,
    // not after hours of training (shards are checked again as they are read).
    reader.verify(|_| {})?;
    let m: Manifest = reader.manifest().clone();
    let tok = match (&m.text, &m.tokenizer) {
        (Some(_), Some(info)) => Some(load_tokenizer(cfg.tokenizer.as_deref(), &cfg.cache, &info.sha256)?),
        _ => None,
    };
    let spec = DataSpec {
        task: m.task,
        features: m.features.clone(),
        label_column: m.label_column.clone(),
        text: m.text.clone(),
        tokenizer_sha256: m.tokenizer.as_ref().map(|t| t.sha256.clone()),
    };
    let width = match m.task {
        Task::Classification => prepare_rows(&cfg.data, &spec, None, 0, 1)?.first().map(|r| r.features.len()).unwrap_or(0),
        Task::CausalLm => 0,
    };
    let arch = StudentArch::resolve(&cfg.student, width, m.vocab_size);
    let student_file = StudentFile {
        arch: arch.clone(),
        data: spec.clone(),
        cache_fingerprint: m.fingerprint.clone(),
        alpha: cfg.alpha,
        temperature: train_t,
        tail: cfg.tail,
    };
    let mut config = serde_json::json!({
        "student": student_file,
        "train": {
            "alpha": cfg.alpha, "temperature": train_t, "tail": cfg.tail, "epochs": cfg.epochs, "steps": cfg.steps,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "seed": cfg.seed,
            "device": cfg.device, "checkpoint_every": cfg.checkpoint_every, "max_rows": cfg.max_rows, "top_k": cfg.top_k,
            "cache": cfg.cache, "data": cfg.data,
        },
    });
    // The settings' identity (a resumed run must match it); the command line is recorded
    // beside it but may differ (it carries --resume).
    let config_sha = manifest::sha256_bytes(config.to_string().as_bytes());
    config["command"] = serde_json::json!(opts.command);
    let config_json = serde_json::to_vec_pretty(&config).expect("serialises");

    // Run directory: new, or resumed from a checkpoint made with the same config.
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
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
    }

    let base = device_for(cfg.device)?;
    base.seed(cfg.seed);
    let device = base.autodiff();
    let mut model = arch.init(&device);
    let mut optim = AdamWConfig::new().with_weight_decay(cfg.weight_decay as f32).init();
    let (mut step, start_epoch, mut skip) = match &resume_state {
        Some(s) => {
            let dir = out.join(&s.dir);
            student::load_burnpack(&mut model, &dir.join("model.bpk"))?;
            optim = optim
                .load(dir.join("optim.bpk"))
                .map_err(|e| Error::io(dir.join("optim.bpk"), std::io::Error::other(format!("{e:?}"))))?;
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
    let steps_per_epoch: usize = m
        .shards
        .iter()
        .filter(|s| s.first_row < limit)
        .map(|s| (s.rows.min(limit - s.first_row) as usize).div_ceil(cfg.batch_size))
        .sum();
    let total = cfg.steps.unwrap_or(cfg.epochs * steps_per_epoch).max(1);
    let progress = Progress::new(total as u64, "training", opts.quiet);
    progress.set_position(step as u64);
    let started = Instant::now();
    let (mut read_seconds, mut trained_positions, mut last_loss) = (0.0, 0usize, f64::NAN);
    let mut epoch = start_epoch;
    'epochs: while step < total {
        let mut order: Vec<usize> = (0..m.shards.len()).collect();
        Rng::new(cfg.seed, 1 + epoch as u64).shuffle(&mut order);
        let mut step_in_epoch = 0;
        for &si in &order {
            let shard = &m.shards[si];
            let mut examples = load_shard(&reader, shard, cfg, &spec, tok.as_ref(), train_t, &mut read_seconds)?;
            Rng::new(cfg.seed, ((epoch as u64) << 32) | si as u64).shuffle(&mut examples);
            for chunk in examples.chunks(cfg.batch_size) {
                if skip > 0 {
                    skip -= 1;
                    step_in_epoch += 1;
                    continue;
                }
                let refs: Vec<&Example> = chunk.iter().collect();
                let (parts, count) = batch_loss(&model, &refs, cfg.top_k.unwrap_or(m.top_k), cfg, train_t, &device);
                let lr = lr_at(cfg.lr, step, total);
                let (l, kl, ce) = (scalar(&parts.loss), scalar(&parts.kl), scalar(&parts.ce));
                if !l.is_finite() {
                    return Err(Error::Config(format!(
                        "the loss became {l} at step {step} (kl {kl}, ce {ce}); lower train.lr (now {})",
                        cfg.lr
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
                    break 'epochs;
                }
            }
        }
        epoch += 1;
        skip = 0;
        if step % cfg.checkpoint_every != 0 {
            checkpoint(out, &model, &optim, step, epoch, 0, &config_sha)?;
        }
    }
    progress.finish();
    metrics.flush().map_err(|e| Error::io(&metrics_path, e))?;

    // The trained student, in Burn's format and as safetensors, with its description.
    let valid = model.valid();
    student::save_burnpack(&Student::clone(&valid), &out.join("student.bpk"))?;
    student::save_safetensors(&valid, &out.join("student.safetensors"))?;
    write_atomic(&out.join("student.json"), &serde_json::to_vec_pretty(&student_file).expect("serialises"))?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(TrainSummary {
        out: out.clone(),
        steps: step,
        epochs: epoch,
        seconds,
        positions_per_second: trained_positions as f64 / seconds.max(1e-9),
        cache_read_seconds: read_seconds,
        final_loss: last_loss,
        resumed_from,
    })
}

/// Save model + optimizer under `checkpoint-STEP/`, then point `checkpoint.json` at it
/// (atomically), then remove older checkpoints.
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
    optim
        .save(dir.join("optim.bpk"))
        .map_err(|e| Error::io(dir.join("optim.bpk"), std::io::Error::other(format!("{e:?}"))))?;
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

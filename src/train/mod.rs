//! Stage two: a cache + the training data in, a trained student out.
//!
//! The teacher is never loaded. Shards are streamed in a seeded order ([`plan`]), joined
//! with the dataset rows they were made from ([`examples`]), and shuffled together
//! `shuffle_window` shards at a time before they are cut into batches (memory is bounded by
//! that window and one shard, whatever the cache size). A loader thread ([`loader`]) reads
//! and tokenizes shards one shard ahead of training ([`run`]); prepared rows (token ids,
//! features) are kept between epochs up to a byte budget. Checkpoints every N steps and at
//! the end ([`checkpoint`]); `--resume` continues from the last one.

mod batch;
mod checkpoint;
mod checks;
mod examples;
mod identity;
mod loader;
mod metrics;
mod plan;
mod run;
mod schedule;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;

use crate::cache::Manifest;
use crate::cache::manifest::{TOKENIZER_FILE, sha256_canonical_json, write_atomic};
use crate::config::{TrainConfig, TrainDevice};
use crate::error::Result;
use crate::loss::HiddenMaps;
use crate::progress::Progress;
use crate::student::adamw::FusedAdamW;
use crate::student::{self, Student, StudentArch, StudentSpec, hf};
use crate::text::Tokenizer;

use crate::student::prepare_rows;
pub use crate::student::{DataSpec, StudentFile};

use checkpoint::{At, CheckpointState};
use loader::{Loader, StopOnDrop};
use plan::ShardPlan;
use run::{HiddenTraining, Stats, Trainer};

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

/// The run directory must not be, hold or lie inside the cache, the data, the tokenizer or
/// a Hugging Face student it reads.
fn refuse_out_over_inputs(cfg: &TrainConfig) -> Result<()> {
    let mut inputs: Vec<(&str, &Path)> = vec![("--data", cfg.data.as_path())];
    if !crate::store::is_url(&cfg.cache) {
        inputs.push(("--cache", cfg.cache.as_path()));
    }
    if let Some(t) = &cfg.tokenizer {
        inputs.push(("--tokenizer", t.as_path()));
    }
    if let crate::student::StudentSpec::Hf { path } = &cfg.student {
        inputs.push(("--student", path.as_path()));
    }
    crate::untrusted::refuse_overlap(("--out", &cfg.out), &inputs)
}

/// The cache a run trains from, checked, and how its data is read.
struct Source {
    opened: crate::store::OpenedCache,
    reader: crate::cache::CacheReader,
    m: Manifest,
    /// The training temperature (the cache's unless given).
    train_t: f32,
    tok: Option<Tokenizer>,
    spec: DataSpec,
}

/// Open and check the cache: its settings against the run's, every shard's checksum before
/// the first step (a damaged cache is refused up front, not after hours of training; shards
/// are checked again as they are read, and a remote cache shard by shard as the prefetcher
/// brings it in), and its tokenizer.
fn open_source(cfg: &TrainConfig) -> Result<Source> {
    let opened = crate::store::open_for_reading(&cfg.cache)?;
    let (reader, train_t) = checks::check_cache(cfg, &opened.dir)?;
    if opened.remote.is_none() {
        reader.verify(|_| {})?;
    }
    let m: Manifest = reader.manifest().clone();
    let tok = checks::tokenizer_for(cfg, &m, &opened.dir)?;
    let spec = DataSpec::of(&m);
    Ok(Source { opened, reader, m, train_t, tok, spec })
}

/// Where a trained encoder or decoder student is also written as a Hugging Face checkpoint.
pub const HF_DIR: &str = "hf";

/// Run stage two.
pub fn train_student(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainSummary> {
    refuse_out_over_inputs(cfg)?;
    let Source { opened, reader, m, train_t, tok, spec } = open_source(cfg)?;
    let mut notes = Vec::new();
    let (arch, pretrained) = student_arch(cfg, &m, &spec, tok.as_ref(), &mut notes)?;
    let student_file = StudentFile::of(arch.clone(), &m, cfg.loss.alpha, train_t, cfg.loss.tail);
    let (config_json, config_sha) = run_config(cfg, &student_file, train_t, opts)?;

    // Run directory: new, or resumed from a checkpoint made with the same config.
    let out = &cfg.out;
    let _lock = crate::lock::DirLock::acquire(out, "", "a training run")?;
    let resume = checkpoint::resume_state(out, opts.resume, &config_sha, &config_json)?;
    let device = training_device(cfg)?;
    let (model, optim) = start_student(&arch, cfg.schedule.weight_decay as f32, pretrained, resume.as_ref(), out, &device, &mut notes)?;
    let (model, selected) = student::select::select(model, &cfg.trainable, &cfg.freeze)?;
    notes.extend(selected);
    let hidden = start_hidden(cfg, &m, &model, cfg.schedule.weight_decay as f32, resume.as_ref(), out, &device)?;
    // Written once the student and its hidden-state pairs are known to fit: a refused run
    // leaves no run behind, and its corrected rerun needs no --resume.
    write_run_files(out, &config_json, tok.as_ref())?;
    let resumed_from = resume.as_ref().map(|s| s.step);
    let metrics = metrics::Metrics::open(out, resumed_from, hidden.is_some())?;

    let plan = ShardPlan::new(cfg, &m)?;
    let total = plan.total_steps(cfg);
    notes.extend(
        resumed_from
            .filter(|&r| r >= total)
            .map(|_| format!("{}: the run had finished (step {total} of {total}); its student is exported again", out.display())),
    );
    let start_epoch = resume.as_ref().map_or(0, |s| s.epoch);
    // A remote cache: fetch shards in the first epoch's order, two ahead of training.
    let prefetch =
        opened.remote.map(|remote| crate::store::Prefetcher::start(remote, opened.dir.clone(), plan.prefetch_list(start_epoch), 2));
    let row_starts = plan::row_starts(cfg, &m)?;
    let stop = AtomicBool::new(false);
    let loader = Loader {
        cfg,
        m: &m,
        reader: &reader,
        plan: &plan,
        spec: &spec,
        tok: tok.as_ref(),
        train_t,
        student_vocab: arch.vocab(),
        prefetch: prefetch.as_ref(),
        row_starts: &row_starts,
        start_epoch,
        stop: &stop,
    };
    let progress = Progress::new(total as u64, "training", opts.quiet);
    progress.set_position(resumed_from.unwrap_or(0) as u64);
    let mut trainer = Trainer {
        cfg,
        m: &m,
        train_t,
        device: &device,
        out,
        config_sha: &config_sha,
        optim,
        metrics,
        progress,
        total,
        at: At { step: resumed_from.unwrap_or(0), epoch: start_epoch, step_in_epoch: 0 },
        skip: resume.as_ref().map_or(0, |s| s.step_in_epoch),
        started: Instant::now(),
        stats: Stats::default(),
        hidden,
    };
    let model = train_with_loader(&mut trainer, model, &loader)?;
    trainer.progress.finish();
    trainer.metrics.flush()?;

    export_student(cfg, &model.valid(), &student_file, tok.as_ref())?;
    Ok(summary(&trainer, resumed_from, notes))
}

/// The architecture to train, and the pretrained checkpoint it starts from (`hf:`).
fn student_arch(
    cfg: &TrainConfig,
    m: &Manifest,
    spec: &DataSpec,
    tok: Option<&Tokenizer>,
    notes: &mut Vec<String>,
) -> Result<(StudentArch, Option<hf::HfCheckpoint>)> {
    if let StudentSpec::Hf { path } = &cfg.student {
        let mut ck = hf::read_checkpoint(path)?;
        hf::check_fits(&mut ck, m, tok, notes)?;
        return Ok((ck.arch.clone(), Some(ck)));
    }
    let width = match (spec.task, &spec.text) {
        (crate::cache::Task::Classification, None) => {
            prepare_rows(&cfg.data, spec, None, 0, 1, None)?.first().map(|r| r.features.len()).unwrap_or(0)
        }
        _ => 0,
    };
    let dims = student::CacheDims {
        outputs: m.vocab_size,
        features: width,
        tokens: tok.map(|t| t.vocab_size()).unwrap_or(0),
        max_seq_len: m.text.as_ref().map(|t| t.max_seq_len).unwrap_or(0),
    };
    Ok((StudentArch::resolve(&cfg.student, &dims), None))
}

/// `config.json` of the run, and the SHA-256 of its identity (a resumed run must match
/// it); the command line is recorded beside it but may differ (it carries --resume).
fn run_config(cfg: &TrainConfig, student_file: &StudentFile, train_t: f32, opts: &TrainOptions) -> Result<(Vec<u8>, String)> {
    let starting_weights = match &cfg.student {
        StudentSpec::Hf { path } => Some(crate::student::hf::weights_sha256(path)?),
        _ => None,
    };
    let mut config = identity::TrainIdentity::of(cfg, student_file, train_t, starting_weights).to_json();
    let sha = sha256_canonical_json(&config);
    config["command"] = serde_json::json!(opts.command);
    Ok((serde_json::to_vec_pretty(&config).expect("serialises"), sha))
}

/// `config.json`, and the tokenizer (with its chat template) that `eval` reads the data with.
fn write_run_files(out: &Path, config_json: &[u8], tok: Option<&Tokenizer>) -> Result<()> {
    write_atomic(&out.join("config.json"), config_json)?;
    if let Some(t) = tok {
        let bytes = crate::untrusted::read(&t.path, crate::untrusted::Cap::Tokenizer)?;
        write_atomic(&out.join(TOKENIZER_FILE), &bytes)?;
        if let Some(chat) = &t.chat {
            chat.save(out)?;
        }
    }
    Ok(())
}

/// The training device, seeded, with autodiff.
fn training_device(cfg: &TrainConfig) -> Result<Device> {
    let base = device_for(cfg.device)?;
    base.seed(cfg.schedule.seed);
    crate::process::keep_freed_memory();
    Ok(base.autodiff())
}

/// The student and optimizer a run starts from: pretrained or fresh weights, or a resumed
/// run's checkpoint (the pretrained weights only start a run).
fn start_student(
    arch: &StudentArch,
    weight_decay: f32,
    pretrained: Option<hf::HfCheckpoint>,
    resume: Option<&CheckpointState>,
    out: &Path,
    device: &Device,
    notes: &mut Vec<String>,
) -> Result<(Student, ModuleOptimizer)> {
    let mut model = match pretrained {
        Some(ck) if resume.is_none() => {
            let (model, more) = hf::load_student(ck, device)?;
            notes.extend(more);
            model
        }
        _ => arch.init(device),
    };
    let mut optim = FusedAdamW::new(weight_decay).init();
    if let Some(s) = resume {
        optim = checkpoint::load(out, s, &mut model, optim)?;
    }
    Ok((model, optim))
}

/// The hidden-state maps of `--hidden-layers` (fresh, or a resumed run's), with their
/// optimizer; `None` without hidden-state pairs.
fn start_hidden(
    cfg: &TrainConfig,
    m: &Manifest,
    model: &Student,
    weight_decay: f32,
    resume: Option<&CheckpointState>,
    out: &Path,
    device: &Device,
) -> Result<Option<HiddenTraining>> {
    if cfg.loss.hidden.is_empty() {
        return Ok(None);
    }
    let student_widths = checks::check_hidden_layers(cfg, model)?;
    let dims: Vec<usize> = examples::hidden_columns(cfg, m).into_iter().map(|(_, d)| d).collect();
    let widths: Vec<(usize, usize)> = student_widths.into_iter().zip(dims.iter().copied()).collect();
    let mut maps = HiddenMaps::new(&widths, device);
    let mut optim = FusedAdamW::new(weight_decay).init();
    if let Some(s) = resume {
        optim = checkpoint::load_hidden(out, s, &mut maps, optim)?;
    }
    Ok(Some(HiddenTraining { maps, optim, layers: cfg.loss.hidden.iter().map(|p| p.layer).collect(), dims }))
}

/// Train on a loader thread's shards: the loader reads one shard ahead of training (so at
/// most a window and one shard are held) and stops between shards once training is done or
/// has failed.
fn train_with_loader(trainer: &mut Trainer<'_>, model: Student, loader: &Loader<'_>) -> Result<Student> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<loader::Loaded>(0);
        scope.spawn(move || loader.run(tx));
        let _stop = StopOnDrop(loader.stop);
        trainer.run(model, &rx)
    })
}

/// The trained student, in Burn's format and as safetensors, with its description (and as
/// a Hugging Face checkpoint for an encoder or decoder). Each file is written under a
/// temporary name and renamed, so a kill leaves the old file or the new one, and a resumed
/// (or finished) run exports again over what is there. A student trained from a `--student
/// hf:` checkpoint is written in that checkpoint's own `model_type` and keeps its config.
fn export_student(cfg: &TrainConfig, valid: &Student, student_file: &StudentFile, tok: Option<&Tokenizer>) -> Result<()> {
    let (out, arch, dtype) = (&cfg.out, &student_file.arch, cfg.export_dtype);
    let source = match &cfg.student {
        StudentSpec::Hf { path } => Some(path.as_path()),
        _ => None,
    };
    checkpoint::export_atomic(&out.join("student.bpk"), |p| student::save_burnpack(&Student::clone(valid), p))?;
    checkpoint::export_atomic(&out.join("student.safetensors"), |p| student::save_safetensors(valid, p))?;
    if arch.reads_tokens() {
        let tokenizer = out.join(TOKENIZER_FILE);
        hf::write_checkpoint(
            valid,
            arch,
            &out.join(HF_DIR),
            Some(&tokenizer).filter(|p| p.is_file()).map(|p| p.as_path()),
            tok.map(|t| t.pad_id),
            source,
            dtype,
        )?;
    }
    write_atomic(&out.join("student.json"), &serde_json::to_vec_pretty(student_file).expect("serialises"))
}

fn summary(t: &Trainer<'_>, resumed_from: Option<usize>, notes: Vec<String>) -> TrainSummary {
    let seconds = t.started.elapsed().as_secs_f64();
    let positions = t.stats.trained_positions as f64;
    TrainSummary {
        out: t.out.to_path_buf(),
        steps: t.at.step,
        epochs: t.at.epoch,
        seconds,
        positions_per_second: positions / seconds.max(1e-9),
        training_positions_per_second: positions / (seconds - t.stats.wait_seconds).max(1e-9),
        cache_read_seconds: t.stats.read_seconds,
        data_wait_seconds: t.stats.wait_seconds,
        final_loss: t.stats.last_loss,
        resumed_from,
        notes,
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
        TrainDevice::Tch | TrainDevice::TchCuda(_) => Err(crate::error::Error::Config(
            "train.device = tch needs a build with the `tch` cargo feature (cargo build --release --features tch; see README)".into(),
        )),
    }
}

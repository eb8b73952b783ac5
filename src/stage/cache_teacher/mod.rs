//! Stage one orchestration: data + teacher in, a verified top-k cache out.
//!
//! Streams the dataset in batches through the teacher, turns every cached position's
//! logits into a [`SoftLabel`](crate::cache::SoftLabel), and hands them to the cache writer
//! shard by shard. After each shard, `manifest.partial.json` records it, so a rerun of the
//! same command skips finished shards; `manifest.json` is written last.
//!
//! The steps: check the inputs ([`inputs`]), the cache's identity ([`identity`]), the
//! output directory's state ([`crate::cache::out_dir`]), the shards still to write
//! ([`plan`]), then the stream ([`stream`]: a reader thread, the teacher, a worker that
//! writes shards).

mod batches;
mod identity;
mod inputs;
mod plan;
mod reader;
mod sink;
mod stream;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cache::manifest::{self, Manifest, PartInfo};
use crate::cache::out_dir::{ManifestNames, OutState, prepare_out_dir};
use crate::config::CacheTeacherConfig;
use crate::error::{Error, Result};
use crate::store::{Pull, Staging};

pub(crate) use identity::encoding_of;
use inputs::Inputs;
use plan::ShardPlan;
use stream::Counts;

/// What a finished (or already complete) run reports.
#[derive(Debug, Clone)]
pub struct CacheSummary {
    pub dir: PathBuf,
    pub rows: u64,
    pub positions: u64,
    pub shards: usize,
    pub bytes: u64,
    /// Shards found finished from an earlier, interrupted run.
    pub resumed_shards: usize,
    /// Rows computed in this run and the time it took (0 when nothing was left to do).
    pub rows_computed: u64,
    pub tokens_computed: u64,
    pub seconds: f64,
    pub already_complete: bool,
    pub warnings: Vec<String>,
    /// Where this run's time went.
    pub timings: Timings,
}

/// Seconds spent in each part of stage one (this run only).
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Reading and tokenizing the data.
    pub data: f64,
    /// ONNX Runtime inference.
    pub teacher: f64,
    /// Top-k, log-softmax, tail mass and entropy.
    pub soft_labels: f64,
    /// Encoding and writing shards.
    pub write: f64,
}

/// Optional behaviour of a run that is not part of the cache's identity.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub quiet: bool,
    /// Replace an existing cache made with other settings.
    pub overwrite: bool,
    pub ort_lib: Option<PathBuf>,
    /// The command line, recorded in the manifest.
    pub command: Vec<String>,
    /// Called after each finished shard (and its partial manifest) is on disk.
    pub on_shard: Option<ShardHook>,
}

/// A callback run after each finished shard; an error stops the run.
#[derive(Clone)]
pub struct ShardHook(pub std::sync::Arc<dyn Fn() -> Result<()> + Send + Sync>);

impl std::fmt::Debug for ShardHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardHook")
    }
}

/// Run stage one. `cfg.out` may be a directory or an object-storage URL (`s3://`, `gs://`,
/// `az://`, `file://`; see [`crate::store`]): then the work is done in its staging
/// directory, starting from whatever reached the bucket, and each finished shard is
/// uploaded before the next one starts to count.
pub fn cache_teacher(cfg: &CacheTeacherConfig, opts: &RunOptions) -> Result<CacheSummary> {
    let names = ManifestNames::of(cfg.part);
    let part = cfg.part;
    let mut staging = Staging::open(&cfg.out, move |dir| lock_out(dir, part), Pull::Manifests(vec![names.complete, names.partial]))?;
    let local = CacheTeacherConfig { out: staging.dir.clone(), ..cfg.clone() };
    let mut summary = cache_teacher_local(&local, opts, &mut staging)?;
    summary.dir = staging.finish(true)?;
    Ok(summary)
}

/// The locks a run holds on its output directory: the main lock, exclusively for a whole
/// run; shared, plus its own part's exclusively, for one worker of a sharded capture.
fn lock_out(out: &Path, part: Option<PartInfo>) -> Result<Vec<crate::lock::DirLock>> {
    use crate::lock::DirLock;
    Ok(match part {
        None => vec![DirLock::acquire(out, "", "a cache")?],
        Some(p) => vec![
            DirLock::acquire_shared(out, "a cache (a part of a sharded capture may share it, a whole run may not)")?,
            DirLock::acquire(out, &format!(".part-{}-of-{}", p.index, p.count), &format!("part {}/{} of a cache", p.index, p.count))?,
        ],
    })
}

/// Stage one into `staging`'s directory (`cfg.out`).
fn cache_teacher_local(cfg: &CacheTeacherConfig, opts: &RunOptions, staging: &mut Staging) -> Result<CacheSummary> {
    let mut inputs = vec![("--data", cfg.data.as_path()), ("--teacher", cfg.teacher.as_path())];
    inputs.extend(cfg.text.as_ref().map(|t| ("--tokenizer", t.tokenizer.as_path())));
    crate::untrusted::refuse_overlap(("--out", &cfg.out), &inputs)?;
    // Inputs first: nothing is created before the inputs are known to be usable.
    let mut inputs = Inputs::open(cfg, opts)?;
    let mut man = identity::new_manifest(cfg, opts, &inputs)?;

    // The output directory: new, resumable, complete, or someone else's.
    let out = &cfg.out;
    let part = cfg.part.unwrap_or(PartInfo { index: 0, count: 1 });
    let names = ManifestNames::of(cfg.part);
    if out.exists() && !out.is_dir() {
        return Err(Error::cache(out, "--out exists and is not a directory"));
    }
    staging.take()?;
    let uploads = staging.sync_fn().map(|f| ShardHook(std::sync::Arc::new(f)));
    let opts = &RunOptions { on_shard: uploads.or_else(|| opts.on_shard.clone()), ..opts.clone() };
    let mut warnings: Vec<String> = inputs.teacher.device_note.iter().chain(&inputs.selectable.warning).cloned().collect();
    match prepare_out_dir(out, &man, opts.overwrite, &names, part)? {
        OutState::Complete(existing) => return Ok(already_complete(out, &existing, warnings)),
        OutState::Partial(existing, note) => {
            man.shards = existing.shards;
            man.totals = existing.totals;
            warnings.extend(note);
        }
        OutState::Fresh => {}
    }
    copy_tokenizer(&inputs, out)?;
    let resumed_shards = man.shards.len();
    let plan = ShardPlan::of(&man, part);

    let started = Instant::now();
    let (mut man, counts, timings) = stream::stream(cfg, opts, &mut inputs, man, &plan, &names.partial)?;
    man.totals.truncated_rows += counts.truncated_rows;
    stream::check_rows_read(cfg, &man, &plan)?;
    warnings.extend(run_warnings(cfg, &man, &counts, inputs.label_column.as_deref()));
    man.publish(out, &names.complete, Some(&names.partial))?;
    Ok(CacheSummary {
        dir: out.clone(),
        rows: man.totals.rows,
        positions: man.totals.positions,
        shards: man.shards.len(),
        bytes: man.shards.iter().map(|s| s.bytes).sum(),
        resumed_shards,
        rows_computed: counts.rows,
        tokens_computed: counts.tokens,
        seconds: started.elapsed().as_secs_f64(),
        already_complete: false,
        warnings,
        timings,
    })
}

/// The summary of a cache that was complete before the run.
fn already_complete(out: &Path, existing: &Manifest, warnings: Vec<String>) -> CacheSummary {
    CacheSummary {
        dir: out.to_path_buf(),
        rows: existing.totals.rows,
        positions: existing.totals.positions,
        shards: existing.shards.len(),
        bytes: existing.shards.iter().map(|s| s.bytes).sum(),
        resumed_shards: existing.shards.len(),
        rows_computed: 0,
        tokens_computed: 0,
        seconds: 0.0,
        already_complete: true,
        warnings,
        timings: Timings::default(),
    }
}

/// The tokenizer (and chat template) the cache was made with, beside its shards.
fn copy_tokenizer(inputs: &Inputs, out: &Path) -> Result<()> {
    let Some(ts) = &inputs.tok else { return Ok(()) };
    let bytes = crate::untrusted::read(&ts.path, crate::untrusted::Cap::Tokenizer)?;
    manifest::write_atomic(&out.join(manifest::TOKENIZER_FILE), &bytes)?;
    if let Some(chat) = &ts.chat {
        chat.save(out)?;
    }
    Ok(())
}

/// What the user should know about the rows of this run.
fn run_warnings(cfg: &CacheTeacherConfig, man: &Manifest, counts: &Counts, label_column: Option<&str>) -> Vec<String> {
    let mut warnings = Vec::new();
    if man.totals.truncated_rows > 0 {
        let t = cfg.text.as_ref().expect("text");
        warnings
            .push(format!("{} rows were longer than max_seq_len = {} tokens and were truncated", man.totals.truncated_rows, t.max_seq_len));
    }
    if counts.unlabelled_rows > 0 {
        warnings.push(format!(
            "{} of the {} rows cached in this run have no label (their {} is null): they are cached as soft labels only",
            counts.unlabelled_rows,
            counts.rows,
            label_column.unwrap_or("label")
        ));
    }
    if man.totals.rows_without_positions > 0 {
        warnings.push(format!("{} rows produced no cached position (empty text or completion)", man.totals.rows_without_positions));
    }
    warnings
}

//! Stage one orchestration: data + teacher in, a verified top-k cache out.
//!
//! Streams the dataset in batches through the teacher, turns every cached position's
//! logits into a [`SoftLabel`], and hands them to the cache writer shard by shard. After
//! each shard, `manifest.partial.json` records it, so a rerun of the same command skips
//! finished shards; `manifest.json` is written last.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cache::manifest::{
    self, DatasetInfo, EncodingInfo, Manifest, PartInfo, SCHEMA_VERSION, ShardInfo, TokenizerInfo, ToolInfo, Totals,
};
use crate::cache::out_dir::{ManifestNames, OutState, prepare_out_dir};
use crate::cache::{LogprobEncoding, Positions, ShardBuilder, Task, schema, writer};
use crate::chat::ChatTemplate;
use crate::config::{CacheTeacherConfig, LongSequences, TextSource};
use crate::data::{self, Column, Field, Kind, Row};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::teacher::{InputMapping, SoftLabel, Teacher, TeacherBatch, TopKScratch, topk};
use crate::text::{self, TextColumns, Tokenizer};

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
/// `az://`, `file://`; see [`crate::store`]).
pub fn cache_teacher(cfg: &CacheTeacherConfig, opts: &RunOptions) -> Result<CacheSummary> {
    match crate::store::Location::parse(&cfg.out)? {
        crate::store::Location::Local(dir) if dir == cfg.out => cache_teacher_local(cfg, opts, false),
        crate::store::Location::Local(dir) => cache_teacher_local(&CacheTeacherConfig { out: dir, ..cfg.clone() }, opts, false),
        crate::store::Location::Remote(remote) => {
            // Work in the staging directory, starting from whatever reached the bucket;
            // each finished shard is uploaded before the next one starts to count.
            let url = remote.url.clone();
            let dir = remote.staging_dir();
            // Held from the first pull to the last upload.
            let _lock = lock_out(&dir, cfg.part)?;
            let names = ManifestNames::of(cfg.part);
            remote.pull_manifests(&dir, &[names.complete.as_str(), names.partial.as_str()])?;
            let uploader = std::sync::Arc::new(crate::store::Uploader::new(remote, dir.clone())?);
            let up = uploader.clone();
            let hook = ShardHook(std::sync::Arc::new(move || up.sync(false)));
            let local = CacheTeacherConfig { out: dir, ..cfg.clone() };
            let mut summary = cache_teacher_local(&local, &RunOptions { on_shard: Some(hook), ..opts.clone() }, true)?;
            uploader.sync(true)?;
            summary.dir = PathBuf::from(url);
            Ok(summary)
        }
    }
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

/// Stage one into a local directory; `held`: the caller holds its locks already.
fn cache_teacher_local(cfg: &CacheTeacherConfig, opts: &RunOptions, held: bool) -> Result<CacheSummary> {
    // Inputs first: nothing is created before the inputs are known to be usable.
    data::dataset_format(&cfg.data)?;
    if !cfg.teacher.is_file() {
        return Err(Error::io(&cfg.teacher, std::io::Error::new(std::io::ErrorKind::NotFound, "teacher model not found")));
    }
    // Prompt and completion columns of conversations (TRL's conversational format).
    let conversational = match cfg.text.as_ref().map(|t| &t.source) {
        Some(TextSource::PromptCompletion { prompt, .. }) => data::column_holds_lists(&cfg.data, prompt)?,
        _ => false,
    };
    let text_side = match &cfg.text {
        Some(t) => {
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
            Some(tok)
        }
        None => None,
    };
    let mapping = InputMapping { tokens: cfg.text.is_some(), columns: cfg.inputs.clone(), output: cfg.output.clone() };
    let mut teacher = Teacher::load(&cfg.teacher, &mapping, cfg.threads, cfg.spin, opts.ort_lib.as_deref(), cfg.device)?;
    let vocab = teacher.vocab_size;
    let selectable = selectable_ids(cfg, &teacher, text_side.as_ref())?;
    let top_k = match cfg.top_k {
        Some(k) if k > vocab => {
            return Err(Error::Config(format!(
                "cache.top_k = {k} is larger than the teacher's {} of {vocab} (output `{}`)",
                if teacher.task == Task::Classification { "class count" } else { "vocabulary" },
                teacher.output_name()
            )));
        }
        Some(k) if k > selectable.ids => {
            return Err(Error::Config(format!("cache.top_k = {k} is larger than the tokenizer's {} tokens", selectable.ids)));
        }
        Some(k) => k,
        None => selectable.ids.min(64),
    };
    let positions_mode = match (&cfg.text, teacher.task) {
        (Some(t), Task::CausalLm) => t.positions,
        (_, Task::Classification) => Positions::Example,
        (None, Task::CausalLm) => {
            return Err(Error::teacher(
                &cfg.teacher,
                "the model outputs [batch, seq, vocab] logits (a causal LM) but no tokenizer/text column was given",
            ));
        }
    };
    // Columns.
    let names = data::column_names(&cfg.data)?;
    let chat = text_side.as_ref().and_then(|ts| ts.chat.as_ref());
    let text_columns = cfg.text.as_ref().map(|t| text_columns_of(t, conversational, chat, positions_mode));
    let mut columns = Vec::new();
    match &text_columns {
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

    // Identity of the cache.
    let dataset = DatasetInfo::of(&cfg.data)?;
    if dataset.rows == 0 {
        return Err(Error::data(&cfg.data, "has no rows: there is nothing to cache"));
    }
    let step = match cfg.encoding {
        LogprobEncoding::DeltaU16 => schema::DEFAULT_LOGPROB_STEP,
        LogprobEncoding::F32 => 0.0,
    };
    let encoding = EncodingInfo {
        logprobs: cfg.encoding,
        logprob_step: step,
        max_abs_error: step / 2.0,
        compression: format!("zstd({})", writer::ZSTD_LEVEL),
    };
    let mut identity = serde_json::json!({
        "schema_version": SCHEMA_VERSION,
        "tool_version": env!("CARGO_PKG_VERSION"),
        "teacher_sha256": teacher.sha256,
        "logits_output": teacher.output_name(),
        "inputs": teacher.inputs_info(),
        "tokenizer_sha256": text_side.as_ref().map(|t| t.sha256.clone()),
        "dataset_sha256": dataset.sha256,
        "columns": columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "top_k": top_k,
        "temperature": cfg.temperature,
        "positions": positions_mode,
        "max_seq_len": cfg.text.as_ref().map(|t| t.max_seq_len),
        "encoding": encoding,
        "rows_per_shard": cfg.rows_per_shard,
    });
    // Keys that only some caches have (older fingerprints stay as they were without them).
    if !teacher.external_data.is_empty() {
        identity["teacher_external_data"] = serde_json::json!(teacher.external_data);
    }
    if selectable.ids < vocab {
        identity["selectable_ids"] = serde_json::json!(selectable.ids);
    }
    if let Some(sha) = text_columns.as_ref().and_then(|t| t.chat_template_sha256.clone()) {
        identity["chat_template_sha256"] = serde_json::json!(sha);
    }
    let fingerprint = manifest::sha256_canonical_json(&identity);
    let mut man = Manifest {
        schema_version: SCHEMA_VERSION,
        complete: false,
        part: cfg.part,
        tool: ToolInfo { name: "distill".into(), version: env!("CARGO_PKG_VERSION").into() },
        task: teacher.task,
        teacher: manifest::TeacherInfo {
            file: file_name(&cfg.teacher),
            sha256: teacher.sha256.clone(),
            bytes: teacher.bytes,
            external_data: teacher.external_data.clone(),
            inputs: teacher.inputs_info().to_vec(),
            outputs: teacher.outputs_info().to_vec(),
            logits_output: teacher.output_name().to_string(),
        },
        tokenizer: text_side.as_ref().map(|t| TokenizerInfo {
            file: file_name(&t.path),
            sha256: t.sha256.clone(),
            vocab_size: t.vocab_size(),
        }),
        vocab_size: vocab,
        top_k,
        temperature: cfg.temperature,
        positions: positions_mode,
        encoding,
        dataset,
        text: text_columns.clone(),
        features: columns.iter().filter(|c| c.kind == Kind::Numbers).map(|c| c.name.clone()).collect(),
        label_column: label_column.clone(),
        rows_per_shard: cfg.rows_per_shard,
        fingerprint,
        settings: serde_json::json!({ "given": cfg.settings, "identity": identity }),
        command: opts.command.clone(),
        totals: Totals::default(),
        shards: Vec::new(),
        checksum: String::new(),
    };

    // The output directory: new, resumable, complete, or someone else's.
    let out = &cfg.out;
    let part = cfg.part.unwrap_or(PartInfo { index: 0, count: 1 });
    let names = ManifestNames::of(cfg.part);
    if out.exists() && !out.is_dir() {
        return Err(Error::cache(out, "--out exists and is not a directory"));
    }
    let _lock = if held { Vec::new() } else { lock_out(out, cfg.part)? };
    let resumed = prepare_out_dir(out, &man, opts.overwrite, &names, part)?;
    let mut warnings = Vec::new();
    warnings.extend(teacher.device_note.clone());
    warnings.extend(selectable.warning);
    match resumed {
        OutState::Complete(existing) => {
            return Ok(CacheSummary {
                dir: out.clone(),
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
            });
        }
        OutState::Partial(existing, note) => {
            man.shards = existing.shards;
            man.totals = existing.totals;
            warnings.extend(note);
        }
        OutState::Fresh => {}
    }
    if let Some(ts) = &text_side {
        let bytes = std::fs::read(&ts.path).map_err(|e| Error::io(&ts.path, e))?;
        manifest::write_atomic(&out.join(manifest::TOKENIZER_FILE), &bytes)?;
        if let Some(chat) = &ts.chat {
            chat.save(out)?;
        }
    }
    let resumed_shards = man.shards.len();
    // This run's shards: indices j of this part (all of them without --shard), after the
    // finished ones. Shard j always holds rows j*R .. (j+1)*R.
    let total_rows = man.dataset.rows;
    let per = cfg.rows_per_shard;
    let all_shards = total_rows.div_ceil(per) as usize;
    let done: std::collections::HashSet<usize> = man.shards.iter().filter_map(|s| manifest::shard_index(&s.file)).collect();
    let mine: Vec<usize> = (0..all_shards).filter(|j| j % part.count == part.index).collect();
    let plan: Vec<usize> = mine.iter().copied().filter(|j| !done.contains(j)).collect();
    let my_rows: u64 = mine.iter().map(|&j| shard_len(j, per, total_rows)).sum();
    let done_rows: u64 = man.shards.iter().map(|s| s.rows).sum();

    // Stream, in three threads: a reader reads and tokenizes the rows of batch n + 1 while
    // the main thread runs the teacher on batch n, and a worker turns the copied logits of
    // batch n - 1 into soft labels and writes the shards.
    let progress = Progress::new(my_rows, "caching", opts.quiet);
    progress.set_position(done_rows);
    let rows = data::read_rows(&cfg.data, &columns)?;
    let started = Instant::now();
    let mut rows_computed = 0u64;
    let mut tokens_computed = 0u64;
    let mut timings = Timings::default();
    let mut truncated_rows = 0u64;
    // Rows of a labelled classification dataset whose label is null (soft label only).
    let mut unlabelled_rows = 0u64;
    let vocab_size = teacher.vocab_size;
    let classify = teacher.task == Task::Classification;
    let teacher_path = teacher.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(2);
    let (feed_tx, feed_rx) = std::sync::mpsc::sync_channel::<Result<Feed>>(2);
    // Logits buffers come back from the worker, so their pages are touched once per run.
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<Vec<f32>>();
    let sink = Sink {
        out,
        partial_name: names.partial.clone(),
        encoding: cfg.encoding,
        step,
        temperature: cfg.temperature,
        top_k,
        vocab: vocab_size,
        selectable: selectable.ids,
        threads: cfg.threads,
        teacher_path,
        on_shard: opts.on_shard.clone(),
        recycle: recycle_tx,
    };
    let reader = Reader {
        cfg,
        tokens: text_side.as_ref().zip(text_columns.as_ref()),
        label_slot: label_column.as_ref().map(|_| columns.len() - 1),
        vocab: vocab_size,
        classify,
        plan: &plan,
        rows_per_shard: per,
        total_rows,
    };
    let (main_result, worker_result, data_seconds) = std::thread::scope(|scope| {
        let worker = scope.spawn(move || sink.run(rx, man));
        let reader = scope.spawn(move || reader.run(rows, feed_tx));
        let main_result = (|| -> Result<()> {
            for feed in &feed_rx {
                let job = match feed? {
                    Feed::EndOfShard { index, first_row, rows } => Job::Flush { index, first_row, rows },
                    Feed::Batch(b) => {
                        let t_run = Instant::now();
                        let pending = match &b.tokens {
                            None => numeric_batch(cfg, &mut teacher, &b.rows, &columns, &b.hard)?,
                            Some(t) if classify => {
                                let input = TeacherBatch::Tokens { batch: b.rows.len(), seq: t.seq, ids: &t.ids, mask: &t.mask };
                                per_row_pending(&mut teacher, &input, &b.rows, &b.hard)?
                            }
                            Some(t) => lm_pending(&mut teacher, &b.rows, t, recycle_rx.try_recv().unwrap_or_default())?,
                        };
                        timings.teacher += t_run.elapsed().as_secs_f64();
                        if let Some(t) = &b.tokens {
                            tokens_computed += t.count;
                            truncated_rows += t.truncated;
                        }
                        rows_computed += b.rows.len() as u64;
                        if classify && label_column.is_some() {
                            unlabelled_rows += b.hard.iter().filter(|h| h.is_none()).count() as u64;
                        }
                        progress.inc(b.rows.len() as u64, tokens_computed, started.elapsed().as_secs_f64(), rows_computed);
                        Job::Batch(pending)
                    }
                };
                if tx.send(job).is_err() {
                    return Ok(()); // the worker stopped with an error; it is reported below
                }
            }
            Ok(())
        })();
        drop(tx);
        drop(feed_rx); // a reader still sending stops at its next batch
        let data_seconds = reader.join().expect("data reader thread panicked");
        (main_result, worker.join().expect("shard writer thread panicked"), data_seconds)
    });
    timings.data = data_seconds;
    let (mut man, soft_seconds, write_seconds) = match (main_result, worker_result) {
        (Err(e), _) | (Ok(()), Err(e)) => return Err(e),
        (Ok(()), Ok(done)) => done,
    };
    timings.soft_labels = soft_seconds;
    timings.write = write_seconds;
    man.totals.truncated_rows += truncated_rows;
    progress.finish();
    if man.totals.rows != my_rows {
        return Err(Error::data(
            &cfg.data,
            format!(
                "read {} rows but expected {my_rows} of the {total_rows} the file had when hashed: it changed during the run",
                man.totals.rows
            ),
        ));
    }
    if man.totals.truncated_rows > 0 {
        let t = cfg.text.as_ref().expect("text");
        warnings
            .push(format!("{} rows were longer than max_seq_len = {} tokens and were truncated", man.totals.truncated_rows, t.max_seq_len));
    }
    if unlabelled_rows > 0 {
        warnings.push(format!(
            "{unlabelled_rows} of the {rows_computed} rows cached in this run have no label (their {} is null): they are cached as soft labels only",
            label_column.as_deref().unwrap_or("label")
        ));
    }
    if man.totals.rows_without_positions > 0 {
        warnings.push(format!("{} rows produced no cached position (empty text or completion)", man.totals.rows_without_positions));
    }
    man.complete = true;
    man.validate(&out.join(&names.complete))?;
    man.write_atomic(out, &names.complete)?;
    let partial = out.join(&names.partial);
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    Ok(CacheSummary {
        dir: out.clone(),
        rows: man.totals.rows,
        positions: man.totals.positions,
        shards: man.shards.len(),
        bytes: man.shards.iter().map(|s| s.bytes).sum(),
        resumed_shards,
        rows_computed,
        tokens_computed,
        seconds: started.elapsed().as_secs_f64(),
        already_complete: false,
        warnings,
        timings,
    })
}

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
struct Selectable {
    ids: usize,
    warning: Option<String>,
}

/// A causal LM's logits may be wider than its tokenizer (vocabularies padded to a round
/// size: Qwen2.5-7B has 152064 logits for 151665 tokens): ids past the tokenizer are
/// padding, never chosen for the top-k; their probability is part of the tail mass. A
/// tokenizer larger than the logits is refused; one much smaller (more than 1 % of the
/// logits and 128 ids of padding) is more likely the wrong tokenizer: a warning says so.
fn selectable_ids(cfg: &CacheTeacherConfig, teacher: &Teacher, tok: Option<&Tokenizer>) -> Result<Selectable> {
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

fn finish_shard(out: &Path, name: &str, man: &mut Manifest, info: ShardInfo) -> Result<()> {
    man.shards.push(info);
    man.write_atomic(out, name)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

/// (row, position, hard label with the teacher's log-prob of it, soft label)
type Labelled = (u64, u32, Option<(i64, f32)>, SoftLabel);

/// The logits of one batch's cached positions, copied out of ONNX Runtime for the worker.
struct Pending {
    /// `[n, vocab]`, one row per cached position.
    logits: Vec<f32>,
    /// (dataset row, position, hard label) of each logits row.
    meta: Vec<(u64, u32, Option<i64>)>,
    /// Dataset rows of the batch (rows without any cached position are counted).
    rows: Vec<u64>,
}

enum Job {
    Batch(Pending),
    /// Every row of `first_row .. first_row + rows` has been sent: write shard `index`.
    Flush {
        index: usize,
        first_row: u64,
        rows: u64,
    },
}

/// The worker side of stage one: soft labels, shard building and writing.
struct Sink<'a> {
    out: &'a Path,
    partial_name: String,
    encoding: crate::cache::LogprobEncoding,
    step: f64,
    temperature: f32,
    top_k: usize,
    vocab: usize,
    /// Ids a soft label may name: the tokenizer's (ids past it are padding of the logits).
    selectable: usize,
    threads: usize,
    teacher_path: std::path::PathBuf,
    on_shard: Option<ShardHook>,
    /// Where spent logits buffers go back to the main thread.
    recycle: std::sync::mpsc::Sender<Vec<f32>>,
}

impl Sink<'_> {
    /// Returns the manifest with its shards and position counts, and the seconds spent on
    /// soft labels and on writing.
    fn run(self, jobs: std::sync::mpsc::Receiver<Job>, mut man: Manifest) -> Result<(Manifest, f64, f64)> {
        let mut builder = ShardBuilder::new(self.encoding, self.step);
        let mut scratch: Vec<TopKScratch> = (0..self.threads).map(|_| TopKScratch::default()).collect();
        let (mut soft_s, mut write_s) = (0.0, 0.0);
        for job in jobs {
            match job {
                Job::Batch(p) => {
                    let t = Instant::now();
                    let labels = self.label(&p, &mut scratch)?;
                    soft_s += t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    for (row, position, label, soft) in &labels {
                        builder.push(*row, *position, *label, soft);
                    }
                    man.totals.positions += labels.len() as u64;
                    man.totals.rows += p.rows.len() as u64;
                    for r in &p.rows {
                        if !p.meta.iter().any(|m| m.0 == *r) {
                            man.totals.rows_without_positions += 1;
                        }
                    }
                    let _ = self.recycle.send(p.logits); // the main thread may have finished
                    write_s += t.elapsed().as_secs_f64();
                }
                Job::Flush { index, first_row, rows } => {
                    let t = Instant::now();
                    let info = builder.write(self.out, &manifest::ShardStamp::of(&man, index, first_row, rows))?;
                    finish_shard(self.out, &self.partial_name, &mut man, info)?;
                    if let Some(hook) = &self.on_shard {
                        (hook.0)()?;
                    }
                    write_s += t.elapsed().as_secs_f64();
                }
            }
        }
        Ok((man, soft_s, write_s))
    }

    fn label(&self, p: &Pending, scratch: &mut [TopKScratch]) -> Result<Vec<Labelled>> {
        let vocab = self.vocab;
        let starts: Vec<usize> = (0..p.meta.len()).collect();
        let soft = soft_labels(&p.logits, vocab, self.selectable, &starts, self.temperature, self.top_k, scratch).map_err(|(i, col)| {
            let (row, position, _) = p.meta[i];
            let at = if p.meta.iter().all(|m| m.1 == 0) { format!("row {row}") } else { format!("row {row}, position {position}") };
            Error::teacher(&self.teacher_path, format!("{at}: logit {col} is not finite ({})", p.logits[i * vocab + col]))
        })?;
        Ok(p.meta
            .iter()
            .zip(soft)
            .enumerate()
            .map(|(i, (&(row, position, hard), s))| {
                let logits = &p.logits[i * vocab..(i + 1) * vocab];
                let h = hard.map(|h| (h, label_logprob(logits, &s, h, self.temperature).unwrap_or(f32::NAN)));
                (row, position, h, s)
            })
            .collect())
    }
}

/// `log p_T(label)` from a row's soft label: every log-prob is `logit / T - log Z`.
fn label_logprob(logits: &[f32], soft: &SoftLabel, label: i64, temperature: f32) -> Option<f32> {
    let l = usize::try_from(label).ok().filter(|&l| l < logits.len())?;
    let top = soft.ids[0] as usize;
    Some(soft.logprobs[0] + (logits[l] - logits[top]) / temperature)
}

/// Top-k (among ids `0..selectable`) of many rows of logits, split over `scratch.len()`
/// threads.
///
/// # Shapes
/// - `logits`: `[n, vocab]` (row `i` at `starts[i] * vocab`)
fn soft_labels(
    logits: &[f32],
    vocab: usize,
    selectable: usize,
    starts: &[usize],
    temperature: f32,
    k: usize,
    scratch: &mut [TopKScratch],
) -> std::result::Result<Vec<SoftLabel>, (usize, usize)> {
    let mut out: Vec<SoftLabel> =
        (0..starts.len()).map(|_| SoftLabel { ids: Vec::new(), logprobs: Vec::new(), tail_logmass: 0.0, entropy: 0.0 }).collect();
    let threads = scratch.len().max(1).min(starts.len().max(1));
    let per = starts.len().div_ceil(threads).max(1);
    let results: Vec<std::result::Result<(), (usize, usize)>> = std::thread::scope(|s| {
        let handles: Vec<_> = out
            .chunks_mut(per)
            .zip(starts.chunks(per))
            .zip(scratch.iter_mut())
            .enumerate()
            .map(|(c, ((outs, sts), sc))| {
                s.spawn(move || {
                    for (j, (o, &st)) in outs.iter_mut().zip(sts).enumerate() {
                        topk::soft_top_k_among(&logits[st * vocab..(st + 1) * vocab], selectable, temperature, k, sc, o)
                            .map_err(|col| (c * per + j, col))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("top-k worker panicked")).collect()
    });
    for r in results {
        r?;
    }
    Ok(out)
}

fn numeric_batch(
    cfg: &CacheTeacherConfig,
    teacher: &mut Teacher,
    batch: &[Row],
    columns: &[Column],
    hard: &[Option<i64>],
) -> Result<Pending> {
    let widths = teacher.feature_columns();
    let mut feeds: Vec<(String, Vec<f32>, usize)> = Vec::new();
    for (slot, c) in columns.iter().enumerate().filter(|(_, c)| c.kind == Kind::Numbers) {
        let declared = widths.iter().find(|(n, _)| *n == c.name).and_then(|(_, w)| *w);
        let mut width = declared;
        let mut values = Vec::new();
        for r in batch {
            let v = match &r.fields[slot] {
                Field::Numbers(v) => v,
                _ => return Err(Error::data(&cfg.data, format!("row {}, column `{}`: value is missing (null)", r.index, c.name))),
            };
            let w = *width.get_or_insert(v.len());
            if v.len() != w {
                return Err(Error::data(
                    &cfg.data,
                    format!("row {}, column `{}`: {} values, but the teacher's input expects {w}", r.index, c.name, v.len()),
                ));
            }
            if let Some(bad) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::data(&cfg.data, format!("row {}, column `{}`: value {bad} is {}", r.index, c.name, v[bad])));
            }
            values.extend_from_slice(v);
        }
        feeds.push((c.name.clone(), values, width.unwrap_or(0)));
    }
    check_labels(cfg, batch, hard, teacher.vocab_size)?;
    per_row_pending(teacher, &TeacherBatch::Numeric { batch: batch.len(), columns: &feeds }, batch, hard)
}

/// Every hard label must be one of the teacher's classes.
fn check_labels(cfg: &CacheTeacherConfig, batch: &[Row], hard: &[Option<i64>], vocab: usize) -> Result<()> {
    for (r, h) in batch.iter().zip(hard) {
        if let Some(h) = h
            && !(0..vocab as i64).contains(h)
        {
            return Err(Error::data(
                &cfg.data,
                format!("row {}: label {h} is outside the teacher's {vocab} classes (0..{vocab})", r.index),
            ));
        }
    }
    Ok(())
}

/// Run a classifier teacher: logits `[batch, classes]`, one cached soft label per row.
fn per_row_pending(teacher: &mut Teacher, input: &TeacherBatch<'_>, batch: &[Row], hard: &[Option<i64>]) -> Result<Pending> {
    let vocab = teacher.vocab_size;
    let teacher_path = teacher.path().to_path_buf();
    teacher.run(input, |shape, logits| {
        if shape != [batch.len(), vocab] {
            return Err(Error::teacher(&teacher_path, format!("logits have shape {shape:?}, expected [{}, {vocab}]", batch.len())));
        }
        Ok(Pending {
            logits: logits.to_f32_vec(),
            meta: batch.iter().zip(hard).map(|(r, h)| (r.index, 0u32, *h)).collect(),
            rows: batch.iter().map(|r| r.index).collect(),
        })
    })
}

/// Rows in shard `j` of a dataset of `total` rows cut into shards of `per`: shard `j`
/// always holds rows `j * per ..`, the last one fewer.
fn shard_len(j: usize, per: u64, total: u64) -> u64 {
    per.min(total - j as u64 * per)
}

/// One batch as the reader hands it to the teacher.
struct Prepared {
    rows: Vec<Row>,
    hard: Vec<Option<i64>>,
    /// Token models: the padded batch.
    tokens: Option<Tokens>,
}

/// A tokenized, right-padded batch.
struct Tokens {
    seq: usize,
    /// `[batch, seq]` each.
    ids: Vec<i64>,
    mask: Vec<i64>,
    /// LM: (flat index into `[batch, seq]`, dataset row, position, hard label = next token)
    /// of each cached position; position p predicts token p + 1.
    wanted: Vec<(usize, u64, u32, i64)>,
    count: u64,
    truncated: u64,
}

enum Feed {
    Batch(Prepared),
    /// Every row of shard `index` has been sent.
    EndOfShard {
        index: usize,
        first_row: u64,
        rows: u64,
    },
}

/// The reading side of stage one: rows of the planned shards, in batches that never cross
/// a shard boundary (so shards depend on rows only), tokenized for token models.
struct Reader<'a> {
    cfg: &'a CacheTeacherConfig,
    tokens: Option<(&'a Tokenizer, &'a TextColumns)>,
    label_slot: Option<usize>,
    vocab: usize,
    classify: bool,
    plan: &'a [usize],
    rows_per_shard: u64,
    total_rows: u64,
}

impl Reader<'_> {
    /// Sends the batches; a failure is sent as the last item. Returns the seconds spent
    /// reading and tokenizing.
    fn run(self, mut rows: Box<dyn Iterator<Item = Result<Row>> + Send>, feed: std::sync::mpsc::SyncSender<Result<Feed>>) -> f64 {
        let mut seconds = 0.0;
        if let Err(e) = self.send_all(&mut rows, &feed, &mut seconds) {
            let _ = feed.send(Err(e));
        }
        seconds
    }

    fn send_all(
        &self,
        rows: &mut Box<dyn Iterator<Item = Result<Row>> + Send>,
        feed: &std::sync::mpsc::SyncSender<Result<Feed>>,
        seconds: &mut f64,
    ) -> Result<()> {
        let (cfg, per) = (self.cfg, self.rows_per_shard);
        let mut cursor = 0u64; // next dataset row the reader would return
        for &j in self.plan {
            let shard_first_row = j as u64 * per;
            let shard_len = shard_len(j, per, self.total_rows);
            let t = Instant::now();
            // Skip the rows of shards that are finished or belong to other workers.
            for row in rows.by_ref().take((shard_first_row - cursor) as usize) {
                row?;
            }
            *seconds += t.elapsed().as_secs_f64();
            cursor = shard_first_row;
            let mut shard_rows = 0u64;
            while shard_rows < shard_len {
                let t = Instant::now();
                let room = (shard_len - shard_rows).min(cfg.batch_size as u64) as usize;
                let batch = rows.by_ref().take(room).collect::<Result<Vec<Row>>>()?;
                if batch.is_empty() {
                    break;
                }
                cursor += batch.len() as u64;
                let hard: Vec<Option<i64>> = batch
                    .iter()
                    .map(|r| match self.label_slot.map(|s| &r.fields[s]) {
                        Some(Field::Label(l)) => Some(*l),
                        _ => None,
                    })
                    .collect();
                let tokens = match self.tokens {
                    None => None,
                    Some((ts, cols)) => {
                        if self.classify {
                            check_labels(cfg, &batch, &hard, self.vocab)?;
                        }
                        Some(tokenize_batch(cfg, ts, cols, &batch, self.vocab, self.classify)?)
                    }
                };
                *seconds += t.elapsed().as_secs_f64();
                shard_rows += batch.len() as u64;
                if feed.send(Ok(Feed::Batch(Prepared { rows: batch, hard, tokens }))).is_err() {
                    return Ok(()); // the main thread stopped; it reports why
                }
            }
            if shard_rows > 0 && feed.send(Ok(Feed::EndOfShard { index: j, first_row: shard_first_row, rows: shard_rows })).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Tokenize and right-pad one batch (pad id, attention mask 0).
fn tokenize_batch(
    cfg: &CacheTeacherConfig,
    ts: &Tokenizer,
    cols: &TextColumns,
    batch: &[Row],
    vocab: usize,
    classify: bool,
) -> Result<Tokens> {
    let text = cfg.text.as_ref().expect("token batch has text settings");
    let mut truncated = 0u64;
    let mut seqs: Vec<(Vec<u32>, Vec<usize>)> = Vec::with_capacity(batch.len()); // (ids, cached positions)
    for r in batch {
        let t = text::tokenize(ts, cols, &r.fields, r.index, &cfg.data)?;
        if t.truncated {
            if text.long == LongSequences::Refuse {
                return Err(Error::data(
                    &cfg.data,
                    format!("row {}: longer than max_seq_len = {} tokens (long_sequences = \"refuse\")", r.index, text.max_seq_len),
                ));
            }
            truncated += 1;
        }
        if !classify && let Some(&bad) = t.ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::Tokenizer {
                path: text.tokenizer.clone(),
                message: format!("row {}: token id {bad} is outside the teacher's vocabulary of {vocab}", r.index),
            });
        }
        let positions = t.positions();
        seqs.push((t.ids, positions));
    }
    let seq = seqs.iter().map(|(s, _)| s.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![ts.pad_id as i64; batch.len() * seq];
    let mut mask = vec![0i64; batch.len() * seq];
    let mut count = 0u64;
    for (b, (s, _)) in seqs.iter().enumerate() {
        for (t, &id) in s.iter().enumerate() {
            ids[b * seq + t] = id as i64;
            mask[b * seq + t] = 1;
        }
        count += s.len() as u64;
    }
    let mut wanted = Vec::new();
    if !classify {
        for (b, (s, positions)) in seqs.iter().enumerate() {
            for &p in positions {
                wanted.push((b * seq + p, batch[b].index, p as u32, s[p + 1] as i64));
            }
        }
    }
    Ok(Tokens { seq, ids, mask, wanted, count, truncated })
}

/// Run a causal-LM teacher and copy the logits of the cached positions into `buffer`.
///
/// # Shapes
/// - logits from the teacher: `[batch, seq, vocab]`; `Pending::logits`: `[positions, vocab]`
fn lm_pending(teacher: &mut Teacher, batch: &[Row], t: &Tokens, mut buffer: Vec<f32>) -> Result<Pending> {
    let vocab = teacher.vocab_size;
    let teacher_path = teacher.path().to_path_buf();
    let teacher_output = &teacher.output_name().to_string();
    teacher.run(&TeacherBatch::Tokens { batch: batch.len(), seq: t.seq, ids: &t.ids, mask: &t.mask }, |shape, logits| {
        if shape.len() == 3 && shape[1] == 1 && t.seq > 1 {
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            return Err(Error::teacher(&teacher_path, crate::teacher::model::last_position_only(teacher_output, &dims)));
        }
        if shape != [batch.len(), t.seq, vocab] {
            return Err(Error::teacher(
                &teacher_path,
                format!("logits have shape {shape:?}, expected [{}, {}, {vocab}]", batch.len(), t.seq),
            ));
        }
        buffer.clear();
        buffer.reserve(t.wanted.len() * vocab);
        for w in &t.wanted {
            logits.extend_f32(w.0 * vocab..(w.0 + 1) * vocab, &mut buffer);
        }
        Ok(Pending {
            logits: buffer,
            meta: t.wanted.iter().map(|w| (w.1, w.2, Some(w.3))).collect(),
            rows: batch.iter().map(|r| r.index).collect(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shard j holds rows j * per .. (j + 1) * per, the last one what is left: 1197 rows in
    /// shards of 500 are 500, 500, 197; an exact multiple has no short shard.
    #[test]
    fn shards_tile_the_rows() {
        assert_eq!((0..3).map(|j| shard_len(j, 500, 1197)).collect::<Vec<_>>(), [500, 500, 197]);
        assert_eq!((0..2).map(|j| shard_len(j, 600, 1200)).collect::<Vec<_>>(), [600, 600]);
        assert_eq!(shard_len(0, 1024, 5), 5);
    }
}

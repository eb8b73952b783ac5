//! The command line: the subcommands and the flags that belong to a run rather than to its
//! settings (`--pipeline`, `--quiet`, `--resume`, ...). Each stage's settings are declared
//! once, in `config` (clap and serde on one struct), and flattened in here. It calls the
//! library and prints results to stdout (progress and warnings go to stderr).

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use distill::config::{CacheSettings, GenerateSettings, PipelineFile, TrainSettings, merge};
use distill::stage::{self, RunOptions};
use distill::student::StudentSpec;
use distill::train::TrainOptions;
use distill::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "distill",
    term_width = 100,
    version,
    about = "Knowledge distillation with an offline logit cache",
    long_about = "Knowledge distillation with an offline logit cache.\n\n\
        Stage one, `cache-teacher`, runs a frozen ONNX teacher over the training data and \
        stores the top-k of its temperature-softened distribution (plus the exact mass \
        outside the top-k) in zstd Parquet shards with a manifest. Stage two trains a small \
        student from that cache alone. `inspect` and `verify` read a cache.",
    after_help = "Examples:\n  \
        distill cache-teacher --teacher data/digits/teacher.onnx --data data/digits/train.parquet --out cache/digits --temperature 2\n  \
        distill cache-teacher --teacher data/lm/teacher.onnx --tokenizer data/lm/tokenizer.json \\\n      \
        --data data/lm/train.jsonl --prompt-column prompt --completion-column completion --top-k 64 --temperature 2 --out cache/lm\n  \
        distill inspect cache/lm\n  \
        distill run pipelines/lm.toml"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Stage one: run the frozen teacher over the data and write the top-k soft-label cache.
    ///
    /// Rerunning the same command after an interruption resumes: finished shards are
    /// kept (after checking their checksums) and only the rest is computed.
    CacheTeacher(CacheTeacherArgs),
    /// Sequence-level distillation data: the teacher completes the prompts (greedy, or
    /// sampled with --temperature and --top-p, seeded per row, sample and step), and the
    /// logits that chose each token are cached as its soft label (one pass, no second run).
    ///
    /// Writes OUT/generated.parquet (prompt, completion, prompt_ids, completion_ids,
    /// stop_reason, row, sample) and OUT/cache, a cache of the generated positions over the
    /// token ids: train with `train-student --cache OUT/cache --data OUT/generated.parquet`.
    /// A with-past export decodes with its KV cache; any other causal-LM export reruns each
    /// sequence per new token (slower). Rerunning the same command after an interruption
    /// resumes after the last finished shard.
    Generate(GenerateArgs),
    /// Print a cache's manifest summary and statistics read from its shards.
    Inspect {
        #[command(flatten)]
        cache: CacheArg,
        /// Print JSON instead of the report.
        #[arg(long)]
        json: bool,
    },
    /// Combine the parts of a sharded capture (cache-teacher --part I/N) into one cache:
    /// refuses gaps, overlaps, missing or unfinished parts, and parts made with other settings.
    Merge {
        /// Directory of the merged cache (may be the directory the parts wrote into).
        #[arg(long, value_name = "CACHE_DIR")]
        out: PathBuf,
        /// Directories holding part manifests and their shards.
        #[arg(required = true, value_name = "PART_DIR")]
        parts: Vec<PathBuf>,
    },
    /// Draw training runs (their metrics.csv: loss, KL, CE, learning rate; one curve per run)
    /// and a cache's kept-mass and entropy histograms into one SVG file.
    Report {
        /// train-student run directories, overlaid (e.g. a distilled and a hard-label-only run).
        #[arg(required = true, value_name = "RUN_DIR")]
        runs: Vec<PathBuf>,
        /// A cache whose histograms to draw.
        #[arg(long, value_name = "CACHE_DIR")]
        cache: Option<PathBuf>,
        /// The SVG file to write.
        #[arg(long, value_name = "FILE.svg")]
        out: PathBuf,
    },
    /// Check every shard of a cache against the checksums in its manifest.
    Verify {
        #[command(flatten)]
        cache: CacheArg,
    },
    /// Stage two: train a Burn student from a cache and the hard labels (the teacher is never loaded).
    ///
    /// Checkpoints every --checkpoint-every steps and at the end; --resume continues the
    /// run in --out from its last checkpoint with the same batches.
    TrainStudent(TrainArgs),
    /// Make a smaller student from a Hugging Face checkpoint by copying weights (DistilBERT's
    /// initialisation): the embeddings, the chosen blocks, the final norm and the head.
    ///
    /// No model is run: the blocks are renumbered and written with their dtype; the
    /// tokenizer and side files are copied. Train the result with --student hf:OUT.
    InitStudent {
        /// A Hugging Face checkpoint directory (llama, qwen2, qwen3, mistral, bert, distilbert).
        #[arg(long, value_name = "HF_DIR")]
        from: PathBuf,
        /// The blocks to keep, ascending, e.g. 0,2,4,6.
        #[arg(long, value_name = "I,J,...", value_delimiter = ',', required = true)]
        layers: Vec<usize>,
        /// The new checkpoint's directory (new or empty; never --from or inside it).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace a checkpoint already in --out (its weight files are removed first).
        #[arg(long)]
        overwrite: bool,
    },
    /// Run a student over data and write its raw logits as JSONL (one line per row).
    ///
    /// The student is a train-student run directory or a Hugging Face checkpoint
    /// directory (config.json + model.safetensors + tokenizer.json), e.g. RUN_DIR/hf.
    Predict {
        /// Run directory of train-student, or a Hugging Face checkpoint directory.
        #[arg(long, value_name = "DIR")]
        student: PathBuf,
        /// Rows to run on (Parquet or JSONL).
        #[arg(long, value_name = "DATA")]
        data: PathBuf,
        /// Output JSONL: {"row", "tokens", "logits"} per row.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Text column (Hugging Face checkpoints; a run directory knows its columns).
        #[arg(long, default_value = "text")]
        text_column: String,
        /// Longest sequence fed to a Hugging Face checkpoint (longer rows are cut).
        #[arg(long, default_value_t = 512)]
        max_seq_len: usize,
        /// Only the first N rows.
        #[arg(long, value_name = "N")]
        max_rows: Option<u64>,
    },
    /// Evaluate a student on held-out data: accuracy (classifier) or perplexity (LM); with a
    /// cache of that data, top-1 agreement with the teacher and the teacher's own figures.
    ///
    /// The student is a train-student run directory or a Hugging Face checkpoint directory
    /// (measure the pretrained student before distilling it): with --cache the checkpoint
    /// reads the data as the cache did (its columns, positions and tokenizer); without it,
    /// --text-column, and `label` for a classifier.
    Eval {
        /// Run directory of train-student, or a Hugging Face checkpoint directory.
        #[arg(long, value_name = "DIR")]
        student: PathBuf,
        /// Held-out data with the training data's columns.
        #[arg(long, value_name = "DATA")]
        data: PathBuf,
        /// A cache of the same data (any k, T = 1 for the teacher's own perplexity): top-1
        /// agreement, and the teacher's figures beside the student's.
        #[arg(long, value_name = "CACHE_DIR")]
        cache: Option<PathBuf>,
        /// Text column (Hugging Face checkpoints without --cache).
        #[arg(long, default_value = "text")]
        text_column: String,
        /// Longest sequence fed to a Hugging Face checkpoint without --cache (longer rows are cut).
        #[arg(long, default_value_t = 512)]
        max_seq_len: usize,
        /// Print JSON (with a `teacher` object when --cache is given).
        #[arg(long)]
        json: bool,
    },
    /// Run a pipeline file: cache the teacher, train the distilled and the hard-label-only
    /// students for each seed, evaluate all three on the held-out data, print a table.
    Run {
        /// A pipeline file, e.g. pipelines/lm.toml.
        pipeline: PathBuf,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
        /// Replace an existing cache made with other settings.
        #[arg(long)]
        overwrite: bool,
        /// Path of libonnxruntime.so (else ORT_DYLIB_PATH, else python3's onnxruntime).
        #[arg(long, value_name = "PATH")]
        ort_lib: Option<PathBuf>,
    },
}

/// The cache a command reads, given as `CACHE_DIR` or as `--cache CACHE_DIR` (the form
/// eval and report take).
#[derive(Args, Debug)]
struct CacheArg {
    /// The cache directory (or object-storage URL).
    #[arg(value_name = "CACHE_DIR", required_unless_present = "cache_flag", conflicts_with = "cache_flag")]
    cache: Option<PathBuf>,
    /// The same, as a flag.
    #[arg(long = "cache", id = "cache_flag", value_name = "CACHE_DIR")]
    cache_flag: Option<PathBuf>,
}

impl CacheArg {
    fn path(self) -> PathBuf {
        self.cache.or(self.cache_flag).expect("clap requires CACHE_DIR or --cache")
    }
}

/// `--student SPEC`, refused where it is read.
fn parse_student(s: &str) -> std::result::Result<StudentSpec, String> {
    StudentSpec::parse(s).map_err(|e| match e {
        distill::Error::Config(m) => m,
        e => e.to_string(),
    })
}

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
struct TrainArgs {
    /// Read settings from a pipeline file's [student] and [train]; flags override it.
    #[arg(long, value_name = "FILE")]
    pipeline: Option<PathBuf>,
    /// Student: `mlp:hidden=64,64`, `encoder:d_model=64,layers=2`,
    /// `decoder:d_model=64,layers=2,heads=2,d_ff=172` or `hf:DIR` (a Hugging Face checkpoint).
    #[arg(long, value_name = "SPEC", value_parser = parse_student)]
    student: Option<StudentSpec>,
    #[command(flatten)]
    settings: TrainSettings,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl TrainArgs {
    fn config(&self) -> Result<distill::config::TrainConfig> {
        let flags = self.settings.clone();
        let (settings, file_student) = match &self.pipeline {
            Some(p) => {
                let file = PipelineFile::load(p)?;
                let defaults = file.train_settings();
                (merge(flags, defaults), file.student)
            }
            None => (flags, None),
        };
        let student = match (&self.student, file_student) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => s,
            (None, None) => {
                return Err(distill::Error::Config("train.student is required (--student SPEC or [student] in the pipeline)".into()));
            }
        };
        settings.validate(student)
    }
}

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
struct CacheTeacherArgs {
    /// Read settings from a pipeline file's [cache] table; flags given here override it.
    #[arg(long, value_name = "FILE")]
    pipeline: Option<PathBuf>,
    #[command(flatten)]
    settings: CacheSettings,
    /// Path of libonnxruntime.so (else ORT_DYLIB_PATH, else python3's onnxruntime package).
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// Replace an existing cache in --out made with other settings.
    #[arg(long)]
    overwrite: bool,
    /// No progress bar or warnings on stderr.
    #[arg(long)]
    quiet: bool,
}

impl CacheTeacherArgs {
    fn settings(&self) -> Result<CacheSettings> {
        let flags = self.settings.clone();
        Ok(match &self.pipeline {
            Some(p) => merge(flags, PipelineFile::load(p)?.cache),
            None => flags,
        })
    }
}

#[derive(clap::Args, Debug)]
struct GenerateArgs {
    /// Read settings from a pipeline file's [generate] table; flags given here override it.
    #[arg(long, value_name = "FILE")]
    pipeline: Option<PathBuf>,
    #[command(flatten)]
    settings: GenerateSettings,
    /// Path of libonnxruntime.so (else ORT_DYLIB_PATH, else python3's onnxruntime package).
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// Replace an existing output in --out made with other settings.
    #[arg(long)]
    overwrite: bool,
    /// No progress bar or notes on stderr.
    #[arg(long)]
    quiet: bool,
}

impl GenerateArgs {
    fn settings(&self) -> Result<GenerateSettings> {
        let flags = self.settings.clone();
        Ok(match &self.pipeline {
            Some(p) => match PipelineFile::load(p)?.generate {
                Some(file) => merge(flags, file),
                None => return Err(distill::Error::Config(format!("{}: has no [generate] table", p.display()))),
            },
            None => flags,
        })
    }
}

fn print_generate_summary(s: &stage::generate::GenerateSummary, quiet: bool) {
    if !quiet {
        for w in &s.warnings {
            eprintln!("warning: {w}");
        }
    }
    let how = if s.kv_cache { "with the KV cache" } else { "rerunning each sequence" };
    let rate = if s.decode_seconds > 0.0 {
        format!(
            ", {:.1} tokens/s ({:.0} % of the time on soft labels and picks)",
            s.tokens_this_run as f64 / s.decode_seconds,
            100.0 * s.label_seconds / s.decode_seconds
        )
    } else {
        String::new()
    };
    println!(
        "{}: {} sequences, {} tokens generated ({} ended at the end-of-sequence token), decoded {how}{rate}; {:.1}s",
        s.dataset.display(),
        s.sequences,
        s.tokens,
        s.stopped_at_eos,
        s.seconds
    );
    let c = &s.cache;
    let resumed = if c.resumed_shards > 0 { format!(" (resumed after {} finished shards)", c.resumed_shards) } else { String::new() };
    println!("{}: {} positions in {} shards ({} bytes){resumed}", c.dir.display(), c.positions, c.shards, c.bytes);
    if !quiet {
        for w in &c.warnings {
            eprintln!("warning: {w}");
        }
    }
}

fn print_cache_summary(s: &stage::CacheSummary, quiet: bool) {
    if !quiet {
        for w in &s.warnings {
            eprintln!("warning: {w}");
        }
    }
    if s.already_complete {
        println!(
            "{}: cache already complete ({} rows, {} positions, {} shards); nothing to do",
            s.dir.display(),
            s.rows,
            s.positions,
            s.shards
        );
        return;
    }
    let rate = if s.seconds > 0.0 { s.rows_computed as f64 / s.seconds } else { 0.0 };
    let mut line = format!(
        "{}: cached {} rows, {} positions in {} shards ({} bytes) in {:.2}s, {:.1} rows/s",
        s.dir.display(),
        s.rows,
        s.positions,
        s.shards,
        s.bytes,
        s.seconds,
        rate
    );
    if s.tokens_computed > 0 {
        line.push_str(&format!(", {:.0} tokens/s", s.tokens_computed as f64 / s.seconds.max(1e-9)));
    }
    if s.resumed_shards > 0 {
        line.push_str(&format!(" (resumed after {} finished shards)", s.resumed_shards));
    }
    println!("{line}");
    let t = &s.timings;
    println!(
        "  time: teacher {:.2}s, soft labels {:.2}s, data+tokenize {:.2}s, encode+write {:.2}s",
        t.teacher, t.soft_labels, t.data, t.write
    );
}

/// Parse the command line and run it.
pub fn run(cli: Cli) -> Result<()> {
    let command: Vec<String> = std::env::args().collect();
    match cli.command {
        Command::CacheTeacher(args) => {
            let cfg = args.settings()?.validate()?;
            let opts = RunOptions { quiet: args.quiet, overwrite: args.overwrite, ort_lib: args.ort_lib.clone(), command, on_shard: None };
            let summary = stage::cache_teacher(&cfg, &opts)?;
            print_cache_summary(&summary, args.quiet);
        }
        Command::Generate(args) => {
            let cfg = args.settings()?.validate()?;
            let opts = RunOptions { quiet: args.quiet, overwrite: args.overwrite, ort_lib: args.ort_lib.clone(), command, on_shard: None };
            let s = stage::generate::generate(&cfg, &opts)?;
            print_generate_summary(&s, args.quiet);
        }
        Command::Report { runs, cache, out } => draw_report(&runs, cache.as_deref(), &out)?,
        Command::Inspect { cache, json } => {
            let cache = cache.path();
            let (manifest, stats) = stage::inspect(&cache)?;
            if json {
                let v = serde_json::json!({ "manifest": manifest, "statistics": stats });
                println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
            } else {
                print!("{}", stage::inspect::render(&cache, &manifest, &stats));
            }
        }
        Command::Merge { out, parts } => {
            let s = stage::merge::merge(&out, &parts, command)?;
            println!("{}: merged {} parts, {} shards, {} rows, {} positions", s.out.display(), s.parts, s.shards, s.rows, s.positions);
        }
        Command::Verify { cache } => {
            let cache = cache.path();
            let reader = distill::cache::CacheReader::open(&distill::store::local_copy(&cache)?)?;
            let mut n = 0;
            reader.verify(|_| n += 1)?;
            println!("{}: ok, {n} shards match their checksums", cache.display());
        }
        Command::TrainStudent(args) => {
            let cfg = args.config()?;
            let opts = TrainOptions { quiet: args.quiet, resume: args.resume, command };
            let s = distill::train::train_student(&cfg, &opts)?;
            print_train_summary(&s);
        }
        Command::InitStudent { from, layers, out, overwrite } => {
            let s = distill::student::hf::init::init_student(&from, &layers, &out, overwrite)?;
            let (n, of) = (s.layers.len(), s.layers_from);
            println!("{}: {n} of the {of} blocks ({:?}), {} tensors, {} bytes", s.out.display(), s.layers, s.tensors, s.bytes);
        }
        Command::Predict { student, data, out, text_column, max_seq_len, max_rows } => {
            let opts = stage::eval::PredictOptions { text_column, max_seq_len, max_rows };
            let (n, notes) = stage::eval::predict(&student, &data, &out, &opts)?;
            for note in notes {
                eprintln!("note: {note}");
            }
            println!("{}: logits of {n} rows", out.display());
        }
        Command::Eval { student, data, cache, text_column, max_seq_len, json } => {
            let opts = stage::eval::PredictOptions { text_column, max_seq_len, max_rows: None };
            evaluate(&student, &data, cache.as_deref(), &opts, json)?;
        }
        Command::Run { pipeline, quiet, overwrite, ort_lib } => {
            let file = PipelineFile::load(&pipeline)?;
            let opts = RunOptions { quiet, overwrite, ort_lib, command, on_shard: None };
            stage::pipeline::run(&file, &opts, &mut |step| print_step(step, quiet))?;
        }
    }
    Ok(())
}

/// `distill report`: the runs' curves (and the cache's histograms) drawn into `out`.
fn draw_report(runs: &[PathBuf], cache: Option<&Path>, out: &Path) -> Result<()> {
    let stats = cache.map(|c| stage::inspect(c).map(|(_, stats)| stats)).transpose()?;
    let skipped = stage::report::report(runs, stats.as_ref(), out)?;
    if skipped > 0 {
        eprintln!("note: {skipped} values of metrics.csv were not drawn (not finite, or beyond what an axis can span)");
    }
    println!("{}: {} runs{}", out.display(), runs.len(), if cache.is_some() { " and the cache's histograms" } else { "" });
    Ok(())
}

/// `distill eval`: the student's figures, and the teacher's from the cache, as text or JSON.
fn evaluate(student: &Path, data: &Path, cache: Option<&Path>, opts: &stage::eval::PredictOptions, json: bool) -> Result<()> {
    let r = stage::eval::eval_student(student, data, cache, opts)?;
    for note in &r.notes {
        eprintln!("note: {note}");
    }
    let teacher = cache.map(stage::eval::teacher_metrics).transpose()?;
    if json {
        let mut v = serde_json::to_value(&r).expect("serialises");
        if let Some(t) = &teacher {
            v["teacher"] = serde_json::to_value(t).expect("serialises");
        }
        println!("{v}");
        return Ok(());
    }
    println!("{}", render_report(&r));
    if let Some(t) = &teacher {
        println!("teacher (from the cache, at its temperature): {}", render_report(t));
    }
    Ok(())
}

/// One step of `distill run`, as the separate commands print it: what starts on stderr,
/// summaries, the cache's description, reports and the table on stdout.
fn print_step(step: stage::pipeline::Step<'_>, quiet: bool) {
    use stage::pipeline::Step;
    match step {
        Step::StageOne { command, teacher } => eprintln!("== stage one: {command} ({})", teacher.display()),
        Step::Generated(s) => print_generate_summary(s, quiet),
        Step::Cached(s) => print_cache_summary(s, quiet),
        Step::Inspected(text) => print!("{text}"),
        Step::TeacherCache(out) => eprintln!("== teacher on the held-out data: cache-teacher T = 1, k = 1 -> {}", out.display()),
        Step::Training { label, seed, run } => eprintln!("== stage two: {label}, seed {seed} -> {}", run.display()),
        Step::Trained(s) => print_train_summary(s),
        Step::Evaluated(r) => println!("  {}", render_report(r)),
        Step::Table(table) => println!("\n{table}"),
        Step::Drawn(picture) => println!("{}", picture.display()),
        Step::Warning(w) => eprintln!("warning: {w}"),
    }
}

fn print_train_summary(s: &distill::train::TrainSummary) {
    for n in &s.notes {
        eprintln!("note: {n}");
    }
    let resumed = s.resumed_from.map(|r| format!(" (resumed from step {r})")).unwrap_or_default();
    println!(
        "{}: trained {} steps{} in {:.1}s, {:.0} positions/s ({:.0} excluding data waits), final loss {:.4}, waited for data {:.1}% of the time (cache reads {:.1}%, on the loader thread)",
        s.out.display(),
        s.steps,
        resumed,
        s.seconds,
        s.positions_per_second,
        s.training_positions_per_second,
        s.final_loss,
        100.0 * s.data_wait_seconds / s.seconds.max(1e-9),
        100.0 * s.cache_read_seconds / s.seconds.max(1e-9)
    );
}

fn render_report(r: &stage::eval::EvalReport) -> String {
    let mut parts = Vec::new();
    if let Some(a) = r.accuracy {
        parts.push(format!("accuracy {:.4}", a));
    }
    if let Some(p) = r.perplexity {
        parts.push(format!("perplexity {:.3}", p));
    }
    if let Some(v) = r.nll {
        parts.push(format!("NLL {v:.4}"));
    }
    if let Some(v) = r.ece {
        parts.push(format!("ECE {v:.4}"));
    }
    if let Some(a) = r.top1_agreement {
        parts.push(format!("top-1 agreement with teacher {:.4}", a));
    }
    if let Some(v) = r.kl_to_teacher {
        parts.push(format!("KL to teacher {v:.4}"));
    }
    parts.push(format!("over {} positions", r.positions));
    parts.join(", ")
}

/// Print the error and its chain of causes.
pub fn report(e: &Error) {
    let top = e.to_string();
    eprintln!("error: {top}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        // Our messages already end with their cause; print only what they do not say.
        if !top.contains(&text) {
            eprintln!("  caused by: {text}");
        }
        source = s.source();
    }
}

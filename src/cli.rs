//! The command line: the only file that knows clap. It turns flags into the library's
//! typed settings, calls the library, and prints results to stdout (progress and
//! warnings go to stderr).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use distill::config::{CacheSettings, PipelineFile};
use distill::stage::{self, RunOptions};
use distill::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "distill",
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
    /// Print a cache's manifest summary and statistics read from its shards.
    Inspect {
        /// The cache directory.
        cache: PathBuf,
        /// Print JSON instead of the report.
        #[arg(long)]
        json: bool,
    },
    /// Check every shard of a cache against the checksums in its manifest.
    Verify {
        /// The cache directory.
        cache: PathBuf,
    },
    /// Run the stages a pipeline file describes (today: `[cache]`), then inspect the cache.
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

#[derive(Args, Debug)]
struct CacheTeacherArgs {
    /// Read settings from a pipeline file's [cache] table; flags given here override it.
    #[arg(long, value_name = "FILE")]
    pipeline: Option<PathBuf>,
    /// The frozen teacher, an ONNX model (classifier [batch, classes] or causal LM [batch, seq, vocab]).
    #[arg(long, value_name = "MODEL.onnx")]
    teacher: Option<PathBuf>,
    /// Training data: .parquet or .jsonl.
    #[arg(long, value_name = "DATA")]
    data: Option<PathBuf>,
    /// Output cache directory (created; resumed if it holds a partial cache of the same settings).
    #[arg(long, value_name = "CACHE_DIR")]
    out: Option<PathBuf>,
    /// tokenizer.json for text data (Hugging Face tokenizers format).
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,
    /// Column of plain text (every position is cached). Default `text` when a tokenizer is given.
    #[arg(long, value_name = "COLUMN")]
    text_column: Option<String>,
    /// Column of prompts; with --completion-column only completion positions are cached.
    #[arg(long, value_name = "COLUMN", requires = "completion_column")]
    prompt_column: Option<String>,
    /// Column of completions (appended to the prompt).
    #[arg(long, value_name = "COLUMN", requires = "prompt_column")]
    completion_column: Option<String>,
    /// Column of integer class labels, carried into the cache as hard labels (default `label` if present).
    #[arg(long, value_name = "COLUMN")]
    label_column: Option<String>,
    /// Which positions to cache for text: `completion` (default with prompt/completion) or `all`.
    #[arg(long, value_name = "WHICH")]
    positions: Option<String>,
    /// Entries kept per position [default: 64, or every class when fewer].
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Softening temperature T > 0 applied before the log-softmax [default: 1].
    #[arg(long, value_name = "T")]
    temperature: Option<f32>,
    /// Rows per teacher batch [default: 32].
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Dataset rows per Parquet shard [default: 1024]. Part of the cache's identity.
    #[arg(long, value_name = "N")]
    rows_per_shard: Option<u64>,
    /// Longest token sequence fed to the teacher [default: 512].
    #[arg(long, value_name = "N")]
    max_seq_len: Option<usize>,
    /// Longer sequences: `truncate` (default, counted and warned) or `refuse`.
    #[arg(long, value_name = "POLICY")]
    long_sequences: Option<String>,
    /// Feed ONNX input INPUT from dataset column COLUMN (numeric models; default: same name).
    #[arg(long = "input", value_name = "INPUT=COLUMN", value_parser = parse_pair)]
    inputs: Vec<(String, String)>,
    /// ONNX output holding the logits [default: `logits`, else the first output].
    #[arg(long, value_name = "NAME")]
    output: Option<String>,
    /// Storage of log-probs: `delta_u16` (compact, error <= 1/512 nat; default) or `f32` (lossless).
    #[arg(long, value_name = "ENCODING")]
    logprob_encoding: Option<String>,
    /// Threads for ONNX Runtime and the top-k [default: all cores].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
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

fn parse_pair(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| format!("expected INPUT=COLUMN, got `{s}`"))
}

impl CacheTeacherArgs {
    fn settings(&self) -> Result<CacheSettings> {
        let flags = CacheSettings {
            teacher: self.teacher.clone(),
            data: self.data.clone(),
            out: self.out.clone(),
            tokenizer: self.tokenizer.clone(),
            text_column: self.text_column.clone(),
            prompt_column: self.prompt_column.clone(),
            completion_column: self.completion_column.clone(),
            label_column: self.label_column.clone(),
            positions: self.positions.clone(),
            top_k: self.top_k,
            temperature: self.temperature,
            batch_size: self.batch_size,
            rows_per_shard: self.rows_per_shard,
            max_seq_len: self.max_seq_len,
            long_sequences: self.long_sequences.clone(),
            inputs: (!self.inputs.is_empty()).then(|| self.inputs.iter().cloned().collect()),
            output: self.output.clone(),
            logprob_encoding: self.logprob_encoding.clone(),
            threads: self.threads,
        };
        Ok(match &self.pipeline {
            Some(p) => flags.or(PipelineFile::load(p)?.cache),
            None => flags,
        })
    }
}

fn print_cache_summary(s: &stage::CacheSummary, quiet: bool) {
    if !quiet {
        for w in &s.warnings {
            eprintln!("warning: {w}");
        }
    }
    if s.already_complete {
        println!("{}: cache already complete ({} rows, {} positions, {} shards); nothing to do", s.dir.display(), s.rows, s.positions, s.shards);
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
            let opts = RunOptions { quiet: args.quiet, overwrite: args.overwrite, ort_lib: args.ort_lib.clone(), command };
            let summary = stage::cache_teacher(&cfg, &opts)?;
            print_cache_summary(&summary, args.quiet);
        }
        Command::Inspect { cache, json } => {
            let (manifest, stats) = stage::inspect(&cache)?;
            if json {
                let v = serde_json::json!({ "manifest": manifest, "statistics": stats });
                println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
            } else {
                print!("{}", stage::inspect::render(&cache, &manifest, &stats));
            }
        }
        Command::Verify { cache } => {
            let reader = distill::cache::CacheReader::open(&cache)?;
            let mut n = 0;
            reader.verify(|_| n += 1)?;
            println!("{}: ok, {n} shards match their checksums", cache.display());
        }
        Command::Run { pipeline, quiet, overwrite, ort_lib } => {
            let file = PipelineFile::load(&pipeline)?;
            let cfg = file.cache.validate()?;
            let opts = RunOptions { quiet, overwrite, ort_lib, command };
            eprintln!("== stage one: cache-teacher ({})", cfg.teacher.display());
            let summary = stage::cache_teacher(&cfg, &opts)?;
            print_cache_summary(&summary, quiet);
            let (manifest, stats) = stage::inspect(&summary.dir)?;
            print!("{}", stage::inspect::render(&summary.dir, &manifest, &stats));
        }
    }
    Ok(())
}

/// Print the error and its chain of causes.
pub fn report(e: &Error) {
    eprintln!("error: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
}

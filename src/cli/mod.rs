//! The command line: the subcommands, their flags ([`args`]) and how results are printed
//! ([`print`]): results on stdout; progress, warnings and notes on stderr. Each command
//! is one call into the library.

mod args;
mod print;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use distill::config::PipelineFile;
use distill::stage;
use distill::student::load::Reading;
use distill::train::TrainOptions;
use distill::{Error, Result};

use args::{CacheArg, CacheTeacherArgs, GenerateArgs, TeacherRunFlags, TrainArgs};

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
    ///
    /// With --student RUN_DIR|HF_DIR the student writes instead (on-policy data), decoded
    /// with its KV cache: OUT/generated.parquet gains completion_logprobs (its log-prob of
    /// each token) and there is no cache; score it with `cache-teacher --token-ids
    /// --prompt-column prompt_ids --completion-column completion_ids`.
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
        #[arg(long, default_value = Reading::TEXT_COLUMN)]
        text_column: String,
        /// Longest sequence fed to a Hugging Face checkpoint (longer rows are cut).
        #[arg(long, default_value_t = Reading::MAX_SEQ_LEN)]
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
        #[arg(long, default_value = Reading::TEXT_COLUMN)]
        text_column: String,
        /// Longest sequence fed to a Hugging Face checkpoint without --cache (longer rows are cut).
        #[arg(long, default_value_t = Reading::MAX_SEQ_LEN)]
        max_seq_len: usize,
        /// Print JSON (with a `teacher` object when --cache is given).
        #[arg(long)]
        json: bool,
    },
    /// Run a pipeline file: cache the teacher, train the distilled and the hard-label-only
    /// students for each seed, evaluate all three on the held-out data, print a table.
    ///
    /// With `[onpolicy]` (pipelines/lm-onpolicy.toml), each distilled student then goes on in
    /// rounds: it completes the prompts (generate --student), the teacher scores them
    /// (cache-teacher --token-ids), it trains on them; a second table scores every student on
    /// its own completions of the held-out prompts.
    Run {
        /// A pipeline file, e.g. pipelines/lm.toml.
        pipeline: PathBuf,
        #[command(flatten)]
        flags: TeacherRunFlags,
    },
}

/// Parse the command line and run it.
pub fn run(cli: Cli) -> Result<()> {
    let command: Vec<String> = std::env::args().collect();
    match cli.command {
        Command::CacheTeacher(args) => {
            let cfg = args.settings()?.validate()?;
            let summary = stage::cache_teacher(&cfg, &args.flags.options(command))?;
            print::cache_summary(&summary, args.flags.quiet);
        }
        Command::Generate(args) => {
            let cfg = args.settings()?.validate()?;
            let s = stage::generate::generate(&cfg, &args.flags.options(command))?;
            print::generate_summary(&s, args.flags.quiet);
        }
        Command::Report { runs, cache, out } => print::draw_report(&runs, cache.as_deref(), &out)?,
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
            print::train_summary(&s);
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
            print::evaluate(&student, &data, cache.as_deref(), &opts, json)?;
        }
        Command::Run { pipeline, flags } => {
            let file = PipelineFile::load(&pipeline)?;
            distill::pipeline::run(&file, &flags.options(command), &mut |step| print::step(step, flags.quiet))?;
        }
    }
    Ok(())
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

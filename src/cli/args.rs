//! The flags of the commands that are not settings: `--pipeline`, `--student`, `--resume`,
//! the teacher-running flags, and the two ways a cache is named. Each stage's settings are
//! declared once, in `distill::config`, and flattened in here.

use std::path::PathBuf;

use clap::Args;
use distill::Result;
use distill::config::{CacheSettings, GenerateSettings, PipelineFile, TrainSettings, merge};
use distill::stage::RunOptions;
use distill::student::StudentSpec;

/// The flags of a command that runs the teacher (cache-teacher, generate, run).
#[derive(Args, Debug)]
pub struct TeacherRunFlags {
    /// Path of libonnxruntime.so (else ORT_DYLIB_PATH, else python3's onnxruntime package).
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Replace an existing output in --out made with other settings.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bars, warnings or notes on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl TeacherRunFlags {
    /// The run's options; `command` is the command line, recorded in the manifest.
    pub fn options(&self, command: Vec<String>) -> RunOptions {
        RunOptions { quiet: self.quiet, overwrite: self.overwrite, ort_lib: self.ort_lib.clone(), command, on_shard: None }
    }
}

/// The cache a command reads, given as `CACHE_DIR` or as `--cache CACHE_DIR` (the form
/// eval and report take).
#[derive(Args, Debug)]
pub struct CacheArg {
    /// The cache directory (or object-storage URL).
    #[arg(value_name = "CACHE_DIR", required_unless_present = "cache_flag", conflicts_with = "cache_flag")]
    pub cache: Option<PathBuf>,
    /// The same, as a flag.
    #[arg(long = "cache", id = "cache_flag", value_name = "CACHE_DIR")]
    pub cache_flag: Option<PathBuf>,
}

impl CacheArg {
    pub fn path(self) -> PathBuf {
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
pub struct TrainArgs {
    /// Read settings from a pipeline file's [student] and [train]; flags override it.
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// Student: `mlp:hidden=64,64`, `encoder:d_model=64,layers=2`,
    /// `decoder:d_model=64,layers=2,heads=2,d_ff=172` or `hf:DIR` (a Hugging Face checkpoint).
    #[arg(long, value_name = "SPEC", value_parser = parse_student)]
    pub student: Option<StudentSpec>,
    #[command(flatten)]
    pub settings: TrainSettings,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
    pub fn config(&self) -> Result<distill::config::TrainConfig> {
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
pub struct CacheTeacherArgs {
    /// Read settings from a pipeline file's [cache] table; flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    #[command(flatten)]
    pub settings: CacheSettings,
    #[command(flatten)]
    pub flags: TeacherRunFlags,
}

impl CacheTeacherArgs {
    pub fn settings(&self) -> Result<CacheSettings> {
        let flags = self.settings.clone();
        Ok(match &self.pipeline {
            Some(p) => merge(flags, PipelineFile::load(p)?.cache),
            None => flags,
        })
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Read settings from a pipeline file's [generate] table; flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    #[command(flatten)]
    pub settings: GenerateSettings,
    #[command(flatten)]
    pub flags: TeacherRunFlags,
}

impl GenerateArgs {
    pub fn settings(&self) -> Result<GenerateSettings> {
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

//! `[train]` of a pipeline file and the flags of `train-student`: one declaration for both,
//! validated into [`TrainConfig`].

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::loss::{Divergence, HiddenLoss, HiddenPair, HiddenPairs, TailMode};
use crate::student::StudentSpec;
use crate::student::hf::ExportDtype;
use crate::student::select::{Globs, Trainable};

use super::check_temperature;

/// Defaults of stage two's settings (the `[default: ...]` of each flag's help says the same;
/// a test checks it).
pub mod defaults {
    pub const ALPHA: f32 = 0.5;
    pub const EPOCHS: usize = 10;
    pub const BATCH_SIZE: usize = 32;
    /// A fresh student's peak learning rate: measured on every pipeline in data/ (the
    /// distilled students beat the hard-label ones at it; 1e-3 left them undertrained).
    pub const LR: f64 = 3e-3;
    /// The peak learning rate of a `--student hf:` checkpoint (pretrained weights).
    pub const LR_PRETRAINED: f64 = 1e-3;
    /// A classifier (MLP, encoder) trains at least this many steps unless --epochs or
    /// --steps is given: a few hundred labelled rows are a few steps per epoch.
    pub const MIN_CLASSIFIER_STEPS: usize = 1000;
    pub const WEIGHT_DECAY: f64 = 0.0;
    pub const SEED: u64 = 0;
    pub const CHECKPOINT_EVERY: usize = 200;
    pub const SHUFFLE_WINDOW: usize = 4;
    pub const PREPARED_ROWS_MB: usize = 64;
    pub const HIDDEN_WEIGHT: f32 = 1.0;
    pub const DEVICE: super::TrainDevice = super::TrainDevice::Flex;
    pub const DIVERGENCE: crate::loss::Divergence = crate::loss::Divergence::ForwardKl;
    /// Bytes of a decoder's f32 logits one chunk of the loss may hold by default.
    pub const LOSS_CHUNK_BYTES: usize = 256 << 20;

    /// The default `--loss-chunk` for a `vocab`-wide LM head.
    pub fn loss_chunk_positions(vocab: usize) -> usize {
        (LOSS_CHUNK_BYTES / (4 * vocab.max(1))).max(1)
    }
}

/// Stage two's settings, every one optional until validation (a flag overrides the pipeline
/// file's key of the same name).
#[derive(Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// The cache written by cache-teacher [default in a pipeline: [cache] out].
    #[arg(long, value_name = "CACHE_DIR")]
    pub cache: Option<PathBuf>,
    /// The training data the cache was made from, as given to cache-teacher (file, directory
    /// or glob; every file's hash is checked) [default in a pipeline: [cache] data].
    #[arg(long, value_name = "DATA")]
    pub data: Option<PathBuf>,
    /// Run directory (config, metrics.csv, checkpoints, student.bpk/.safetensors/.json).
    #[arg(long, value_name = "RUN_DIR")]
    pub out: Option<PathBuf>,
    /// tokenizer.json [default: the copy inside the cache]; must be the cache's tokenizer.
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: Option<PathBuf>,
    /// Weight of the distillation term (0 = hard labels only) [default: 0.5].
    #[arg(long, value_name = "A", value_parser = super::finite_f32)]
    pub alpha: Option<f32>,
    /// Temperature of the distillation term in training [default: the cache's softening
    /// temperature]; another value needs --tail renormalize.
    #[arg(long, value_name = "T", value_parser = super::finite_f32)]
    pub temperature: Option<f32>,
    /// Mass outside the top-k: `bucket` (exact tail from the cache; default) or `renormalize`.
    #[arg(long, value_name = "MODE")]
    pub tail: Option<TailMode>,
    /// The divergence to the teacher over the cached support: `forward-kl` [default],
    /// `reverse-kl`, `jsd:BETA`, `tvd`, `skew-kl:LAMBDA` or `skew-rkl:LAMBDA` (docs/students.md).
    #[arg(long, value_name = "DIVERGENCE")]
    #[serde(default, with = "super::as_text")]
    pub divergence: Option<Divergence>,
    /// Passes over the data [default: 10, and for a classifier (mlp, encoder) as many more
    /// as make 1000 steps: a small labelled set is only a few batches per epoch].
    #[arg(long, value_name = "N")]
    pub epochs: Option<NonZeroUsize>,
    /// Stop after N optimizer steps (overrides --epochs).
    #[arg(long, value_name = "N")]
    pub steps: Option<NonZeroUsize>,
    /// Rows per batch [default: 32].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<NonZeroUsize>,
    /// Peak learning rate of AdamW (5% warm-up, cosine to 10%) [default: 3e-3 for a fresh
    /// student, 1e-3 for --student hf:].
    #[arg(long, value_name = "LR", value_parser = super::finite_f64)]
    pub lr: Option<f64>,
    /// AdamW weight decay, 0..=1 [default: 0].
    #[arg(long, value_name = "WD", value_parser = super::finite_f64)]
    pub weight_decay: Option<f64>,
    /// Seed of the initialisation and the shuffles [default: 0].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// `flex` (pure-Rust CPU, default), `tch` or `tch-cuda[:N]` (builds with --features tch).
    #[arg(long, value_name = "DEVICE")]
    #[serde(default, with = "super::as_text")]
    pub device: Option<TrainDevice>,
    /// Checkpoint every N steps [default: 200].
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<NonZeroUsize>,
    /// Train on the first N rows only.
    #[arg(long, value_name = "N")]
    pub max_rows: Option<NonZeroU64>,
    /// Use the first K cached entries per position (K <= the cache's k; the rest joins the tail).
    #[arg(long, value_name = "K")]
    pub top_k: Option<NonZeroUsize>,
    /// Shards whose rows are shuffled together [default: 4]: a larger window mixes rows from
    /// farther apart in the data (a file sorted by class or source needs one); memory holds
    /// this many shards.
    #[arg(long, value_name = "SHARDS")]
    pub shuffle_window: Option<NonZeroUsize>,
    /// Which weights train: `all` [default], `head` (the LM head, or pooler + classifier),
    /// `last:N` (the last N blocks, the final norm and the head) or comma-separated globs
    /// over parameter names (`blocks.*.q.weight`; the names are in docs/students.md). The
    /// others stay as they started and the optimizer keeps no state for them.
    #[arg(long = "train", value_name = "all|head|last:N|GLOB")]
    #[serde(rename = "train", default, with = "super::as_text")]
    pub train_params: Option<Trainable>,
    /// Weights that do not train (after --train): comma-separated globs over parameter names,
    /// e.g. `embed.*,blocks.0.*`.
    #[arg(long, value_name = "GLOB")]
    #[serde(default, with = "super::as_text")]
    pub freeze: Option<Globs>,
    /// Weights of the exported Hugging Face checkpoint (RUN/hf): `f32`, `bf16` or `f16`
    /// [default: the dtype the --student hf: checkpoint came in; f32 for a fresh student].
    #[arg(long, value_name = "DTYPE")]
    pub export_dtype: Option<ExportDtype>,
    /// Hidden-state distillation: pairs STUDENT_LAYER:TEACHER_OUTPUT, comma-separated, e.g.
    /// `2:pooled`: a learned linear map takes the student's hidden state after that layer
    /// (MLP: hidden layer 1..n; encoder, decoder: 0 = embeddings .. layers) to the cached
    /// teacher output (cache-teacher --hidden-states), at the first token (classifiers) or
    /// the cached positions (LMs); --hidden-loss between them joins the loss.
    #[arg(long, value_name = "LAYER:OUTPUT,...")]
    #[serde(default, with = "super::as_text")]
    pub hidden_layers: Option<HiddenPairs>,
    /// The hidden-state term: `cosine` [default] (1 - cosine similarity, DistilBERT's) or
    /// `mse` (mean squared error per value, TinyBERT's and TextBrewer's).
    #[arg(long, value_name = "cosine|mse")]
    pub hidden_loss: Option<HiddenLoss>,
    /// Weight of the hidden-state term beside the distillation loss, mean over the pairs
    /// [default: 1].
    #[arg(long, value_name = "W", value_parser = super::finite_f32)]
    pub hidden_weight: Option<f32>,
    /// A decoder's LM head and loss are computed this many positions at a time, so a batch's
    /// whole [positions, vocab] logits and their gradient never exist at once; the same loss
    /// [default: as many as make 256 MiB of f32 logits, 2^26 / vocabulary: 441 at 152k].
    #[arg(long, value_name = "POSITIONS")]
    pub loss_chunk: Option<NonZeroUsize>,
    /// Keep up to MB of prepared rows (token ids, or feature vectors) between epochs, so a
    /// cache larger than the shuffle window is tokenized once, not every epoch; 0 tokenizes
    /// every epoch. Results are the same either way [default: 64].
    #[arg(long, value_name = "MB")]
    pub prepared_rows_mb: Option<usize>,
}

/// Where the student trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainDevice {
    /// Burn's pure-Rust CPU backend.
    Flex,
    /// libtorch on the CPU (cargo feature `tch`).
    Tch,
    /// libtorch on CUDA device N (cargo feature `tch`).
    TchCuda(usize),
}

impl std::str::FromStr for TrainDevice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<TrainDevice, String> {
        match s {
            "flex" | "cpu" => Ok(TrainDevice::Flex),
            "tch" => Ok(TrainDevice::Tch),
            "tch-cuda" | "cuda" => Ok(TrainDevice::TchCuda(0)),
            s if s.starts_with("tch-cuda:") || s.starts_with("cuda:") => s
                .split_once(':')
                .and_then(|(_, n)| n.parse().ok())
                .map(TrainDevice::TchCuda)
                .ok_or_else(|| format!("`{s}`: expected tch-cuda:N")),
            other => Err(format!("must be `flex`, `tch` or `tch-cuda[:N]` (got `{other}`)")),
        }
    }
}

impl std::fmt::Display for TrainDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainDevice::Flex => f.write_str("flex"),
            TrainDevice::Tch => f.write_str("tch"),
            TrainDevice::TchCuda(n) => write!(f, "tch-cuda:{n}"),
        }
    }
}

/// Validated settings of stage two, in three parts: what is trained from and where it goes
/// (the top level), the loss, and the optimisation schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub cache: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub student: StudentSpec,
    pub device: TrainDevice,
    pub max_rows: Option<u64>,
    pub top_k: Option<usize>,
    /// Shards shuffled together.
    pub shuffle_window: usize,
    /// Megabytes of prepared rows kept between epochs.
    pub prepared_rows_mb: usize,
    /// `None`: the dtype the pretrained checkpoint came in (f32 for a fresh student).
    pub export_dtype: Option<ExportDtype>,
    /// Which parameters train, and the globs of those frozen after that.
    pub trainable: Trainable,
    pub freeze: Vec<String>,
    pub loss: LossConfig,
    pub schedule: Schedule,
}

/// The loss: `alpha * T^2 * divergence + (1 - alpha) * CE`, and the hidden-state term.
#[derive(Debug, Clone, PartialEq)]
pub struct LossConfig {
    pub alpha: f32,
    /// `None`: the cache's temperature.
    pub temperature: Option<f32>,
    pub tail: TailMode,
    pub divergence: Divergence,
    /// Positions per chunk of a decoder's head and loss (`None`: [`defaults::loss_chunk_positions`]).
    pub loss_chunk: Option<usize>,
    /// Hidden-state pairs (empty: no hidden-state term), their loss and its weight.
    pub hidden: Vec<HiddenPair>,
    pub hidden_loss: HiddenLoss,
    pub hidden_weight: f32,
}

/// How long and how fast the student trains, and when it is checkpointed.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// `None`: [`defaults::EPOCHS`], made longer for a classifier ([`defaults::MIN_CLASSIFIER_STEPS`]).
    pub epochs: Option<usize>,
    pub steps: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub checkpoint_every: usize,
}

/// The range of `alpha` and `weight_decay`.
const UNIT: std::ops::RangeInclusive<f64> = 0.0..=1.0;

impl TrainSettings {
    pub fn relative_to(mut self, base: &std::path::Path) -> TrainSettings {
        let fix = super::relative_to(base);
        self.cache = fix(self.cache);
        self.data = fix(self.data);
        self.out = fix(self.out);
        self.tokenizer = fix(self.tokenizer);
        self
    }

    pub fn validate(self, student: StudentSpec) -> Result<TrainConfig> {
        let need = |v: Option<PathBuf>, key: &str| {
            v.ok_or_else(|| Error::Config(format!("train.{key} is required (--{key} or `{key}` in the pipeline's [train])")))
        };
        let alpha = self.alpha.unwrap_or(defaults::ALPHA);
        if !UNIT.contains(&f64::from(alpha)) {
            return Err(Error::Config(format!("train.alpha must be in 0..=1 (got {alpha})")));
        }
        if let Some(t) = self.temperature {
            check_temperature("train.temperature", t)?;
        }
        let default_lr = if matches!(student, StudentSpec::Hf { .. }) { defaults::LR_PRETRAINED } else { defaults::LR };
        let lr = self.lr.unwrap_or(default_lr);
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(Error::Config(format!("train.lr must be > 0 (got {lr})")));
        }
        let weight_decay = self.weight_decay.unwrap_or(defaults::WEIGHT_DECAY);
        if !UNIT.contains(&weight_decay) {
            return Err(Error::Config(format!("train.weight_decay must be in 0..=1 (got {weight_decay})")));
        }
        let batch_size = self.batch_size.map_or(defaults::BATCH_SIZE, NonZeroUsize::get);
        let checkpoint_every = self.checkpoint_every.map_or(defaults::CHECKPOINT_EVERY, NonZeroUsize::get);
        let shuffle_window = self.shuffle_window.map_or(defaults::SHUFFLE_WINDOW, NonZeroUsize::get);
        let device = self.device.unwrap_or(defaults::DEVICE);
        student.validate()?;
        let hidden_weight = self.hidden_weight_checked()?;
        Ok(TrainConfig {
            cache: need(self.cache, "cache")?,
            data: need(self.data, "data")?,
            out: need(self.out, "out")?,
            tokenizer: self.tokenizer,
            student,
            device,
            max_rows: self.max_rows.map(NonZeroU64::get),
            top_k: self.top_k.map(NonZeroUsize::get),
            shuffle_window,
            prepared_rows_mb: self.prepared_rows_mb.unwrap_or(defaults::PREPARED_ROWS_MB),
            export_dtype: self.export_dtype,
            trainable: self.train_params.unwrap_or(Trainable::All),
            freeze: self.freeze.map(|g| g.0).unwrap_or_default(),
            loss: LossConfig {
                alpha,
                temperature: self.temperature,
                tail: self.tail.unwrap_or(TailMode::Bucket),
                divergence: self.divergence.unwrap_or(defaults::DIVERGENCE),
                loss_chunk: self.loss_chunk.map(NonZeroUsize::get),
                hidden: self.hidden_layers.map(|h| h.0).unwrap_or_default(),
                hidden_loss: self.hidden_loss.unwrap_or(HiddenLoss::Cosine),
                hidden_weight,
            },
            schedule: Schedule {
                epochs: self.epochs.map(NonZeroUsize::get),
                steps: self.steps.map(NonZeroUsize::get),
                batch_size,
                lr,
                weight_decay,
                seed: self.seed.unwrap_or(defaults::SEED),
                checkpoint_every,
            },
        })
    }

    fn hidden_weight_checked(&self) -> Result<f32> {
        if let (Some(loss), None) = (self.hidden_loss, &self.hidden_layers) {
            return Err(Error::Config(format!("train.hidden_loss = {loss:?} applies to --hidden-layers only")));
        }
        match self.hidden_weight {
            Some(w) if self.hidden_layers.is_none() => {
                Err(Error::Config(format!("train.hidden_weight = {w} applies to --hidden-layers only")))
            }
            Some(w) if w < 0.0 => Err(Error::Config(format!("train.hidden_weight must be >= 0 (got {w})"))),
            w => Ok(w.unwrap_or(defaults::HIDDEN_WEIGHT)),
        }
    }
}

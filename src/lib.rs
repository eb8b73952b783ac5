//! # distill — offline knowledge distillation with a logit cache
//!
//! Two stages, joined by a cache on disk:
//!
//! 1. **Stage one, `cache-teacher`** ([`stage::cache_teacher()`]): a frozen teacher (an ONNX
//!    model, run by ONNX Runtime through [`teacher`]) reads the training data ([`data`]) in
//!    batches; for every cached position the top-k of `log_softmax(logits / T)` over the full
//!    distribution and the exact log of the mass outside the top-k ([`teacher::topk`]) go into
//!    zstd Parquet shards plus a manifest ([`cache`]).
//! 2. **Stage two, `train-student`** ([`train`]): a Burn student ([`student`]:
//!    an MLP, a BERT-style encoder classifier or a Llama-style decoder, optionally started from
//!    and always exported as a Hugging Face checkpoint, [`student::hf`]) learns from the cache and the hard labels alone with the
//!    loss in [`loss`] (the Transformer students' layers are fused operations with written-out
//!    gradients, [`kernels`]); it reads the cache only through [`cache::CacheReader`] and
//!    never loads the teacher. [`stage::eval`] measures students (and the teacher, from a
//!    cache); [`stage::merge`] combines the parts of a sharded capture.
//!
//! The cache is the contract: self-describing ([`cache::Manifest`]), verifiable (checksums,
//! fingerprints), portable (plain Parquet, schema in [`cache::schema`]) and resumable; it may
//! live in a bucket ([`store`]: `s3://`, `gs://`, `az://`).
//!
//! ```no_run
//! use distill::config::CacheSettings;
//! use distill::stage::{cache_teacher, RunOptions};
//!
//! let cfg = CacheSettings {
//!     teacher: Some("data/digits/teacher.onnx".into()),
//!     data: Some("data/digits/train.parquet".into()),
//!     out: Some("/tmp/digits-cache".into()),
//!     top_k: std::num::NonZeroUsize::new(5),
//!     temperature: Some(2.0),
//!     ..Default::default()
//! }
//! .validate()?;
//! let summary = cache_teacher(&cfg, &RunOptions::default())?;
//! let reader = distill::cache::CacheReader::open(&summary.dir)?;
//! for shard in &reader.manifest().shards {
//!     for batch in reader.read_shard(shard, 4096)? {
//!         let batch = batch?; // rows, positions, hard labels, ids/logprobs [n * k], tail_logmass
//!         assert_eq!(batch.ids.len(), batch.len() * batch.k);
//!     }
//! }
//! # Ok::<(), distill::Error>(())
//! ```
//!
//! The stored log-probs are quantised; decoding is exact to half a step:
//!
//! ```
//! use distill::cache::schema::{decode_deltas, encode_deltas, DEFAULT_LOGPROB_STEP};
//! let logprobs = [-0.2f32, -1.7, -2.05];
//! let (mut deltas, mut back) = (Vec::new(), Vec::new());
//! encode_deltas(&logprobs, DEFAULT_LOGPROB_STEP, &mut deltas);
//! decode_deltas(logprobs[0], &deltas, DEFAULT_LOGPROB_STEP, &mut back);
//! assert!(logprobs.iter().zip(&back).all(|(a, b)| ((a - b).abs() as f64) <= DEFAULT_LOGPROB_STEP / 2.0 + 1e-6));
//! ```

pub mod cache;
pub mod chat;
pub mod config;
pub mod data;
pub mod error;
pub mod integrity;
pub mod kernels;
pub mod lock;
pub mod loss;
pub mod pipeline;
mod process;
pub mod progress;
mod rng;
pub mod stage;
pub mod store;
pub mod student;
pub mod teacher;
pub mod text;
pub mod train;
pub mod untrusted;

pub use error::{Error, Result};

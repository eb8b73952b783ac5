//! A training run's identity: every setting its result depends on. `--resume` continues
//! only from a checkpoint made with the same identity (the SHA-256 of its canonical JSON);
//! `config.json` records it with the command line.
//!
//! Built by destructuring every field of [`TrainConfig`], so a new setting does not compile
//! until someone decides whether the result depends on it. Keys only some runs have are
//! left out when unused, so earlier runs keep their identity (the test below holds the
//! JSON of each kind of run).

use std::path::Path;

use serde::Serialize;

use crate::config::{LossConfig, Schedule, TrainConfig, TrainDevice};
use crate::loss::{HiddenLoss, HiddenPair, TailMode};
use crate::student::select::Trainable;

use crate::student::StudentFile;

/// The identity: the student that is built, and the settings that train it.
#[derive(Debug, Serialize)]
pub(super) struct TrainIdentity<'a> {
    student: &'a StudentFile,
    train: TrainKeys<'a>,
}

#[derive(Debug, Serialize)]
struct TrainKeys<'a> {
    alpha: f32,
    /// The training temperature (the cache's unless given).
    temperature: f32,
    tail: TailMode,
    epochs: Option<usize>,
    steps: Option<usize>,
    batch_size: usize,
    lr: f64,
    weight_decay: f64,
    seed: u64,
    device: TrainDevice,
    checkpoint_every: usize,
    max_rows: Option<u64>,
    top_k: Option<usize>,
    shuffle_window: usize,
    cache: &'a Path,
    data: &'a Path,
    /// The weights a `--student hf:DIR` run starts from ([`crate::student::hf::weights_sha256`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    starting_weights: Option<String>,
    /// `--train`, when not every parameter trains (its Debug form, as first recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    train: Option<String>,
    /// `--divergence`, when not the forward KL.
    #[serde(skip_serializing_if = "Option::is_none")]
    divergence: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    freeze: &'a [String],
    #[serde(flatten)]
    hidden: Option<HiddenKeys<'a>>,
}

/// The hidden-state term, when there is one.
#[derive(Debug, Serialize)]
struct HiddenKeys<'a> {
    hidden_layers: &'a [HiddenPair],
    hidden_loss: HiddenLoss,
    hidden_weight: f32,
}

impl<'a> TrainIdentity<'a> {
    /// The identity of training `cfg`'s student (`student`) at temperature `train_t`, from
    /// the checkpoint weights `starting_weights` (their hash) when it starts from one.
    pub(super) fn of(cfg: &'a TrainConfig, student: &'a StudentFile, train_t: f32, starting_weights: Option<String>) -> TrainIdentity<'a> {
        let TrainConfig {
            cache,
            data,
            out: _,       // where the run goes
            tokenizer: _, // must be the cache's (checked)
            student: _,   // built into `student`, with `starting_weights`
            device,
            max_rows,
            top_k,
            shuffle_window,
            prepared_rows_mb: _, // a memory budget: the same batches either way
            export_dtype: _,     // how the result is written, not what it is
            trainable,
            freeze,
            loss,
            schedule,
        } = cfg;
        let LossConfig {
            alpha,
            temperature: _, // resolved in `train_t`
            tail,
            divergence,
            loss_chunk: _, // the same loss, computed in chunks
            hidden,
            hidden_loss,
            hidden_weight,
        } = loss;
        let Schedule { epochs, steps, batch_size, lr, weight_decay, seed, checkpoint_every } = schedule;
        TrainIdentity {
            student,
            train: TrainKeys {
                alpha: *alpha,
                temperature: train_t,
                tail: *tail,
                epochs: *epochs,
                steps: *steps,
                batch_size: *batch_size,
                lr: *lr,
                weight_decay: *weight_decay,
                seed: *seed,
                device: *device,
                checkpoint_every: *checkpoint_every,
                max_rows: *max_rows,
                top_k: *top_k,
                shuffle_window: *shuffle_window,
                cache,
                data,
                starting_weights,
                train: (*trainable != Trainable::All).then(|| format!("{trainable:?}")),
                divergence: (*divergence != crate::loss::Divergence::ForwardKl).then(|| divergence.to_string()),
                freeze,
                hidden: (!hidden.is_empty()).then_some(HiddenKeys {
                    hidden_layers: hidden,
                    hidden_loss: *hidden_loss,
                    hidden_weight: *hidden_weight,
                }),
            },
        }
    }

    pub(super) fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("an identity serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainSettings;
    use crate::student::DataSpec;
    use crate::student::{CacheDims, StudentArch, StudentSpec};

    /// Runs of each kind: defaults, and every key only some runs have.
    fn configs() -> Vec<TrainConfig> {
        let base =
            || TrainSettings { cache: Some("c".into()), data: Some("d.parquet".into()), out: Some("o".into()), ..Default::default() };
        let mlp = || StudentSpec::parse("mlp").unwrap();
        [
            base(),
            TrainSettings { train_params: Some("last:2".parse().unwrap()), freeze: Some("embed.*,blocks.0.*".parse().unwrap()), ..base() },
            TrainSettings {
                divergence: Some("jsd:0.5".parse().unwrap()),
                epochs: std::num::NonZeroUsize::new(3),
                steps: std::num::NonZeroUsize::new(7),
                device: Some("tch".parse().unwrap()),
                ..base()
            },
            TrainSettings {
                hidden_layers: Some("1:pooled".parse().unwrap()),
                hidden_loss: Some(HiddenLoss::Mse),
                temperature: Some(2.0),
                ..base()
            },
        ]
        .into_iter()
        .map(|s| s.validate(mlp()).unwrap())
        .collect()
    }

    fn student() -> StudentFile {
        let dims = CacheDims { outputs: 10, features: 64, tokens: 0, max_seq_len: 0 };
        StudentFile {
            arch: StudentArch::resolve(&StudentSpec::parse("mlp").unwrap(), &dims),
            data: DataSpec {
                task: crate::cache::Task::Classification,
                features: vec!["x".into()],
                label_column: None,
                text: None,
                tokenizer_sha256: None,
            },
            cache_fingerprint: "f".into(),
            alpha: 0.5,
            temperature: 2.0,
            tail: TailMode::Bucket,
            output_vocab: None,
        }
    }

    /// The identities must not change, or no earlier run resumes: the expected hashes are
    /// what the hand-listed `config.json` this module replaced gave for these runs (checked
    /// equal, key order included, when it was replaced); the whole `student` object is
    /// hashed too.
    #[test]
    fn identities_do_not_change() {
        let want = [
            "f0ff28e23df4f3897b4bcf0dae7aa22a0578d191dd08f31682e7581a2b63ba22",
            "58aa14f2fe4c020ba8cbd09e4926f345a4dc1af7db120f12b7aeb62c1c4efa6c",
            "5928a90fd76ca0403c6d37261916da3bb0797f11dd8460f02b3575b614423741",
            "62a907fda5301a93245378affd491487649c07e3714abfa752fcd3773b8383e1",
        ];
        let s = student();
        for (cfg, want) in configs().iter().zip(want) {
            let json = TrainIdentity::of(cfg, &s, 2.0, None).to_json();
            assert_eq!(crate::integrity::sha256_canonical_json(&json), want, "{}", json["train"]);
        }
        // A run from a checkpoint names the weights it starts from: other weights, another run.
        let from = |w: &str| crate::integrity::sha256_canonical_json(&TrainIdentity::of(&configs()[0], &s, 2.0, Some(w.into())).to_json());
        assert_ne!(from("a"), from("b"));
        assert_ne!(from("a"), want[0]);
    }
}

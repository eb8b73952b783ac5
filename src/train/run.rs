//! Stage two's training loop: takes the loader's shards, shuffles each group, and steps the
//! optimizer batch by batch, writing metrics and checkpoints.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};

use crate::cache::Manifest;
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::loss::HiddenMaps;
use crate::progress::Progress;
use crate::rng::Rng;
use crate::student::Student;

use super::batch::{HiddenTerm, Support, batch_loss};
use super::checkpoint::{self, At};
use super::examples::Example;
use super::loader::Loaded;
use super::metrics::{Metrics, StepLine};
use super::schedule::lr_at;

/// Figures of a run, for its summary.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stats {
    pub read_seconds: f64,
    pub wait_seconds: f64,
    pub trained_positions: usize,
    pub last_loss: f64,
}

impl Default for Stats {
    /// Nothing read or trained yet; no loss yet (NaN).
    fn default() -> Stats {
        Stats { read_seconds: 0.0, wait_seconds: 0.0, trained_positions: 0, last_loss: f64::NAN }
    }
}

/// The hidden-state term's trained part: the maps with their own optimizer, the student
/// layers they read and each pair's cached width.
pub(super) struct HiddenTraining {
    pub maps: HiddenMaps,
    pub optim: ModuleOptimizer,
    pub layers: Vec<usize>,
    pub dims: Vec<usize>,
}

/// The state of a training run between steps.
pub(super) struct Trainer<'a> {
    pub cfg: &'a TrainConfig,
    pub m: &'a Manifest,
    pub train_t: f32,
    pub device: &'a Device,
    pub out: &'a Path,
    pub config_sha: &'a str,
    pub optim: ModuleOptimizer,
    pub metrics: Metrics,
    pub progress: Progress,
    pub total: usize,
    pub at: At,
    /// Batches of the resumed epoch that were trained before the checkpoint (skipped).
    pub skip: usize,
    pub started: Instant,
    pub stats: Stats,
    /// `--hidden-layers`: `None` without hidden-state pairs.
    pub hidden: Option<HiddenTraining>,
}

impl Trainer<'_> {
    /// Train until the run's last step on what the loader hands over.
    pub fn run(&mut self, mut model: Student, rx: &Receiver<Loaded>) -> Result<Student> {
        let mut group = Vec::new();
        while self.at.step < self.total {
            let t = Instant::now();
            let loaded = rx.recv().map_err(|_| Error::Config("the training data loader stopped unexpectedly".into()))?;
            self.stats.wait_seconds += t.elapsed().as_secs_f64();
            match loaded {
                Loaded::Failed(e) => return Err(e),
                Loaded::EpochEnd => self.end_epoch(&model)?,
                Loaded::Shard { examples, read_seconds } => {
                    self.stats.read_seconds += read_seconds;
                    group.push(examples);
                }
                Loaded::GroupEnd { epoch, index } => model = self.train_group(model, std::mem::take(&mut group), epoch, index)?,
            }
        }
        Ok(model)
    }

    /// A checkpoint at the end of an epoch (unless one was just written).
    fn end_epoch(&mut self, model: &Student) -> Result<()> {
        self.at.epoch += 1;
        self.skip = 0;
        self.at.step_in_epoch = 0;
        if !self.at.step.is_multiple_of(self.cfg.schedule.checkpoint_every) {
            self.save_checkpoint(model)?;
        }
        Ok(())
    }

    /// Shuffle group `index` of `epoch`: its rows in shard order, shuffled (as (shard, row)
    /// pairs, so the shards are not copied), then cut into batches.
    fn train_group(&mut self, mut model: Student, shards: Vec<Arc<Vec<Example>>>, epoch: usize, index: usize) -> Result<Student> {
        let mut order: Vec<(u32, u32)> =
            shards.iter().enumerate().flat_map(|(s, v)| (0..v.len()).map(move |i| (s as u32, i as u32))).collect();
        Rng::new(self.cfg.schedule.seed, ((epoch as u64) << 32) | index as u64).shuffle(&mut order);
        for chunk in order.chunks(self.cfg.schedule.batch_size) {
            if self.skip > 0 {
                self.skip -= 1;
                self.at.step_in_epoch += 1;
                continue;
            }
            let batch: Vec<&Example> = chunk.iter().map(|&(s, i)| &shards[s as usize][i as usize]).collect();
            model = self.train_step(model, &batch)?;
            if self.at.step >= self.total {
                break;
            }
        }
        Ok(model)
    }

    /// One optimizer step on one batch, its metrics line and (when due) a checkpoint.
    fn train_step(&mut self, model: Student, batch: &[&Example]) -> Result<Student> {
        let (cfg, step) = (self.cfg, self.at.step);
        let term = self.hidden.as_ref().map(|h| HiddenTerm { maps: &h.maps, layers: &h.layers, dims: &h.dims });
        let support = Support { k: cfg.top_k.unwrap_or(self.m.top_k), vocab: self.m.vocab_size };
        let (parts, hidden, count) = batch_loss(&model, batch, support, &cfg.loss, self.train_t, term, self.device);
        let lr = lr_at(cfg.schedule.lr, step, self.total);
        let (l, kl, ce) = (scalar(&parts.loss), scalar(&parts.kl), scalar(&parts.ce));
        if !l.is_finite() {
            return Err(Error::Config(format!(
                "the loss became {l} at step {step} (kl {kl}, ce {ce}); likely causes, most likely first: \
                 train.lr too high (now {}), non-finite values in the cache (check it with `distill verify`) \
                 or in the data's features, train.weight_decay (now {})",
                cfg.schedule.lr, cfg.schedule.weight_decay
            )));
        }
        let mut grads = parts.loss.backward();
        let student_grads = GradientsParams::from_module(&mut grads, &model);
        let model = self.optim.step(lr, model, student_grads);
        if let Some(mut h) = self.hidden.take() {
            let map_grads = GradientsParams::from_module(&mut grads, &h.maps);
            h.maps = h.optim.step(lr, h.maps, map_grads);
            self.hidden = Some(h);
        }
        let hidden = hidden.as_ref().map(scalar);
        self.at.step += 1;
        self.at.step_in_epoch += 1;
        self.stats.trained_positions += count;
        self.stats.last_loss = l;
        let (step, epoch) = (self.at.step, self.at.epoch);
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics.write(&StepLine { step, epoch, loss: l, kl, ce, lr, positions: count, seconds, hidden })?;
        self.progress.tick_to(step as u64, format!("epoch {epoch} loss {l:.4}"));
        if step.is_multiple_of(cfg.schedule.checkpoint_every) || step == self.total {
            self.save_checkpoint(&model)?;
        }
        Ok(model)
    }

    fn save_checkpoint(&self, model: &Student) -> Result<()> {
        let hidden = self.hidden.as_ref().map(|h| (&h.maps, &h.optim));
        checkpoint::save(self.out, model, &self.optim, hidden, self.at, self.config_sha)
    }
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.to_data().try_to_vec::<f32>().map(|v| v[0] as f64).unwrap_or(f64::NAN)
}

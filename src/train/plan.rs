//! Stage two's plan over the cache: which rows of each shard train, the seeded shard order
//! of each epoch, and so the steps of a run.

use std::collections::HashMap;

use crate::cache::{Manifest, ShardInfo, Task};
use crate::config::TrainConfig;
use crate::config::defaults::train as defaults;
use crate::data::{self, Column, Field, Kind};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// The rows and order of a run's shards.
pub(super) struct ShardPlan<'a> {
    shards: &'a [ShardInfo],
    seed: u64,
    window: usize,
    batch_size: usize,
    /// `--max-rows`: rows from this one on are not trained on.
    limit: u64,
    /// At alpha = 0, whether each row is labelled (unlabelled rows are skipped, see
    /// `examples::load_shard`); `None`: every row trains.
    labelled: Option<Vec<bool>>,
    /// A classification cache (the default length has a floor of steps).
    classifier: bool,
}

impl<'a> ShardPlan<'a> {
    /// The plan of `cfg` over the cache `m` (reads the data's label column at alpha = 0).
    pub fn new(cfg: &TrainConfig, m: &'a Manifest) -> Result<ShardPlan<'a>> {
        let limit = cfg.max_rows.unwrap_or(u64::MAX);
        let labelled = match (&m.label_column, m.task) {
            (Some(col), Task::Classification) if cfg.loss.alpha == 0.0 => {
                let mut flags = Vec::new();
                for row in data::read_rows(&cfg.data, &[Column::new(col, Kind::Label)])?.take(limit.min(m.dataset.rows) as usize) {
                    flags.push(matches!(row?.fields[0], Field::Label(_)));
                }
                Some(flags)
            }
            _ => None,
        };
        let plan = ShardPlan {
            shards: &m.shards,
            seed: cfg.schedule.seed,
            window: cfg.shuffle_window,
            batch_size: cfg.schedule.batch_size,
            limit,
            labelled,
            classifier: m.task == Task::Classification,
        };
        if m.shards.iter().map(|s| plan.shard_rows(s)).sum::<usize>() == 0 {
            return Err(Error::cache(
                &cfg.cache,
                format!(
                    "holds no rows to train on ({} rows cached{}{})",
                    m.totals.rows,
                    if cfg.loss.alpha == 0.0 { ", none of them labelled" } else { "" },
                    cfg.max_rows.map(|r| format!(", --max-rows {r}")).unwrap_or_default()
                ),
            ));
        }
        Ok(plan)
    }

    /// Rows a shard trains on (after `--max-rows` and, at alpha = 0, the labelled filter).
    pub fn shard_rows(&self, s: &ShardInfo) -> usize {
        if s.first_row >= self.limit {
            return 0;
        }
        let end = s.first_row + s.rows.min(self.limit - s.first_row);
        match &self.labelled {
            Some(f) => f[s.first_row as usize..end as usize].iter().filter(|&&l| l).count(),
            None => (end - s.first_row) as usize,
        }
    }

    /// The shard indices of `epoch` in their seeded order.
    pub fn shard_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.shards.len()).collect();
        Rng::new(self.seed, 1 + epoch as u64).shuffle(&mut order);
        order
    }

    /// Steps of `epoch`. Batches never straddle a shuffle group (`shuffle_window` shards
    /// shuffled together), so the count depends on how the epoch's order groups the shards.
    pub fn epoch_steps(&self, epoch: usize) -> usize {
        self.shard_order(epoch)
            .chunks(self.window)
            .map(|g| g.iter().map(|&i| self.shard_rows(&self.shards[i])).sum::<usize>().div_ceil(self.batch_size))
            .sum()
    }

    /// Steps of the run: `--steps`, or every epoch's: `--epochs`, else the default 10, and
    /// for a classifier as many more epochs as reach [`defaults::MIN_CLASSIFIER_STEPS`].
    pub fn total_steps(&self, cfg: &TrainConfig) -> usize {
        let steps = match (cfg.schedule.steps, cfg.schedule.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => (0..e).map(|e| self.epoch_steps(e)).sum(),
            (None, None) => {
                let mut steps: usize = (0..defaults::EPOCHS).map(|e| self.epoch_steps(e)).sum();
                let mut epoch = defaults::EPOCHS;
                while self.classifier && steps < defaults::MIN_CLASSIFIER_STEPS {
                    steps += self.epoch_steps(epoch).max(1);
                    epoch += 1;
                }
                steps
            }
        };
        steps.max(1)
    }

    /// The shards a remote cache prefetches, in `epoch`'s order: (file, bytes).
    pub fn prefetch_list(&self, epoch: usize) -> Vec<(String, u64)> {
        self.shard_order(epoch)
            .into_iter()
            .map(|i| &self.shards[i])
            .filter(|s| s.first_row < self.limit)
            .map(|s| (s.file.clone(), s.bytes))
            .collect()
    }
}

/// A JSONL dataset of one file: where each shard's first row starts, found in one pass, so
/// reading a shard's rows is a seek (Parquet skips row groups by itself). Empty otherwise.
pub(super) fn row_starts(cfg: &TrainConfig, m: &Manifest) -> Result<HashMap<u64, data::RowStart>> {
    let files = data::resolve(&cfg.data)?;
    if files.len() != 1 || data::Format::of(&files[0])? != data::Format::Jsonl {
        return Ok(HashMap::new());
    }
    let mut firsts: Vec<u64> = m.shards.iter().map(|s| s.first_row).collect();
    firsts.sort_unstable();
    Ok(data::jsonl_row_starts(&cfg.data, &firsts)?.into_iter().map(|s| (s.row, s)).collect())
}

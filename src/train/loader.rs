//! Stage two's loader thread: reads, joins and tokenizes shards one shard ahead of training
//! and hands them over in each epoch's order, marking the shuffle groups and epochs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use crate::cache::{CacheReader, Manifest};
use crate::config::TrainConfig;
use crate::data;
use crate::error::{Error, Result};
use crate::store::Prefetcher;
use crate::text::Tokenizer;

use super::DataSpec;
use super::examples::{Example, PreparedMemo, load_shard};
use super::plan::ShardPlan;

/// What the loader thread hands the training loop, in order.
pub(super) enum Loaded {
    /// One shard's examples (shared with the loader's copy of a cache kept whole), and the
    /// seconds spent reading them.
    Shard {
        examples: Arc<Vec<Example>>,
        read_seconds: f64,
    },
    /// The shards since the last group end make up shuffle group `index` of `epoch`.
    GroupEnd {
        epoch: usize,
        index: usize,
    },
    /// The epoch's last group has been handed over.
    EpochEnd,
    Failed(Error),
}

/// What the loader reads from.
pub(super) struct Loader<'a> {
    pub cfg: &'a TrainConfig,
    pub m: &'a Manifest,
    pub reader: &'a CacheReader,
    pub plan: &'a ShardPlan<'a>,
    pub spec: &'a DataSpec,
    pub tok: Option<&'a Tokenizer>,
    pub train_t: f32,
    /// The student's output width (cached ids must be below it).
    pub student_vocab: usize,
    pub prefetch: Option<&'a Prefetcher>,
    pub row_starts: &'a HashMap<u64, data::RowStart>,
    pub start_epoch: usize,
    /// Set when training is done or has failed: the loader ends at its next shard.
    pub stop: &'a AtomicBool,
}

impl Loader<'_> {
    /// Hand over every epoch's shards from `start_epoch` on, until `stop` or the receiver
    /// hangs up. A failure is handed over as [`Loaded::Failed`] and ends the loader.
    pub fn run(&self, tx: SyncSender<Loaded>) {
        crate::process::lower_priority();
        // A cache that fits in one shuffle window is the same group every epoch: its
        // shards are loaded once and kept (held anyway, and shared, not copied), then
        // regrouped in each epoch's shard order and shuffled as if read again.
        let mut kept: Option<Vec<Option<Arc<Vec<Example>>>>> =
            (self.m.shards.len() <= self.cfg.shuffle_window).then(|| vec![None; self.m.shards.len()]);
        // Otherwise each shard is joined afresh every epoch, from its prepared rows (kept
        // up to the budget) and the cache.
        let mut memo = PreparedMemo::new(if kept.is_some() { 0 } else { self.cfg.prepared_rows_mb });
        for epoch in self.start_epoch.. {
            for (index, group) in self.plan.shard_order(epoch).chunks(self.cfg.shuffle_window).enumerate() {
                for &si in group {
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let loaded = match kept.as_ref().and_then(|k| k[si].clone()) {
                        Some(examples) => Loaded::Shard { examples, read_seconds: 0.0 },
                        None => match self.load(si, &mut memo) {
                            Ok((examples, read_seconds)) => {
                                let examples = Arc::new(examples);
                                if let Some(kept) = &mut kept {
                                    kept[si] = Some(examples.clone());
                                }
                                Loaded::Shard { examples, read_seconds }
                            }
                            Err(e) => {
                                let _ = tx.send(Loaded::Failed(e));
                                return;
                            }
                        },
                    };
                    if tx.send(loaded).is_err() {
                        return;
                    }
                }
                if tx.send(Loaded::GroupEnd { epoch, index }).is_err() {
                    return;
                }
            }
            if tx.send(Loaded::EpochEnd).is_err() {
                return;
            }
        }
    }

    /// Shard `si`'s examples (waiting for its download first, for a remote cache), and the
    /// seconds spent reading.
    fn load(&self, si: usize, memo: &mut PreparedMemo) -> Result<(Vec<Example>, f64)> {
        let shard = &self.m.shards[si];
        let mut read = 0.0;
        if let Some(p) = self.prefetch
            && shard.first_row < self.cfg.max_rows.unwrap_or(u64::MAX)
        {
            let t = Instant::now();
            p.wait(&shard.file)?;
            read += t.elapsed().as_secs_f64();
        }
        let examples = load_shard(
            self.reader,
            shard,
            self.cfg,
            self.spec,
            self.tok,
            self.train_t,
            self.student_vocab,
            self.row_starts,
            memo,
            &mut read,
        )?;
        Ok((examples, read))
    }
}

/// Sets the loader's stop flag when dropped: however training ends, the loader stops at its
/// next shard (or its next send).
pub(super) struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

//! Stage one's stream, in three threads: a reader reads and tokenizes the rows of batch
//! n + 1 while the main thread runs the teacher on batch n, and a worker turns the copied
//! logits of batch n - 1 into soft labels and writes the shards.

use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Instant;

use crate::cache::Task;
use crate::cache::manifest::Manifest;
use crate::config::CacheTeacherConfig;
use crate::config::defaults::cache as defaults;
use crate::data::{self, Column};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::teacher::hidden::Projection;
use crate::teacher::{Teacher, TeacherBatch};

use super::batches::{lm_pending, numeric_batch, per_row_pending};
use super::inputs::Inputs;
use super::plan::ShardPlan;
use super::reader::{Feed, Prepared, Reader};
use super::sink::{Job, Sink};
use super::{RunOptions, Timings};

/// What this run computed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    pub rows: u64,
    pub tokens: u64,
    pub truncated_rows: u64,
    /// Rows of a labelled classification dataset whose label is null (soft label only).
    pub unlabelled_rows: u64,
}

/// Stream the planned shards through the teacher into `man`'s directory; returns the
/// manifest with the new shards, the counts and the timings.
pub(super) fn stream(
    cfg: &CacheTeacherConfig,
    opts: &RunOptions,
    inputs: &mut Inputs,
    man: Manifest,
    plan: &ShardPlan,
    partial_name: &str,
) -> Result<(Manifest, Counts, Timings)> {
    let progress = Progress::new(plan.part_rows, "caching", opts.quiet);
    progress.set_position(plan.done_rows);
    let rows = data::read_rows(&cfg.data, &inputs.columns)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(2);
    let (feed_tx, feed_rx) = std::sync::mpsc::sync_channel::<Result<Feed>>(2);
    // Logits buffers come back from the worker, so their pages are touched once per run.
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<Vec<f32>>();
    let sink = Sink {
        out: &cfg.out,
        partial_name: partial_name.to_string(),
        encoding: cfg.encoding,
        step: man.encoding.logprob_step,
        temperature: cfg.temperature,
        top_k: inputs.top_k,
        vocab: inputs.teacher.vocab_size,
        selectable: inputs.selectable.ids,
        threads: cfg.threads,
        teacher_path: inputs.teacher.path().to_path_buf(),
        on_shard: opts.on_shard.clone(),
        sampled: cfg.sampled,
        hidden: man
            .hidden_states
            .iter()
            .map(|h| (h.clone(), h.projection_seed.map(|seed| Projection::new(seed, h.teacher_dim, h.dim))))
            .collect(),
        recycle: recycle_tx,
    };
    let classify = inputs.teacher.task == Task::Classification;
    let reader = Reader {
        cfg,
        tokens: inputs.tok.as_ref().zip(inputs.text_columns.as_ref()),
        label_slot: inputs.label_column.as_ref().map(|_| inputs.columns.len() - 1),
        vocab: inputs.teacher.vocab_size,
        classify,
        plan: &plan.todo,
        rows_per_shard: cfg.rows_per_shard,
        total_rows: man.dataset.rows,
        max_batch_tokens: cfg.max_batch_tokens.unwrap_or_else(|| defaults::logits_budget_tokens(inputs.teacher.vocab_size)),
    };
    let labelled = classify && inputs.label_column.is_some();
    let mut teach =
        Teach { cfg, teacher: &mut inputs.teacher, columns: &inputs.columns, labelled, counts: Counts::default(), seconds: 0.0 };
    let started = Instant::now();
    let (main_result, worker_result, data_seconds) = std::thread::scope(|scope| {
        let worker = scope.spawn(move || sink.run(rx, man));
        let reader = scope.spawn(move || reader.run(rows, feed_tx));
        let main_result = teach.all(&feed_rx, &tx, &recycle_rx, &progress, started);
        drop(tx);
        drop(feed_rx); // a reader still sending stops at its next batch
        let data_seconds = reader.join().expect("data reader thread panicked");
        (main_result, worker.join().expect("shard writer thread panicked"), data_seconds)
    });
    let (man, soft_labels, write) = match (main_result, worker_result) {
        (Err(e), _) | (Ok(()), Err(e)) => return Err(e),
        (Ok(()), Ok(done)) => done,
    };
    progress.finish();
    Ok((man, teach.counts, Timings { data: data_seconds, teacher: teach.seconds, soft_labels, write }))
}

/// The main thread's part: the teacher over each batch the reader sends.
struct Teach<'a> {
    cfg: &'a CacheTeacherConfig,
    teacher: &'a mut Teacher,
    columns: &'a [Column],
    /// A labelled classification dataset (null labels are counted).
    labelled: bool,
    counts: Counts,
    /// Seconds in ONNX Runtime.
    seconds: f64,
}

impl Teach<'_> {
    /// Run every batch and pass it on to the worker, with the shard ends.
    fn all(
        &mut self,
        feed: &Receiver<Result<Feed>>,
        jobs: &SyncSender<Job>,
        recycle: &Receiver<Vec<f32>>,
        progress: &Progress,
        started: Instant,
    ) -> Result<()> {
        for f in feed {
            let job = match f? {
                Feed::EndOfShard { index, first_row, rows } => Job::Flush { index, first_row, rows },
                Feed::Batch(b) => {
                    let job = self.batch(&b, recycle.try_recv().unwrap_or_default())?;
                    let c = &self.counts;
                    progress.inc(b.rows.len() as u64, c.tokens, started.elapsed().as_secs_f64(), c.rows);
                    job
                }
            };
            if jobs.send(job).is_err() {
                return Ok(()); // the worker stopped with an error; it is reported below
            }
        }
        Ok(())
    }

    /// One batch through the teacher; `buffer` receives an LM's logits.
    fn batch(&mut self, b: &Prepared, buffer: Vec<f32>) -> Result<Job> {
        let t_run = Instant::now();
        let classify = self.teacher.task == Task::Classification;
        let pending = match &b.tokens {
            None => numeric_batch(self.cfg, self.teacher, &b.rows, self.columns, &b.hard)?,
            Some(t) if classify => {
                let input = TeacherBatch::Tokens { batch: b.rows.len(), seq: t.seq, ids: &t.ids, mask: &t.mask };
                per_row_pending(self.teacher, &input, &b.rows, &b.hard)?
            }
            Some(t) => lm_pending(self.teacher, &b.rows, t, buffer)?,
        };
        self.seconds += t_run.elapsed().as_secs_f64();
        if let Some(t) = &b.tokens {
            self.counts.tokens += t.count;
            self.counts.truncated_rows += t.truncated;
        }
        self.counts.rows += b.rows.len() as u64;
        if self.labelled {
            self.counts.unlabelled_rows += b.hard.iter().filter(|h| h.is_none()).count() as u64;
        }
        Ok(Job::Batch(pending))
    }
}

/// `man` is whole: every row of the part was read, as many as were hashed.
pub(super) fn check_rows_read(cfg: &CacheTeacherConfig, man: &Manifest, plan: &ShardPlan) -> Result<()> {
    if man.totals.rows == plan.part_rows {
        return Ok(());
    }
    Err(Error::data(
        &cfg.data,
        format!(
            "read {} rows but expected {} of the {} the file had when hashed: it changed during the run",
            man.totals.rows, plan.part_rows, man.dataset.rows
        ),
    ))
}

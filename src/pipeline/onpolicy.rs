//! A pipeline's `[onpolicy]` rounds: after each seed's distilled student, every round the
//! student completes the prompts (`generate --student`), the teacher scores the completions
//! (`cache-teacher --token-ids`, T = 1), and the student trains from where it was: first on
//! the training cache for the round's off-policy share (GKD's `1 - lambda`), then on its own
//! samples with the on-policy divergence. The teacher never runs beside the student.
//!
//! Out, in `[train] out`/`onpolicy-seedS`: `round-R/{generated, cache, offpolicy, student}`,
//! `more-steps` (the distilled student trained as many more steps on the training cache: the
//! baseline at equal student steps) and `teacher-written` (as many more steps on the
//! teacher's own completions of the prompts, as many as the rounds': the baseline at equal
//! student steps and about equal teacher positions, from `onpolicy-teacher-written`). Each step resumes: generate and cache-teacher
//! from their finished shards, training from its last checkpoint, a finished round as it is.
//!
//! Every student of the comparison is also scored on its own completions of the held-out
//! prompts (greedy and sampled): the teacher's mean NLL of the tokens it wrote, what
//! on-policy training is for, beside held-out perplexity.

use std::path::{Path, PathBuf};

use crate::config::{CacheSettings, EvalSettings, GenerateSettings, OnPolicyConfig, PipelineFile, TrainSettings};
use crate::error::{Error, Result};
use crate::stage::eval::{EvalReport, PredictOptions};
use crate::stage::{self, RunOptions};
use crate::student::StudentSpec;
use crate::train::{HF_DIR, TrainOptions};

use super::Step;

/// What the rounds need beside the per-seed settings.
pub(super) struct Rounds<'a> {
    pub file: &'a PipelineFile,
    pub cfg: &'a OnPolicyConfig,
    pub eval: &'a EvalSettings,
    /// The teacher's T = 1 cache of the held-out data.
    pub teacher_cache: &'a Path,
    pub opts: &'a RunOptions,
}

/// One student of the comparison: held-out metrics and its own completions' scores.
#[derive(Debug, Clone)]
pub struct Scored {
    pub report: EvalReport,
    pub greedy: OwnCompletions,
    pub sampled: OwnCompletions,
    /// Positions the teacher scored to train it (cumulative over the rounds; the training
    /// cache's excluded: every row shares it). The table shows the mean over the seeds.
    pub teacher_positions: u64,
    /// Optimizer steps after the distilled student.
    pub extra_steps: usize,
}

/// The teacher's own completions of the prompts and their cache.
struct Written {
    dataset: PathBuf,
    cache: PathBuf,
    positions: u64,
}

/// A student's completions of the held-out prompts, scored.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnCompletions {
    /// The teacher's mean negative log-likelihood (nats per token) of the student's tokens.
    pub teacher_nll: f64,
    /// The student's own, from its generation log-probs.
    pub student_nll: f64,
}

impl Rounds<'_> {
    /// Seed `seed`'s comparison from its distilled student `distilled`: the distilled
    /// student, the same trained more steps off-policy, and each round's student, scored.
    pub fn run(&self, seed: u64, distilled: &Path, on_step: &mut dyn FnMut(Step<'_>)) -> Result<Vec<(String, Scored)>> {
        let dir = self.out()?.join(format!("onpolicy-seed{seed}"));
        let mut rows = self.baselines(seed, distilled, &dir, on_step)?;
        let (mut student, mut positions) = (distilled.to_path_buf(), 0u64);
        for round in 1..=self.cfg.rounds {
            let r = dir.join(format!("round-{round}"));
            on_step(Step::Round { seed, round, dir: &r });
            student = self.round(&student, &r, seed, round, on_step, &mut positions)?;
            let label = format!("on-policy round {round} ({}, lambda = {})", self.cfg.divergence, self.cfg.lambda);
            let scored =
                self.score(&student, &dir.join("scores").join(format!("round-{round}")), positions, round * self.cfg.steps, seed, on_step)?;
            rows.push((label, scored));
        }
        Ok(rows)
    }

    /// The rows the rounds are compared with: the distilled student, and the same trained as
    /// many steps as the rounds on the training cache and on the teacher's own completions.
    fn baselines(&self, seed: u64, distilled: &Path, dir: &Path, on_step: &mut dyn FnMut(Step<'_>)) -> Result<Vec<(String, Scored)>> {
        let scores = dir.join("scores");
        let steps = self.cfg.rounds * self.cfg.steps;
        let mut rows = vec![("distilled".to_string(), self.score(distilled, &scores.join("distilled"), 0, 0, seed, on_step)?)];
        let more = dir.join("more-steps");
        self.train_off_policy(distilled, &more, steps, seed, on_step)?;
        let label = format!("distilled, {steps} more steps off-policy");
        rows.push((label, self.score(&more, &scores.join("more-steps"), 0, steps, seed, on_step)?));
        let written = self.teacher_written(on_step)?;
        let run = dir.join("teacher-written");
        let extra =
            TrainSettings { cache: Some(written.cache.clone()), data: Some(written.dataset.clone()), ..self.train_base(&run, steps, seed) };
        self.train(extra, distilled, &run, "off-policy, teacher-written", seed, on_step)?;
        let label = format!("distilled, {steps} more steps on teacher-written completions");
        rows.push((label, self.score(&run, &scores.join("teacher-written"), written.positions, steps, seed, on_step)?));
        Ok(rows)
    }

    /// One round from `student`: generate, score, train; returns the new student's run.
    fn round(
        &self,
        student: &Path,
        dir: &Path,
        seed: u64,
        round: usize,
        on_step: &mut dyn FnMut(Step<'_>),
        positions: &mut u64,
    ) -> Result<PathBuf> {
        let draw_seed = seed.wrapping_mul(1000).wrapping_add(round as u64);
        let generated = self.generate(student, &self.cfg.prompts, &dir.join("generated"), self.cfg.temperature, draw_seed, on_step)?;
        let cache = self.score_with_teacher(&generated, &dir.join("cache"), self.cache_top_k(), on_step)?;
        *positions += cache.positions;
        let (off, on) = self.cfg.split_steps();
        let mut from = student.to_path_buf();
        if off > 0 {
            let offpolicy = dir.join("offpolicy");
            self.train_off_policy(&from, &offpolicy, off, seed, on_step)?;
            from = offpolicy;
        }
        let out = dir.join("student");
        let settings = TrainSettings {
            cache: Some(cache.dir.clone()),
            data: Some(generated),
            alpha: Some(1.0),
            temperature: None,
            divergence: Some(self.cfg.divergence),
            top_k: None,
            ..self.train_base(&out, on, seed)
        };
        self.train(settings, &from, &out, "on-policy", seed, on_step)?;
        Ok(out)
    }

    /// The baseline at equal teacher compute: the teacher's own completions of the prompts,
    /// as many as the rounds' (`rounds x samples_per_prompt` a prompt, sampled as the student
    /// samples), cached as `[cache]` caches (its temperature and k) by `generate`; one for
    /// every seed, in `[train] out`/`onpolicy-teacher-written`.
    fn teacher_written(&self, on_step: &mut dyn FnMut(Step<'_>)) -> Result<Written> {
        let cache = self.file.cache_settings();
        let samples = (self.cfg.rounds as u32).saturating_mul(self.cfg.samples_per_prompt);
        let settings = GenerateSettings {
            teacher: cache.teacher.clone(),
            tokenizer: cache.tokenizer.clone(),
            data: Some(self.cfg.prompts.clone()),
            out: Some(self.out()?.join("onpolicy-teacher-written")),
            prompt_column: Some(self.cfg.prompt_column.clone()),
            max_new_tokens: std::num::NonZeroUsize::new(self.cfg.max_new_tokens),
            temperature: Some(self.cfg.temperature),
            top_p: Some(self.cfg.top_p),
            samples_per_prompt: std::num::NonZeroU32::new(samples),
            cache_top_k: cache.top_k,
            soft_temperature: cache.temperature,
            max_seq_len: cache.max_seq_len,
            ..Default::default()
        };
        let Some(teacher) = &settings.teacher else { return Err(Error::Config("cache.teacher is required".into())) };
        on_step(Step::StageOne { command: "generate", teacher });
        let opts = RunOptions { overwrite: true, ..self.opts.clone() };
        let s = stage::generate::generate(&settings.validate()?, &opts)?;
        on_step(Step::Generated(&s));
        let cache = s.cache.as_ref().expect("the teacher's generation writes a cache");
        Ok(Written { dataset: s.dataset.clone(), cache: cache.dir.clone(), positions: s.tokens })
    }

    /// `student` trained `steps` more steps on the training cache as `[train]` says.
    fn train_off_policy(&self, student: &Path, out: &Path, steps: usize, seed: u64, on_step: &mut dyn FnMut(Step<'_>)) -> Result<()> {
        self.train(self.train_base(out, steps, seed), student, out, "off-policy", seed, on_step)
    }

    /// `[train]` for `steps` steps into `out`, at the rounds' learning rate.
    fn train_base(&self, out: &Path, steps: usize, seed: u64) -> TrainSettings {
        let base = self.file.train_settings();
        TrainSettings {
            out: Some(out.to_path_buf()),
            steps: std::num::NonZeroUsize::new(steps),
            epochs: None,
            seed: Some(seed),
            lr: self.cfg.lr.or(base.lr),
            ..base
        }
    }

    /// Train from the run `from` (its Hugging Face export), resuming a run killed before it
    /// finished; a run there with other settings (among them other starting weights: an
    /// earlier round or distilled student trained again) is replaced.
    fn train(
        &self,
        settings: TrainSettings,
        from: &Path,
        out: &Path,
        label: &'static str,
        seed: u64,
        on_step: &mut dyn FnMut(Step<'_>),
    ) -> Result<()> {
        let cfg = settings.validate(StudentSpec::Hf { path: from.join(HF_DIR) })?;
        on_step(Step::Training { label, seed, run: out });
        let opts = TrainOptions { quiet: self.opts.quiet, resume: true, command: self.opts.command.clone() };
        let summary = match crate::train::train_student(&cfg, &opts) {
            Err(Error::OtherRun(why)) => {
                on_step(Step::Warning(format!("{}: replaced ({why})", out.display())));
                std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
                crate::train::train_student(&cfg, &opts)?
            }
            other => other?,
        };
        on_step(Step::Trained(&summary));
        Ok(())
    }

    /// The student's completions of `prompts` in `out` (resumed or kept when made by the
    /// same student and settings, replaced otherwise); returns the dataset.
    fn generate(
        &self,
        student: &Path,
        prompts: &Path,
        out: &Path,
        temperature: f32,
        seed: u64,
        on_step: &mut dyn FnMut(Step<'_>),
    ) -> Result<PathBuf> {
        let cache = self.file.cache_settings();
        let settings = GenerateSettings {
            student: Some(student.to_path_buf()),
            data: Some(prompts.to_path_buf()),
            out: Some(out.to_path_buf()),
            prompt_column: Some(self.cfg.prompt_column.clone()),
            max_new_tokens: std::num::NonZeroUsize::new(self.cfg.max_new_tokens),
            temperature: Some(temperature),
            top_p: Some(self.cfg.top_p),
            samples_per_prompt: std::num::NonZeroU32::new(self.cfg.samples_per_prompt),
            seed: Some(seed),
            max_seq_len: cache.max_seq_len,
            ..Default::default()
        };
        let opts = RunOptions { overwrite: true, ..self.opts.clone() };
        let summary = stage::generate::generate(&settings.validate()?, &opts)?;
        on_step(Step::Generated(&summary));
        Ok(summary.dataset)
    }

    /// The teacher's T = 1 cache of the completions in `generated` (its `k` entries per
    /// position and its log-prob of each token written).
    fn score_with_teacher(
        &self,
        generated: &Path,
        out: &Path,
        top_k: Option<std::num::NonZeroUsize>,
        on_step: &mut dyn FnMut(Step<'_>),
    ) -> Result<stage::CacheSummary> {
        let base = self.file.cache_settings();
        let settings = CacheSettings {
            data: Some(generated.to_path_buf()),
            out: Some(out.to_path_buf()),
            text_column: None,
            messages_column: None,
            chat_template: None,
            prompt_column: Some("prompt_ids".into()),
            completion_column: Some("completion_ids".into()),
            token_ids: Some(true),
            positions: None,
            temperature: Some(1.0),
            top_k,
            soft_labels: None,
            hidden_states: None,
            part: None,
            ..base
        };
        let opts = RunOptions { overwrite: true, ..self.opts.clone() };
        let summary = stage::cache_teacher(&settings.validate()?, &opts)?;
        on_step(Step::Cached(&summary));
        Ok(summary)
    }

    /// The training cache's k for a round's cache (the divergences over the support read it).
    fn cache_top_k(&self) -> Option<std::num::NonZeroUsize> {
        self.file.cache_settings().top_k
    }

    /// `student` on the held-out data (perplexity and agreement with the teacher's cache)
    /// and on its own completions of the held-out prompts, greedy and sampled, scored by
    /// the teacher in `dir`.
    fn score(
        &self,
        student: &Path,
        dir: &Path,
        teacher_positions: u64,
        extra_steps: usize,
        seed: u64,
        on_step: &mut dyn FnMut(Step<'_>),
    ) -> Result<Scored> {
        let report = stage::eval::eval_student(student, &self.eval.data, Some(self.teacher_cache), &PredictOptions::default())?;
        on_step(Step::Evaluated(&report));
        let mut own = |how: &str, temperature: f32| -> Result<OwnCompletions> {
            let at = dir.join(format!("held-out-{how}"));
            let generated = self.generate(student, &self.eval.data, &at.join("generated"), temperature, seed, on_step)?;
            let cache = self.score_with_teacher(&generated, &at.join("cache"), std::num::NonZeroUsize::new(1), on_step)?;
            let teacher = stage::eval::teacher_metrics(&cache.dir)?;
            Ok(OwnCompletions { teacher_nll: teacher.nll.unwrap_or(f64::NAN), student_nll: mean_generation_nll(&generated)? })
        };
        let greedy = own("greedy", 0.0)?;
        let sampled = own("sampled", self.cfg.temperature)?;
        Ok(Scored { report, greedy, sampled, teacher_positions, extra_steps })
    }

    fn out(&self) -> Result<PathBuf> {
        self.file.train_settings().out.ok_or_else(|| Error::Config("train.out is required in the pipeline's [train]".into()))
    }
}

/// The student's mean negative log-prob of the tokens it wrote (from `completion_logprobs`).
fn mean_generation_nll(generated: &Path) -> Result<f64> {
    use crate::data::{Column, Field, Kind};
    let column = crate::stage::generate::COMPLETION_LOGPROBS;
    let (mut sum, mut n) = (0f64, 0u64);
    for row in crate::data::read_rows(generated, &[Column::new(column, Kind::Numbers)])? {
        if let Field::Numbers(v) = &row?.fields[0] {
            sum -= v.iter().map(|&x| x as f64).sum::<f64>();
            n += v.len() as u64;
        }
    }
    Ok(sum / n.max(1) as f64)
}

/// The comparison on the student's own completions: per row, the mean over the seeds of
/// the teacher's NLL of its greedy and sampled completions of the held-out prompts, its
/// own NLL of the sampled ones, held-out perplexity and top-1 agreement, and what it cost
/// (teacher positions scored, student steps after the distilled student).
pub fn onpolicy_table(rows: &[(String, Vec<Scored>)]) -> String {
    let mut t = String::from(
        "| student | teacher NLL of its greedy completions | teacher NLL of its sampled completions | its own NLL of them \
         | held-out perplexity | top-1 agreement | teacher positions scored | steps after distilled |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let cell = |v: Vec<f64>| {
        let (m, s) = super::mean_std(&v);
        if v.len() > 1 { format!("{m:.4} ± {s:.4}") } else { format!("{m:.4}") }
    };
    for (name, scored) in rows {
        let get = |f: &dyn Fn(&Scored) -> f64| cell(scored.iter().map(f).collect());
        t.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |\n",
            get(&|s| s.greedy.teacher_nll),
            get(&|s| s.sampled.teacher_nll),
            get(&|s| s.sampled.student_nll),
            get(&|s| s.report.perplexity.unwrap_or(f64::NAN)),
            get(&|s| s.report.top1_agreement.unwrap_or(f64::NAN)),
            scored.iter().map(|s| s.teacher_positions).sum::<u64>() / scored.len().max(1) as u64,
            scored.first().map_or(0, |s| s.extra_steps),
        ));
    }
    if rows.first().is_some_and(|(_, s)| s.len() > 1) {
        t.push_str(&format!("\nmean ± standard deviation over {} seeds; NLL in nats per token\n", rows[0].1.len()));
    }
    t
}

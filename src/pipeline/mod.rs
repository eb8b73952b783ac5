//! `distill run PIPELINE`: a pipeline file's experiment as a sequence of named steps.
//! Stage one (cache-teacher, or generate) makes the training cache; with `[student]` and
//! `[eval]`, the teacher is scored on the held-out data from a T = 1 cache of it, then
//! every seed trains a hard-label-only and a distilled student, each is evaluated, and the
//! comparison table (`results.md`) and the training curves (`report.svg`) are written to
//! `[train] out`.
//!
//! In: a loaded [`PipelineFile`] and [`RunOptions`]. Out: [`Step`]s as they happen (the
//! binary prints them) and the results table. Every setting is checked before any work.

mod onpolicy;

use std::path::{Path, PathBuf};

use crate::config::{CacheTeacherConfig, EvalSettings, GenerateConfig, OnPolicyConfig, PipelineFile, TrainSettings};
use crate::error::{Error, Result};
use crate::student::StudentSpec;
use crate::train::{TrainOptions, TrainSummary};

use crate::stage::eval::{EvalReport, PredictOptions};
use crate::stage::generate::GenerateSummary;
use crate::stage::{self, CacheSummary, RunOptions};

/// What a pipeline is doing or has done, in order: the binary prints each.
pub enum Step<'a> {
    /// Stage one starts: `generate` or `cache-teacher`, with the teacher's path.
    StageOne {
        command: &'static str,
        teacher: &'a Path,
    },
    Generated(&'a GenerateSummary),
    Cached(&'a CacheSummary),
    /// The training cache, as `distill inspect` describes it.
    Inspected(String),
    /// The teacher's T = 1 cache of the held-out data is made in this directory.
    TeacherCache(&'a Path),
    /// One student starts training: the run's label, seed and directory.
    Training {
        label: &'static str,
        seed: u64,
        run: &'a Path,
    },
    Trained(&'a TrainSummary),
    Evaluated(&'a EvalReport),
    /// The comparison table, also written to `results.md`.
    Table(&'a str),
    /// The training curves were drawn here.
    Drawn(&'a Path),
    /// Something the user should know that did not stop the pipeline.
    Warning(String),
    /// An on-policy round starts: the seed, the round (from 1) and its directory.
    Round {
        seed: u64,
        round: usize,
        dir: &'a Path,
    },
}

/// A row of the results table: its label and each seed's report.
pub type TableRow = (String, Vec<EvalReport>);

/// The settings a pipeline runs with, every one checked.
struct Checked {
    cache: CacheTeacherConfig,
    generate: Option<GenerateConfig>,
    /// `[student]`, `[eval]` and the seeds, when the pipeline trains.
    students: Option<(StudentSpec, EvalSettings, Vec<u64>)>,
    /// `[onpolicy]`, when the distilled students go on to on-policy rounds.
    onpolicy: Option<OnPolicyConfig>,
}

/// Run the pipeline `file`; returns the results table when it trains students.
pub fn run(file: &PipelineFile, opts: &RunOptions, on_step: &mut dyn FnMut(Step<'_>)) -> Result<Option<String>> {
    let checked = check(file)?;
    let train_cache = stage_one(&checked, opts, on_step)?;
    let (manifest, stats) = stage::inspect(&train_cache)?;
    on_step(Step::Inspected(stage::inspect::render(&train_cache, &manifest, &stats)));
    let Some((student, eval, seeds)) = &checked.students else { return Ok(None) };
    let teacher_cache = teacher_on_held_out(&checked.cache, eval, opts, on_step)?;
    let teacher = stage::eval::teacher_metrics(&teacher_cache)?;
    let out = file.train_settings().out.ok_or_else(|| Error::Config("train.out is required in the pipeline's [train]".into()))?;
    // One pipeline at a time in `[train] out`: its run directories are replaced below.
    let _lock = crate::lock::DirLock::acquire(&out, ".pipeline", "a pipeline's students")?;
    let (rows, trained) = train_students(file, student, eval, seeds, &teacher_cache, opts, on_step)?;
    let mut table = results_table(&teacher, &rows, seeds.len());
    on_step(Step::Table(&table));
    if let Some(cfg) = &checked.onpolicy {
        let rounds = onpolicy::Rounds { file, cfg, eval, teacher_cache: &teacher_cache, opts };
        let onpolicy = on_policy_rows(&rounds, seeds, &out, on_step)?;
        on_step(Step::Table(&onpolicy));
        table = format!("{table}\n## On the students' own completions of the held-out prompts\n\n{onpolicy}");
    }
    crate::integrity::write_atomic(&out.join("results.md"), table.as_bytes())?;
    draw_report(&train_cache, &trained, &out.join("report.svg"), on_step);
    Ok(Some(table))
}

/// Every setting, checked before any work: `[cache]`, `[generate]`, and with `[student]`
/// and `[eval]` the `[train]` settings of every run the pipeline will make.
fn check(file: &PipelineFile) -> Result<Checked> {
    let cache = file.cache_settings().validate()?;
    let generate = file.generate.clone().map(|g| g.validate()).transpose()?;
    let students = match (&file.student, &file.eval) {
        (Some(student), Some(eval)) => Some((student.clone(), eval.clone(), seeds(file, student, eval)?)),
        _ => None,
    };
    let onpolicy = file.onpolicy.clone().map(|o| o.validate(cache.data.as_path().into())).transpose()?;
    let decoder = match &file.student {
        Some(StudentSpec::Decoder { .. }) => true,
        Some(StudentSpec::Hf { path }) => crate::student::hf::read_arch(path)?.kind_name() == "decoder",
        _ => false,
    };
    if onpolicy.is_some() && (students.is_none() || !decoder || cache.text.is_none() || file.generate.is_some()) {
        return Err(Error::Config(
            "[onpolicy] continues a causal-LM pipeline's distilled students: it needs a decoder [student], [eval] and a text [cache] (not [generate])".into(),
        ));
    }
    Ok(Checked { cache, generate, students, onpolicy })
}

/// Every seed's on-policy rounds from its distilled student; returns their table.
fn on_policy_rows(rounds: &onpolicy::Rounds<'_>, seeds: &[u64], out: &Path, on_step: &mut dyn FnMut(Step<'_>)) -> Result<String> {
    let mut rows: Vec<(String, Vec<onpolicy::Scored>)> = Vec::new();
    for &seed in seeds {
        for (i, (label, scored)) in rounds.run(seed, &out.join(format!("distilled-seed{seed}")), on_step)?.into_iter().enumerate() {
            match rows.get_mut(i) {
                Some(row) => row.1.push(scored),
                None => rows.push((label, vec![scored])),
            }
        }
    }
    Ok(onpolicy::onpolicy_table(&rows))
}

/// The seeds a pipeline trains with (`[eval] seeds`, default `[train] seed`), each distinct,
/// after checking that the held-out data reads and that `[train]` and `[student]` validate
/// for every run it will make.
fn seeds(file: &PipelineFile, student: &StudentSpec, eval: &EvalSettings) -> Result<Vec<u64>> {
    let base = file.train_settings();
    let seeds = match &eval.seeds {
        None => vec![base.seed.unwrap_or(0)],
        Some(s) if s.is_empty() => {
            return Err(Error::Config("eval.seeds is empty: give at least one seed, or leave it out to use train.seed".into()));
        }
        Some(s) => s.clone(),
    };
    if let Some(&dup) = seeds.iter().enumerate().find_map(|(i, s)| seeds[..i].contains(s).then_some(s)) {
        return Err(Error::Config(format!("eval.seeds repeats seed {dup}: each seed must be distinct")));
    }
    crate::data::count_rows(&eval.data).map_err(|e| Error::Config(format!("eval.data: {e} (every setting is checked before any work)")))?;
    let out = base.out.clone().ok_or_else(|| Error::Config("train.out is required in the pipeline's [train]".into()))?;
    for alpha in [0.0, base.alpha.unwrap_or(0.5)] {
        TrainSettings { alpha: Some(alpha), seed: Some(seeds[0]), out: Some(out.clone()), ..base.clone() }.validate(student.clone())?;
    }
    Ok(seeds)
}

/// Stage one: the training cache, by `generate` or `cache-teacher`; returns its directory.
fn stage_one(checked: &Checked, opts: &RunOptions, on_step: &mut dyn FnMut(Step<'_>)) -> Result<PathBuf> {
    match &checked.generate {
        Some(g) => {
            let crate::config::Generator::Teacher(teacher) = &g.model else {
                return Err(Error::Config("a pipeline's [generate] runs the teacher: give generate.teacher, not generate.student".into()));
            };
            on_step(Step::StageOne { command: "generate", teacher });
            let s = stage::generate::generate(g, opts)?;
            on_step(Step::Generated(&s));
            Ok(s.cache.as_ref().expect("the teacher's generation writes a cache").dir.clone())
        }
        None => {
            on_step(Step::StageOne { command: "cache-teacher", teacher: &checked.cache.teacher });
            let s = stage::cache_teacher(&checked.cache, opts)?;
            on_step(Step::Cached(&s));
            Ok(s.dir)
        }
    }
}

/// The teacher on the held-out data: a cache at T = 1 with k = 1 (exact perplexity or
/// accuracy; its top-1 for agreement), beside the training cache as `<name>-eval`.
fn teacher_on_held_out(
    cache: &CacheTeacherConfig,
    eval: &EvalSettings,
    opts: &RunOptions,
    on_step: &mut dyn FnMut(Step<'_>),
) -> Result<PathBuf> {
    let name = cache.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "cache".into());
    let held_out = CacheTeacherConfig {
        data: eval.data.clone(),
        out: cache.out.with_file_name(format!("{name}-eval")),
        temperature: 1.0,
        top_k: Some(1),
        ..cache.clone()
    };
    on_step(Step::TeacherCache(&held_out.out));
    let s = stage::cache_teacher(&held_out, opts)?;
    on_step(Step::Cached(&s));
    Ok(held_out.out)
}

/// Every seed's hard-label-only (alpha = 0) and distilled student, each trained afresh in
/// `[train] out`/`hard-seedS` or `distilled-seedS` and evaluated on the held-out data with
/// the teacher's cache of it. Returns the reports by row of the table, and the runs.
fn train_students(
    file: &PipelineFile,
    student: &StudentSpec,
    eval: &EvalSettings,
    seeds: &[u64],
    teacher_cache: &Path,
    opts: &RunOptions,
    on_step: &mut dyn FnMut(Step<'_>),
) -> Result<(Vec<TableRow>, Vec<PathBuf>)> {
    let base = file.train_settings();
    let out = base.out.clone().ok_or_else(|| Error::Config("train.out is required in the pipeline's [train]".into()))?;
    let train_opts = TrainOptions { quiet: opts.quiet, resume: false, command: opts.command.clone() };
    let (mut rows, mut trained) = (Vec::new(), Vec::new());
    for (label, alpha) in [("hard labels only", 0.0f32), ("distilled", base.alpha.unwrap_or(0.5))] {
        let mut reports = Vec::new();
        for &seed in seeds {
            let run = out.join(if alpha == 0.0 { format!("hard-seed{seed}") } else { format!("distilled-seed{seed}") });
            if run.exists() {
                std::fs::remove_dir_all(&run).map_err(|e| Error::io(&run, e))?;
            }
            let cfg =
                TrainSettings { alpha: Some(alpha), seed: Some(seed), out: Some(run.clone()), ..base.clone() }.validate(student.clone())?;
            on_step(Step::Training { label, seed, run: &run });
            let s = crate::train::train_student(&cfg, &train_opts)?;
            on_step(Step::Trained(&s));
            let r = stage::eval::eval_student(&run, &eval.data, Some(teacher_cache), &PredictOptions::default())?;
            on_step(Step::Evaluated(&r));
            reports.push(r);
            trained.push(run);
        }
        rows.push((format!("{label} (alpha = {alpha})"), reports));
    }
    Ok((rows, trained))
}

/// The training curves of the runs and the cache's histograms, beside the table; the
/// results stand without the picture, so a drawing failure is a warning.
fn draw_report(train_cache: &Path, trained: &[PathBuf], picture: &Path, on_step: &mut dyn FnMut(Step<'_>)) {
    match stage::inspect(train_cache).and_then(|(_, stats)| stage::report::report(trained, Some(&stats), picture)) {
        Ok(_) => on_step(Step::Drawn(picture)),
        Err(e) => on_step(Step::Warning(format!("{}: no report drawn: {e}", picture.display()))),
    }
}

/// Mean and sample standard deviation (0 for one value).
fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64;
    (m, var.sqrt())
}

/// The comparison as Markdown: the teacher, then each row's students (mean ± standard
/// deviation over the seeds): held-out perplexity (LM) or accuracy, and top-1 agreement.
pub fn results_table(teacher: &EvalReport, rows: &[TableRow], seeds: usize) -> String {
    let lm = teacher.perplexity.is_some();
    let metric = if lm { "held-out perplexity" } else { "held-out accuracy" };
    let mut t = format!("| model | {metric} | top-1 agreement with teacher |\n|---|---|---|\n");
    let tv = if lm { teacher.perplexity.unwrap_or(f64::NAN) } else { teacher.accuracy.unwrap_or(f64::NAN) };
    t.push_str(&format!("| teacher | {tv:.4} | 1 |\n"));
    for (name, reports) in rows {
        let vals: Vec<f64> = reports.iter().map(|r| if lm { r.perplexity } else { r.accuracy }.unwrap_or(f64::NAN)).collect();
        let agr: Vec<f64> = reports.iter().map(|r| r.top1_agreement.unwrap_or(f64::NAN)).collect();
        let (m, s) = mean_std(&vals);
        let (am, as_) = mean_std(&agr);
        if reports.len() > 1 {
            t.push_str(&format!("| student, {name} | {m:.4} ± {s:.4} | {am:.4} ± {as_:.4} |\n"));
        } else {
            t.push_str(&format!("| student, {name} | {m:.4} | {am:.4} |\n"));
        }
    }
    if seeds > 1 {
        t.push_str(&format!("\nmean ± standard deviation over {seeds} seeds\n"));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By hand: accuracies 0.5 and 0.7 have mean 0.6 and sample standard deviation
    /// sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1414; one seed prints no spread.
    #[test]
    fn the_table_gives_mean_and_spread_over_the_seeds() {
        let acc = |a: f64| EvalReport { accuracy: Some(a), top1_agreement: Some(a), ..Default::default() };
        let t = results_table(&acc(0.9), &[("distilled (alpha = 0.5)".into(), vec![acc(0.5), acc(0.7)])], 2);
        assert!(t.contains("| teacher | 0.9000 | 1 |"), "{t}");
        assert!(t.contains("| student, distilled (alpha = 0.5) | 0.6000 ± 0.1414 | 0.6000 ± 0.1414 |"), "{t}");
        assert!(t.contains("over 2 seeds"), "{t}");
        let t = results_table(&acc(0.9), &[("hard labels only (alpha = 0)".into(), vec![acc(0.5)])], 1);
        assert!(t.contains("| student, hard labels only (alpha = 0) | 0.5000 | 0.5000 |") && !t.contains("seeds"), "{t}");
    }
}

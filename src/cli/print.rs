//! What each command prints: summaries and reports on stdout; warnings and notes on stderr
//! (warnings not with --quiet).

use std::path::{Path, PathBuf};

use distill::Result;
use distill::stage;

pub fn generate_summary(s: &stage::generate::GenerateSummary, quiet: bool) {
    if !quiet {
        for w in &s.warnings {
            eprintln!("warning: {w}");
        }
    }
    let how = if s.kv_cache { "with the KV cache" } else { "rerunning each sequence" };
    let rate = if s.decode_seconds > 0.0 && s.cache.is_none() {
        format!(", {:.1} tokens/s", s.tokens_this_run as f64 / s.decode_seconds)
    } else if s.decode_seconds > 0.0 {
        format!(
            ", {:.1} tokens/s ({:.0} % of the time on soft labels and picks)",
            s.tokens_this_run as f64 / s.decode_seconds,
            100.0 * s.label_seconds / s.decode_seconds
        )
    } else {
        String::new()
    };
    println!(
        "{}: {} sequences, {} tokens generated ({} ended at the end-of-sequence token), decoded {how}{rate}; {:.1}s",
        s.dataset.display(),
        s.sequences,
        s.tokens,
        s.stopped_at_eos,
        s.seconds
    );
    let Some(c) = &s.cache else { return };
    let resumed = if c.resumed_shards > 0 { format!(" (resumed after {} finished shards)", c.resumed_shards) } else { String::new() };
    println!("{}: {} positions in {} shards ({} bytes){resumed}", c.dir.display(), c.positions, c.shards, c.bytes);
    if !quiet {
        for w in &c.warnings {
            eprintln!("warning: {w}");
        }
    }
}

pub fn cache_summary(s: &stage::CacheSummary, quiet: bool) {
    if !quiet {
        for w in &s.warnings {
            eprintln!("warning: {w}");
        }
    }
    if s.already_complete {
        println!(
            "{}: cache already complete ({} rows, {} positions, {} shards); nothing to do",
            s.dir.display(),
            s.rows,
            s.positions,
            s.shards
        );
        return;
    }
    let rate = if s.seconds > 0.0 { s.rows_computed as f64 / s.seconds } else { 0.0 };
    let mut line = format!(
        "{}: cached {} rows, {} positions in {} shards ({} bytes) in {:.2}s, {:.1} rows/s",
        s.dir.display(),
        s.rows,
        s.positions,
        s.shards,
        s.bytes,
        s.seconds,
        rate
    );
    if s.tokens_computed > 0 {
        line.push_str(&format!(", {:.0} tokens/s", s.tokens_computed as f64 / s.seconds.max(1e-9)));
    }
    if s.resumed_shards > 0 {
        line.push_str(&format!(" (resumed after {} finished shards)", s.resumed_shards));
    }
    println!("{line}");
    let t = &s.timings;
    println!(
        "  time: teacher {:.2}s, soft labels {:.2}s, data+tokenize {:.2}s, encode+write {:.2}s",
        t.teacher, t.soft_labels, t.data, t.write
    );
}

/// `distill report`: the runs' curves (and the cache's histograms) drawn into `out`.
pub fn draw_report(runs: &[PathBuf], cache: Option<&Path>, out: &Path) -> Result<()> {
    let stats = cache.map(|c| stage::inspect(c).map(|(_, stats)| stats)).transpose()?;
    let skipped = stage::report::report(runs, stats.as_ref(), out)?;
    if skipped > 0 {
        eprintln!("note: {skipped} values of metrics.csv were not drawn (not finite, or beyond what an axis can span)");
    }
    println!("{}: {} runs{}", out.display(), runs.len(), if cache.is_some() { " and the cache's histograms" } else { "" });
    Ok(())
}

/// `distill eval`: the student's figures, and the teacher's from the cache, as text or JSON.
pub fn evaluate(student: &Path, data: &Path, cache: Option<&Path>, opts: &stage::eval::PredictOptions, json: bool) -> Result<()> {
    let r = stage::eval::eval_student(student, data, cache, opts)?;
    for note in &r.notes {
        eprintln!("note: {note}");
    }
    let teacher = cache.map(stage::eval::teacher_metrics).transpose()?;
    if json {
        let mut v = serde_json::to_value(&r).expect("serialises");
        if let Some(t) = &teacher {
            v["teacher"] = serde_json::to_value(t).expect("serialises");
        }
        println!("{v}");
        return Ok(());
    }
    println!("{}", render_report(&r));
    if let Some(t) = &teacher {
        println!("teacher (from the cache, at its temperature): {}", render_report(t));
    }
    Ok(())
}

/// One step of `distill run`, as the separate commands print it: what starts on stderr,
/// summaries, the cache's description, reports and the table on stdout.
pub fn step(step: distill::pipeline::Step<'_>, quiet: bool) {
    use distill::pipeline::Step;
    match step {
        Step::StageOne { command, teacher } => eprintln!("== stage one: {command} ({})", teacher.display()),
        Step::Generated(s) => generate_summary(s, quiet),
        Step::Cached(s) => cache_summary(s, quiet),
        Step::Inspected(text) => print!("{text}"),
        Step::TeacherCache(out) => eprintln!("== teacher on the held-out data: cache-teacher T = 1, k = 1 -> {}", out.display()),
        Step::Training { label, seed, run } => eprintln!("== stage two: {label}, seed {seed} -> {}", run.display()),
        Step::Trained(s) => train_summary(s),
        Step::Evaluated(r) => println!("  {}", render_report(r)),
        Step::Table(table) => println!("\n{table}"),
        Step::Drawn(picture) => println!("{}", picture.display()),
        Step::Warning(w) => eprintln!("warning: {w}"),
        Step::Round { seed, round, dir } => eprintln!("== on-policy round {round}, seed {seed} -> {}", dir.display()),
    }
}

pub fn train_summary(s: &distill::train::TrainSummary) {
    for n in &s.notes {
        eprintln!("note: {n}");
    }
    let resumed = s.resumed_from.map(|r| format!(" (resumed from step {r})")).unwrap_or_default();
    println!(
        "{}: trained {} steps{} in {:.1}s, {:.0} positions/s ({:.0} excluding data waits), final loss {:.4}, waited for data {:.1}% of the time (cache reads {:.1}%, on the loader thread)",
        s.out.display(),
        s.steps,
        resumed,
        s.seconds,
        s.positions_per_second,
        s.training_positions_per_second,
        s.final_loss,
        100.0 * s.data_wait_seconds / s.seconds.max(1e-9),
        100.0 * s.cache_read_seconds / s.seconds.max(1e-9)
    );
}

fn render_report(r: &stage::eval::EvalReport) -> String {
    let mut parts = Vec::new();
    if let Some(a) = r.accuracy {
        parts.push(format!("accuracy {:.4}", a));
    }
    if let Some(p) = r.perplexity {
        parts.push(format!("perplexity {:.3}", p));
    }
    if let Some(v) = r.nll {
        parts.push(format!("NLL {v:.4}"));
    }
    if let Some(v) = r.ece {
        parts.push(format!("ECE {v:.4}"));
    }
    if let Some(a) = r.top1_agreement {
        parts.push(format!("top-1 agreement with teacher {:.4}", a));
    }
    if let Some(v) = r.kl_to_teacher {
        parts.push(format!("KL to teacher {v:.4}"));
    }
    parts.push(format!("over {} positions", r.positions));
    parts.join(", ")
}

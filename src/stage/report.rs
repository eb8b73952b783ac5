//! `distill report`: pictures of training runs and of a cache, as one SVG file.
//!
//! In: run directories of `train-student` (their `metrics.csv`: step, loss, kl, ce, lr) and
//! optionally a cache (its kept-mass and entropy histograms, read as `inspect` reads them).
//! Out: a grid of panels, one curve per run in each training panel (distilled and
//! hard-label-only runs side by side), drawn with `plotters`' SVG backend.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::stage::inspect::CacheStats;

/// One run's metrics, column by column, in step order.
#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    pub name: String,
    pub step: Vec<f64>,
    pub loss: Vec<f64>,
    pub kl: Vec<f64>,
    pub ce: Vec<f64>,
    pub lr: Vec<f64>,
    /// Values not drawn: not finite, or beyond what an axis can span.
    pub skipped: usize,
}

/// Read `run/metrics.csv` (the header names the columns).
pub fn read_metrics(run: &Path) -> Result<RunMetrics> {
    let path = run.join("metrics.csv");
    let text = crate::untrusted::read_to_string(&path, crate::untrusted::Cap::Log)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| Error::data(&path, format!("no `{name}` column (columns: {})", header.join(", "))))
    };
    let (step, loss, kl, ce, lr) = (col("step")?, col("loss")?, col("kl")?, col("ce")?, col("lr")?);
    let name = run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| run.display().to_string());
    let mut m = RunMetrics { name, ..RunMetrics::default() };
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let num = |c: usize| {
            fields
                .get(c)
                .and_then(|f| f.trim().parse::<f64>().ok())
                .ok_or_else(|| Error::data(&path, format!("line {}: column `{}` is not a number", i + 2, header[c])))
        };
        let at = num(step)?;
        if !(0.0..=MAX_STEP).contains(&at) {
            m.skipped += 5;
            continue;
        }
        m.step.push(at);
        for (c, column) in [(loss, &mut m.loss), (kl, &mut m.kl), (ce, &mut m.ce), (lr, &mut m.lr)] {
            let v = num(c)?;
            let drawable = v.is_finite() && v.abs() <= MAX_VALUE;
            m.skipped += usize::from(!drawable);
            column.push(if drawable { v } else { f64::NAN });
        }
    }
    if m.step.is_empty() {
        return Err(Error::data(&path, "holds no steps"));
    }
    Ok(m)
}

/// The largest step drawn (a step past it, or not a number, drops its line).
const MAX_STEP: f64 = 1e15;
/// The largest magnitude drawn: an axis over values beyond it would overflow its range.
const MAX_VALUE: f64 = 1e100;

/// Draw the report for `runs` (and the cache statistics, if given) into `out` (SVG);
/// returns how many values were not drawn (not finite, or beyond what an axis can span).
pub fn report(runs: &[PathBuf], cache: Option<&CacheStats>, out: &Path) -> Result<usize> {
    let inputs: Vec<PathBuf> = runs.iter().map(|r| r.join("metrics.csv")).collect();
    let named: Vec<(&str, &Path)> = inputs.iter().map(|p| ("the run's", p.as_path())).collect();
    crate::untrusted::refuse_overlap(("--out", out), &named)?;
    let metrics = runs.iter().map(|r| read_metrics(r)).collect::<Result<Vec<_>>>()?;
    let draw_err = |e: String| Error::io(out, std::io::Error::other(format!("cannot draw the report: {e}")));
    let rows = if cache.is_some() { 3 } else { 2 };
    let mut svg = String::new();
    draw(&mut svg, &metrics, cache, rows).map_err(draw_err)?;
    crate::integrity::write_atomic(out, svg.as_bytes())?;
    Ok(metrics.iter().map(|m| m.skipped).sum())
}

/// Draw the panels into `svg`.
fn draw(svg: &mut String, metrics: &[RunMetrics], cache: Option<&CacheStats>, rows: u32) -> std::result::Result<(), String> {
    let root = SVGBackend::with_string(svg, (1200, 360 * rows)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((rows as usize, 2));
    type Column = fn(&RunMetrics) -> &Vec<f64>;
    let curves: [(&str, Column); 4] =
        [("loss", |m| &m.loss), ("KL (soft labels)", |m| &m.kl), ("CE (hard labels)", |m| &m.ce), ("learning rate", |m| &m.lr)];
    for (area, (title, column)) in panels.iter().zip(curves) {
        curve_panel(area, title, metrics, column)?;
    }
    if let Some(stats) = cache {
        let kept: Vec<f64> = stats.kept_mass_histogram.iter().map(|&c| c as f64).collect();
        let entropy: Vec<f64> = stats.entropy_histogram.iter().map(|&c| c as f64).collect();
        histogram_panel(&panels[4], "teacher mass kept in the top-k", (0.0, 1.0), &kept)?;
        histogram_panel(&panels[5], "teacher entropy / log(vocabulary)", (0.0, 1.0), &entropy)?;
    }
    root.present().map_err(|e| e.to_string())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// One metric against the step, a line per run.
fn curve_panel(area: &Area<'_>, title: &str, runs: &[RunMetrics], column: fn(&RunMetrics) -> &Vec<f64>) -> std::result::Result<(), String> {
    let finite = || runs.iter().flat_map(|m| column(m).iter().copied()).filter(|v| v.is_finite());
    let (lo, hi) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = match (lo.is_finite(), lo < hi) {
        (false, _) => (0.0, 1.0), // no finite value to draw
        (true, true) => (lo, hi),
        (true, false) => (lo - 0.5, lo + 0.5),
    };
    let last = runs.iter().flat_map(|m| m.step.last().copied()).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..last, lo..hi)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("step").draw().map_err(|e| e.to_string())?;
    for (i, m) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = m.step.iter().zip(column(m)).filter(|(_, v)| v.is_finite()).map(|(&s, &v)| (s, v)).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(m.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw().map_err(|e| e.to_string())
}

/// Bars of `counts` over `range`, split evenly.
fn histogram_panel(area: &Area<'_>, title: &str, range: (f64, f64), counts: &[f64]) -> std::result::Result<(), String> {
    let top = counts.iter().copied().fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(range.0..range.1, 0.0..top * 1.05)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().y_desc("positions").draw().map_err(|e| e.to_string())?;
    let width = (range.1 - range.0) / counts.len().max(1) as f64;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x = range.0 + i as f64 * width;
            Rectangle::new([(x, 0.0), (x + width * 0.95, c)], BLUE.mix(0.6).filled())
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}

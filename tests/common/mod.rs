//! Helpers shared by the integration tests: run the real `distill` binary, find the
//! fixtures in data/, run the venv's Python for outside readers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn data(rel: &str) -> PathBuf {
    repo().join("data").join(rel)
}

/// Run the distill binary with `args`.
pub fn distill<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_distill")).args(args).env("OMP_NUM_THREADS", "2").output().expect("distill runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert success, printing both streams otherwise.
#[track_caller]
pub fn ok(o: &Output) {
    assert!(o.status.success(), "distill failed: {:?}\nstdout:\n{}\nstderr:\n{}", o.status, stdout(o), stderr(o));
}

/// Assert a clean failure: non-zero exit, no panic, and stderr containing every needle.
#[track_caller]
pub fn fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success.\nstdout:\n{}\nstderr:\n{err}", stdout(o));
    assert!(!err.contains("panicked"), "distill panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

/// `cache-teacher` arguments for the digits teacher over `data/digits/<split>` into `out`,
/// then `extra`.
pub fn digits_cache_args(split: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "cache-teacher".to_string(),
        "--teacher".into(),
        data("digits/teacher.onnx").display().to_string(),
        "--data".into(),
        data(&format!("digits/{split}")).display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--quiet".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// `distill cache-teacher` on the digits teacher over `data/digits/<split>` into `out`, with
/// `extra` flags; asserts success.
pub fn cache_digits(split: &str, out: &Path, extra: &[&str]) {
    ok(&distill(digits_cache_args(split, out, extra)));
}

/// Python with onnxruntime/pyarrow/duckdb: `python3` on PATH (the .venv when run through .ci/test).
pub fn python(script: &str, args: &[&Path]) -> Output {
    Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3 runs")
}

/// Whether a test that needs a tool beyond the project's `.venv` (torch in `.venv-torch`)
/// can run: `true` if `available`. Otherwise the test is skipped with the reason printed,
/// unless `DISTILL_REQUIRE_ALL=1` (`.ci/test` sets it) makes the missing tool a failure.
pub fn have_tool(available: bool, what: &str, how: &str) -> bool {
    if available {
        return true;
    }
    assert!(std::env::var("DISTILL_REQUIRE_ALL").as_deref() != Ok("1"), "{what} is missing: {how}");
    eprintln!("SKIPPED: {what} is missing ({how})");
    false
}

pub fn temp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("distill-test-").tempdir().expect("temp dir")
}

/// The first `n` rows of data/lm/train.jsonl, written to `dir/train.jsonl`.
pub fn lm_rows(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(data("lm/train.jsonl")).unwrap();
    let p = dir.join("train.jsonl");
    std::fs::write(&p, text.lines().take(n).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    p
}

/// `cache-teacher` arguments for the LM teacher over prompt/completion rows `rows` into
/// `out`, then `extra`.
pub fn lm_cache_args(rows: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "cache-teacher",
        "--teacher",
        &data("lm/teacher.onnx").display().to_string(),
        "--tokenizer",
        &data("lm/tokenizer.json").display().to_string(),
        "--data",
        &rows.display().to_string(),
        "--prompt-column",
        "prompt",
        "--completion-column",
        "completion",
        "--out",
        &out.display().to_string(),
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Start `distill args`, wait until `out/checkpoint.json` points at step `step` or later,
/// and kill the run (SIGKILL), as a crash would.
pub fn kill_after_checkpoint(args: &[String], out: &Path, step: u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_distill")).args(args).spawn().unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(out.join("checkpoint.json"))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v["step"].as_u64().unwrap_or(0) >= step
        {
            break;
        }
        assert!(started.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Two caches of the same rows: the same positions and hard labels, and the soft labels
/// (and hard-label log-probs, within 1e-4) equal within the encoding error. Log-probs are stored as the top one plus
/// multiples of 1/256 (each within half a step), so two encodings of logits that differ
/// by float rounding differ by at most a step; near-ties may swap ids, on at most 1 % of
/// the positions (then the ids they share still agree). Tail masses and entropies are
/// stored as f32: within 1e-4 nats.
pub fn assert_same_soft_labels(a: &Path, b: &Path) {
    assert_soft_labels_within(a, b, 1.0 / 256.0 + 1e-4, 1e-4, 1);
}

/// [`assert_same_soft_labels`] with its tolerances given: log-probs within `lp_tol`, tail
/// masses, entropies and hard-label log-probs within `stat_tol`, other ids at no more than
/// `swapped_percent` % of the positions.
pub fn assert_soft_labels_within(a: &Path, b: &Path, lp_tol: f32, stat_tol: f32, swapped_percent: usize) {
    let ((_, x), (_, y)) = (crate::cache_teacher::read_all(a), crate::cache_teacher::read_all(b));
    assert!(!x.is_empty());
    assert_eq!((&x.rows, &x.positions, &x.hard_labels), (&y.rows, &y.positions, &y.hard_labels), "positions or labels differ");
    let (k, step) = (x.k, lp_tol);
    let mut swapped = 0;
    for i in 0..x.len() {
        let (ia, ib) = (&x.ids[i * k..(i + 1) * k], &y.ids[i * k..(i + 1) * k]);
        swapped += (ia != ib) as usize;
        for (j, id) in ia.iter().enumerate() {
            if let Some(jb) = ib.iter().position(|v| v == id) {
                let (la, lb) = (x.logprobs[i * k + j], y.logprobs[i * k + jb]);
                assert!((la - lb).abs() <= step, "position {i}, id {id}: log-prob {la} vs {lb}");
            }
        }
        let (ta, tb) = (x.tail_logmass[i], y.tail_logmass[i]);
        assert!((ta - tb).abs() <= stat_tol || ta == tb, "position {i}: tail {ta} vs {tb}");
        assert!((x.entropy[i] - y.entropy[i]).abs() <= stat_tol, "position {i}: entropy {} vs {}", x.entropy[i], y.entropy[i]);
    }
    for (i, (la, lb)) in x.hard_label_logprobs.iter().zip(&y.hard_label_logprobs).enumerate() {
        let close = match (la, lb) {
            (Some(a), Some(b)) => (a - b).abs() <= stat_tol || (a.is_nan() && b.is_nan()),
            (a, b) => a == b,
        };
        assert!(close, "position {i}: hard-label log-prob {la:?} vs {lb:?}");
    }
    assert!(swapped * 100 <= x.len() * swapped_percent, "{swapped} of {} positions hold other ids", x.len());
}

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

/// `distill cache-teacher` on the digits teacher over `data/digits/<split>` into `out`, with
/// `extra` flags; asserts success.
pub fn cache_digits(split: &str, out: &Path, extra: &[&str]) {
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
    ok(&distill(a));
}

/// Python with onnxruntime/pyarrow/duckdb: `python3` on PATH (the .venv when run through .ci/test).
pub fn python(script: &str, args: &[&Path]) -> Output {
    Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3 runs")
}

pub fn temp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("distill-test-").tempdir().expect("temp dir")
}

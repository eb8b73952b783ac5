//! Helpers shared by the integration tests: run the real `distill` binary through the
//! [`Distill`] builder, share the caches several tests only read, find the fixtures in
//! data/, run the venv's Python for outside readers, skip a test whose tool is missing.

#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn data(rel: &str) -> PathBuf {
    repo().join("data").join(rel)
}

/// One word of a command line: text, a number or a path.
pub trait Arg {
    fn into_arg(self) -> OsString;
}

macro_rules! display_args {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn into_arg(self) -> OsString {
                self.to_string().into()
            }
        }
    )*};
}
display_args!(&str, &&str, String, &String, u32, u64, usize, i32, i64, f32, f64);

macro_rules! path_args {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn into_arg(self) -> OsString {
                AsRef::<std::ffi::OsStr>::as_ref(&self).to_os_string()
            }
        }
    )*};
}
path_args!(&Path, PathBuf, &PathBuf, &std::ffi::OsStr, OsString, &OsString);

/// A `distill` command line under construction, run by one of its terminal methods
/// ([`run`](Self::run), [`ok`](Self::ok), [`fails_with`](Self::fails_with), [`spawn`](Self::spawn)).
/// `OMP_NUM_THREADS=2` is always set; the terminal methods borrow, so one builder can be run
/// again (a rerun of the same command).
#[must_use]
#[derive(Clone, Debug)]
pub struct Distill {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    limit: Option<Duration>,
}

impl Distill {
    /// `distill SUBCOMMAND`.
    pub fn new(subcommand: &str) -> Distill {
        Distill::bare().arg(subcommand)
    }

    /// `distill` with no subcommand yet (for `--help`, or a subcommand held in a variable).
    pub fn bare() -> Distill {
        Distill { args: Vec::new(), envs: Vec::new(), limit: None }
    }

    /// `cache-teacher` with the digits teacher over `data/digits/<split>` into `out`, `--quiet`.
    pub fn digits_cache(split: &str, out: &Path) -> Distill {
        Distill::new("cache-teacher")
            .path("--teacher", data("digits/teacher.onnx"))
            .path("--data", data(&format!("digits/{split}")))
            .path("--out", out)
            .arg("--quiet")
    }

    /// `cache-teacher` with the LM teacher and tokenizer over `rows` into `out`, `--quiet`; the
    /// columns to read (and a chat template) are the caller's.
    pub fn lm_teacher(rows: &Path, out: &Path) -> Distill {
        Distill::new("cache-teacher")
            .path("--teacher", data("lm/teacher.onnx"))
            .path("--tokenizer", data("lm/tokenizer.json"))
            .path("--data", rows)
            .path("--out", out)
            .arg("--quiet")
    }

    /// `cache-teacher` with the LM teacher and tokenizer over the prompt/completion rows
    /// `rows` into `out`, `--quiet`.
    pub fn lm_cache(rows: &Path, out: &Path) -> Distill {
        Distill::lm_teacher(rows, out).opt("--prompt-column", "prompt").opt("--completion-column", "completion")
    }

    /// `cache-teacher` with the BERT text classifier over the `text` column of `rows`
    /// (64 tokens at most) into `out`, `--quiet`.
    pub fn textcls_cache(rows: &Path, out: &Path) -> Distill {
        Distill::new("cache-teacher")
            .path("--teacher", data("textcls/teacher.onnx"))
            .path("--tokenizer", data("textcls/tokenizer.json"))
            .path("--data", rows)
            .opt("--text-column", "text")
            .opt("--max-seq-len", "64")
            .path("--out", out)
            .arg("--quiet")
    }

    /// `generate --teacher TEACHER --tokenizer TOKENIZER --data PROMPTS --out OUT` (how many
    /// tokens, how they are drawn and `--quiet` are the caller's).
    pub fn generate(teacher: impl AsRef<Path>, tokenizer: impl AsRef<Path>, prompts: impl AsRef<Path>, out: impl AsRef<Path>) -> Distill {
        Distill::new("generate").path("--teacher", teacher).path("--tokenizer", tokenizer).path("--data", prompts).path("--out", out)
    }

    /// `train-student --cache CACHE --data ROWS --out OUT` (the student and `--quiet` are the
    /// caller's).
    pub fn train(cache: impl Arg, rows: impl Arg, out: impl Arg) -> Distill {
        Distill::new("train-student").opt("--cache", cache).opt("--data", rows).opt("--out", out)
    }

    /// One more word.
    pub fn arg(mut self, a: impl Arg) -> Distill {
        self.args.push(a.into_arg());
        self
    }

    /// More words.
    pub fn args<A: Arg>(mut self, words: impl IntoIterator<Item = A>) -> Distill {
        self.args.extend(words.into_iter().map(Arg::into_arg));
        self
    }

    /// `flag value`.
    pub fn opt(self, flag: &str, value: impl Arg) -> Distill {
        self.arg(flag).arg(value)
    }

    /// `flag path`.
    pub fn path(self, flag: &str, path: impl AsRef<Path>) -> Distill {
        self.arg(flag).arg(path.as_ref())
    }

    /// The value after `flag` replaced by `value`, where it stands (the flag must be there).
    pub fn set(mut self, flag: &str, value: impl Arg) -> Distill {
        let at = self.args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} is not in {:?}", self.args));
        self.args[at + 1] = value.into_arg();
        self
    }

    /// Every `word` dropped (`--quiet`, to see the warnings it hides).
    pub fn without(mut self, word: &str) -> Distill {
        self.args.retain(|a| a != word);
        self
    }

    /// An environment variable for the run.
    pub fn env(mut self, key: impl Arg, value: impl Arg) -> Distill {
        self.envs.push((key.into_arg(), value.into_arg()));
        self
    }

    /// Killed if it runs past `limit`, failing the test that way (a hang becomes a failure).
    pub fn within(mut self, limit: Duration) -> Distill {
        self.limit = Some(limit);
        self
    }

    /// The command line's words, after `distill`.
    pub fn words(&self) -> &[OsString] {
        &self.args
    }

    /// The command, not yet started.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_distill"));
        cmd.args(&self.args).env("OMP_NUM_THREADS", "2");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Started, its output inherited (as the test's own).
    pub fn spawn(&self) -> Child {
        self.command().spawn().expect("distill starts")
    }

    /// Run to the end (or to the time limit, if one is set).
    pub fn run(&self) -> Output {
        match self.limit {
            Some(limit) => run_within(limit, self.command()),
            None => self.command().output().expect("distill runs"),
        }
    }

    /// Run, asserting success (both streams printed otherwise).
    #[track_caller]
    pub fn ok(&self) -> Output {
        let o = self.run();
        ok(&o);
        o
    }

    /// Run, asserting a clean failure whose stderr holds every needle (see [`fails_with`]).
    #[track_caller]
    pub fn fails_with(&self, needles: &[&str]) -> Output {
        let o = self.run();
        fails_with(&o, needles);
        o
    }
}

/// Run `cmd`, killed if it runs past `limit` (then the test fails, naming the hang).
pub fn run_within(limit: Duration, mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the command starts");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            child.kill().ok();
            let o = child.wait_with_output().expect("output");
            panic!("{what} still ran after {limit:?} (a hang):\n{}", stderr(&o));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
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
pub fn digits_cache_args(split: &str, out: &Path, extra: &[&str]) -> Distill {
    Distill::digits_cache(split, out).args(extra)
}

/// `distill cache-teacher` on the digits teacher over `data/digits/<split>` into `out`, with
/// `extra` flags; asserts success.
pub fn cache_digits(split: &str, out: &Path, extra: &[&str]) {
    digits_cache_args(split, out, extra).ok();
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

/// Whether `python3` on PATH imports `module` (a package a test needs beyond onnxruntime,
/// numpy and pyarrow); pass the answer to [`have_tool`].
pub fn have_python_module(module: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
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
pub fn lm_cache_args(rows: &Path, out: &Path, extra: &[&str]) -> Distill {
    Distill::lm_cache(rows, out).args(extra)
}

/// Start `run`, wait until `out/checkpoint.json` points at step `step` or later, and kill
/// the run (SIGKILL), as a crash would.
pub fn kill_after_checkpoint(run: &Distill, out: &Path, step: u64) {
    let mut child = run.spawn();
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(out.join("checkpoint.json"))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v["step"].as_u64().unwrap_or(0) >= step
        {
            break;
        }
        assert!(started.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(2));
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

/// Where the caches shared by the tests of one run live: a temporary directory made on first
/// use and removed when the test binary exits.
static SHARED_DIR: OnceLock<PathBuf> = OnceLock::new();

fn shared_dir() -> &'static Path {
    extern "C" fn remove_shared_dir() {
        if let Some(dir) = SHARED_DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    SHARED_DIR.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("distill-shared-").tempdir().expect("shared temp dir").keep();
        // SAFETY: `remove_shared_dir` is an `extern "C" fn()` that does not unwind (it ignores
        // the removal's error), as atexit requires.
        assert_eq!(unsafe { libc::atexit(remove_shared_dir) }, 0, "atexit");
        dir
    })
}

/// A cache that several tests read and none changes, made by `make` into the shared
/// directory as `name` once per test run, by the first test that asks (the others, in
/// their threads, wait for it). A test that changes a cache takes a [`private_copy`].
pub fn shared_cache(cell: &'static OnceLock<PathBuf>, name: &str, make: impl FnOnce(&Path)) -> &'static Path {
    cell.get_or_init(|| {
        let out = shared_dir().join(name);
        make(&out);
        out
    })
}

/// Digits over the training split at T = 4 (every class kept), shards of 400 rows: read by
/// stage two's tests.
pub fn digits_t4_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    shared_cache(&CACHE, "digits-t4", |out| cache_digits("train.parquet", out, &["--temperature", "4", "--rows-per-shard", "400"]))
}

/// Digits over the training split with every setting at its default.
pub fn digits_default_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    shared_cache(&CACHE, "digits-default", |out| cache_digits("train.parquet", out, &[]))
}

/// Digits over the test split, k = 3.
pub fn digits_test_k3_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    shared_cache(&CACHE, "digits-test-k3", |out| cache_digits("test.parquet", out, &["--top-k", "3"]))
}

/// Digits over the training split at T = 3, shards of 100 rows: the one uninterrupted run
/// that sharded captures are compared with.
pub fn digits_t3_one_run_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    shared_cache(&CACHE, "digits-t3-rps100", |out| cache_digits("train.parquet", out, &["--temperature", "3", "--rows-per-shard", "100"]))
}

/// A copy of the cache `from` at `to` (every regular file, the lock file too), for a test
/// that damages, edits or resumes it.
pub fn private_copy(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file())) {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to.to_path_buf()
}

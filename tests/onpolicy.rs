//! On-policy distillation from caches: `generate --student` (the student writes, with its
//! log-prob of each token), `cache-teacher --token-ids` over its completions (the teacher
//! scores), `train-student --divergence sampled-rkl` (the student learns from them), and
//! `[onpolicy]` rounds in `distill run`.

use std::path::{Path, PathBuf};

use crate::common::*;

/// A trained decoder student over the LM fixture's first 48 rows: `dir/cache`, the rows and
/// the run `dir/student`.
fn student(dir: &Path, shape: &str) -> (PathBuf, PathBuf, PathBuf) {
    let rows = lm_rows(dir, 48);
    let cache = dir.join("cache");
    Distill::lm_cache(&rows, &cache).opt("--top-k", 16).ok();
    let run = dir.join("student");
    Distill::train(&cache, &rows, &run).opt("--student", shape).opt("--steps", 2).arg("--quiet").ok();
    (cache, rows, run)
}

fn prompts(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(data("lm/valid.jsonl")).unwrap();
    let p = dir.join("prompts.jsonl");
    std::fs::write(&p, text.lines().take(n).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    p
}

fn generating(run: &Path, prompts: &Path, out: &Path) -> Distill {
    Distill::new("generate").path("--student", run).path("--data", prompts).path("--out", out).arg("--quiet")
}

/// The columns of a Parquet file, as Python prints them.
fn columns(dataset: &Path, names: &str) -> String {
    let o = python(
        "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); print([t.column(c).to_pylist() for c in sys.argv[2].split(',')])",
        &[dataset, Path::new(names)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// Sampled student generation (T = 1, top-p 0.9, 2 samples a prompt) draws the same tokens
/// and log-probs whatever the batch size and other tokens with another seed; the dataset has
/// the teacher's generate columns plus `completion_logprobs` (one per token, <= 0), and the
/// teacher scores every generated position with `cache-teacher --token-ids`. (The log-probs
/// against transformers are checked in tests/hf_roundtrip.py.)
#[test]
fn student_generation_is_fixed_by_seed_and_its_logprobs_are_the_students() {
    let t = temp();
    let (_, _, run) = student(t.path(), "decoder:d_model=32,layers=2,heads=2,d_ff=48");
    let p = prompts(t.path(), 7);
    let sampled = ["--temperature", "1", "--top-p", "0.9", "--samples-per-prompt", "2", "--max-new-tokens", "12"];
    let draw = |name: &str, extra: &[&str]| {
        let out = t.path().join(name);
        generating(&run, &p, &out).args(sampled).args(extra).ok();
        out.join("generated.parquet")
    };
    let a = draw("a", &["--batch-size", "1"]);
    let b = draw("b", &["--batch-size", "5"]);
    let c = draw("c", &["--seed", "1"]);
    let ids = |d: &Path| columns(d, "completion_ids,sample,row");
    assert_eq!(ids(&a), ids(&b), "the batch size changed the draws");
    assert_ne!(ids(&a), ids(&c), "another seed drew the same");
    let o = python(
        r#"
import sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
assert t.column_names == ["prompt", "completion", "prompt_ids", "completion_ids", "stop_reason", "row", "sample",
                          "completion_logprobs"], t.column_names
rows = t.to_pylist()
assert len(rows) == 14 and [(r["row"], r["sample"]) for r in rows] == [(i // 2, i % 2) for i in range(14)]
assert all(len(r["completion_logprobs"]) == len(r["completion_ids"]) and max(r["completion_logprobs"]) <= 0 for r in rows)
"#,
        &[&a],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // The log-probs of the same tokens: equal up to float rounding (the padding changes the
    // order of some sums).
    let o = python(
        r#"
import sys, numpy as np, pyarrow.parquet as pq
a, b = (np.concatenate(pq.read_table(p).column("completion_logprobs").to_pylist()) for p in sys.argv[1:3])
assert a.shape == b.shape and np.abs(a - b).max() < 1e-5, np.abs(a - b).max()
"#,
        &[&a, &b],
    );
    assert!(o.status.success(), "the batch size changed the log-probs: {}", stderr(&o));
    // The teacher scores the completions as they are.
    let scored = t.path().join("scored");
    Distill::lm_teacher(&a, &scored)
        .arg("--token-ids")
        .opt("--prompt-column", "prompt_ids")
        .opt("--completion-column", "completion_ids")
        .ok();
    let m = distill::cache::Manifest::read(&scored).unwrap();
    assert_eq!((m.totals.rows, m.totals.positions), (14, 14 * 12 - count_eos(&a)));
}

/// Positions not generated because a sequence ended early.
fn count_eos(dataset: &Path) -> u64 {
    let o = python(
        "import sys, pyarrow.parquet as pq; print(sum(12 - len(c) for c in pq.read_table(sys.argv[1]).column('completion_ids').to_pylist()))",
        &[dataset],
    );
    stdout(&o).trim().parse().unwrap()
}

/// A student generation killed after its second finished part resumes after it: the dataset
/// equals an uninterrupted run's byte for byte; a rerun with another seed is refused, naming
/// why, and replaced with --overwrite (that run, killed, resumes); a rerun of a complete run
/// does nothing; a teacher's generation in the directory is replaced only with --overwrite.
#[test]
fn killed_student_generation_resumes_to_the_same_output() {
    let t = temp();
    // Wide enough that a part takes a while to decode, so the run can be killed between parts.
    let (_, _, run) = student(t.path(), "decoder:d_model=256,layers=4,heads=4,d_ff=512");
    let p = prompts(t.path(), 12);
    let sampling = |out: &Path| {
        generating(&run, &p, out)
            .opt("--temperature", 1)
            .opt("--samples-per-prompt", 2)
            .opt("--rows-per-shard", 2)
            .opt("--batch-size", 1)
            .opt("--max-new-tokens", 48)
    };
    let full = t.path().join("full");
    sampling(&full).ok();
    let out = t.path().join("cut");
    let cut = sampling(&out);
    let mut child = cut.spawn();
    let started = std::time::Instant::now();
    while !out.join("generated.parts/part-00001.parquet").is_file() {
        assert!(child.try_wait().unwrap().is_none(), "generate finished before it could be killed");
        assert!(started.elapsed().as_secs() < 120);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.join("generated.parquet").exists(), "the dataset appeared before the last part");
    cut.ok();
    let sha = |d: &Path| distill::cache::manifest::sha256_file(&d.join("generated.parquet")).unwrap();
    assert_eq!(sha(&out), sha(&full));
    assert!(!out.join("generated.parts").exists());
    cut.clone().opt("--seed", 5).fails_with(&["holds another generation", "--overwrite"]);
    let again = cut.clone().without("--quiet").ok();
    assert!(!stdout(&again).contains("tokens/s"), "a complete run decoded again: {}", stdout(&again));
    // Replaced with --overwrite; that run killed in turn resumes, not refused by the record
    // of the run it replaces.
    let other = cut.clone().opt("--seed", 5).arg("--overwrite");
    let mut child = other.spawn();
    while !out.join("generated.parts/part-00001.parquet").is_file() {
        assert!(child.try_wait().unwrap().is_none(), "generate finished before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    cut.clone().opt("--seed", 5).ok();
    assert_ne!(sha(&out), sha(&full));
    // A teacher's generation in the directory is not replaced without --overwrite.
    let teacher_out = t.path().join("teacher-gen");
    Distill::generate(data("lm/teacher.onnx"), data("lm/tokenizer.json"), &p, &teacher_out).opt("--max-new-tokens", 4).arg("--quiet").ok();
    generating(&run, &p, &teacher_out).fails_with(&["holds another generation", "--overwrite"]);
    generating(&run, &p, &teacher_out).arg("--overwrite").ok();
    assert!(!teacher_out.join("cache").exists(), "the teacher's cache was left beside the student's dataset");
}

/// `--divergence sampled-rkl` trains on the student's own completions scored by the teacher,
/// reading the generation log-probs beside them; it refuses a classification cache, a cache
/// of every position (prompt tokens are not drawn ones) and a training temperature other
/// than the cache's, naming why.
#[test]
fn sampled_rkl_trains_on_scored_completions_and_refuses_what_it_cannot_serve() {
    let t = temp();
    let (_, _, run) = student(t.path(), "decoder:d_model=32,layers=2,heads=2,d_ff=48");
    let p = prompts(t.path(), 16);
    let written = t.path().join("gen");
    generating(&run, &p, &written).opt("--temperature", 1).opt("--max-new-tokens", 16).ok();
    let dataset = written.join("generated.parquet");
    let scored = t.path().join("scored");
    Distill::lm_teacher(&dataset, &scored)
        .arg("--token-ids")
        .opt("--prompt-column", "prompt_ids")
        .opt("--completion-column", "completion_ids")
        .opt("--temperature", 1)
        .opt("--top-k", 16)
        .ok();
    let hf = run.join("hf");
    let train = |out: &str| {
        Distill::train(&scored, &dataset, t.path().join(out))
            .opt("--student", format!("hf:{}", hf.display()))
            .opt("--divergence", "sampled-rkl")
            .opt("--alpha", 1)
            .opt("--steps", 3)
            .opt("--batch-size", 8)
            .arg("--quiet")
    };
    train("on").ok();
    let metrics = std::fs::read_to_string(t.path().join("on/metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    train("hot").opt("--temperature", 2).opt("--tail", "renormalize").fails_with(&["sampled-rkl", "differs from the cache's 1"]);
    // Every position cached (prompt positions too): the hard labels are not all drawn tokens.
    let all = t.path().join("all");
    Distill::lm_teacher(&dataset, &all)
        .arg("--token-ids")
        .opt("--prompt-column", "prompt_ids")
        .opt("--completion-column", "completion_ids")
        .opt("--positions", "all")
        .opt("--temperature", 1)
        .opt("--top-k", 16)
        .ok();
    Distill::train(&all, &dataset, t.path().join("every"))
        .opt("--student", format!("hf:{}", hf.display()))
        .opt("--divergence", "sampled-rkl")
        .opt("--steps", 1)
        .fails_with(&["sampled-rkl needs a cache of the completion positions"]);
    Distill::train(digits_default_cache(), data("digits/train.parquet"), t.path().join("cls"))
        .opt("--student", "mlp:hidden=16")
        .opt("--divergence", "sampled-rkl")
        .opt("--steps", 1)
        .fails_with(&["sampled-rkl needs a causal-LM cache"]);
}

/// A pipeline with `[onpolicy]`: `distill run` trains the hard-label and distilled students,
/// then two rounds of generate → score → train (half the steps off-policy, lambda 0.5) from
/// each distilled student, beside the baselines (as many more steps on the training cache,
/// and on the teacher's own completions); the results gain the on-policy table with a row
/// per round and baseline, every
/// round's directories are kept, and a second run of the same file gives the same tables
/// (the rounds' data and runs are found complete and kept).
#[test]
fn onpolicy_pipeline_runs_rounds_end_to_end_and_reruns_to_the_same_table() {
    let t = temp();
    lm_rows(t.path(), 48);
    let text = std::fs::read_to_string(data("lm/valid.jsonl")).unwrap();
    std::fs::write(t.path().join("held-out.jsonl"), text.lines().take(12).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let pipeline = t.path().join("onpolicy.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[cache]
teacher = "{teacher}"
tokenizer = "{tokenizer}"
data = "train.jsonl"
out = "cache"
prompt_column = "prompt"
completion_column = "completion"
top_k = 16

[student]
kind = "decoder"
d_model = 16
layers = 1
heads = 2
d_ff = 24

[train]
out = "students"
steps = 4
batch_size = 8

[eval]
data = "held-out.jsonl"
seeds = [0]

[onpolicy]
rounds = 2
max_new_tokens = 6
lambda = 0.5
steps = 4
"#,
            teacher = data("lm/teacher.onnx").display(),
            tokenizer = data("lm/tokenizer.json").display(),
        ),
    )
    .unwrap();
    Distill::new("run").arg(&pipeline).arg("--quiet").ok();
    let results = std::fs::read_to_string(t.path().join("students/results.md")).unwrap();
    for row in [
        "| distilled |",
        "| distilled, 8 more steps off-policy |",
        "| distilled, 8 more steps on teacher-written completions |",
        "| on-policy round 1 (jsd:0.5, lambda = 0.5) |",
        "| on-policy round 2",
    ] {
        assert!(results.contains(row), "{row} missing from\n{results}");
    }
    let seed0 = t.path().join("students/onpolicy-seed0");
    for dir in
        ["round-1/generated/generated.parquet", "round-1/cache/manifest.json", "round-1/offpolicy/student.json", "round-2/student/hf"]
    {
        assert!(seed0.join(dir).exists(), "{dir} missing");
    }
    let steps = std::fs::read_to_string(seed0.join("round-2/student/metrics.csv")).unwrap();
    assert_eq!(steps.lines().count(), 3, "lambda 0.5 of 4 steps: 2 on-policy steps\n{steps}");
    Distill::new("run").arg(&pipeline).arg("--quiet").ok();
    let again = std::fs::read_to_string(t.path().join("students/results.md")).unwrap();
    assert_eq!(again, results, "a rerun changed the results");
}

/// One on-policy round in PyTorch (`python/examples/onpolicy_round.py`): a student distill
/// trained and exported to Hugging Face writes with `distill_cache.generate`, distill's
/// teacher scores it, and transformers trains it with distill_cache's sampled-rkl loss; the
/// round saves a student that transformers loads. Skipped, saying how to install them, where
/// torch and distill_cache are missing (CI installs them).
#[test]
fn a_round_in_pytorch_runs() {
    let torch_python = repo().join(".venv-torch/bin/python3");
    let ok = std::process::Command::new(&torch_python)
        .args(["-c", "import torch, transformers, distill_cache.generate"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_tool(ok, ".venv-torch with torch and distill_cache", "bash .ci/setup-hf && .venv-torch/bin/python3 -m pip install ./python") {
        return;
    }
    let t = temp();
    let (_, _, run) = student(t.path(), "decoder:d_model=32,layers=2,heads=2,d_ff=48");
    let p = prompts(t.path(), 12);
    let out = t.path().join("round");
    let o = std::process::Command::new(&torch_python)
        .arg(repo().join("python/examples/onpolicy_round.py"))
        .arg("--distill")
        .arg(env!("CARGO_BIN_EXE_distill"))
        .arg("--student")
        .arg(run.join("hf"))
        .arg("--teacher")
        .arg(data("lm/teacher.onnx"))
        .arg("--tokenizer")
        .arg(data("lm/tokenizer.json"))
        .arg("--data")
        .arg(&p)
        .arg("--out")
        .arg(&out)
        .args(["--max-new-tokens", "8", "--steps", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o).lines().filter(|l| l.contains("\"reverse_kl\"")).count(), 2, "{}", stdout(&o));
    assert!(out.join("student/config.json").is_file() && out.join("cache/manifest.json").is_file());
}

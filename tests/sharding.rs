//! Sharded capture: N workers (`cache-teacher --part I/N`) and `distill merge`, into a
//! shared directory or separate ones, give the same cache as one run.

use std::path::Path;

use crate::common::*;

fn worker(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = vec![
        "cache-teacher".to_string(),
        "--teacher".into(),
        data("digits/teacher.onnx").display().to_string(),
        "--data".into(),
        data("digits/train.parquet").display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--temperature".into(),
        "3".into(),
        "--rows-per-shard".into(),
        "100".into(),
        "--quiet".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    distill(a)
}

fn checksums(dir: &Path) -> Vec<String> {
    let m: distill::cache::Manifest = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    m.shards.iter().map(|s| s.sha256.clone()).collect()
}

fn merge(out: &Path, parts: &[&Path]) -> std::process::Output {
    let mut a = vec!["merge".to_string(), "--out".into(), out.display().to_string()];
    a.extend(parts.iter().map(|p| p.display().to_string()));
    distill(a)
}

#[test]
fn workers_in_a_shared_directory_then_merge_equal_one_run() {
    let t = temp();
    let one = t.path().join("one");
    ok(&worker(&one, &[]));
    let shared = t.path().join("shared");
    for i in 0..3 {
        // `--shard` is the flag's other name.
        ok(&worker(&shared, &["--shard", &format!("{i}/3")]));
    }
    // Before the merge, readers point at the way out.
    fails_with(&distill(["verify".to_string(), shared.display().to_string()]), &["combine the parts with `distill merge"]);
    ok(&merge(&shared, &[&shared]));
    assert_eq!(checksums(&shared), checksums(&one));
    ok(&distill(["verify".to_string(), shared.display().to_string()]));
}

#[test]
fn workers_in_separate_directories_then_merge_equal_one_run() {
    let t = temp();
    let one = t.path().join("one");
    ok(&worker(&one, &[]));
    let parts: Vec<_> = (0..4).map(|i| t.path().join(format!("p{i}"))).collect();
    for (i, p) in parts.iter().enumerate() {
        ok(&worker(p, &["--part", &format!("{i}/4"), "--batch-size", &format!("{}", 7 + i)]));
    }
    let merged = t.path().join("merged");
    let refs: Vec<&Path> = parts.iter().map(|p| p.as_path()).collect();
    ok(&merge(&merged, &refs));
    assert_eq!(checksums(&merged), checksums(&one));
}

#[test]
fn merge_refuses_missing_unfinished_and_foreign_parts() {
    let t = temp();
    let p: Vec<_> = (0..3).map(|i| t.path().join(format!("p{i}"))).collect();
    for (i, d) in p.iter().enumerate() {
        ok(&worker(d, &["--part", &format!("{i}/3")]));
    }
    fails_with(&merge(&t.path().join("m1"), &[&p[0], &p[2]]), &["part 1/3 is missing"]);
    // A part made at another temperature.
    let other = t.path().join("other");
    let mut a = vec![
        "cache-teacher".to_string(),
        "--teacher".into(),
        data("digits/teacher.onnx").display().to_string(),
        "--data".into(),
        data("digits/train.parquet").display().to_string(),
        "--out".into(),
        other.display().to_string(),
        "--temperature".into(),
        "5".into(),
        "--rows-per-shard".into(),
        "100".into(),
        "--quiet".into(),
        "--part".into(),
        "1/3".into(),
    ];
    ok(&distill(&a));
    fails_with(&merge(&t.path().join("m2"), &[&p[0], &other, &p[2]]), &["other settings"]);
    // An unfinished part.
    let name = "manifest.part-1-of-3.json";
    std::fs::rename(p[1].join(name), p[1].join("manifest.part-1-of-3.partial.json")).unwrap();
    fails_with(&merge(&t.path().join("m3"), &[&p[0], &p[1], &p[2]]), &["not finished"]);
    a.clear();
    assert!(!t.path().join("m3/manifest.json").exists());
}

/// Workers started at the same moment into one shared directory (a Slurm job array's
/// tasks) with a token model: each writes the tokenizer beside its shards; none may fail
/// on another's temporary file, and the merged cache equals one run.
#[test]
fn concurrent_workers_with_a_tokenizer_share_a_directory() {
    let t = temp();
    let rows = lm_rows(t.path(), 64);
    let args = |out: &Path| lm_cache_args(&rows, out, &["--top-k", "8", "--rows-per-shard", "8", "--threads", "1"]);
    let one = t.path().join("one");
    ok(&distill(args(&one)));
    for round in 0..3 {
        let shared = t.path().join(format!("shared-{round}"));
        let children: Vec<_> = (0..8)
            .map(|i| {
                let mut a = args(&shared);
                a.extend(["--part".to_string(), format!("{i}/8")]);
                std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
                    .args(a)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            ok(&c.wait_with_output().unwrap());
        }
        ok(&merge(&shared, &[&shared]));
        assert_eq!(checksums(&shared), checksums(&one));
    }
}

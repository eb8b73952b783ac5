//! Sharded capture: N workers (`cache-teacher --part I/N`) and `distill merge`, into a
//! shared directory or separate ones, give the same cache as one run.

use std::path::Path;

use crate::common::*;

/// `cache-teacher` of the digits training split at T = 3 in shards of 100 rows into `out`,
/// then `extra` (the settings of [`digits_t3_one_run_cache`]).
fn worker(out: &Path, extra: &[&str]) -> Distill {
    Distill::new("cache-teacher")
        .path("--teacher", data("digits/teacher.onnx"))
        .path("--data", data("digits/train.parquet"))
        .path("--out", out)
        .args(["--temperature", "3", "--rows-per-shard", "100", "--quiet"])
        .args(extra)
}

fn checksums(dir: &Path) -> Vec<String> {
    let m: distill::cache::Manifest = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    m.shards.iter().map(|s| s.sha256.clone()).collect()
}

fn merge(out: &Path, parts: &[&Path]) -> Distill {
    Distill::new("merge").path("--out", out).args(parts.iter().copied())
}

#[test]
fn workers_in_a_shared_directory_then_merge_equal_one_run() {
    let t = temp();
    let one = digits_t3_one_run_cache();
    let shared = t.path().join("shared");
    for i in 0..3 {
        // `--shard` is the flag's other name.
        worker(&shared, &["--shard", &format!("{i}/3")]).ok();
    }
    // Before the merge, readers point at the way out.
    Distill::new("verify").arg(&shared).fails_with(&["combine the parts with `distill merge"]);
    merge(&shared, &[&shared]).ok();
    assert_eq!(checksums(&shared), checksums(one));
    Distill::new("verify").arg(&shared).ok();
}

#[test]
fn workers_in_separate_directories_then_merge_equal_one_run() {
    let t = temp();
    let one = digits_t3_one_run_cache();
    let parts: Vec<_> = (0..4).map(|i| t.path().join(format!("p{i}"))).collect();
    for (i, p) in parts.iter().enumerate() {
        worker(p, &["--part", &format!("{i}/4"), "--batch-size", &format!("{}", 7 + i)]).ok();
    }
    let merged = t.path().join("merged");
    let refs: Vec<&Path> = parts.iter().map(|p| p.as_path()).collect();
    merge(&merged, &refs).ok();
    assert_eq!(checksums(&merged), checksums(one));
}

#[test]
fn merge_refuses_missing_unfinished_and_foreign_parts() {
    let t = temp();
    let p: Vec<_> = (0..3).map(|i| t.path().join(format!("p{i}"))).collect();
    for (i, d) in p.iter().enumerate() {
        worker(d, &["--part", &format!("{i}/3")]).ok();
    }
    merge(&t.path().join("m1"), &[&p[0], &p[2]]).fails_with(&["part 1/3 is missing"]);
    // A part made at another temperature.
    let other = t.path().join("other");
    worker(&other, &["--part", "1/3"]).set("--temperature", "5").ok();
    merge(&t.path().join("m2"), &[&p[0], &other, &p[2]]).fails_with(&["other settings"]);
    // An unfinished part.
    let name = "manifest.part-1-of-3.json";
    std::fs::rename(p[1].join(name), p[1].join("manifest.part-1-of-3.partial.json")).unwrap();
    merge(&t.path().join("m3"), &[&p[0], &p[1], &p[2]]).fails_with(&["not finished"]);
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
    args(&one).ok();
    for round in 0..3 {
        let shared = t.path().join(format!("shared-{round}"));
        let children: Vec<_> = (0..8)
            .map(|i| {
                args(&shared)
                    .opt("--part", format!("{i}/8"))
                    .command()
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            ok(&c.wait_with_output().unwrap());
        }
        merge(&shared, &[&shared]).ok();
        assert_eq!(checksums(&shared), checksums(&one));
    }
}

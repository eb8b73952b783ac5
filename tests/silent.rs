//! Caches and runs that were wrong without an error, found by fault injection: each test
//! here failed before the fix it names (README, "When things go wrong").

use std::path::Path;

use crate::common::*;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Ordinary temperatures such as 1.95 wrote a manifest whose checksum failed on reading
/// (the f32 setting stored as the f64 1.9500000476837158 did not parse back exactly).
#[test]
fn a_cache_at_temperature_1_95_reads_back() {
    let t = temp();
    for temp in ["1.95", "0.975", "3.65", "9.025"] {
        let out = t.path().join(temp);
        cache_digits("train.parquet", &out, &["--temperature", temp, "--rows-per-shard", "600"]);
        ok(&distill(["verify".to_string(), s(&out)]));
        ok(&distill(["inspect".to_string(), s(&out)]));
    }
}

/// A complete cache with a deleted or damaged shard was reported "already complete" by a
/// rerun; now the rerun recomputes from the first missing or damaged shard, says so, and
/// gives the cache an uninterrupted run gives.
#[test]
fn a_rerun_recomputes_a_missing_or_damaged_shard_of_a_complete_cache() {
    let t = temp();
    let out = t.path().join("cache");
    let args = ["--temperature", "2", "--rows-per-shard", "300"];
    cache_digits("train.parquet", &out, &args);
    let shas = |dir: &Path| -> Vec<String> {
        let m: distill::cache::Manifest = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        m.shards.iter().map(|s| s.sha256.clone()).collect()
    };
    let want = shas(&out);
    // Without --quiet, which hides warnings (stderr is not a terminal: no progress bar).
    let rerun = || {
        distill([
            "cache-teacher", "--teacher", &s(&data("digits/teacher.onnx")), "--data", &s(&data("digits/train.parquet")),
            "--out", &s(&out), args[0], args[1], args[2], args[3],
        ])
    };
    std::fs::remove_file(out.join("shard-00002.parquet")).unwrap();
    let o = rerun();
    ok(&o);
    assert!(stderr(&o).contains("shard-00002.parquet is missing or damaged; recomputing from it (2 intact shards kept)"), "{}", stderr(&o));
    assert_eq!(shas(&out), want);
    ok(&distill(["verify".to_string(), s(&out)]));

    let shard = out.join("shard-00000.parquet");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&shard, bytes).unwrap();
    let o = rerun();
    ok(&o);
    assert!(stderr(&o).contains("shard-00000.parquet is missing or damaged"), "{}", stderr(&o));
    assert_eq!(shas(&out), want);
    // Intact: reported as complete, nothing recomputed.
    let o = rerun();
    ok(&o);
    assert!(stdout(&o).contains("already complete") || stderr(&o).contains("already complete"), "{}{}", stdout(&o), stderr(&o));
}

/// `merge --out X` over a different complete cache replaced it; now it is refused (a merge
/// run again over its own result is still fine).
#[test]
fn merge_does_not_replace_another_complete_cache() {
    let t = temp();
    let other = t.path().join("other");
    cache_digits("train.parquet", &other, &["--temperature", "5"]);
    let before = std::fs::read(other.join("manifest.json")).unwrap();
    let parts = t.path().join("parts");
    for i in 0..2 {
        cache_digits("train.parquet", &parts, &["--temperature", "3", "--rows-per-shard", "300", "--shard", &format!("{i}/2")]);
    }
    let o = distill(["merge".to_string(), "--out".into(), s(&other), s(&parts)]);
    fails_with(&o, &["--out already holds a complete cache made with other settings"]);
    assert_eq!(std::fs::read(other.join("manifest.json")).unwrap(), before, "the other cache was changed");
    let merged = t.path().join("merged");
    ok(&distill(["merge".to_string(), "--out".into(), s(&merged), s(&parts)]));
    ok(&distill(["merge".to_string(), "--out".into(), s(&merged), s(&parts)]));
}

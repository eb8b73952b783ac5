//! Nothing lost, nothing wrong: corruption, mismatch, bad input, interruption. Each case
//! must end with a clear message naming what was wrong, a non-zero exit, no panic, and
//! nothing already written damaged.

use std::path::{Path, PathBuf};

use crate::common::*;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A copy, at `dir/cache`, of the digits cache at T = 4 in shards of 400 rows, for a test to
/// damage.
fn digits_cache(dir: &Path) -> PathBuf {
    private_copy(digits_t4_cache(), &dir.join("cache"))
}

/// verify, inspect and train-student on a damaged cache: all refuse, naming `file`.
fn all_readers_refuse(cache: &Path, file: &str, why: &str) {
    for reader in [
        Distill::new("verify").arg(cache),
        Distill::new("inspect").arg(cache),
        Distill::train(cache, data("digits/train.parquet"), cache.with_file_name("run")).args([
            "--student",
            "mlp",
            "--steps",
            "5",
            "--quiet",
        ]),
    ] {
        reader.fails_with(&[file, why]);
    }
}

mod corruption {
    use super::*;

    #[test]
    fn flipped_bytes_in_a_shard() {
        let t = temp();
        let cache = digits_cache(t.path());
        let shard = cache.join("shard-00001.parquet");
        let mut bytes = std::fs::read(&shard).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        bytes[mid + 1] ^= 0xff;
        std::fs::write(&shard, bytes).unwrap();
        all_readers_refuse(&cache, "shard-00001.parquet", "checksum mismatch");
    }

    #[test]
    fn truncated_shard() {
        let t = temp();
        let cache = digits_cache(t.path());
        let shard = cache.join("shard-00002.parquet");
        let bytes = std::fs::read(&shard).unwrap();
        std::fs::write(&shard, &bytes[..bytes.len() - 100]).unwrap();
        all_readers_refuse(&cache, "shard-00002.parquet", "truncated");
    }

    #[test]
    fn missing_shard() {
        let t = temp();
        let cache = digits_cache(t.path());
        std::fs::remove_file(cache.join("shard-00000.parquet")).unwrap();
        all_readers_refuse(&cache, "shard-00000.parquet", "missing");
    }

    #[test]
    fn manifest_edited_by_hand() {
        let t = temp();
        let cache = digits_cache(t.path());
        let path = cache.join("manifest.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"temperature\": 4.0", "\"temperature\": 2.0", 1)).unwrap();
        all_readers_refuse(&cache, "manifest.json", "manifest checksum mismatch");
    }

    #[test]
    fn manifest_paths_cannot_leave_the_cache_directory() {
        let t = temp();
        let cache = digits_cache(t.path());
        let path = cache.join("manifest.json");
        let mut m: distill::cache::Manifest = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        std::fs::write(t.path().join("evil.parquet"), b"x").unwrap();
        m.shards[0].file = "../evil.parquet".into();
        m.checksum = m.compute_checksum(); // a deliberate, consistent edit
        std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        all_readers_refuse(&cache, "manifest.json", "is not a plain shard-NNNNN.parquet name");
    }

    #[test]
    fn incomplete_cache_is_refused_with_the_way_out() {
        let t = temp();
        let cache = digits_cache(t.path());
        std::fs::rename(cache.join("manifest.json"), cache.join("manifest.partial.json")).unwrap();
        all_readers_refuse(&cache, "cache", "rerun the same cache-teacher command to resume");
    }
}

mod bad_input {
    use super::*;

    #[test]
    fn non_finite_teacher_logits_name_the_row() {
        let t = temp();
        Distill::new("cache-teacher")
            .path("--teacher", data("bad/nan_teacher.onnx"))
            .path("--data", data("bad/rows.jsonl"))
            .path("--out", t.path().join("c"))
            .args(["--batch-size", "2", "--quiet"])
            .fails_with(&["nan_teacher.onnx", "row 3: logit 1 is not finite (NaN)"]);
        // Nothing was published as a cache.
        assert!(!t.path().join("c/manifest.json").exists());
    }

    #[test]
    fn null_value_names_row_and_column() {
        let t = temp();
        let f = t.path().join("null.jsonl");
        std::fs::write(&f, "{\"prompt\": \"a b\", \"completion\": \" c\"}\n{\"prompt\": null, \"completion\": \" d\"}\n").unwrap();
        Distill::lm_cache(&f, &t.path().join("c")).fails_with(&["null.jsonl", "row 1, column `prompt`: value is missing (null)"]);
    }

    fn lm(t: &Path, rows: &str, extra: &[&str]) -> std::process::Output {
        let f = t.join("rows.jsonl");
        std::fs::write(&f, rows).unwrap();
        // Without --quiet, which hides the warnings some of these tests look for.
        Distill::lm_cache(&f, &t.join("c")).without("--quiet").args(extra).run()
    }

    #[test]
    fn empty_and_whitespace_text_is_counted_and_warned() {
        let t = temp();
        let o = lm(
            t.path(),
            "{\"prompt\": \"\", \"completion\": \"\"}\n{\"prompt\": \"   \", \"completion\": \" \"}\n{\"prompt\": \"The list\", \"completion\": \" type is mutable.\"}\n",
            &[],
        );
        ok(&o);
        let err = stderr(&o);
        assert!(err.contains("warning:") && err.contains("rows produced no cached position"), "{err}");
        let m: distill::cache::Manifest =
            serde_json::from_str(&std::fs::read_to_string(t.path().join("c/manifest.json")).unwrap()).unwrap();
        assert!(m.totals.rows_without_positions >= 1);
        assert!(m.totals.positions >= 3);
    }

    #[test]
    fn long_sequences_are_truncated_with_a_count_or_refused() {
        let t = temp();
        let long = format!("{{\"prompt\": \"{}\", \"completion\": \" {}\"}}\n", "word ".repeat(40).trim(), "more ".repeat(40).trim());
        let o = lm(t.path(), &long, &["--max-seq-len", "16"]);
        ok(&o);
        assert!(stderr(&o).contains("1 rows were longer than max_seq_len = 16 tokens and were truncated"), "{}", stderr(&o));
        let t2 = temp();
        let o = lm(t2.path(), &long, &["--max-seq-len", "16", "--long-sequences", "refuse"]);
        fails_with(&o, &["row 0: longer than max_seq_len = 16 tokens"]);
    }

    #[test]
    fn unwritable_output_directory() {
        let t = temp();
        let file = t.path().join("a-file");
        std::fs::write(&file, b"keep").unwrap();
        Distill::digits_cache("train.parquet", &file.join("cache")).fails_with(&["a-file/cache"]);
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }

    /// A full disk, simulated with a file-size limit (`ulimit -f`; distill ignores SIGXFSZ,
    /// which would otherwise kill it without a word, so the write fails with EFBIG): rows 0-99 are short (a small first shard), rows 100-199 long
    /// (a second shard over the limit). The run stops with an error, the finished shard stays
    /// intact, and a rerun without the limit resumes and completes the cache.
    #[test]
    fn full_disk_fails_cleanly_and_resumes() {
        let t = temp();
        let rows: Vec<serde_json::Value> =
            std::fs::read_to_string(data("lm/train.jsonl")).unwrap().lines().take(200).map(|l| serde_json::from_str(l).unwrap()).collect();
        let mut text = String::new();
        for (i, r) in rows.iter().enumerate() {
            let full = r["text"].as_str().unwrap();
            let t = if i < 100 { full.split(' ').take(6).collect::<Vec<_>>().join(" ") } else { full.to_string() };
            text.push_str(&serde_json::json!({ "text": t }).to_string());
            text.push('\n');
        }
        let input = t.path().join("rows.jsonl");
        std::fs::write(&input, text).unwrap();
        let out = t.path().join("c");
        let args = format!(
            "cache-teacher --teacher '{}' --data '{}' --out '{}' --top-k 64 --tokenizer '{}' --text-column text --rows-per-shard 100 --quiet",
            s(&data("lm/teacher.onnx")),
            s(&input),
            s(&out),
            s(&data("lm/tokenizer.json")),
        );
        let cmd = format!("ulimit -f 400; exec '{}' {args}", env!("CARGO_BIN_EXE_distill"));
        let o = std::process::Command::new("bash").arg("-c").arg(&cmd).output().unwrap();
        fails_with(&o, &["File too large"]);
        assert!(!out.join("manifest.json").exists());
        let partial: distill::cache::Manifest =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.partial.json")).unwrap()).unwrap();
        assert_eq!(partial.shards.len(), 1, "the small first shard finished before the disk filled");
        let o =
            std::process::Command::new("bash").arg("-c").arg(format!("exec '{}' {args}", env!("CARGO_BIN_EXE_distill"))).output().unwrap();
        ok(&o);
        assert!(stdout(&o).contains("resumed after 1 finished shards"), "{}", stdout(&o));
        Distill::new("verify").arg(&out).ok();
    }
}

/// Kill `cache-teacher` with SIGKILL at several points; each rerun resumes without
/// recomputing finished shards, and the final cache has the same per-shard checksums as an
/// uninterrupted run.
#[test]
fn killed_cache_teacher_resumes_to_the_same_cache() {
    let t = temp();
    let args = |out: &Path| {
        lm_cache_args(
            &data("lm/train.jsonl"),
            out,
            &["--top-k", "16", "--temperature", "2", "--rows-per-shard", "150", "--batch-size", "10"],
        )
    };
    let full = t.path().join("full");
    args(&full).ok();
    let sums = |dir: &Path| -> Vec<String> {
        let m: distill::cache::Manifest = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        m.shards.iter().map(|s| s.sha256.clone()).collect()
    };
    let want = sums(&full);
    // Kill points: after the first, third and sixth finished shard (as the partial manifest shows).
    for (trial, kill_after) in [1usize, 3, 6].into_iter().enumerate() {
        let out = t.path().join(format!("trial{trial}"));
        let mut child = args(&out).spawn();
        let started = std::time::Instant::now();
        loop {
            let done = std::fs::read_to_string(out.join("manifest.partial.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<distill::cache::Manifest>(&t).ok())
                .map(|m| m.shards.len())
                .unwrap_or(0);
            if done >= kill_after || child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(started.elapsed().as_secs() < 120);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = child.kill();
        child.wait().unwrap();
        assert!(!out.join("manifest.json").exists() || sums(&out) == want, "trial {trial}: a manifest appeared before the end");
        let text = stdout(&args(&out).ok());
        assert!(text.contains("resumed after") || text.contains("already complete"), "trial {trial}: {text}");
        assert_eq!(sums(&out), want, "trial {trial}: resumed cache differs");
        Distill::new("verify").arg(&out).ok();
    }
}

//! Caches and runs that were wrong without an error, found by fault injection: each test
//! here failed before the fix it names (README, "When things go wrong").

use std::path::Path;

use crate::common::*;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `train-student --cache CACHE` on the digits training rows into `out` (the student and
/// the rest are the caller's).
fn train_digits(cache: &Path, out: &Path) -> Distill {
    Distill::train(cache, data("digits/train.parquet"), out)
}

/// Ordinary temperatures such as 1.95 wrote a manifest whose checksum failed on reading
/// (the f32 setting stored as the f64 1.9500000476837158 did not parse back exactly).
#[test]
fn a_cache_at_temperature_1_95_reads_back() {
    let t = temp();
    for temp in ["1.95", "0.975", "3.65", "9.025"] {
        let out = t.path().join(temp);
        cache_digits("train.parquet", &out, &["--temperature", temp, "--rows-per-shard", "600"]);
        Distill::new("verify").arg(&out).ok();
        Distill::new("inspect").arg(&out).ok();
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
    let rerun = || digits_cache_args("train.parquet", &out, &args).without("--quiet").run();
    std::fs::remove_file(out.join("shard-00002.parquet")).unwrap();
    let o = rerun();
    ok(&o);
    assert!(stderr(&o).contains("shard-00002.parquet is missing or damaged; recomputing from it (2 intact shards kept)"), "{}", stderr(&o));
    assert_eq!(shas(&out), want);
    Distill::new("verify").arg(&out).ok();

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
        cache_digits("train.parquet", &parts, &["--temperature", "3", "--rows-per-shard", "300", "--part", &format!("{i}/2")]);
    }
    Distill::new("merge").path("--out", &other).arg(&parts).fails_with(&["--out already holds a complete cache made with other settings"]);
    assert_eq!(std::fs::read(other.join("manifest.json")).unwrap(), before, "the other cache was changed");
    let merged = t.path().join("merged");
    Distill::new("merge").path("--out", &merged).arg(&parts).ok();
    // Parts of two captures: the message names the part by its number (it said `Some(0)`).
    let others = t.path().join("others");
    cache_digits("train.parquet", &others, &["--temperature", "4", "--rows-per-shard", "300", "--part", "1/2"]);
    Distill::new("merge").path("--out", t.path().join("m2")).arg(&parts).arg(&others).fails_with(&["than part 0 (fingerprint"]);
    Distill::new("merge").path("--out", &merged).arg(&parts).ok();
}

/// Two writers into one directory interleaved their files (a run whose config said seed 0
/// held seed 1's weights); now the second is refused while the first holds the lock.
#[test]
fn a_second_writer_of_a_directory_is_refused() {
    let t = temp();
    let out = t.path().join("cache");
    let held = distill::lock::DirLock::acquire(&out, "", "a cache").unwrap();
    Distill::digits_cache("train.parquet", &out)
        .fails_with(&["another distill process is writing a cache in this directory", ".distill.lock"]);
    drop(held);
    cache_digits("train.parquet", &out, &[]);
    let run = t.path().join("run");
    let held = distill::lock::DirLock::acquire(&run, "", "a training run").unwrap();
    train_digits(&out, &run)
        .args(["--student", "mlp", "--steps", "2", "--quiet"])
        .fails_with(&["another distill process is writing a training run"]);
    drop(held);
}

/// Settings that trained or cached silently wrong: a temperature that overflows the
/// softmax (NaN log-probs), negative or NaN weight decay, 0 for counts that meant 1.
#[test]
fn out_of_range_settings_are_refused_before_any_work() {
    let t = temp();
    let out = t.path().join("c");
    for temp in ["1e-39", "0.001"] {
        Distill::digits_cache("train.parquet", &out)
            .opt("--temperature", temp)
            .fails_with(&["cache.temperature must be >= 0.01", "overflow the softmax"]);
        assert!(!out.exists(), "nothing is created before the settings are checked");
    }
    let cache = digits_default_cache();
    for (flag, value, why) in [
        ("--weight-decay", "-1", "train.weight_decay must be in 0..=1"),
        ("--weight-decay", "NaN", "`NaN` is not a finite number"),
        ("--weight-decay", "1e39", "train.weight_decay must be in 0..=1"),
        ("--checkpoint-every", "0", "invalid value '0' for '--checkpoint-every <N>': number would be zero"),
        ("--max-rows", "0", "invalid value '0' for '--max-rows <N>': number would be zero"),
        ("--temperature", "1e-39", "train.temperature must be >= 0.01"),
    ] {
        train_digits(cache, &t.path().join("r"))
            .args(["--student", "mlp", "--steps", "2", "--quiet", &format!("{flag}={value}")])
            .fails_with(&[why]);
        assert!(!t.path().join("r").exists(), "{flag}={value}: the run directory was created before the settings were checked");
    }
}

/// A pipeline's `[eval] seeds` of `[0, 0]` reported "± 0.0000 over 2 seeds" and `[]` ran
/// seed 0; `[train]` was checked only after stage one had run.
#[test]
fn pipeline_settings_are_checked_before_stage_one() {
    let t = temp();
    let base = std::fs::read_to_string(repo().join("pipelines/digits.toml")).unwrap();
    for (edit, why) in
        [("seeds = [0, 0]", "eval.seeds repeats seed 0"), ("seeds = []", "eval.seeds is empty"), ("seeds = [0]\n[train.bad]", "")]
    {
        let text = if edit.contains("[train.bad]") {
            base.replace("lr = 0.005", "lr = -1")
        } else {
            let start = base.find("seeds").expect("the pipeline names its seeds");
            let end = start + base[start..].find('\n').unwrap();
            format!("{}{}{}", &base[..start], edit, &base[end..])
        };
        // In a directory of its own (pipelines/ is read by another test), paths made absolute.
        let text = text
            .replace("../target/pipelines/digits", &s(&t.path().join("out")))
            .replace("../data/", &format!("{}/", s(&repo().join("data"))));
        let p = t.path().join("pipeline.toml");
        std::fs::write(&p, &text).unwrap();
        Distill::new("run").arg(&p).arg("--quiet").fails_with(&[if why.is_empty() { "train.lr must be > 0" } else { why }]);
        assert!(!t.path().join("out").join("cache").exists(), "stage one ran before the settings were checked");
    }
}

/// A 0-row dataset looped forever in train-student; now stage one refuses it.
#[test]
fn an_empty_dataset_is_refused() {
    let t = temp();
    let empty = t.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    Distill::new("cache-teacher")
        .path("--teacher", data("lm/teacher.onnx"))
        .path("--tokenizer", data("lm/tokenizer.json"))
        .path("--data", &empty)
        .path("--out", t.path().join("c"))
        .arg("--quiet")
        .fails_with(&["empty.jsonl", "has no rows"]);
}

/// eval and predict scored rows that cache-teacher refuses (NaN features, labels outside
/// the classes) and panicked inside Burn on a row of 63 features for a 64-feature student.
#[test]
fn eval_and_predict_check_rows_as_cache_teacher_does() {
    let t = temp();
    let run = t.path().join("run");
    train_digits(digits_default_cache(), &run).args(["--student", "mlp:hidden=8", "--steps", "2", "--quiet"]).ok();
    let write = |name: &str, features: &str, label: i64| {
        let p = t.path().join(name);
        std::fs::write(&p, format!("{{\"features\": [{features}], \"label\": 1}}\n{{\"features\": [{features}], \"label\": {label}}}\n"))
            .unwrap();
        p
    };
    let ones = vec!["1.0"; 64].join(", ");
    let cases = [
        (write("short.jsonl", &vec!["1.0"; 63].join(", "), 1), vec!["row 0", "63 feature values, but the student takes 64"]),
        (write("label.jsonl", &ones, 10), vec!["row 1", "label 10 is outside the student's 10 classes"]),
        (write("negative.jsonl", &ones, -1), vec!["row 1", "label -1 is outside"]),
    ];
    let eval = |rows: &Path| Distill::new("eval").path("--student", &run).path("--data", rows);
    let predict =
        |rows: &Path| Distill::new("predict").path("--student", &run).path("--data", rows).path("--out", t.path().join("p.jsonl"));
    for (file, why) in &cases {
        eval(file).fails_with(why);
    }
    predict(&cases[0].0).fails_with(&["63 feature values"]);
    // NaN is not JSON; Parquet holds it. Through pyarrow, as users write such files.
    let pq = t.path().join("nan.parquet");
    let o = python(
        "import sys, pyarrow as pa, pyarrow.parquet as pq; pq.write_table(pa.table({'features': [[1.0] * 5 + [float('nan')] + [1.0] * 58], 'label': [1]}), sys.argv[1])",
        &[&pq],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eval(&pq).fails_with(&["row 0, column `features`: value 5 is NaN"]);
    predict(&pq).fails_with(&["value 5 is NaN"]);
}

/// The tensors of a safetensors file: after its 8-byte header length and the JSON header
/// (whose metadata keys come in no fixed order).
fn tensors(p: &Path) -> Vec<u8> {
    let b = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    b[8 + n..].to_vec()
}

/// `--resume` on a finished run, or after a kill between the exported files, failed with
/// `File already exists ... use .overwrite(true)`; now the export is atomic and a finished
/// run's resume says it had finished.
#[test]
fn resume_of_a_finished_or_half_exported_run_completes() {
    let t = temp();
    let run = t.path().join("run");
    let train = |resume: bool| {
        let a = train_digits(digits_default_cache(), &run).args([
            "--student",
            "mlp:hidden=8",
            "--steps",
            "4",
            "--checkpoint-every",
            "2",
            "--quiet",
        ]);
        if resume { a.arg("--resume") } else { a }.run()
    };
    ok(&train(false));
    let weights = tensors(&run.join("student.safetensors"));
    let o = train(true);
    ok(&o);
    assert!(stderr(&o).contains("the run had finished (step 4 of 4)"), "{}", stderr(&o));
    // Killed after the weights, before student.json.
    std::fs::remove_file(run.join("student.json")).unwrap();
    ok(&train(true));
    assert!(run.join("student.json").is_file());
    assert!(tensors(&run.join("student.safetensors")) == weights, "the exported weights changed");
}

/// Small input faults with unclear messages: a UTF-8 byte order mark (`line 1: not valid
/// JSON`), invalid UTF-8 (no line), an empty file (`does not have (columns: )`),
/// `--top-k -1` (clap's `unexpected argument`), an `--ort-lib` that does not exist
/// (silently replaced by ORT_DYLIB_PATH), rows without a label (counted nowhere).
#[test]
fn small_input_faults_get_clear_messages() {
    let t = temp();
    let lm = |data_file: &Path, extra: &[&str]| {
        Distill::new("cache-teacher")
            .path("--teacher", data("lm/teacher.onnx"))
            .path("--tokenizer", data("lm/tokenizer.json"))
            .path("--data", data_file)
            .path("--out", t.path().join(format!("c{}", data_file.display().to_string().len())))
            .arg("--quiet")
            .args(extra)
            .run()
    };
    let bom = t.path().join("bom.jsonl");
    std::fs::write(&bom, "\u{feff}{\"text\": \"a byte order mark first\"}\n{\"text\": \"then a row\"}\n").unwrap();
    ok(&lm(&bom, &[]));
    let bad = t.path().join("latin1.jsonl");
    std::fs::write(&bad, b"{\"text\": \"fine\"}\n{\"text\": \"caf\xe9\"}\n").unwrap();
    fails_with(&lm(&bad, &[]), &["latin1.jsonl", "line 2", "UTF-8"]);
    let empty = t.path().join("empty.parquet");
    let o = python("import sys, pyarrow as pa, pyarrow.parquet as pq; pq.write_table(pa.table({}), sys.argv[1])", &[&empty]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fails_with(&lm(&empty, &[]), &["empty.parquet"]);
    fails_with(&lm(&bom, &["--top-k", "-1"]), &["invalid value '-1' for '--top-k <K>'"]);
    Distill::new("cache-teacher")
        .path("--teacher", data("lm/teacher.onnx"))
        .path("--tokenizer", data("lm/tokenizer.json"))
        .path("--data", &bom)
        .path("--out", t.path().join("o"))
        .opt("--ort-lib", "/nonexistent/libonnxruntime.so")
        .env("ORT_DYLIB_PATH", "/also/not/here.so")
        .fails_with(&["--ort-lib /nonexistent/libonnxruntime.so: no such file"]);

    // Rows with a null label: cached as soft labels only, and inspect counts them.
    let rows = t.path().join("unlabelled.parquet");
    let o = python(
        "import sys, pyarrow as pa, pyarrow.parquet as pq\n\
         t = pq.read_table(sys.argv[1]).slice(0, 20)\n\
         labels = [None if i % 4 == 0 else v for i, v in enumerate(t.column('label').to_pylist())]\n\
         pq.write_table(t.set_column(1, 'label', pa.array(labels, pa.int64())), sys.argv[2])",
        &[&data("digits/train.parquet"), &rows],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Without --quiet, which hides warnings.
    let o = Distill::new("cache-teacher")
        .path("--teacher", data("digits/teacher.onnx"))
        .path("--data", &rows)
        .path("--out", t.path().join("u2"))
        .ok();
    assert!(
        stderr(&o).contains("5 of the 20 rows cached in this run have no label (their label is null): they are cached as soft labels only"),
        "{}",
        stderr(&o)
    );
    let o = Distill::new("inspect").arg(t.path().join("u2")).ok();
    assert!(stdout(&o).contains("positions without a hard label (soft label only) 5"), "{}", stdout(&o));
}

/// `--tokenizer` of another model beside a teacher exported with its own was accepted
/// (3000 tokens against 4096 logits, without a word).
#[test]
fn another_tokenizer_than_the_one_beside_the_teacher_is_refused() {
    let t = temp();
    Distill::new("cache-teacher")
        .path("--teacher", data("lm/teacher.onnx"))
        .path("--tokenizer", data("textcls/tokenizer.json"))
        .path("--data", data("inputs/jsonl/lm-300.jsonl"))
        .path("--out", t.path().join("c"))
        .arg("--quiet")
        .fails_with(&["textcls/tokenizer.json", "is not the tokenizer beside the teacher", "lm/tokenizer.json"]);
    // Without a tokenizer beside the teacher, a much smaller one draws a warning.
    let teacher = t.path().join("teacher.onnx");
    std::fs::copy(data("lm/teacher.onnx"), &teacher).unwrap();
    let o = Distill::lm_cache(&data("inputs/jsonl/lm-300.jsonl"), &t.path().join("d"))
        .without("--quiet")
        .set("--teacher", &teacher)
        .set("--tokenizer", data("textcls/tokenizer.json"))
        .ok();
    assert!(
        stderr(&o).contains("ids are taken as padding (more than padding usually is); check that this is the teacher's own tokenizer"),
        "{}",
        stderr(&o)
    );
}

/// Shards copied in from another cache (a cache of a shuffled copy of the data trained to
/// accuracy 0.013), and manifests edited with their checksum recomputed, passed `verify`
/// and were used: every shard now carries a stamp that readers and `verify` compare.
#[test]
fn shards_of_another_cache_and_edited_manifests_are_refused() {
    use distill::cache::Manifest;
    let t = temp();
    let a = t.path().join("a");
    cache_digits("train.parquet", &a, &["--temperature", "2", "--rows-per-shard", "600"]);
    let b = t.path().join("b");
    cache_digits("train.parquet", &b, &["--temperature", "3", "--rows-per-shard", "600"]);
    // b's second shard in place of a's, with a's manifest updated to its size and checksum.
    let mut m = Manifest::read(&a).unwrap();
    let theirs = Manifest::read(&b).unwrap().shards[1].clone();
    std::fs::copy(b.join(&theirs.file), a.join(&theirs.file)).unwrap();
    m.shards[1].bytes = theirs.bytes;
    m.shards[1].sha256 = theirs.sha256.clone();
    m.totals.positions = m.totals.positions - m.shards[1].positions + theirs.positions;
    m.shards[1].positions = theirs.positions;
    m.write_atomic(&a, "manifest.json").unwrap();
    for cmd in ["verify", "inspect"] {
        Distill::new(cmd).arg(&a).fails_with(&["shard-00001.parquet", "does not belong to this cache", "fingerprint"]);
    }
    // An edited temperature (checksum recomputed) is caught by the stamp too.
    let c = t.path().join("c");
    cache_digits("train.parquet", &c, &["--temperature", "2", "--rows-per-shard", "600"]);
    let mut m = Manifest::read(&c).unwrap();
    m.temperature = 5.0;
    m.write_atomic(&c, "manifest.json").unwrap();
    train_digits(&c, &t.path().join("r"))
        .args(["--student", "mlp", "--steps", "2", "--quiet"])
        .fails_with(&["shard-00000.parquet", "temperature: the shard says 2.0, the manifest 5.0"]);
}

/// A small deterministic generator (SplitMix64) for kill times.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// Run `cmd` and SIGKILL it after `ms` milliseconds (if it is still running).
fn kill_after(cmd: &Distill, ms: u64) {
    let mut child = cmd.command().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    while std::time::Instant::now() < until && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let _ = child.kill();
    child.wait().unwrap();
}

fn ms_of(o: impl FnOnce()) -> u64 {
    let t = std::time::Instant::now();
    o();
    t.elapsed().as_millis() as u64
}

/// Stage one killed at 24 seeded random moments (of up to 1.2x an uninterrupted run's
/// time), each followed by a check and a rerun: while interrupted, a directory that
/// `verify` accepts is one `train-student` accepts too; every rerun ends with the shards
/// of the uninterrupted run, byte for byte.
#[test]
fn stage_one_killed_anywhere_resumes_to_the_same_cache() {
    let t = temp();
    let args =
        |out: &Path| digits_cache_args("train.parquet", out, &["--temperature", "2", "--rows-per-shard", "100", "--batch-size", "16"]);
    let full = t.path().join("full");
    let full_ms = ms_of(|| {
        args(&full).ok();
    });
    let shards = |dir: &Path| -> Vec<Vec<u8>> {
        let m = distill::cache::Manifest::read(dir).unwrap();
        m.shards.iter().map(|s| std::fs::read(dir.join(&s.file)).unwrap()).collect()
    };
    let want = shards(&full);
    let mut rng = Rng(21);
    for trial in 0..24 {
        let out = t.path().join(format!("k{trial}"));
        kill_after(&args(&out), rng.below(full_ms * 6 / 5 + 1));
        let verified = Distill::new("verify").arg(&out).run().status.success();
        if verified {
            train_digits(&out, &t.path().join(format!("r{trial}"))).args(["--student", "mlp:hidden=4", "--steps", "1", "--quiet"]).ok();
        }
        args(&out).ok();
        assert!(shards(&out) == want, "trial {trial}: the resumed cache differs from the uninterrupted one");
    }
}

/// Stage two killed at 20 seeded random moments (each in a run of its own), then resumed from
/// its last checkpoint: the final weights are the uninterrupted run's, bit for bit.
#[test]
fn stage_two_killed_anywhere_resumes_to_the_same_weights() {
    let t = temp();
    let cache = t.path().join("cache");
    cache_digits("train.parquet", &cache, &["--rows-per-shard", "300"]);
    let args = |out: &Path, resume: bool| {
        let a = train_digits(&cache, out).args([
            "--student",
            "mlp:hidden=16",
            "--steps",
            "120",
            "--batch-size",
            "32",
            "--checkpoint-every",
            "10",
            "--quiet",
        ]);
        if resume { a.arg("--resume") } else { a }
    };
    let full = t.path().join("full");
    let full_ms = ms_of(|| {
        args(&full, false).ok();
    });
    let want = tensors(&full.join("student.safetensors"));
    let mut rng = Rng(22);
    for trial in 0..20 {
        // A run of its own each time: killed once, then resumed to the end.
        let out = t.path().join(format!("k{trial}"));
        kill_after(&args(&out, false), rng.below(full_ms + 1));
        args(&out, true).ok();
        assert!(
            tensors(&out.join("student.safetensors")) == want,
            "trial {trial}: the resumed run's weights differ from the uninterrupted run's"
        );
    }
}

/// A cache whose shards carry no stamp (written before stamps existed) still cannot train
/// on relabelled rows: the cached hard labels are checked against the data's, as an LM's
/// next tokens are. Here shard 0 comes from a cache of the data with permuted labels, its
/// stamp removed by pyarrow, and the manifest updated to it.
#[test]
fn cached_labels_that_are_not_the_datas_are_refused() {
    use distill::cache::Manifest;
    let t = temp();
    let a = t.path().join("a");
    cache_digits("train.parquet", &a, &["--rows-per-shard", "600"]);
    let permuted = t.path().join("permuted.parquet");
    let o = python(
        "import sys, pyarrow as pa, pyarrow.parquet as pq\n\
         t = pq.read_table(sys.argv[1]); labels = t.column('label').to_pylist()\n\
         pq.write_table(t.set_column(1, 'label', pa.array(labels[1:] + labels[:1], pa.int64())), sys.argv[2])",
        &[&data("digits/train.parquet"), &permuted],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = t.path().join("b");
    Distill::digits_cache("train.parquet", &b).set("--data", &permuted).opt("--rows-per-shard", "600").ok();
    let shard = a.join("shard-00000.parquet");
    let o = python(
        "import sys, pyarrow.parquet as pq\n\
         t = pq.read_table(sys.argv[1]).replace_schema_metadata(None)\n\
         pq.write_table(t, sys.argv[2], compression='zstd', use_compliant_nested_type=False)\n\
         assert b'distill.shard' not in (pq.read_metadata(sys.argv[2]).metadata or {})",
        &[&b.join("shard-00000.parquet"), &shard],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut m = Manifest::read(&a).unwrap();
    let bytes = std::fs::read(&shard).unwrap();
    m.shards[0].bytes = bytes.len() as u64;
    m.shards[0].sha256 = distill::cache::manifest::sha256_bytes(&bytes);
    m.write_atomic(&a, "manifest.json").unwrap();
    Distill::new("verify").arg(&a).ok();
    train_digits(&a, &t.path().join("r")).args(["--student", "mlp", "--steps", "2", "--quiet"]).fails_with(&[
        "shard-00000.parquet",
        "row 0: the cache's hard label is",
        "but the data's `label` is",
    ]);
}

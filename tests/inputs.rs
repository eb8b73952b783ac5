//! Stage one on the files users bring: Parquet as pyarrow and pandas write it (every
//! codec), sharded datasets (a directory, a glob), compressed JSONL (made by
//! data/inputs/make_inputs.py), and the teacher export variants in data/exports (made by
//! data/exports/make_exports.py, referenced by data/reference/make_exports_reference.py).

use std::path::{Path, PathBuf};

use crate::cache_teacher::{compare_with_reference_value, read_all};
use crate::common::*;

/// Every cached position of a cache, exactly (log-probs as bits).
type Exact = Vec<(u64, u32, Option<i64>, Vec<u32>, Vec<u32>, u32)>;

fn exact(dir: &Path) -> Exact {
    let (_, all) = read_all(dir);
    let k = all.k;
    (0..all.len())
        .map(|i| {
            let ids = all.ids[i * k..(i + 1) * k].to_vec();
            let lps = all.logprobs[i * k..(i + 1) * k].iter().map(|v| v.to_bits()).collect();
            (all.rows[i], all.positions[i], all.hard_labels[i], ids, lps, all.tail_logmass[i].to_bits())
        })
        .collect()
}

/// `cache-teacher` with the digits teacher over `data_spec` (a file, a directory or a glob)
/// into `out`, k = 5 at T = 2, `--quiet`.
fn digits_from(data_spec: impl Arg, out: &Path) -> Distill {
    Distill::digits_cache("train.parquet", out).set("--data", data_spec).opt("--top-k", 5).opt("--temperature", 2)
}

/// `cache-teacher` with the LM teacher `teacher` over `data_spec` (prompt/completion columns)
/// into `out`, k = 8 at T = 2, `--quiet`.
fn lm_from(teacher: &Path, data_spec: &Path, out: &Path) -> Distill {
    Distill::lm_cache(data_spec, out).set("--teacher", teacher).opt("--top-k", 8).opt("--temperature", 2)
}

/// The same 200 digits rows written by pyarrow in each codec and by pandas with its
/// defaults give bit-identical caches; stage two trains on and `eval` reads the Snappy file
/// (pandas' and pyarrow's default).
#[test]
fn parquet_in_every_codec_caches_trains_and_evaluates() {
    let t = temp();
    let mut first: Option<Exact> = None;
    for codec in ["snappy", "gzip", "lz4", "brotli", "zstd", "none", "pandas"] {
        let out = t.path().join(codec);
        digits_from(data(&format!("inputs/codecs/digits-{codec}.parquet")), &out).ok();
        let got = exact(&out);
        assert_eq!(got.len(), 200, "{codec}: one position per row");
        match &first {
            None => first = Some(got),
            Some(f) => assert!(&got == f, "{codec}: soft labels differ from snappy's"),
        }
    }
    let snappy = data("inputs/codecs/digits-snappy.parquet");
    let run = t.path().join("run");
    Distill::train(t.path().join("snappy"), &snappy, &run).opt("--student", "mlp:hidden=16").opt("--steps", 5).arg("--quiet").ok();
    let o = Distill::new("eval").path("--student", &run).path("--data", &snappy).arg("--json").ok();
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("eval --json prints JSON");
    assert!(v["accuracy"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{v}");
}

/// Three files (70/65/65 rows) given as a directory or as a glob are the 200 rows of the
/// single file, numbered across the files: same soft labels, with shards of 50 rows that
/// cross the file boundaries. The manifest lists every file; stage two reads across them
/// and names the file that changed; a directory of two splits is refused.
#[test]
fn a_sharded_dataset_is_one_dataset_as_a_directory_or_a_glob() {
    let t = temp();
    let sharded = |data_spec: &Path, out: &Path| digits_from(data_spec, out).opt("--rows-per-shard", 50).ok();
    let whole = t.path().join("whole");
    sharded(&data("inputs/codecs/digits-zstd.parquet"), &whole);
    let by_dir = t.path().join("dir");
    sharded(&data("inputs/train-shards"), &by_dir);
    let glob = PathBuf::from(data("inputs/hf-layout/data").display().to_string() + "/train-*.parquet");
    let by_glob = t.path().join("glob");
    sharded(&glob, &by_glob);
    let want = exact(&whole);
    assert!(exact(&by_dir) == want, "directory: soft labels differ from the single file's");
    assert!(exact(&by_glob) == want, "glob: soft labels differ from the single file's");

    let (m, _) = read_all(&by_dir);
    let files: Vec<(String, u64)> = m.dataset.files.iter().map(|f| (f.file.clone(), f.rows)).collect();
    let names: Vec<String> = (0..3).map(|i| format!("train-0000{i}-of-00003.parquet")).collect();
    assert_eq!(files.iter().map(|f| f.0.clone()).collect::<Vec<_>>(), names);
    assert_eq!(files.iter().map(|f| f.1).sum::<u64>(), 200);
    assert_eq!(m.dataset.rows, 200);

    let train = |cache: &Path, rows: &Path, out: &Path| Distill::train(cache, rows, out).opt("--student", "mlp:hidden=16");
    train(&by_glob, &glob, &t.path().join("run")).opt("--steps", 10).opt("--batch-size", 64).opt("--shuffle-window", 1).arg("--quiet").ok();

    // Another file in place of the second: named, with its hash and rows.
    let copy = t.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for n in &names {
        std::fs::copy(data("inputs/train-shards").join(n), copy.join(n)).unwrap();
    }
    std::fs::copy(copy.join(&names[0]), copy.join(&names[1])).unwrap();
    train(&by_dir, &copy, &t.path().join("r2")).opt("--steps", 1).arg("--quiet").fails_with(&[
        "another dataset",
        "train-00001-of-00003.parquet",
        "70 rows",
        "65 rows",
    ]);

    // The Hugging Face data/ directory holds train and test shards: the user picks one.
    digits_from(data("inputs/hf-layout/data"), &t.path().join("splits")).fails_with(&["2 splits", "train, test", "train-*"]);
    let nothing = data("inputs").display().to_string() + "/nothing-*.parquet";
    digits_from(nothing, &t.path().join("none")).fails_with(&["the glob matches no file"]);
}

/// `.jsonl.gz` and `.jsonl.zst` hold the bytes of the `.jsonl`: the same cache, recorded
/// with their format; stage two seeks shards in the compressed file.
#[test]
fn compressed_jsonl_is_read_as_plain_jsonl() {
    let t = temp();
    let teacher = data("lm/teacher.onnx");
    let mut first: Option<Exact> = None;
    for ext in ["jsonl", "jsonl.gz", "jsonl.zst"] {
        let out = t.path().join(ext);
        lm_from(&teacher, &data(&format!("inputs/jsonl/lm-300.{ext}")), &out).opt("--rows-per-shard", 100).ok();
        let (m, _) = read_all(&out);
        assert_eq!(m.dataset.format, ext);
        assert_eq!(m.dataset.rows, 300);
        let got = exact(&out);
        match &first {
            None => first = Some(got),
            Some(f) => assert!(&got == f, "{ext}: soft labels differ from the plain file's"),
        }
    }
    Distill::train(t.path().join("jsonl.zst"), data("inputs/jsonl/lm-300.jsonl.zst"), t.path().join("run"))
        .opt("--student", "decoder:d_model=16,layers=1,heads=2,d_ff=32")
        .opt("--steps", 3)
        .opt("--shuffle-window", 1)
        .arg("--quiet")
        .ok();
}

/// The export variants' reference, computed by data/reference/make_exports_reference.py on
/// this machine: onnxruntime's fp16 kernels round differently from one CPU to another (on an
/// AMD EPYC, log-probs up to 2e-3 from those an Intel Xeon gave), so a reference made
/// elsewhere would measure the CPU, not distill. The committed exports_k8_T2.json is the
/// Xeon's, for reading.
fn exports_reference() -> serde_json::Value {
    static REFERENCE: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    REFERENCE
        .get_or_init(|| {
            let t = temp();
            let out = t.path().join("exports.json");
            let o = std::process::Command::new("python3")
                .arg(data("reference/make_exports_reference.py"))
                .arg(&out)
                .output()
                .expect("python3 runs");
            assert!(o.status.success(), "make_exports_reference.py failed:\n{}", String::from_utf8_lossy(&o.stderr));
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).expect("reference json")
        })
        .clone()
}

/// The first rows of lm-300.jsonl, for the export tests (the reference covers 4 rows).
fn first_rows(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(data("inputs/jsonl/lm-300.jsonl")).unwrap();
    let p = dir.join("rows.jsonl");
    std::fs::write(&p, text.lines().take(n).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    p
}

/// The first 16 rows of lm-300.jsonl (`rows.jsonl`) and the LM teacher's top-8 cache of
/// them at T = 2 (`cache`), in one shared directory: two tests train from the cache, and
/// neither changes it.
fn lm_first_16_k8() -> (PathBuf, PathBuf) {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = shared_cache(&DIR, "lm-first-16-k8", |dir| {
        std::fs::create_dir_all(dir).unwrap();
        lm_from(&data("lm/teacher.onnx"), &first_rows(dir, 16), &dir.join("cache")).ok();
    });
    (dir.join("rows.jsonl"), dir.join("cache"))
}

/// Each export variant's soft labels equal onnxruntime + numpy's on its own logits (f16 and
/// bf16 logits widened to f64 by numpy, to f32 here; both exact), within 1e-4 with f32
/// storage: Optimum's `text-generation` and `text-generation-with-past` (grouped-query past,
/// `[batch, 2, 0, 16]`), fp16 logits, bf16 logits, and a vocabulary padded past the
/// tokenizer (ids 4096.. never kept, their mass in the tail).
#[test]
fn teacher_export_variants_match_numpy_reference() {
    let t = temp();
    let rows = first_rows(t.path(), 4);
    let r = exports_reference();
    for (name, file) in [
        ("text-generation", "exports/text-generation/model.onnx"),
        ("gqa-with-past", "exports/gqa-with-past/model.onnx"),
        ("fp16", "exports/fp16/model.onnx"),
        ("bf16-logits", "exports/bf16-logits/model.onnx"),
        ("padded-vocab", "exports/padded-vocab/model.onnx"),
    ] {
        let out = t.path().join(name);
        lm_from(&data(file), &rows, &out).opt("--logprob-encoding", "f32").ok();
        let mut reference = r["exports"][name].clone();
        reference["top_k"] = r["top_k"].clone();
        compare_with_reference_value(&out, &reference, 1e-4);
        if name == "padded-vocab" {
            let (m, all) = read_all(&out);
            assert_eq!((m.vocab_size, m.tokenizer.as_ref().map(|t| t.vocab_size)), (4160, Some(4096)));
            assert!(all.ids.iter().all(|&id| id < 4096), "a padding id was kept");
        }
    }
}

/// A student whose vocabulary is the tokenizer's (4096) trains from a teacher whose logits
/// are padded past it (4160, the same tokenizer: Qwen2.5-7B's 152064 over Qwen2.5-0.5B's
/// 151936): the cache never names a padding id, so every cached id has a logit. A student
/// smaller than the tokenizer is refused, naming the first token it would lose.
#[test]
fn a_student_trains_from_a_teacher_with_padded_logits() {
    let t = temp();
    let (rows, plain) = lm_first_16_k8();
    let padded = t.path().join("padded");
    lm_from(&data("exports/padded-vocab/model.onnx"), &rows, &padded).ok();
    // A 4096-token Hugging Face student: the export of a decoder trained on the plain cache.
    let first = t.path().join("first");
    let train = |cache: &Path, student: &str, out: &Path| {
        Distill::train(cache, &rows, out).opt("--student", student).opt("--steps", 2).arg("--quiet")
    };
    train(&plain, "decoder:d_model=32,layers=1,heads=2,d_ff=48", &first).ok();
    let student = format!("hf:{}", first.join("hf").display());
    let o = train(&padded, &student, &t.path().join("second")).ok();
    assert!(stderr(&o).contains("padded past the student's vocabulary (4096)"), "{}", stderr(&o));
    // 4000 outputs would lose tokens 4000..4095 of the tokenizer.
    let config = first.join("hf/config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    c["vocab_size"] = 4000.into();
    std::fs::write(&config, c.to_string()).unwrap();
    train(&padded, &student, &t.path().join("third")).fails_with(&["vocab_size is 4000", "up to 4095", "token 4000"]);
}

/// `--soft-labels sampled:N`: each position holds N distinct ids with their share of the N
/// draws (summing to one with the tail), the same whatever the batch size (draws are seeded
/// by seed, row and position), another with another seed; the manifest says so, a student
/// trains from it, and re-tempering it is refused.
#[test]
fn sampled_soft_labels_are_fixed_by_seed_row_and_position() {
    let t = temp();
    let rows = first_rows(t.path(), 12);
    let cache =
        |out: &Path| Distill::lm_cache(&rows, out).opt("--temperature", 2).opt("--rows-per-shard", 5).opt("--soft-labels", "sampled:16");
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    cache(&a).opt("--batch-size", 3).ok();
    cache(&b).opt("--batch-size", 16).ok();
    cache(&c).opt("--seed", 1).ok();
    let shards = |d: &Path| {
        let mut v: Vec<_> =
            std::fs::read_dir(d).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
        v.sort();
        v.iter().map(|p| std::fs::read(p).unwrap()).collect::<Vec<_>>()
    };
    assert!(shards(&a).len() == 3 && shards(&a) == shards(&b), "sampled shards differ across batch sizes");
    assert_ne!(shards(&a), shards(&c), "another seed draws the same");
    // A run stopped after its first shard and rerun draws the rest as the whole run did.
    let cut = t.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    let mut partial: distill::cache::Manifest = serde_json::from_str(&std::fs::read_to_string(a.join("manifest.json")).unwrap()).unwrap();
    partial.complete = false;
    partial.shards.truncate(1);
    partial.totals.rows = partial.shards[0].rows;
    partial.totals.positions = partial.shards[0].positions;
    std::fs::copy(a.join(&partial.shards[0].file), cut.join(&partial.shards[0].file)).unwrap();
    partial.checksum = partial.compute_checksum();
    std::fs::write(cut.join("manifest.partial.json"), serde_json::to_vec_pretty(&partial).unwrap()).unwrap();
    let o = cache(&cut).opt("--batch-size", 4).ok();
    assert!(stdout(&o).contains("resumed after 1 finished shards"), "{}", stdout(&o));
    assert!(shards(&cut) == shards(&a), "the resumed sampled cache differs from the uninterrupted one");
    let (m, all) = read_all(&a);
    assert_eq!((m.top_k, m.sampled.map(|s| (s.draws, s.seed))), (16, Some((16, 0))));
    for i in 0..all.tail_logmass.len() {
        let mass: f64 =
            all.logprobs[i * 16..(i + 1) * 16].iter().map(|&l| (l as f64).exp()).sum::<f64>() + (all.tail_logmass[i] as f64).exp();
        assert!((mass - 1.0).abs() < 0.02, "position {i}: the draws' shares sum to {mass}");
    }
    let train = |out: &Path| {
        Distill::train(&a, &rows, out).opt("--student", "decoder:d_model=16,layers=1,heads=2,d_ff=24").opt("--steps", 2).arg("--quiet")
    };
    train(&t.path().join("run")).ok();
    train(&t.path().join("r2")).opt("--temperature", 1).opt("--tail", "renormalize").fails_with(&["cannot be re-tempered"]);
    cache(&t.path().join("d")).opt("--top-k", 4).fails_with(&["cache.top_k does not apply to sampled soft labels"]);
}

/// `--soft-labels topk+sampled:K,N`: each position holds the exact top K (the same ids and
/// log-probs as a top-K cache, within the delta encoding's step) and N draws from the rest,
/// whose shares of the rest's mass make the position sum to one; the manifest records K.
#[test]
fn topk_plus_sampled_keeps_the_exact_head() {
    let t = temp();
    let rows = first_rows(t.path(), 8);
    let (top, mixed) = (t.path().join("top"), t.path().join("mixed"));
    lm_from(&data("lm/teacher.onnx"), &rows, &top).ok(); // top-8 at T = 2
    Distill::lm_cache(&rows, &mixed).opt("--soft-labels", "topk+sampled:8,8").opt("--temperature", 2).ok();
    let ((_, a), (m, b)) = (read_all(&top), read_all(&mixed));
    assert_eq!((m.top_k, m.sampled.map(|s| (s.exact_top, s.draws))), (16, Some((8, 8))));
    assert_eq!(a.tail_logmass.len(), b.tail_logmass.len());
    for i in 0..a.tail_logmass.len() {
        let (ids, lps) = (&b.ids[i * 16..(i + 1) * 16], &b.logprobs[i * 16..(i + 1) * 16]);
        for j in 0..8 {
            let at = ids.iter().position(|&id| id == a.ids[i * 8 + j]).expect("a top-8 id is among the entries");
            assert!((lps[at] - a.logprobs[i * 8 + j]).abs() <= 0.004, "position {i}: {} vs the top-8's {}", lps[at], a.logprobs[i * 8 + j]);
        }
        let mass: f64 = lps.iter().map(|&l| (l as f64).exp()).sum::<f64>() + (b.tail_logmass[i] as f64).exp();
        assert!((mass - 1.0).abs() < 0.02, "position {i}: the entries sum to {mass}");
    }
}

/// `--train` and `--freeze`: the weights that do not train are exported bit for bit as they
/// started, the others move, and the optimizer keeps no state for the frozen ones.
#[test]
fn only_the_selected_weights_train() {
    let t = temp();
    let (rows, cache) = lm_first_16_k8();
    let train = |student: &str, out: &Path| Distill::train(&cache, &rows, out).opt("--steps", 3).arg("--quiet").opt("--student", student);
    let start = t.path().join("start");
    train("decoder:d_model=32,layers=2,heads=2,d_ff=48", &start).ok();
    let tensors = |run: &Path| -> std::collections::BTreeMap<String, Vec<u8>> {
        let bytes = std::fs::read(run.join("hf/model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors().into_iter().map(|(n, v)| (n, v.data().to_vec())).collect()
    };
    let before = tensors(&start);
    let from = format!("hf:{}", start.join("hf").display());
    for (extra, frozen_unless) in
        [(vec!["--train", "head"], "lm_head."), (vec!["--freeze", "blocks.0.*,embed.*", "--weight-decay", "0.1"], "model.layers.1.")]
    {
        let run = t.path().join(format!("run-{}", extra[0].trim_start_matches('-')));
        let o = train(&from, &run).args(&extra).ok();
        assert!(stderr(&o).contains("parameter tensors") && stderr(&o).contains("the others are frozen"), "{}", stderr(&o));
        let after = tensors(&run);
        for (name, b) in &before {
            let trains = name.starts_with(frozen_unless)
                || (extra[0] == "--freeze" && (name.starts_with("lm_head.") || name == "model.norm.weight"));
            assert_eq!(&after[name] == b, !trains, "{extra:?}: {name} {}", if trains { "did not train" } else { "changed" });
        }
    }
    // The optimizer's state: the head only vs every weight.
    let optim = |run: &str| {
        let dir = std::fs::read_dir(t.path().join(run))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
            .unwrap();
        std::fs::metadata(dir.path().join("optim.bpk")).unwrap().len()
    };
    let all = t.path().join("run-all");
    train(&from, &all).ok();
    // AdamW keeps two f32 moments per trained value: the head alone is 2 * 4 * 4096 * 32
    // bytes (1 MiB); every weight holds at least the embedding's 1 MiB more.
    let head = 2 * 4 * 4096 * 32;
    let (h, a) = (optim("run-train"), optim("run-all"));
    assert!(h >= head && h < head + 4096 && a >= h + head, "head only {h} vs all {a} bytes of optimizer state");
    train(&from, &t.path().join("none")).opt("--train", "nothing.*").fails_with(&["`nothing.*` matches no parameter", "embed.weight"]);
    train(&from, &t.path().join("list")).opt("--train", "head,norm.*").fails_with(&["`head` matches no parameter", "stand alone"]);
}

/// The legacy merged decoder (`use_cache_branch` = false, past of length 0) gives the soft
/// labels of the plain export of the same weights.
#[test]
fn merged_decoder_is_fed_use_cache_branch_false() {
    let t = temp();
    let rows = first_rows(t.path(), 4);
    let merged = t.path().join("merged");
    lm_from(&data("exports/merged/decoder_model_merged.onnx"), &rows, &merged).opt("--logprob-encoding", "f32").ok();
    let (m, _) = read_all(&merged);
    let branch = m.teacher.inputs.iter().find(|i| i.name == "use_cache_branch").expect("the merged decoder has use_cache_branch");
    assert_eq!(branch.filled_from.as_deref(), Some("false (no past)"));
    let r = exports_reference();
    let mut reference = r["exports"]["text-generation"].clone();
    reference["top_k"] = r["top_k"].clone();
    compare_with_reference_value(&merged, &reference, 1e-4);
}

/// Logits for the last position only (a pruned LM head) cannot be cached: refused, saying why.
#[test]
fn pruned_lm_head_is_refused_with_the_reason() {
    let t = temp();
    let rows = first_rows(t.path(), 2);
    lm_from(&data("exports/pruned-head/model.onnx"), &rows, &t.path().join("c")).fails_with(&[
        "last position only",
        "prune_lm_head",
        "[batch, seq, vocab]",
    ]);
}

/// The teacher's fingerprint covers its external-data file: the weights scaled by 1.5 make
/// another teacher, and rerunning into the same cache is refused naming the file (it was
/// "already complete" when only the graph was hashed).
#[test]
fn external_data_weights_are_part_of_the_teacher_fingerprint() {
    let t = temp();
    let rows = first_rows(t.path(), 3);
    let model = t.path().join("teacher");
    std::fs::create_dir(&model).unwrap();
    for f in ["model.onnx", "model.onnx_data"] {
        std::fs::copy(data("exports/external-data").join(f), model.join(f)).unwrap();
    }
    let out = t.path().join("cache");
    let teacher = model.join("model.onnx");
    lm_from(&teacher, &rows, &out).ok();
    let (m, _) = read_all(&out);
    let weights = std::fs::read(model.join("model.onnx_data")).unwrap();
    assert_eq!(m.teacher.external_data.len(), 1);
    assert_eq!(m.teacher.external_data[0].file, "model.onnx_data");
    assert_eq!(m.teacher.external_data[0].bytes, weights.len() as u64);

    // Every f32 weight times 1.5 (the data file is raw little-endian tensors).
    let scaled: Vec<u8> = weights.chunks(4).flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) * 1.5).to_le_bytes()).collect();
    std::fs::write(model.join("model.onnx_data"), scaled).unwrap();
    lm_from(&teacher, &rows, &out).fails_with(&["other settings", "external-data file model.onnx_data differs"]);
    // Into a new directory it is a teacher of its own, with its own soft labels.
    let other = t.path().join("other");
    lm_from(&teacher, &rows, &other).ok();
    let (m2, _) = read_all(&other);
    assert_ne!(m2.teacher.external_data[0].sha256, m.teacher.external_data[0].sha256);
    assert_ne!(m2.fingerprint, m.fingerprint);
    assert!(exact(&other) != exact(&out), "scaled weights gave the same soft labels");
}

/// The chat fixture through both stages: `cache-teacher --messages-column` renders each
/// conversation with the tokenizer_config.json template (tests/chat_template.py checks the
/// tokens and positions against transformers); only assistant positions are cached by
/// default, every one with `--positions all`; the Parquet list<struct> column gives the
/// same cache as the JSONL one; `train-student` re-renders with the template the cache
/// carries (checking every cached next token) and `eval` scores held-out conversations.
#[test]
fn chat_data_caches_assistant_turns_and_trains() {
    let t = temp();
    let chat = |data_file: &str, out: &Path| {
        Distill::lm_teacher(&data(data_file), out)
            .path("--chat-template", data("chat/tokenizer_config.json"))
            .opt("--messages-column", "messages")
            .opt("--top-k", 8)
            .opt("--temperature", 2)
            .opt("--max-seq-len", 1024)
            .opt("--rows-per-shard", 50)
    };
    let assistant = t.path().join("assistant");
    chat("chat/train.jsonl", &assistant).ok();
    let every = t.path().join("all");
    chat("chat/train.jsonl", &every).opt("--positions", "all").ok();
    let from_parquet = t.path().join("parquet");
    chat("chat/train.parquet", &from_parquet).ok();
    let (m, a) = read_all(&assistant);
    let (_, e) = read_all(&every);
    assert_eq!(m.positions, distill::cache::Positions::Assistant);
    assert!(m.text.as_ref().and_then(|t| t.chat_template_sha256.as_ref()).is_some(), "the template is fingerprinted");
    assert!(assistant.join("chat_template.json").is_file());
    assert!(!a.is_empty() && a.len() < e.len(), "assistant positions {} of {}", a.len(), e.len());
    // Assistant positions are a subset of all positions, with the same next tokens.
    let all: std::collections::HashMap<(u64, u32), Option<i64>> =
        (0..e.len()).map(|i| ((e.rows[i], e.positions[i]), e.hard_labels[i])).collect();
    for i in 0..a.len() {
        assert_eq!(all.get(&(a.rows[i], a.positions[i])), Some(&a.hard_labels[i]), "row {} position {}", a.rows[i], a.positions[i]);
    }
    assert!(exact(&from_parquet) == exact(&assistant), "Parquet conversations give another cache than JSONL");

    let train = |out: &Path| {
        Distill::train(&assistant, data("chat/train.jsonl"), out).opt("--student", "decoder:d_model=16,layers=1,heads=2,d_ff=32")
    };
    let run = t.path().join("run");
    train(&run).opt("--steps", 3).arg("--quiet").ok();
    let o = Distill::new("eval").path("--student", &run).path("--data", data("chat/valid.jsonl")).arg("--json").ok();
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("eval --json prints JSON");
    assert!(v["perplexity"].as_f64().is_some_and(|p| p.is_finite() && p > 1.0), "{v}");

    // Another template is another cache: stage two refuses a swapped chat_template.json.
    let mut saved: serde_json::Value = serde_json::from_slice(&std::fs::read(assistant.join("chat_template.json")).unwrap()).unwrap();
    saved["template"] = serde_json::Value::String(saved["template"].as_str().unwrap().replace("<|user|>", "<|human|>"));
    std::fs::write(assistant.join("chat_template.json"), serde_json::to_vec(&saved).unwrap()).unwrap();
    train(&t.path().join("r2"))
        .opt("--steps", 1)
        .arg("--quiet")
        .fails_with(&["chat_template.json", "is not the chat template the cache was made with"]);
}

/// Bad chat input is refused naming what is wrong: no template beside the tokenizer, a
/// turn the template refuses (its own raise_exception message, with the row), a column
/// that is not a list of turns, `--positions assistant` without conversations.
#[test]
fn chat_input_errors_name_the_row_and_the_fix() {
    let t = temp();
    let rows = t.path().join("chat.jsonl");
    std::fs::write(
        &rows,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n\
         {\"messages\": [{\"role\": \"tool\", \"content\": \"42\"}]}\n",
    )
    .unwrap();
    let run = |out: &str| Distill::lm_teacher(&rows, &t.path().join(out));
    run("a").opt("--messages-column", "messages").fails_with(&["needs a chat template", "--chat-template FILE"]);
    let template = data("chat/tokenizer_config.json");
    run("b")
        .opt("--messages-column", "messages")
        .path("--chat-template", &template)
        .fails_with(&["row 1, column `messages`", "Conversation roles must be system, user or assistant; got: tool"]);
    std::fs::write(&rows, "{\"messages\": \"not a list\"}\n").unwrap();
    run("c").opt("--messages-column", "messages").path("--chat-template", &template).fails_with(&[
        "row 0",
        "column `messages`",
        "found a string",
    ]);
    run("d")
        .opt("--text-column", "messages")
        .opt("--positions", "assistant")
        .fails_with(&["positions = \"assistant\" needs messages_column"]);
}

/// A damaged compressed file and a dataset of mixed formats are refused naming the file.
#[test]
fn damaged_and_mixed_datasets_are_refused_by_name() {
    let t = temp();
    let gz = t.path().join("cut.jsonl.gz");
    let bytes = std::fs::read(data("inputs/jsonl/lm-300.jsonl.gz")).unwrap();
    std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
    lm_from(&data("lm/teacher.onnx"), &gz, &t.path().join("a")).fails_with(&["cut.jsonl.gz"]);
    let mixed = t.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::copy(data("inputs/jsonl/lm-300.jsonl"), mixed.join("a.jsonl")).unwrap();
    std::fs::copy(data("inputs/codecs/digits-zstd.parquet"), mixed.join("b.parquet")).unwrap();
    digits_from(&mixed, &t.path().join("b")).fails_with(&["mixes jsonl and parquet files"]);
}

/// TRL's conversational prompt/completion (lists of turns in both columns): rendered with
/// the chat template, completion positions only (tests/chat_template.py checks them
/// against TRL's masking with transformers); stage two trains from the cache.
#[test]
fn conversational_prompt_completion_is_rendered_and_trains() {
    let t = temp();
    let out = t.path().join("cache");
    let conversations = data("chat/prompt_completion.jsonl");
    let chat = |rows: &Path, out: &Path| Distill::lm_cache(rows, out).path("--chat-template", data("chat/tokenizer_config.json"));
    chat(&conversations, &out).opt("--top-k", 8).ok();
    let (m, all) = read_all(&out);
    let text = m.text.as_ref().expect("text settings");
    assert!(text.conversational && text.chat_template_sha256.is_some());
    assert_eq!(m.positions, distill::cache::Positions::Completion);
    assert_eq!(all.rows.iter().collect::<std::collections::HashSet<_>>().len(), 60, "every row has completion positions");
    Distill::train(&out, &conversations, t.path().join("run"))
        .opt("--student", "decoder:d_model=16,layers=1,heads=2,d_ff=32")
        .opt("--steps", 2)
        .arg("--quiet")
        .ok();
    // Plain-text prompts take no chat template.
    chat(&data("inputs/jsonl/lm-300.jsonl"), &t.path().join("plain"))
        .fails_with(&["chat_template applies to conversations", "holds plain text"]);
}

//! The trust boundary (docs/threat-model.md): what a cache, a teacher, a checkpoint, a chat
//! template or a pipeline file from someone else must not make the tool do. Each test is a
//! reproduction of a fault: a hang, a read or a write outside the directory handed over, a
//! silent wrong result, or an output written over an input. Commands that could hang run
//! under a time limit, so a regression fails instead of stalling the suite.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", path.display());
}

/// A length-delimited protobuf field (wire type 2).
fn field(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let varint = |mut v: u64, out: &mut Vec<u8>| loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    };
    varint((number << 3) | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// The external-data teacher copied into `dir`, with one more initializer that no node uses,
/// its weights "kept" at `location`. Appended as a second `graph` field, which protobuf
/// merges into the first: what an edited or malicious export looks like to ONNX Runtime.
fn teacher_with_unused_tensor_at(dir: &Path, location: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["model.onnx", "model.onnx_data"] {
        std::fs::copy(data("exports/external-data").join(f), dir.join(f)).unwrap();
    }
    let entry = |k: &str, v: &str| field(13, &[field(1, k.as_bytes()), field(2, v.as_bytes())].concat());
    // TensorProto: dims (1) = 4, data_type (2) = FLOAT, name (8), external_data (13), data_location (14) = EXTERNAL.
    let tensor =
        [vec![1 << 3, 4, 2 << 3, 1], field(8, b"unused"), entry("location", location), entry("length", "16"), vec![14 << 3, 1]].concat();
    let mut model = std::fs::read(dir.join("model.onnx")).unwrap();
    model.extend(field(7, &field(5, &tensor)));
    let path = dir.join("model.onnx");
    std::fs::write(&path, model).unwrap();
    path
}

const LIMIT: Duration = Duration::from_secs(120);

/// `generate` with `teacher` and the LM tokenizer over the LM's held-out prompts into `out`.
fn generate_lm(teacher: &Path, out: &Path) -> Distill {
    Distill::generate(teacher, data("lm/tokenizer.json"), data("lm/valid.jsonl"), out)
}

/// Root cause 1: an unused initializer's external data at `/dev/zero`, at a FIFO, or
/// outside the model's directory hung stage one or published the outside file's SHA-256 in
/// the manifest. ONNX Runtime's rules now apply to every reference, naming the tensor.
#[test]
fn external_data_outside_the_rules_is_refused_naming_the_tensor() {
    let t = temp();
    let rows = lm_rows(t.path(), 3);
    std::fs::write(t.path().join("secret.txt"), "not the teacher's").unwrap();
    mkfifo(&t.path().join("fifo"));
    for (i, location) in ["/dev/zero", "../secret.txt", &s(&t.path().join("secret.txt")), "fifo"].into_iter().enumerate() {
        let dir = t.path().join(format!("teacher-{i}"));
        if location == "fifo" {
            std::fs::create_dir_all(&dir).unwrap();
            mkfifo(&dir.join("fifo"));
        }
        let teacher = teacher_with_unused_tensor_at(&dir, location);
        let out = t.path().join(format!("cache-{i}"));
        let why = if location == "fifo" { "FIFO" } else { "only a relative path inside" };
        Distill::lm_cache(&rows, &out).set("--teacher", &teacher).within(LIMIT).fails_with(&["the external data of tensor `unused`", why]);
        assert!(!out.join("manifest.json").exists(), "{location}: a manifest was published");
    }
    // The same model with its unused tensor's data inside its directory is a teacher.
    let dir = t.path().join("teacher-fine");
    let teacher = teacher_with_unused_tensor_at(&dir, "extra.bin");
    std::fs::write(dir.join("extra.bin"), [0u8; 16]).unwrap();
    Distill::lm_cache(&rows, &t.path().join("cache-fine")).set("--teacher", &teacher).within(LIMIT).ok();
}

/// Root cause 2: a manifest that is a link to `/dev/zero` grew until out of memory; a FIFO
/// blocked forever; a shard that is a FIFO too. Only bounded regular files are read.
#[test]
fn special_files_in_a_cache_are_refused_at_once() {
    let t = temp();
    let good = digits_test_k3_cache();
    let copy = |name: &str| private_copy(good, &t.path().join(name));
    let zero = copy("zero");
    std::fs::remove_file(zero.join("manifest.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", zero.join("manifest.json")).unwrap();
    let fifo = copy("fifo");
    std::fs::remove_file(fifo.join("manifest.json")).unwrap();
    mkfifo(&fifo.join("manifest.json"));
    let shard = copy("shard-fifo");
    std::fs::remove_file(shard.join("shard-00000.parquet")).unwrap();
    mkfifo(&shard.join("shard-00000.parquet"));
    for (dir, why) in [(&zero, "a link that leads out of"), (&fifo, "FIFO"), (&shard, "not a regular file")] {
        for cmd in ["verify", "inspect"] {
            Distill::new(cmd).arg(dir).within(Duration::from_secs(30)).fails_with(&[why]);
        }
    }
    // A manifest over its size limit is refused before it is read.
    let big = copy("big");
    let f = std::fs::OpenOptions::new().append(true).open(big.join("manifest.json")).unwrap();
    f.set_len(distill::untrusted::Cap::Manifest.bytes() + 1).unwrap();
    Distill::new("verify").arg(&big).within(Duration::from_secs(30)).fails_with(&["over the 67108864-byte limit"]);
}

/// Root causes 2 and 11: both readers, `distill verify` and `python -m distill_cache
/// verify`, over one list of hostile caches (tests/hostile_caches.py makes them from a good
/// cache): both accept the untouched copy and refuse every other case, in one `error:` line
/// (no traceback), without hanging. The Python reader used to accept a blank checksum, an
/// edited temperature with a recomputed checksum and a shard from another cache, and to hang
/// or exhaust memory on a FIFO or `/dev/zero`.
#[test]
fn both_readers_refuse_the_same_hostile_caches() {
    let t = temp();
    let (good, other) = (t.path().join("good"), t.path().join("other"));
    cache_digits("train.parquet", &good, &["--top-k", "5", "--rows-per-shard", "500", "--temperature", "2"]);
    cache_digits("train.parquet", &other, &["--top-k", "5", "--rows-per-shard", "500", "--temperature", "4"]);
    let out = t.path().join("cases");
    let made =
        Command::new("python3").arg(repo().join("tests/hostile_caches.py")).args([&good, &out, &other]).output().expect("python3 runs");
    assert!(made.status.success(), "tests/hostile_caches.py failed:\n{}", stderr(&made));
    let cases: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(out.join("cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    let limit = Duration::from_secs(30);
    for case in &cases {
        let (name, dir) = (case["name"].as_str().unwrap(), PathBuf::from(case["dir"].as_str().unwrap()));
        let rust = Distill::new("verify").arg(&dir).within(limit).run();
        let mut py = Command::new("python3");
        py.args(["-m", "distill_cache", "verify"]).arg(&dir).env("PYTHONPATH", repo().join("python"));
        let py = run_within(limit, py);
        for (reader, o) in [("distill verify", &rust), ("python -m distill_cache verify", &py)] {
            if name == "control" {
                assert!(o.status.success(), "{reader} refused the untouched cache:\n{}", stderr(o));
                continue;
            }
            let err = stderr(o);
            assert!(!o.status.success(), "{reader} accepted case {name} ({}):\n{}", case["why"], stdout(o));
            assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1, "{reader}, case {name}: not one error line:\n{err}");
        }
    }
}

/// Root cause 3: a `.distill-write-probe.<pid>` link planted in `--out` made cache-teacher
/// truncate the file it pointed at. The probe is created with O_EXCL|O_NOFOLLOW. The pids
/// the next processes take are predictable, so links are planted for the next few thousand.
#[test]
fn a_planted_probe_link_does_not_truncate_its_target() {
    let t = temp();
    let target = t.path().join("precious.txt");
    std::fs::write(&target, "keep me").unwrap();
    let out = t.path().join("cache");
    std::fs::create_dir(&out).unwrap();
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    if last == 0 {
        eprintln!("SKIPPED: /proc/sys/kernel/ns_last_pid is not readable here");
        return;
    }
    for pid in last + 1..last + 3000 {
        std::os::unix::fs::symlink(&target, out.join(format!(".distill-write-probe.{pid}"))).unwrap();
    }
    cache_digits("test.parquet", &out, &["--top-k", "3"]);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me", "the probe wrote through a planted link");
    // A planted lock-file link is refused, not followed.
    let other = t.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::os::unix::fs::symlink(&target, other.join(".distill.lock")).unwrap();
    Distill::digits_cache("test.parquet", &other).fails_with(&[".distill.lock", "symbolic link"]);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
}

/// Root cause 4: a chat template with two nested `range(100000)` loops hung stage one. Each
/// render has an instruction budget; the refusal names the row and the limit.
#[test]
fn a_chat_template_that_never_ends_is_stopped() {
    let t = temp();
    let template = t.path().join("slow.jinja");
    std::fs::write(&template, "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}").unwrap();
    Distill::lm_teacher(&data("chat/valid.jsonl"), &t.path().join("cache"))
        .path("--chat-template", &template)
        .opt("--messages-column", "messages")
        .within(LIMIT)
        .fails_with(&["row 0", "ran past its limit of 20000000 instructions"]);
}

/// A small decoder run (2 steps) and its Hugging Face export, `RUN/hf`.
fn small_decoder_run(dir: &Path) -> (PathBuf, PathBuf) {
    let rows = lm_rows(dir, 6);
    let cache = dir.join("cache");
    Distill::lm_cache(&rows, &cache).ok();
    let run = dir.join("run");
    Distill::train(&cache, &rows, &run)
        .opt("--student", "decoder:d_model=16,layers=2,heads=2,d_ff=24")
        .opt("--steps", 2)
        .arg("--quiet")
        .ok();
    (rows, run)
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Root causes 5 (configs believed before the weights), 7 (outputs over inputs) and 9
/// (a score over nothing), on one small decoder and its Hugging Face export.
#[test]
fn checkpoints_from_elsewhere_are_checked_before_use() {
    let t = temp();
    let (rows, run) = small_decoder_run(t.path());
    let hf = run.join("hf");
    // 5: a config.json claiming a 10^12 vocabulary (or 10^9 layers, 10^12 intermediate)
    // aborted on a 128 TB allocation; it is compared with the weights first.
    for (key, value) in [("vocab_size", 1e12), ("num_hidden_layers", 1e9), ("intermediate_size", 1e12), ("hidden_size", 1e6)] {
        let bad = t.path().join(format!("bad-{key}"));
        std::fs::create_dir(&bad).unwrap();
        for e in std::fs::read_dir(&hf).unwrap().flatten() {
            std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
        }
        edit_json(&bad.join("config.json"), |c| c[key] = serde_json::json!(value as u64));
        let scoring = |cmd: &str| Distill::new(cmd).path("--student", &bad).path("--data", &rows).within(LIMIT);
        scoring("eval").fails_with(&["config.json", "the config does not describe these weights"]);
        scoring("predict").path("--out", t.path().join("p.jsonl")).fails_with(&["the config does not describe these weights"]);
    }
    // A run directory's student.json is held to its weights the same way.
    let forged = t.path().join("forged-run");
    std::fs::create_dir(&forged).unwrap();
    for e in std::fs::read_dir(&run).unwrap().flatten().filter(|e| e.path().is_file()) {
        std::fs::copy(e.path(), forged.join(e.file_name())).unwrap();
    }
    edit_json(&forged.join("student.json"), |v| v["arch"]["vocab_size"] = serde_json::json!(1_000_000_000_000u64));
    Distill::new("eval")
        .path("--student", &forged)
        .path("--data", &rows)
        .within(LIMIT)
        .fails_with(&["student.json", "does not describe these weights"]);

    // 9: one token per row leaves nothing to score: an error, not perplexity 1.000.
    let on_rows = |cmd: &str| Distill::new(cmd).path("--student", &hf).path("--data", &rows);
    on_rows("eval").opt("--text-column", "prompt").opt("--max-seq-len", 1).fails_with(&["no position to score", "--max-seq-len 1"]);

    // 7: outputs over inputs.
    let init = |layers: u32, out: &Path| Distill::new("init-student").path("--from", &hf).opt("--layers", layers).path("--out", out);
    init(0, &hf).fails_with(&["--out", "is --from", "never writes over its own inputs"]);
    let before = std::fs::read(&rows).unwrap();
    on_rows("predict").path("--out", &rows).opt("--text-column", "prompt").fails_with(&["is --data"]);
    assert_eq!(std::fs::read(&rows).unwrap(), before, "predict replaced its dataset");
    let metrics = run.join("metrics.csv");
    let before = std::fs::read(&metrics).unwrap();
    Distill::new("report").arg(&run).path("--out", &metrics).fails_with(&["is the run's"]);
    assert_eq!(std::fs::read(&metrics).unwrap(), before);
    let cache = t.path().join("cache");
    for out in [cache.clone(), cache.join("run")] {
        Distill::train(&cache, &rows, &out)
            .opt("--student", "mlp")
            .opt("--steps", 1)
            .fails_with(&["--cache", "never writes over its own inputs"]);
    }
    Distill::new("verify").arg(&cache).ok();

    // init-student into a directory holding a sharded checkpoint: refused without
    // --overwrite; with it, the stale index (which every loader prefers) is gone.
    let sharded = t.path().join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    std::fs::write(sharded.join("model.safetensors.index.json"), r#"{"weight_map": {"x": "model-00001-of-00002.safetensors"}}"#).unwrap();
    std::fs::write(sharded.join("model-00001-of-00002.safetensors"), b"old").unwrap();
    init(1, &sharded).fails_with(&["is not empty", "model.safetensors.index.json", "--overwrite"]);
    init(1, &sharded).arg("--overwrite").ok();
    assert!(!sharded.join("model.safetensors.index.json").exists() && !sharded.join("model-00001-of-00002.safetensors").exists());
    Distill::new("eval").path("--student", &sharded).path("--data", &rows).opt("--text-column", "prompt").ok();
}

/// Root cause 5, the data side: a Parquet footer claiming 2^40 rows (its row groups forged
/// to agree) aborted stage one on a 4 GiB shard plan; a footer whose row groups do not add
/// up to its claim is refused as damaged.
#[test]
fn a_forged_parquet_footer_is_not_believed() {
    use parquet::file::metadata::{FileMetaData, ParquetMetaData, ParquetMetaDataReader, ParquetMetaDataWriter};
    let t = temp();
    let bytes = std::fs::read(data("digits/test.parquet")).unwrap();
    let meta = ParquetMetaDataReader::new().parse_and_finish(&bytes::Bytes::from(bytes.clone())).unwrap();
    let footer_len = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap()) as usize;
    let body = &bytes[..bytes.len() - 8 - footer_len];
    let forge = |file_rows: i64, group_rows: i64, name: &str| {
        let fm = meta.file_metadata();
        let fm = FileMetaData::new(
            fm.version(),
            file_rows,
            fm.created_by().map(str::to_string),
            fm.key_value_metadata().cloned(),
            fm.schema_descr_ptr(),
            fm.column_orders().cloned(),
        );
        let groups = meta.row_groups().iter().map(|g| g.clone().into_builder().set_num_rows(group_rows).build().unwrap()).collect();
        let mut out = body.to_vec();
        ParquetMetaDataWriter::new(&mut out, &ParquetMetaData::new(fm, groups)).finish().unwrap();
        let p = t.path().join(name);
        std::fs::write(&p, &out).unwrap();
        p
    };
    let cache = |data_file: &Path| Distill::digits_cache("test.parquet", &t.path().join("c")).set("--data", data_file).within(LIMIT);
    let huge = 1i64 << 40;
    let groups = meta.num_row_groups() as i64;
    let forged = forge(huge * groups, huge, "huge.parquet");
    cache(&forged).fails_with(&["shards of --rows-per-shard", "over the limit of 1000000 shards"]);
    // The writer sums the row groups into the file's count, so the lie is patched into the
    // footer's Thrift: FileMetaData field 3 (i64, compact header 0x16) comes before the row
    // groups, so the first `0x16 varint(zigzag(rows))` is the file's own count.
    let honest = std::fs::read(forge(0, meta.row_group(0).num_rows(), "honest.parquet")).unwrap();
    let zigzag = |v: i64| {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = vec![0x16u8];
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
        out
    };
    let footer = &honest[body.len()..honest.len() - 8];
    let from = zigzag(meta.file_metadata().num_rows());
    let at = footer.windows(from.len()).position(|w| w == from).expect("the file's row count in the footer");
    let patched = [&footer[..at], &zigzag(huge)[..], &footer[at + from.len()..]].concat();
    let lying = t.path().join("lying.parquet");
    std::fs::write(&lying, [body, &patched, &(patched.len() as u32).to_le_bytes(), b"PAR1"].concat()).unwrap();
    cache(&lying).fails_with(&["footer says 1099511627776 rows but its row groups hold 600"]);
}

/// Root cause 6: values past what the settings can hold wrapped silently.
#[test]
fn settings_that_overflow_are_refused_by_the_parser() {
    let t = temp();
    Distill::digits_cache("test.parquet", &t.path().join("c"))
        .opt("--soft-labels", "topk+sampled:18446744073709551615,2")
        .fails_with(&["K + N must be at most"]);
    let (teacher, out) = (data("lm/teacher.onnx"), t.path().join("g"));
    generate_lm(&teacher, &out).opt("--samples-per-prompt", "4294967297").fails_with(&["--samples-per-prompt", "4294967297"]);
    // The largest count that fits is planned from the row count, not built in memory: the
    // plan's size is refused before anything is read or decoded.
    generate_lm(&teacher, &out)
        .opt("--samples-per-prompt", "4294967295")
        .within(LIMIT)
        .fails_with(&["prompts x 4294967295 samples", "more than 1000000 shards"]);
}

/// Root causes 7 and 8 in a pipeline file: `out = ""` pointed at the pipeline's own
/// directory, and NaN or infinite numbers became the defaults.
#[test]
fn pipeline_values_that_would_become_defaults_are_refused() {
    let t = temp();
    for (table, line, want) in [
        ("cache", "temperature = nan", "`cache.temperature = NaN` is not a finite number"),
        ("train", "lr = inf", "`train.lr = inf` is not a finite number"),
        ("train", "out = \"\"", "`train.out` is empty"),
    ] {
        let p = t.path().join("p.toml");
        let cache = format!(
            "[cache]\nteacher = \"{}\"\ndata = \"{}\"\nout = \"{}\"\n",
            s(&data("digits/teacher.onnx")),
            s(&data("digits/test.parquet")),
            s(&t.path().join("c"))
        );
        let body = if table == "cache" {
            cache.replace("[cache]\n", &format!("[cache]\n{line}\n"))
        } else {
            format!("{cache}[{table}]\n{line}\n")
        };
        std::fs::write(&p, body).unwrap();
        for cmd in ["cache-teacher", "train-student"] {
            Distill::new(cmd).path("--pipeline", &p).fails_with(&[want]);
        }
    }
}

/// Root cause 10: `report` hung on a metrics.csv whose step is infinite or whose losses span
/// ±1e308; such values are skipped and counted.
#[test]
fn report_draws_what_it_can_of_hostile_metrics() {
    let t = temp();
    let run = t.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(
        run.join("metrics.csv"),
        "step,epoch,loss,kl,ce,lr\n1,0,1.0,0.5,0.5,0.001\n2,0,-1e308,0.4,1e308,0.001\ninf,0,1,1,1,1\n3,0,0.9,0.4,0.5,0.001\n",
    )
    .unwrap();
    let out = t.path().join("r.svg");
    let o = Distill::new("report").arg(&run).path("--out", &out).within(Duration::from_secs(30)).ok();
    assert!(stderr(&o).contains("7 values of metrics.csv were not drawn"), "{}", stderr(&o));
    assert!(std::fs::metadata(&out).unwrap().len() > 0);
}

/// Root cause 12: the real all-MiniLM-L6-v2 tokenizer.json (data/minilm) carries
/// `padding: Fixed 128` and `truncation: 128`. transformers applies neither unless a call
/// asks; distill applied both to every row. Now every row tokenizes as transformers does,
/// and a row cut to --max-seq-len keeps its [SEP] (transformers cuts before adding it).
/// The expected ids come from the `tokenizers` package, configured as transformers'
/// `tok(text)` and `tok(text, truncation=True, max_length=N)` configure it.
#[test]
fn a_real_tokenizer_is_applied_as_transformers_applies_it() {
    let tok_path = data("minilm/tokenizer.json");
    let tok = distill::text::Tokenizer::load(&tok_path).unwrap();
    let texts = ["Hello, world!", "Café naïve résumé — ÀÉÎ", &"the quick brown fox jumps over the lazy dog ".repeat(40)];
    let cols = |max: usize| distill::text::TextColumns {
        text: Some("text".into()),
        prompt: None,
        completion: None,
        messages: None,
        conversational: false,
        token_ids: false,
        chat_template_sha256: None,
        positions: distill::cache::Positions::Example,
        max_seq_len: max,
    };
    let ours: Vec<Vec<Vec<u32>>> = [100_000usize, 16]
        .iter()
        .map(|&max| {
            texts
                .iter()
                .map(|text| {
                    let fields = [distill::data::Field::Text(text.to_string())];
                    distill::text::tokenize(&tok, &cols(max), &fields, 0, Path::new("t")).unwrap().ids
                })
                .collect()
        })
        .collect();
    let script = r#"
import json, sys
from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1])
texts = json.loads(sys.argv[2])
# transformers' tok(text): no padding, no truncation.
t.no_padding(); t.no_truncation()
whole = [t.encode(x).ids for x in texts]
# tok(text, truncation=True, max_length=16).
t.enable_truncation(16)
cut = [t.encode(x).ids for x in texts]
print(json.dumps([whole, cut]))
"#;
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&tok_path)
        .arg(serde_json::to_string(&texts).unwrap())
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: Vec<Vec<Vec<u32>>> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ours, theirs);
    let sep = tok.inner.token_to_id("[SEP]").unwrap();
    assert_eq!(ours[1][2].len(), 16);
    assert_eq!(*ours[1][2].last().unwrap(), sep, "a long row keeps its [SEP]");
    assert!(ours[0][0].len() < 128, "no padding to 128");
}

/// The awkward results of the probe: `--resume` into a run killed before its first
/// checkpoint with other settings started afresh; a malformed `generation_config.json` was
/// ignored; `[eval] data` that does not exist was found only after stage one; identical
/// runs wrote `student.safetensors` with different bytes, mode 0600.
#[test]
fn awkward_results_are_clear_ones() {
    use std::os::unix::fs::PermissionsExt;
    let t = temp();
    let cache = digits_test_k3_cache();
    let train =
        |out: &Path| Distill::train(cache, data("digits/test.parquet"), out).opt("--student", "mlp").opt("--steps", 3).arg("--quiet");
    // Killed before the first checkpoint: config.json is there, no checkpoint yet.
    let run = t.path().join("run");
    train(&run).ok();
    std::fs::remove_file(run.join("checkpoint.json")).unwrap();
    for e in std::fs::read_dir(&run).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-")) {
        std::fs::remove_dir_all(e.path()).unwrap();
    }
    train(&run).arg("--resume").opt("--lr", "0.02").fails_with(&["stopped before its first checkpoint", "other settings", "lr"]);
    train(&run).arg("--resume").ok();

    // The same run twice: the same student.safetensors, byte for byte, with the usual mode.
    let again = t.path().join("again");
    train(&again).ok();
    let (a, b) = (run.join("student.safetensors"), again.join("student.safetensors"));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "identical runs wrote different bytes");
    assert_eq!(std::fs::metadata(&a).unwrap().permissions().mode() & 0o044, 0o044, "not readable by group and others");

    // A generation_config.json beside the teacher that is not JSON is an error, not a silence.
    let teacher = t.path().join("teacher");
    std::fs::create_dir(&teacher).unwrap();
    for f in ["model.onnx", "config.json"] {
        std::fs::copy(data("exports/text-generation").join(f), teacher.join(f)).unwrap();
    }
    let generate = generate_lm(&teacher.join("model.onnx"), &t.path().join("g"));
    std::fs::write(teacher.join("generation_config.json"), "{\"eos_token_id\": [2, ").unwrap();
    generate.fails_with(&["generation_config.json: not valid JSON"]);
    std::fs::write(teacher.join("generation_config.json"), "{\"eos_token_id\": 999999}").unwrap();
    generate.fails_with(&["eos_token_id 999999 is not a token id", "--eos-id"]);

    // `[eval] data` that does not exist is refused before stage one makes anything.
    let pipeline = t.path().join("p.toml");
    let text = std::fs::read_to_string(repo().join("pipelines/digits.toml"))
        .unwrap()
        .replace("\"../data/", &format!("\"{}/", s(&repo().join("data"))))
        .replace("\"../target/pipelines/digits/", &format!("\"{}/", s(t.path())))
        .replace("test.parquet\"\nseeds", "missing.parquet\"\nseeds");
    std::fs::write(&pipeline, text).unwrap();
    Distill::new("run").arg(&pipeline).arg("--quiet").fails_with(&["eval.data", "missing.parquet", "checked before any work"]);
    assert!(!t.path().join("cache").join("manifest.partial.json").exists() && !t.path().join("students").exists());
}

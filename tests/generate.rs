//! `distill generate`: teacher-written completions (sequence-level distillation data) and
//! the cache of their positions, from the same forward passes.

use std::path::{Path, PathBuf};

use crate::cache_teacher::read_all;
use crate::common::*;

/// The LM fixture teacher (no KV cache: each token reruns the sequence).
const LM: (&str, &str) = ("lm/teacher.onnx", "lm/tokenizer.json");
/// `optimum-cli export onnx --task text-generation-with-past` of a GQA Llama (KV cache).
const WITH_PAST: (&str, &str) = ("exports/gqa-with-past/model.onnx", "exports/gqa-with-past/tokenizer.json");

/// `generate` with `teacher` over `prompts` into `out`: 10 new tokens at most, 16 ids
/// cached a position, `--quiet`.
fn generating(teacher: (&str, &str), prompts: &Path, out: &Path) -> Distill {
    Distill::generate(data(teacher.0), data(teacher.1), prompts, out).opt("--cache-top-k", 16).arg("--quiet").opt("--max-new-tokens", 10)
}

/// [`generating`] with `extra`, asserting success: the generated dataset.
fn generate(teacher: (&str, &str), prompts: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    generating(teacher, prompts, out).args(extra).ok();
    out.join("generated.parquet")
}

fn prompts(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(data("lm/valid.jsonl")).unwrap();
    let p = dir.join("prompts.jsonl");
    std::fs::write(&p, text.lines().take(n).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    p
}

/// `cache-teacher` over the generated dataset's token ids (teacher-forced), as a user
/// would check a generated cache.
fn teacher_forced(teacher: (&str, &str), dataset: &Path, out: &Path) {
    Distill::lm_cache(dataset, out)
        .set("--teacher", data(teacher.0))
        .set("--tokenizer", data(teacher.1))
        .arg("--token-ids")
        .set("--prompt-column", "prompt_ids")
        .set("--completion-column", "completion_ids")
        .opt("--top-k", 16)
        .opt("--max-seq-len", 512)
        .ok();
}

fn column(dataset: &Path, name: &str) -> String {
    let o = python(
        "import sys, pyarrow.parquet as pq; print(pq.read_table(sys.argv[1]).column(sys.argv[2]).to_pylist())",
        &[dataset, Path::new(name)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// Greedy generation without a KV cache, 4 prompts to a batch (so rows are padded), equals
/// onnxruntime + numpy greedy decoding of each prompt alone, token for token; the
/// completion column decodes the ids; the soft labels cached from the generation's own
/// passes equal `cache-teacher` over the generated token ids within the encoding error.
#[test]
fn greedy_generation_equals_onnxruntime_greedy_decoding() {
    let t = temp();
    let p = prompts(t.path(), 7);
    let out = t.path().join("gen");
    let dataset = generate(LM, &p, &out, &["--batch-size", "4"]);
    let o = python(
        r#"
import sys
import numpy as np, onnxruntime as ort, pyarrow.parquet as pq
from tokenizers import Tokenizer
teacher, tokenizer, dataset = sys.argv[1:]
s = ort.InferenceSession(teacher)
tok = Tokenizer.from_file(tokenizer)
for r in pq.read_table(dataset).to_pylist():
    ids = tok.encode(r["prompt"]).ids
    assert ids == r["prompt_ids"], (r["row"], ids, r["prompt_ids"])
    out = []
    for _ in range(10):
        x = np.array([ids + out])
        logits = s.run(["logits"], {"input_ids": x, "attention_mask": np.ones_like(x)})[0]
        out.append(int(logits[0, -1].argmax()))
        if out[-1] == tok.token_to_id("<|eos|>"):
            break
    assert out == r["completion_ids"], (r["row"], out, r["completion_ids"])
    body = out[:-1] if r["stop_reason"] == "eos" else out
    assert tok.decode(body) == r["completion"], (tok.decode(body), r["completion"])
print("ok", pq.read_table(dataset).num_rows)
"#,
        &[&data(LM.0), &data(LM.1), &dataset],
    );
    assert!(o.status.success() && stdout(&o).contains("ok 7"), "{}\n{}", stdout(&o), stderr(&o));
    let forced = t.path().join("forced");
    teacher_forced(LM, &dataset, &forced);
    assert_same_soft_labels(&out.join("cache"), &forced);
    let m = distill::cache::Manifest::read(&out.join("cache")).unwrap();
    let g = m.generation.expect("the manifest records the generation");
    assert!(!g.kv_cache && g.max_new_tokens == 10 && g.temperature == 0.0);
    assert_eq!(m.totals.positions, read_all(&forced).1.len() as u64);
}

/// Decoding a with-past export with its KV cache (prefill, then one token per step with
/// `past_key_values.*` fed from `present.*`; 2 of 4 query heads' width in the KV heads)
/// gives onnxruntime + numpy's KV-cache greedy decoding of each prompt alone, token for
/// token; the same tokens as rerunning each sequence (`--kv-cache off`); and soft labels
/// equal, within the encoding error, to the rerun's and to `cache-teacher`'s over the
/// generated ids. The merged decoder's KV cache gives its rerun's tokens too.
#[test]
fn kv_cache_decoding_equals_onnxruntime_and_the_rerun() {
    let t = temp();
    let p = prompts(t.path(), 9);
    let (kv, rerun) = (t.path().join("kv"), t.path().join("rerun"));
    let dataset = generate(WITH_PAST, &p, &kv, &["--batch-size", "4"]);
    generate(WITH_PAST, &p, &rerun, &["--batch-size", "3", "--kv-cache", "off"]);
    let o = python(
        r#"
import sys
import numpy as np, onnxruntime as ort, pyarrow.parquet as pq
teacher, dataset = sys.argv[1:]
s = ort.InferenceSession(teacher)
past_names = [i.name for i in s.get_inputs() if i.name.startswith("past_key_values")]
heads, dim = s.get_inputs()[3].shape[1], s.get_inputs()[3].shape[3]
for r in pq.read_table(dataset).to_pylist():
    ids = np.array([r["prompt_ids"]])
    n = ids.shape[1]
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(n)[None]}
    feed.update({k: np.zeros((1, heads, 0, dim), np.float32) for k in past_names})
    out = []
    for step in range(10):
        res = s.run(None, feed)
        out.append(int(res[0][0, -1].argmax()))
        if out[-1] == 2 or len(out) == 10:
            break
        presents = dict(zip([o.name for o in s.get_outputs()], res))
        feed = {"input_ids": np.array([[out[-1]]]), "attention_mask": np.ones((1, n + len(out)), np.int64),
                "position_ids": np.array([[n + len(out) - 1]])}
        feed.update({k: presents[k.replace("past_key_values", "present")] for k in past_names})
    assert out == r["completion_ids"], (r["row"], out, r["completion_ids"])
print("ok", pq.read_table(dataset).num_rows)
"#,
        &[&data(WITH_PAST.0), &dataset],
    );
    assert!(o.status.success() && stdout(&o).contains("ok 9"), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(column(&dataset, "completion_ids"), column(&rerun.join("generated.parquet"), "completion_ids"));
    assert_same_soft_labels(&kv.join("cache"), &rerun.join("cache"));
    let forced = t.path().join("forced");
    teacher_forced(WITH_PAST, &dataset, &forced);
    assert_same_soft_labels(&kv.join("cache"), &forced);
    let kv_of = |d: &Path| distill::cache::Manifest::read(&d.join("cache")).unwrap().generation.unwrap().kv_cache;
    assert!(kv_of(&kv) && !kv_of(&rerun));
    // The legacy merged decoder (one If node on `use_cache_branch`): with its KV cache
    // (the branch true once there is a past) the same tokens as rerunning it.
    let merged = ("exports/merged/decoder_model_merged.onnx", WITH_PAST.1);
    let (mkv, mrerun) = (t.path().join("merged-kv"), t.path().join("merged-rerun"));
    let a = generate(merged, &p, &mkv, &["--batch-size", "4"]);
    let b = generate(merged, &p, &mrerun, &["--batch-size", "4", "--kv-cache", "off"]);
    assert!(kv_of(&mkv) && !kv_of(&mrerun));
    assert_eq!(column(&a, "completion_ids"), column(&b, "completion_ids"));
}

/// Sampled generation (T = 1, top-p 0.9, 2 samples per prompt) through the KV cache gives
/// the same tokens whatever the batch size, other tokens with another seed; a student
/// trains on the pair.
#[test]
fn sampled_generation_is_fixed_by_seed_whatever_the_batching() {
    let t = temp();
    let p = prompts(t.path(), 7);
    let sampled = ["--temperature", "1", "--top-p", "0.9", "--samples-per-prompt", "2"];
    let ids = |dataset: &Path| format!("{} {}", column(dataset, "completion_ids"), column(dataset, "sample"));
    let a = ids(&generate(WITH_PAST, &p, &t.path().join("a"), &[&sampled[..], &["--batch-size", "1"]].concat()));
    let b = ids(&generate(WITH_PAST, &p, &t.path().join("b"), &[&sampled[..], &["--batch-size", "5"]].concat()));
    let c = ids(&generate(WITH_PAST, &p, &t.path().join("c"), &[&sampled[..], &["--seed", "1"]].concat()));
    assert_eq!(a, b, "the batch size changed the draws");
    assert_ne!(a, c, "another seed drew the same");
    Distill::train(t.path().join("a/cache"), t.path().join("a/generated.parquet"), t.path().join("run"))
        .opt("--student", "decoder:d_model=16,layers=1,heads=2,d_ff=24")
        .opt("--steps", 3)
        .arg("--quiet")
        .ok();
}

/// A generate killed after its second finished shard resumes after it: the dataset and
/// every cache shard equal an uninterrupted run's byte for byte; a rerun with another seed
/// is refused, naming the difference; a rerun of a complete run does nothing.
#[test]
fn killed_generate_resumes_to_the_same_output() {
    let t = temp();
    let p = prompts(t.path(), 7);
    let sampling = |out: &Path| {
        generating(LM, &p, out)
            .opt("--temperature", 1)
            .opt("--samples-per-prompt", 2)
            .opt("--rows-per-shard", 2)
            .opt("--batch-size", 1)
            .set("--max-new-tokens", 24)
    };
    let full = t.path().join("full");
    sampling(&full).ok();
    let out = t.path().join("cut");
    let cut = sampling(&out);
    let mut child = cut.spawn();
    let started = std::time::Instant::now();
    loop {
        let done = std::fs::read_to_string(out.join("cache/manifest.partial.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<distill::cache::Manifest>(&t).ok())
            .map_or(0, |m| m.shards.len());
        if done >= 2 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "generate finished before it could be killed");
        assert!(started.elapsed().as_secs() < 120);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.join("generated.parquet").exists(), "the dataset appeared before the last shard");
    let o = cut.clone().without("--quiet").ok();
    assert!(stdout(&o).contains("resumed after"), "{}", stdout(&o));
    let sums = |d: &Path| {
        let m = distill::cache::Manifest::read(&d.join("cache")).unwrap();
        (m.dataset.sha256.clone(), m.shards.iter().map(|s| s.sha256.clone()).collect::<Vec<_>>())
    };
    assert_eq!(sums(&out), sums(&full));
    assert_eq!(
        distill::cache::manifest::sha256_file(&out.join("generated.parquet")).unwrap(),
        distill::cache::manifest::sha256_file(&full.join("generated.parquet")).unwrap()
    );
    assert!(!out.join("generated.parts").exists());
    cut.clone().opt("--seed", 5).fails_with(&["made with other settings"]);
    let again = cut.ok();
    assert!(stdout(&again).contains("0 tokens") || stdout(&again).contains("positions in"), "{}", stdout(&again));
}

/// A pipeline file with `[generate]`: `distill run` generates, trains the distilled and the
/// hard-label-only students on the generated cache and dataset, and scores them on held-out
/// text against the teacher's cache of it.
#[test]
fn pipeline_generate_table_trains_on_the_generated_data() {
    let t = temp();
    let p = prompts(t.path(), 24);
    let held_out = t.path().join("held-out.jsonl");
    let text = std::fs::read_to_string(data("lm/valid.jsonl")).unwrap();
    std::fs::write(&held_out, text.lines().skip(100).take(12).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let pipeline = t.path().join("gen.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[generate]
teacher = "{teacher}"
tokenizer = "{tokenizer}"
data = "prompts.jsonl"
out = "gen"
max_new_tokens = 8
top_k = 16 # the old name of cache_top_k, still read
soft_temperature = 2.0

[cache]
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
"#,
            teacher = data(LM.0).display(),
            tokenizer = data(LM.1).display(),
        ),
    )
    .unwrap();
    Distill::new("run").arg(&pipeline).arg("--quiet").ok();
    let results = std::fs::read_to_string(t.path().join("students/results.md")).unwrap();
    assert!(results.contains("student, hard labels only") && results.contains("student, distilled"), "{results}");
    let m = distill::cache::Manifest::read(&t.path().join("gen/cache")).unwrap();
    assert_eq!(m.totals.rows, 24);
    assert!(t.path().join("gen/cache-eval/manifest.json").is_file());
    let _ = p;
}

/// `cache-teacher --token-ids` takes token-id columns as they are (the same cache as the
/// text they encode, with the special tokens the text encoding adds) and refuses an id
/// outside the tokenizer, naming the row, column and value.
#[test]
fn token_id_columns_are_used_as_they_are() {
    let t = temp();
    let o = python(
        r#"
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
with open(sys.argv[2]) as f, open(sys.argv[3], "w") as ids, open(sys.argv[4], "w") as bad:
    for i, line in enumerate(f):
        if i == 5:
            break
        r = json.loads(line)
        p, c = tok.encode(r["prompt"]).ids, tok.encode(r["completion"], add_special_tokens=False).ids
        ids.write(json.dumps({"p": p, "c": c}) + "\n")
        bad.write(json.dumps({"p": p, "c": c if i != 3 else c + [4096]}) + "\n")
"#,
        &[&data(LM.1), &data("lm/valid.jsonl"), &t.path().join("ids.jsonl"), &t.path().join("bad.jsonl")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = prompts(t.path(), 5);
    let ids_args = |data_file: &Path, out: &Path| {
        lm_cache_args(data_file, out, &["--top-k", "16", "--max-seq-len", "512", "--token-ids"])
            .set("--prompt-column", "p")
            .set("--completion-column", "c")
    };
    let (from_text, from_ids) = (t.path().join("text"), t.path().join("ids"));
    lm_cache_args(&text, &from_text, &["--top-k", "16", "--max-seq-len", "512"]).ok();
    ids_args(&t.path().join("ids.jsonl"), &from_ids).ok();
    assert_eq!(read_all(&from_text).1, read_all(&from_ids).1);
    ids_args(&t.path().join("bad.jsonl"), &t.path().join("bad")).fails_with(&["row 3, column `c`", "4096", "not a token id"]);
}

/// The ids that end a sequence come from the `generation_config.json` beside the teacher
/// (a list, as Qwen's), and are recorded; a prompt longer than `max_seq_len - 1` tokens keeps
/// its last tokens (where a chat prompt's generation prompt is) and is counted.
#[test]
fn end_ids_from_the_generation_config_and_long_prompts_keep_their_end() {
    let t = temp();
    let p = prompts(t.path(), 6);
    let dir = t.path().join("teacher");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(data(LM.0), dir.join("teacher.onnx")).unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [17, 42]}"#).unwrap();
    let out = t.path().join("gen");
    generating(LM, &p, &out).set("--teacher", dir.join("teacher.onnx")).opt("--max-seq-len", 8).opt("--temperature", 1).ok();
    let m = distill::cache::Manifest::read(&out.join("cache")).unwrap();
    assert_eq!(m.generation.as_ref().unwrap().eos_ids, [17, 42]);
    let o = python(
        r#"
import sys, pyarrow.parquet as pq
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
long = 0
for r in pq.read_table(sys.argv[2]).to_pylist():
    ids = tok.encode(r["prompt"]).ids
    long += len(ids) > 7
    assert r["prompt_ids"] == ids[-7:], r["row"]
    assert len(r["completion_ids"]) == 8 - len(r["prompt_ids"]) or r["stop_reason"] == "eos"
    if r["stop_reason"] == "eos":
        assert r["completion_ids"][-1] in (17, 42)
print("ok", long)
"#,
        &[&data(LM.1), &out.join("generated.parquet")],
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let long: u64 = stdout(&o).trim().strip_prefix("ok ").unwrap().parse().unwrap();
    assert!(long > 0 && m.totals.truncated_rows == long, "{long} long prompts, {} counted", m.totals.truncated_rows);
}

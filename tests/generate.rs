//! `distill generate`: teacher-written completions (sequence-level distillation data) and
//! the cache of their positions.

use std::path::{Path, PathBuf};

use crate::common::*;

fn generate(out: &Path, prompts: &Path, extra: &[&str]) -> PathBuf {
    let mut a: Vec<String> = [
        "generate",
        "--teacher",
        &data("lm/teacher.onnx").display().to_string(),
        "--tokenizer",
        &data("lm/tokenizer.json").display().to_string(),
        "--data",
        &prompts.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--max-new-tokens",
        "10",
        "--top-k",
        "16",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    ok(&distill(a));
    out.join("generated.parquet")
}

fn prompts(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(data("lm/valid.jsonl")).unwrap();
    let p = dir.join("prompts.jsonl");
    std::fs::write(&p, text.lines().take(7).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    p
}

/// Greedy generation, 4 prompts to a batch (so rows are padded), equals onnxruntime + numpy
/// greedy decoding of each prompt alone, token for token; the completion column decodes
/// the ids; the run's cache equals `cache-teacher` over the generated dataset, byte for byte.
#[test]
fn greedy_generation_equals_onnxruntime_greedy_decoding() {
    let t = temp();
    let p = prompts(t.path());
    let out = t.path().join("gen");
    let dataset = generate(&out, &p, &["--batch-size", "4"]);
    let o = python(
        r#"
import json, sys
import numpy as np, onnxruntime as ort, pyarrow.parquet as pq
from tokenizers import Tokenizer
teacher, tokenizer, dataset = sys.argv[1:]
s = ort.InferenceSession(teacher)
tok = Tokenizer.from_file(tokenizer)
for r in pq.read_table(dataset).to_pylist():
    ids = tok.encode(r["prompt"]).ids
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
        &[&data("lm/teacher.onnx"), &data("lm/tokenizer.json"), &dataset],
    );
    assert!(o.status.success() && stdout(&o).contains("ok 7"), "{}\n{}", stdout(&o), stderr(&o));
    let again = t.path().join("again");
    ok(&distill(lm_cache_args(&dataset, &again, &["--top-k", "16", "--max-seq-len", "512"])));
    let shards = |d: &Path| {
        let m: distill::cache::Manifest = serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap()).unwrap();
        m.shards.iter().map(|s| s.sha256.clone()).collect::<Vec<_>>()
    };
    assert_eq!(shards(&out.join("cache")), shards(&again));
}

/// Sampled generation (T = 1, top-p 0.9, 2 samples per prompt) gives the same tokens
/// whatever the batch size, other tokens with another seed; a student trains on the pair.
#[test]
fn sampled_generation_is_fixed_by_seed_whatever_the_batching() {
    let t = temp();
    let p = prompts(t.path());
    let sampled = ["--temperature", "1", "--top-p", "0.9", "--samples-per-prompt", "2"];
    let ids = |dataset: &Path| {
        let o = python(
            "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); print(t.column('completion_ids').to_pylist(), t.column('sample').to_pylist())",
            &[dataset],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let a = ids(&generate(&t.path().join("a"), &p, &[&sampled[..], &["--batch-size", "1"]].concat()));
    let b = ids(&generate(&t.path().join("b"), &p, &[&sampled[..], &["--batch-size", "5"]].concat()));
    let c = ids(&generate(&t.path().join("c"), &p, &[&sampled[..], &["--seed", "1"]].concat()));
    assert_eq!(a, b, "the batch size changed the draws");
    assert_ne!(a, c, "another seed drew the same");
    let run = t.path().join("run");
    ok(&distill([
        "train-student",
        "--cache",
        &t.path().join("a/cache").display().to_string(),
        "--data",
        &t.path().join("a/generated.parquet").display().to_string(),
        "--student",
        "decoder:d_model=16,layers=1,heads=2,d_ff=24",
        "--steps",
        "3",
        "--out",
        &run.display().to_string(),
        "--quiet",
    ]));
}

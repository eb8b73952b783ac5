//! The Python package in python/ (distill_cache) against distill itself: its reader decodes
//! what distill's does, its loss equals distill's fused loss on the same logits and
//! targets, its Dataset shards rows as DistributedSampler does, and its CLI verifies.
//! Runs with .venv-torch's Python (bash .ci/setup-hf, then pip install ./python).

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Device, Int, Tensor, TensorData};
use distill::cache::CacheReader;
use distill::loss::{Divergence, SampledTokens, SoftTargets, TailMode, fused_distillation_loss};

use crate::cache_teacher::read_all;
use crate::common::*;

/// `.venv-torch`'s Python with torch and distill_cache, checked once.
fn torch_python() -> PathBuf {
    repo().join(".venv-torch/bin/python3")
}

/// Whether these tests can run: skipped, saying how to install torch and distill_cache,
/// where they are missing (a plain `cargo test` on a fresh checkout); CI installs them.
fn have_torch() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *OK.get_or_init(|| {
        Command::new(torch_python()).args(["-c", "import torch, distill_cache"]).status().map(|s| s.success()).unwrap_or(false)
    });
    have_tool(ok, ".venv-torch with torch and distill_cache", "bash .ci/setup-hf && .venv-torch/bin/python3 -m pip install ./python")
}

fn run_python(script: &str, args: &[&Path]) -> String {
    let o = Command::new(torch_python()).arg("-c").arg(script).args(args).output().expect("python runs");
    assert!(o.status.success(), "python failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The same cache read by distill and by distill_cache: ids, log-probs (to the f32 of
/// distill's decoding), tails and hard labels equal; `python -m distill_cache verify` passes,
/// and a shard changed by one byte is refused, naming it.
#[test]
fn python_reader_decodes_what_distill_decodes() {
    if !have_torch() {
        return;
    }
    let t = temp();
    let cache = t.path().join("cache");
    cache_digits("train.parquet", &cache, &["--top-k", "5", "--temperature", "2"]);
    let (_, all) = read_all(&cache);
    let dump = t.path().join("rust.json");
    let json = serde_json::json!({"ids": all.ids, "logprobs": all.logprobs, "tail": all.tail_logmass.iter().map(|&x| x as f64).collect::<Vec<_>>(), "rows": all.rows});
    std::fs::write(&dump, json.to_string()).unwrap();
    let out = run_python(
        r#"
import json, sys
import numpy as np
import distill_cache
c = distill_cache.open_cache(sys.argv[1])
r = json.load(open(sys.argv[2]))
ids, lps, tails, rows = [], [], [], []
for i in range(len(c.manifest["shards"])):
    b = c.read_shard(i)
    ids += b["ids"].ravel().tolist(); lps += b["logprobs"].ravel().tolist(); tails += b["tail_logmass"].tolist(); rows += b["row"].tolist()
assert ids == r["ids"] and rows == r["rows"]
assert np.abs(np.array(lps) - np.array(r["logprobs"])).max() <= 1e-6
assert np.allclose(tails, r["tail"], atol=1e-7)
# The same cache through a pyarrow filesystem URI (what s3:// and gs:// go through).
assert distill_cache.open_cache("file://" + sys.argv[1]).verify() == len(c.manifest["shards"])
print("decoded", len(rows))
"#,
        &[&cache, &dump],
    );
    assert!(out.contains("decoded 1197"), "{out}");
    let cli = |dir: &Path| Command::new(torch_python()).args(["-m", "distill_cache", "verify"]).arg(dir).output().unwrap();
    let m = CacheReader::open(&cache).unwrap().manifest().clone();
    let o = cli(&cache);
    let said = format!("{} shards match", m.shards.len());
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains(&said), "{o:?}");
    let shard = cache.join(&m.shards[1].file);
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let o = cli(&cache);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(&m.shards[1].file) && err.contains("checksum mismatch"), "{err}");
}

/// Hidden states: distill_cache decodes the `hidden_*` columns as distill's reader does, and
/// CacheDataset + collate carry them, `[n, dim]` per output.
#[test]
fn python_reader_decodes_hidden_states() {
    if !have_torch() {
        return;
    }
    let t = temp();
    let cache = t.path().join("cache");
    Distill::digits_cache("test.parquet", &cache)
        .set("--teacher", data("digits/teacher-hidden.onnx"))
        .opt("--hidden-states", "hidden")
        .opt("--hidden-dim", 16)
        .ok();
    let reader = CacheReader::open(&cache).unwrap().with_hidden(&["hidden"]);
    let mut values = Vec::new();
    for shard in &reader.manifest().shards {
        for b in reader.read_shard(shard, 1000).unwrap() {
            values.extend(b.unwrap().hidden[0].iter().map(|&v| v as f64));
        }
    }
    let dump = t.path().join("hidden.json");
    std::fs::write(&dump, serde_json::json!(values).to_string()).unwrap();
    let out = run_python(
        r#"
import json, sys
import numpy as np
import distill_cache
from distill_cache.torch import CacheDataset, collate
c = distill_cache.open_cache(sys.argv[1])
want = np.array(json.load(open(sys.argv[2]))).reshape(-1, 16)
ds = CacheDataset(c)
batch = collate([ds[i] for i in range(len(ds))])
got = batch["hidden"]["hidden"].numpy()
assert got.shape == want.shape == (600, 16), (got.shape, want.shape)
assert (got == want).all()
print("hidden", got.shape)
"#,
        &[&cache, &dump],
    );
    assert!(out.contains("hidden (600, 16)"), "{out}");
}

/// distill_cache.torch.distillation_loss equals distill's fused loss (value, KL and CE
/// within 1e-5) on the same logits and the cached targets of an LM cache (k = 16 of 4096,
/// tail bucket and renormalised, T = 2) and a digits cache with k = 10 = every class (the
/// full KL), with every third position unlabelled (masked out of the CE); for each
/// divergence Python has (forward KL, reverse KL, JSD, and on the LM cache the
/// sampled-token estimator, with generation log-probs that put some importance weights
/// under 1, some clamped at 2 and some unknown).
#[test]
fn python_loss_equals_the_rust_loss() {
    if !have_torch() {
        return;
    }
    let t = temp();
    let small = lm_rows(t.path(), 24);
    let lm = t.path().join("lm");
    lm_cache_args(&small, &lm, &["--top-k", "16", "--temperature", "2"]).ok();
    let digits = t.path().join("digits");
    cache_digits("train.parquet", &digits, &["--top-k", "10", "--temperature", "4"]);
    let device = Device::default();
    let mut cases = Vec::new();
    for (name, dir, temperature) in [("lm", &lm, 2.0f32), ("digits", &digits, 4.0)] {
        let (m, all) = read_all(dir);
        let (n, k, v) = (all.rows.len(), m.top_k, m.vocab_size);
        let logits = distill_values(n * v, 3);
        let labelled: Vec<f32> = (0..n).map(|i| if i % 3 == 2 { 0.0 } else { 1.0 }).collect();
        let tail: Vec<f32> = all.tail_logmass.iter().map(|&x| if x.is_finite() { x } else { -1e4 }).collect();
        let hard: Vec<i64> = all.hard_labels.iter().map(|h| h.unwrap_or(0)).collect();
        // Generation log-probs: unknown (NaN), far below now (weight clamped at 2), near.
        let generated: Vec<f32> = (0..n).map(|i| [f32::NAN, -20.0, -7.5, -8.5][i % 4]).collect();
        let teacher_token: Vec<f32> = all.hard_label_logprobs.iter().map(|lp| lp.unwrap_or(f32::NAN)).collect();
        let mut divergences = vec![Divergence::ForwardKl, Divergence::ReverseKl, Divergence::Jsd(0.3)];
        if name == "lm" {
            divergences.push(Divergence::SampledRkl);
        }
        for (tail_mode, divergence) in
            [TailMode::Bucket, TailMode::Renormalize].into_iter().flat_map(|t| divergences.iter().map(move |&d| (t, d)))
        {
            let sampled = divergence == Divergence::SampledRkl;
            let soft = SoftTargets {
                ids: Tensor::from_data(TensorData::new(all.ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [n, k]), &device),
                logprobs: Tensor::from_data(TensorData::new(all.logprobs.clone(), [n, k]), &device),
                tail_logmass: Tensor::from_data(TensorData::new(tail.clone(), [n]), &device),
                sampled: sampled.then(|| SampledTokens {
                    tokens: Tensor::from_data(TensorData::new(hard.clone(), [n]), &device),
                    teacher: Tensor::from_data(TensorData::new(teacher_token.clone(), [n]), &device),
                    generated: Tensor::from_data(TensorData::new(generated.clone(), [n]), &device),
                }),
            };
            let z: Tensor<2> = Tensor::from_data(TensorData::new(logits.clone(), [n, v]), &device);
            let h: Tensor<1, Int> = Tensor::from_data(TensorData::new(hard.clone(), [n]), &device);
            let lab: Tensor<1> = Tensor::from_data(TensorData::new(labelled.clone(), [n]), &device);
            let p = fused_distillation_loss(z, &soft, h, Tensor::ones([n], &device), lab, 0.6, temperature, tail_mode, divergence);
            let get = |x: Tensor<1>| x.into_data().try_to_vec::<f32>().unwrap()[0] as f64;
            let tail_name = if tail_mode == TailMode::Bucket { "bucket" } else { "renormalize" };
            cases.push(serde_json::json!({
                "name": name, "dir": dir, "temperature": temperature, "tail": tail_name, "vocab": v,
                "divergence": divergence.to_string(),
                "generated": sampled.then(|| generated.iter().map(|&g| if g.is_nan() { None } else { Some(g) }).collect::<Vec<_>>()),
                "loss": get(p.loss), "kl": get(p.kl), "ce": get(p.ce), "labelled": labelled,
            }));
        }
        std::fs::write(t.path().join(format!("{name}.logits")), logits.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    }
    let spec = t.path().join("cases.json");
    std::fs::write(&spec, serde_json::Value::Array(cases).to_string()).unwrap();
    let out = run_python(
        r#"
import json, os, sys
import numpy as np, torch
import distill_cache
from distill_cache.torch import CacheDataset, collate, distillation_loss
for case in json.load(open(sys.argv[1])):
    ds = CacheDataset(distill_cache.open_cache(case["dir"]))
    batch = collate([ds[i] for i in range(len(ds))])
    n = batch["ids"].shape[0]
    logits = np.fromfile(os.path.join(os.path.dirname(sys.argv[1]), case["name"] + ".logits"), dtype="<f4").reshape(n, case["vocab"])
    batch["labelled"] = torch.tensor(case["labelled"]) > 0
    generated = None if case["generated"] is None else torch.tensor([float("nan") if g is None else g for g in case["generated"]])
    loss, kl, ce = distillation_loss(torch.from_numpy(logits), batch, case["temperature"], alpha=0.6, tail=case["tail"],
                                     divergence=case["divergence"], generation_logprobs=generated)
    for what, got in [("loss", loss), ("kl", kl), ("ce", ce)]:
        want = case[what]
        assert abs(got.item() - want) <= 1e-5 * max(1.0, abs(want)), (case["name"], case["tail"], case["divergence"], what, got.item(), want)
    print(case["name"], case["tail"], case["divergence"], round(loss.item(), 6), "ok")
"#,
        &[&spec],
    );
    // lm: 4 divergences x 2 tails; digits: 3 x 2.
    assert_eq!(out.matches(" ok").count(), 14, "{out}");
}

/// CacheDataset(rank, world_size) takes the rows DistributedSampler(shuffle=False) gives
/// each rank (padding by repetition included), in order.
#[test]
fn python_dataset_shards_rows_as_distributed_sampler_does() {
    if !have_torch() {
        return;
    }
    let t = temp();
    let cache = t.path().join("cache");
    cache_digits("test.parquet", &cache, &["--top-k", "3", "--rows-per-shard", "250"]);
    let out = run_python(
        r#"
import sys, torch
import distill_cache
from distill_cache.torch import CacheDataset
c = distill_cache.open_cache(sys.argv[1])
rows = [r["row"] for r in c.rows()]
for world in (1, 2, 3, 7):
    for rank in range(world):
        mine = [it["row"] for it in CacheDataset(c, rank=rank, world_size=world)]
        want = [rows[i] for i in torch.utils.data.DistributedSampler(range(len(rows)), num_replicas=world, rank=rank, shuffle=False)]
        assert mine == want, (world, rank)
print("sharded", len(rows))
"#,
        &[&cache],
    );
    assert!(out.contains("sharded 600"), "{out}");
}

/// Values in [-2, 2) from a fixed LCG (the same logits for distill and Python).
fn distill_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            -2.0 + 4.0 * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// python/examples/ddp_train.py under `torchrun --nproc_per_node 2` (gloo, CPU) trains a
/// Hugging Face student from a distill cache with DDP, and its per-step losses equal one
/// process's over the same global batches within float noise (1e-5 relative): from step 2
/// on they compare the updates, not only the first forward pass. And the Trainer example.
#[test]
fn ddp_over_two_processes_equals_one_process_and_the_trainer_example_runs() {
    if !have_torch() {
        return;
    }
    let t = temp();
    let rows = lm_rows(t.path(), 48);
    let cache = t.path().join("cache");
    lm_cache_args(&rows, &cache, &["--top-k", "16", "--temperature", "2"]).ok();
    let script = repo().join("python/examples/ddp_train.py");
    let args = ["--cache".as_ref(), cache.as_os_str(), "--data".as_ref(), rows.as_os_str(), "--steps".as_ref(), "4".as_ref()];
    let losses = |o: std::process::Output| -> Vec<f64> {
        assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
            .collect()
    };
    let one = losses(Command::new(torch_python()).arg(&script).args(args).output().unwrap());
    // The same cache in transformers' Trainer (python/examples/hf_trainer.py): its loss on
    // the first batch is distill_cache's (checked inside), and it logs three steps from it.
    let out = t.path().join("trainer");
    let o = Command::new(torch_python())
        .arg(repo().join("python/examples/hf_trainer.py"))
        .args(["--cache".as_ref(), cache.as_os_str(), "--data".as_ref(), rows.as_os_str(), "--steps".as_ref(), "3".as_ref()])
        .args(["--out".as_ref(), out.as_os_str()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("{\"")).map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = lines[0]["first_batch_loss"].as_f64().unwrap();
    let logged: Vec<f64> = lines[1..].iter().map(|l| l["loss"].as_f64().unwrap()).collect();
    assert_eq!(logged.len(), 3, "{lines:?}");
    assert!((logged[0] - first).abs() <= 1e-4, "the Trainer logged {} for the batch whose loss is {first}", logged[0]);
    let torchrun = repo().join(".venv-torch/bin/torchrun");
    let two =
        losses(Command::new(torchrun).args(["--nproc_per_node", "2", "--master_port", "29533"]).arg(&script).args(args).output().unwrap());
    assert_eq!((one.len(), two.len()), (4, 4), "{one:?} {two:?}");
    for (i, (a, b)) in one.iter().zip(&two).enumerate() {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "step {}: one process {a}, two {b}", i + 1);
    }
    assert!(one.windows(2).all(|w| w[0] != w[1]), "the steps train: {one:?}");
}

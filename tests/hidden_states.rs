//! Hidden-state distillation: teacher outputs cached beside the soft labels
//! (`cache-teacher --hidden-states`) and the hidden-state term of stage two
//! (`train-student --hidden-layers`). Teachers: the fixtures with extra outputs made by
//! data/add_hidden_outputs.py.

use std::path::{Path, PathBuf};

use crate::common::*;

/// The digits teacher with its 512-wide second hidden layer as output `hidden`, over the
/// training split, with `extra` flags.
fn digits_hidden_cache(out: &Path, extra: &[&str]) -> PathBuf {
    Distill::new("cache-teacher")
        .path("--teacher", data("digits/teacher-hidden.onnx"))
        .path("--data", data("digits/train.parquet"))
        .path("--out", out)
        .args(["--temperature", "4", "--rows-per-shard", "512", "--hidden-states", "hidden", "--quiet"])
        .args(extra)
        .ok();
    out.to_path_buf()
}

/// `train-student` of the 32-wide MLP on the digits training rows of `cache` into `out`,
/// then `extra`.
fn train_args(cache: &Path, out: &Path, extra: &[&str]) -> Distill {
    Distill::train(cache, data("digits/train.parquet"), out).opt("--student", "mlp:hidden=32").arg("--quiet").args(extra)
}

/// Every cached row's `hidden_hidden` column is the teacher's `hidden` output for that row
/// (onnxruntime run here on the same features), rounded to f16 (relative error <= 2^-11 per
/// value, plus f16's subnormal step near zero); pyarrow reads the column as `halffloat`.
#[test]
fn cached_hidden_states_are_the_teacher_outputs_and_pyarrow_reads_them() {
    let t = temp();
    let cache = digits_hidden_cache(&t.path().join("cache"), &[]);
    let o = python(
        r#"
import glob, json, sys
import numpy as np, onnxruntime as ort, pyarrow as pa, pyarrow.parquet as pq
cache, teacher, data = sys.argv[1:]
m = json.load(open(f"{cache}/manifest.json"))
assert m["hidden_states"] == [{"output": "hidden", "column": "hidden_hidden", "teacher_dim": 512, "dim": 512}], m["hidden_states"]
t = pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(f"{cache}/shard-*.parquet"))])
assert t.schema.field("hidden_hidden").type == pa.list_(pa.field("item", pa.float16(), nullable=False)), t.schema
stored = np.array(t.column("hidden_hidden").to_pylist(), dtype=np.float32)
rows = t.column("row").to_numpy()
features = np.array(pq.read_table(data).column("features").to_pylist(), dtype=np.float32)[rows]
s = ort.InferenceSession(teacher)
_, hidden = s.run(["logits", "hidden"], {"features": features})
err = np.abs(stored - hidden) - (np.abs(hidden) * 2.0**-11 + 6e-8)
assert stored.shape == (1197, 512), stored.shape
assert (err <= 0).all(), float(err.max())
assert (hidden > 0).mean() > 0.05, "the ReLU layer is not all zeros"
print("ok", stored.shape)
"#,
        &[&cache, &data("digits/teacher-hidden.onnx"), &data("digits/train.parquet")],
    );
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// `--hidden-dim R` stores the fixed seeded projection of each state: the projected cache
/// equals `Projection::new(0, 512, 64)` applied to the unprojected cache's values, to within
/// the f16 rounding of both (1% of the projected vector's norm), and the manifest records it.
#[test]
fn projected_hidden_states_are_the_seeded_projection() {
    let t = temp();
    let full = digits_hidden_cache(&t.path().join("full"), &[]);
    let projected = digits_hidden_cache(&t.path().join("projected"), &["--hidden-dim", "64"]);
    let read = |dir: &Path| {
        let reader = distill::cache::CacheReader::open(dir).unwrap().with_hidden(&["hidden"]);
        let mut out = Vec::new();
        for shard in &reader.manifest().shards {
            for b in reader.read_shard(shard, 4096).unwrap() {
                out.extend(b.unwrap().hidden[0].clone());
            }
        }
        (reader.manifest().hidden_states[0].clone(), out)
    };
    let ((info, full), (pinfo, proj)) = (read(&full), read(&projected));
    assert_eq!((info.dim, info.projection_seed), (512, None));
    assert_eq!((pinfo.teacher_dim, pinfo.dim, pinfo.projection_seed), (512, 64, Some(0)));
    let p = distill::teacher::hidden::Projection::new(0, 512, 64);
    for (i, (x, y)) in full.chunks(512).zip(proj.chunks(64)).enumerate() {
        let mut want = Vec::new();
        p.apply(x, &mut want);
        let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
        let err = want.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f32>().sqrt();
        assert!(err <= 0.01 * norm + 1e-3, "row {i}: projection error {err} against norm {norm}");
    }
    // Wider than the output: refused, naming both widths.
    Distill::new("cache-teacher")
        .path("--teacher", data("digits/teacher-hidden.onnx"))
        .path("--data", data("digits/train.parquet"))
        .path("--out", t.path().join("wide"))
        .args(["--hidden-states", "hidden", "--hidden-dim", "600"])
        .fails_with(&["hidden_dim = 600", "`hidden` (512 values)"]);
}

/// The refusals name what was wrong: a hidden-state loss on a cache without hidden states,
/// a student layer that does not exist, a teacher output that does not exist.
#[test]
fn hidden_loss_without_cached_states_is_refused_with_a_clear_message() {
    let t = temp();
    let plain = digits_default_cache();
    train_args(plain, &t.path().join("a"), &["--hidden-layers", "1:hidden", "--steps", "2"])
        .fails_with(&["no such hidden state (it holds none)", "--hidden-states hidden"]);
    let cache = digits_hidden_cache(&t.path().join("cache"), &[]);
    train_args(&cache, &t.path().join("b"), &["--hidden-layers", "2:hidden", "--steps", "2"])
        .fails_with(&["the student has no layer 2 (its layers: 1)"]);
    // The refused run left no run behind: the corrected command needs no --resume.
    train_args(&cache, &t.path().join("b"), &["--hidden-layers", "1:hidden", "--steps", "2"]).ok();
    train_args(&cache, &t.path().join("c"), &["--hidden-layers", "1:pooled", "--steps", "2"])
        .fails_with(&["no such hidden state (it holds: hidden)"]);
    Distill::digits_cache("train.parquet", &t.path().join("d"))
        .without("--quiet")
        .opt("--hidden-states", "hidden")
        .fails_with(&["--hidden-states `hidden`: the model has no such output", "its outputs are: logits"]);
}

/// With a hidden-state pair, metrics.csv gains a `hidden` column, the term falls as the map
/// and the student learn (the mean of the last 20 steps below that of the first 20), and a
/// run killed after a checkpoint and resumed ends where the uninterrupted run ends: the
/// maps and their optimizer state are in the checkpoint.
#[test]
fn hidden_term_trains_and_resumes_with_its_maps() {
    let t = temp();
    let cache = digits_hidden_cache(&t.path().join("cache"), &["--hidden-dim", "64"]);
    let settings = ["--steps", "6000", "--checkpoint-every", "100", "--lr", "0.003", "--hidden-layers", "1:hidden", "--hidden-loss", "mse"];
    let full = t.path().join("full");
    train_args(&cache, &full, &settings).ok();
    let text = std::fs::read_to_string(full.join("metrics.csv")).unwrap();
    assert!(text.starts_with("step,epoch,loss,kl,ce,lr,positions,seconds,hidden\n"), "{}", &text[..80]);
    let hidden: Vec<f64> = text.lines().skip(1).map(|l| l.rsplit(',').next().unwrap().parse().unwrap()).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&hidden[..20]), mean(&hidden[hidden.len() - 20..]));
    assert!(last < 0.8 * first, "the hidden-state term did not fall: {first} -> {last}");

    let cut = t.path().join("cut");
    let run = train_args(&cache, &cut, &settings);
    kill_after_checkpoint(&run, &cut, 200);
    let o = run.arg("--resume").ok();
    let out = stdout(&o);
    eprintln!("resume test: {}", out.trim());
    // A very fast machine may finish before the kill lands: then there is nothing to compare.
    assert!(out.contains("resumed from step") || out.contains("trained 6000 steps"), "{out}");
    let last_line = |p: &Path| {
        let text = std::fs::read_to_string(p.join("metrics.csv")).unwrap();
        let f: Vec<String> = text.lines().last().unwrap().split(',').map(String::from).collect();
        (f[2].parse::<f64>().unwrap(), f[8].parse::<f64>().unwrap())
    };
    let ((l1, h1), (l2, h2)) = (last_line(&full), last_line(&cut));
    assert!((l1 - l2).abs() < 1e-5 && (h1 - h2).abs() < 1e-5, "final loss/hidden {l1}/{h1} vs resumed {l2}/{h2}");
}

//! `cache-teacher --topk-in onnxruntime`: the soft labels computed by nodes appended to the
//! teacher's graph equal the Rust kernel's.

use crate::common::*;

/// For each teacher, a cache made with the soft labels computed in ONNX Runtime equals the
/// one the Rust kernel makes (the default), within the encoding error: an LM (completion
/// positions, T = 2), a vocabulary padded past its tokenizer (ids 4096.. never kept), f16
/// logits (cast to f32 in the graph; within f16's rounding, below), weights in an external-data file (found beside the
/// graph when the model is loaded from memory), a numeric classifier whose top-k is every
/// class (tail -inf) and a token classifier. The hard labels' log-probs agree too (the
/// in-graph ones are gathered from the log-softmax; the Rust ones come from the logits).
#[test]
fn in_graph_soft_labels_equal_the_rust_kernels() {
    let t = temp();
    let rows = lm_rows(t.path(), 40);
    let lm = |teacher: &str| {
        Distill::new("cache-teacher")
            .path("--teacher", data(teacher))
            .path("--tokenizer", data("lm/tokenizer.json"))
            .path("--data", &rows)
            .args(["--prompt-column", "prompt", "--completion-column", "completion", "--top-k", "16", "--temperature", "2"])
    };
    let cases = [
        ("lm", lm("lm/teacher.onnx")),
        ("padded-vocab", lm("exports/padded-vocab/model.onnx")),
        ("fp16", lm("exports/fp16/model.onnx")),
        ("external-data", lm("exports/external-data/model.onnx")),
        (
            "digits",
            Distill::new("cache-teacher").path("--teacher", data("digits/teacher.onnx")).path("--data", data("digits/test.parquet")),
        ),
        (
            "textcls",
            Distill::new("cache-teacher")
                .path("--teacher", data("textcls/teacher.onnx"))
                .path("--tokenizer", data("textcls/tokenizer.json"))
                .path("--data", data("textcls/test.parquet"))
                .args(["--text-column", "text", "--top-k", "3", "--max-seq-len", "64"]),
        ),
    ];
    for (name, command) in cases {
        let (rust, graph) = (t.path().join(format!("{name}-rust")), t.path().join(format!("{name}-graph")));
        for (out, how) in [(&rust, "rust"), (&graph, "onnxruntime")] {
            command.clone().opt("--topk-in", how).path("--out", out).arg("--quiet").ok();
        }
        if name == "fp16" {
            // ONNX Runtime's CPU provider runs this export's f16 LM head in f32 (it casts
            // around f16 nodes it has no kernel for) and rounds the logits to f16; with the
            // appended Cast back to f32 that round trip is dropped, so the graph's soft labels
            // are those of the unrounded logits (f16 rounding is 2^-11 relative: 2e-3 at
            // |logit / T| <= 4), and ties among the rounded logits (15 % of these positions)
            // are broken by the unrounded ones.
            assert_soft_labels_within(&rust, &graph, 1.0 / 256.0 + 2e-3, 1e-3, 20);
        } else {
            assert_same_soft_labels(&rust, &graph);
        }
        let m = distill::cache::Manifest::read(&graph).unwrap();
        assert_eq!(m.settings["identity"]["topk_in"], "onnxruntime", "{name}: the identity records where the top-k ran");
        if name == "padded-vocab" {
            let (_, all) = crate::cache_teacher::read_all(&graph);
            assert!(all.ids.iter().all(|&id| id < 4096), "a padding id was kept");
        }
        if name == "digits" {
            let (_, all) = crate::cache_teacher::read_all(&graph);
            assert!(all.tail_logmass.iter().all(|t| *t == f32::NEG_INFINITY), "k = every class: no tail");
        }
    }
}

/// The in-graph top-k is refused with sampled soft labels (they are drawn in Rust).
#[test]
fn in_graph_top_k_refuses_sampled_soft_labels() {
    let t = temp();
    let rows = lm_rows(t.path(), 4);
    lm_cache_args(&rows, &t.path().join("c"), &["--topk-in", "onnxruntime", "--soft-labels", "sampled:8"])
        .fails_with(&["cache.topk_in = \"onnxruntime\" computes the top-k"]);
}

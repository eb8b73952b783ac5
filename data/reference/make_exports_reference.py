"""Reference soft labels for the teacher-export fixtures (data/exports), computed with
onnxruntime + numpy, independently of distill.

Data: the first 4 rows of data/inputs/jsonl/lm-300.jsonl (= the first 4 of
data/lm/train.jsonl), tokenized with data/lm/tokenizer.json exactly as
make_reference.py does for the LM: ids = tokenizer(prompt, with the special tokens,
i.e. <|bos|> first) + tokenizer(completion, without); positions m-1 .. n-2 where m is
the prompt's token count (position p predicts token p+1), i.e. distill's default
`positions = completion`. One row at a time, no padding: input_ids [1, n],
attention_mask all 1, position_ids 0 .. n-1; the with-past export also gets an empty
past (every past_key_values.* of shape [1, 2, 0, 16]).

Exports: text-generation (f32 logits), fp16 (float16 logits), bf16-logits (bfloat16
logits: onnxruntime's Python API cannot make numpy of bfloat16, so the raw bits are read
through IOBinding and widened exactly), padded-vocab (4160 logits for a 4096-token
tokenizer) and gqa-with-past. The logits are taken as onnxruntime returns them and
converted to float64; then, as make_reference.py:
  logp = log_softmax(logits / T) over all the logits (all 4160 for padded-vocab),
  the top-k ids (higher logit first, lower id on ties) and their logp,
  the logp of the hard label (the next token),
  tail_logmass = log(sum of p outside the top-k), entropy = -sum p log p over all logits.
For padded-vocab, ids >= 4096 (the tokenizer's size) are padding: the top-k is chosen
among ids < 4096 only, while the padding's mass stays in the softmax, and so in
tail_logmass (everything outside the kept top-k, padding included) and in entropy.

Writes exports_k8_T2.json here: {"top_k", "temperature", "data", "exports": {name:
{"file", "vocab" (logits width), "tokenizer_vocab", "logits_dtype", "positions": [...]}}}
with positions laid out as in lm_k8_T2.json (row, position, hard_label,
hard_label_logprob, ids, logprobs, tail_logmass, entropy).

Run from the repo root (after data/inputs/make_inputs.py and data/exports/make_exports.py):
    python data/reference/make_exports_reference.py [OUT.json]
Needs: onnxruntime numpy tokenizers (data/requirements-make.txt).
"""
import ctypes
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

here = os.path.dirname(os.path.abspath(__file__))
data = os.path.dirname(here)
ROWS, T, K = 4, 2.0, 8


def soft(logits, T, k, label, real_vocab):
    z = logits.astype(np.float64) / T
    m = z.max()
    lse = m + np.log(np.exp(z - m).sum())
    logp = z - lse
    order = np.argsort(-logits[:real_vocab].astype(np.float64), kind="stable")
    top = order[:k]
    outside = np.ones(len(logits), dtype=bool)
    outside[top] = False
    tail = float(np.log(np.exp(logp[outside]).sum())) if outside.any() else float("-inf")
    p = np.exp(logp)
    return {
        "hard_label_logprob": float(logp[label]),
        "ids": [int(i) for i in top],
        "logprobs": [float(logp[i]) for i in top],
        "tail_logmass": tail if np.isfinite(tail) else None,
        "entropy": float(-(p * logp).sum()),
    }


def logits_of(sess, feed):
    """The `logits` output as onnxruntime returns it (float32, float16, or bfloat16 bits
    widened exactly to float32), plus its onnxruntime type name."""
    io = sess.io_binding()
    for name, value in feed.items():
        io.bind_cpu_input(name, value)
    io.bind_output("logits", "cpu")
    sess.run_with_iobinding(io)
    v = io.get_outputs()[0]
    if v.data_type() == "tensor(bfloat16)":
        n = int(np.prod(v.shape()))
        bits = np.frombuffer(ctypes.string_at(v.data_ptr(), 2 * n), dtype=np.uint16).reshape(v.shape())
        return (bits.astype(np.uint32) << 16).view(np.float32), v.data_type()
    return v.numpy(), v.data_type()


tok = Tokenizer.from_file(os.path.join(data, "lm", "tokenizer.json"))
real_vocab = tok.get_vocab_size()
with open(os.path.join(data, "inputs", "jsonl", "lm-300.jsonl")) as f:
    rows = [json.loads(line) for line in f][:ROWS]
encoded = []
for row in rows:
    p = tok.encode(row["prompt"], add_special_tokens=True).ids
    c = tok.encode(row["completion"], add_special_tokens=False).ids
    encoded.append((p, c))

exports = {
    "text-generation": "exports/text-generation/model.onnx",
    "fp16": "exports/fp16/model.onnx",
    "bf16-logits": "exports/bf16-logits/model.onnx",
    "padded-vocab": "exports/padded-vocab/model.onnx",
    "gqa-with-past": "exports/gqa-with-past/model.onnx",
}
out = {"top_k": K, "temperature": T, "data": "inputs/jsonl/lm-300.jsonl", "exports": {}}
for name, rel in exports.items():
    sess = ort.InferenceSession(os.path.join(data, rel), providers=["CPUExecutionProvider"])
    positions, width, dtype = [], None, None
    boundary_ties = padding_would_win = 0
    for r, (p, c) in enumerate(encoded):
        ids = np.array([p + c], dtype=np.int64)
        n = ids.shape[1]
        feed = {}
        for i in sess.get_inputs():
            if i.name == "input_ids":
                feed[i.name] = ids
            elif i.name == "attention_mask":
                feed[i.name] = np.ones_like(ids)
            elif i.name == "position_ids":
                feed[i.name] = np.arange(n, dtype=np.int64)[None]
            elif i.name.startswith("past_key_values."):
                feed[i.name] = np.zeros((1, 2, 0, 16), dtype=np.float32)
            else:
                raise KeyError(i.name)
        logits, dtype = logits_of(sess, feed)
        logits = logits[0].astype(np.float64)
        width = logits.shape[-1]
        for pos in range(len(p) - 1, n - 1):
            label = int(ids[0, pos + 1])
            positions.append({"row": r, "position": pos, "hard_label": label,
                              **soft(logits[pos], T, K, label, real_vocab)})
            ranked = np.sort(logits[pos, :real_vocab])[::-1]
            boundary_ties += int(ranked[K - 1] == ranked[K])
            padding_would_win += int((np.argsort(-logits[pos], kind="stable")[:K] >= real_vocab).any())
    out["exports"][name] = {"file": rel, "vocab": int(width), "tokenizer_vocab": real_vocab,
                            "logits_dtype": {"float": "float32"}.get(dtype[7:-1], dtype[7:-1]), "positions": positions}
    print(f"{name}: {rel} logits {dtype} width {width}, {len(positions)} positions; "
          f"ties between ranks {K} and {K + 1}: {boundary_ties}; "
          f"positions where a padding id would be in the top {K}: {padding_would_win}")

ref = out["exports"]["text-generation"]["positions"]
for name, e in out["exports"].items():
    assert [(q["row"], q["position"], q["hard_label"]) for q in e["positions"]] == \
        [(q["row"], q["position"], q["hard_label"]) for q in ref], name
    same = sum(q["ids"] == w["ids"] for q, w in zip(e["positions"], ref))
    dl = max(abs(a - b) for q, w in zip(e["positions"], ref) for a, b in zip(q["logprobs"], w["logprobs"]))
    print(f"  {name}: top-{K} ids equal to text-generation's at {same}/{len(ref)} positions; "
          f"max |logprob - text-generation's| at the same rank {dl:.2e}")
# An output path as the first argument (tests/inputs.rs computes the reference on the
# machine the tests run on: onnxruntime's fp16 kernels round differently across CPUs).
path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "exports_k8_T2.json")
with open(path, "w") as f:
    json.dump(out, f, indent=0)
print("wrote", path, os.path.getsize(path), "bytes")

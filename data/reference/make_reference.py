"""Reference soft labels computed with onnxruntime + numpy, independently of distill.

For each fixture teacher, the first rows of its training data go through
onnxruntime one row at a time (no padding), and numpy computes, in float64:
  logp = log_softmax(logits / T) over the full vocabulary,
  the top-k ids (stable order: higher logit first, lower id on ties) and their logp,
  the logp of the hard label (the `label` column, or the next token),
  tail_logmass = log(sum of p outside the top-k), entropy = -sum p log p.

Causal LM rows use the prompt/completion columns: ids = tokenizer(prompt, with the
special tokens) + tokenizer(completion, without), positions m-1 .. n-2 where m is the
prompt's token count (position p predicts token p+1), i.e. distill's default
`positions = completion`.

Text-classification rows are encoded as transformers' tok(text, truncation=True,
max_length=64) encodes them: the text cut to 62 tokens, then [CLS] ... [SEP] added (so a
long row keeps its [SEP]), with token_type_ids all 0.

Writes digits_k5_T2.json, lm_k8_T2.json and textcls_k3_T2.json here. Run from the repo root:
    python data/reference/make_reference.py
Needs: onnxruntime numpy pyarrow tokenizers (requirements.txt).
"""
import json
import os

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
from tokenizers import Tokenizer

here = os.path.dirname(os.path.abspath(__file__))
data = os.path.dirname(here)


def soft(logits, T, k, label=None):
    z = logits.astype(np.float64) / T
    m = z.max()
    lse = m + np.log(np.exp(z - m).sum())
    logp = z - lse
    order = np.argsort(-logits, kind="stable")
    top = order[:k]
    rest = order[k:]
    tail = float(np.log(np.exp(logp[rest]).sum())) if len(rest) else float("-inf")
    p = np.exp(logp)
    extra = {"hard_label_logprob": float(logp[label])} if label is not None else {}
    return {
        **extra,
        "ids": [int(i) for i in top],
        "logprobs": [float(logp[i]) for i in top],
        "tail_logmass": tail if np.isfinite(tail) else None,
        "entropy": float(-(p * logp).sum()),
    }


def digits(n=40, T=2.0, k=5):
    sess = ort.InferenceSession(os.path.join(data, "digits", "teacher.onnx"))
    table = pq.read_table(os.path.join(data, "digits", "train.parquet")).slice(0, n)
    x = np.array(table.column("features").to_pylist(), dtype=np.float32)
    out = []
    for r in range(n):
        logits = sess.run(["logits"], {"features": x[r:r + 1]})[0][0]
        label = int(table.column("label")[r].as_py())
        out.append({"row": r, "position": 0, "hard_label": label, **soft(logits, T, k, label)})
    return {"teacher": "digits/teacher.onnx", "data": "digits/train.parquet", "top_k": k, "temperature": T, "positions": out}


def lm(n=6, T=2.0, k=8):
    sess = ort.InferenceSession(os.path.join(data, "lm", "teacher.onnx"))
    tok = Tokenizer.from_file(os.path.join(data, "lm", "tokenizer.json"))
    out = []
    with open(os.path.join(data, "lm", "train.jsonl")) as f:
        rows = [json.loads(line) for line in f][:n]
    for r, row in enumerate(rows):
        p = tok.encode(row["prompt"], add_special_tokens=True).ids
        c = tok.encode(row["completion"], add_special_tokens=False).ids
        ids = np.array([p + c], dtype=np.int64)
        logits = sess.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
        for pos in range(len(p) - 1, ids.shape[1] - 1):
            out.append({"row": r, "position": pos, "hard_label": int(ids[0, pos + 1]), **soft(logits[pos], T, k, int(ids[0, pos + 1]))})
    return {"teacher": "lm/teacher.onnx", "data": "lm/train.jsonl", "top_k": k, "temperature": T, "positions": out}


def textcls(n=12, T=2.0, k=3, max_len=64):
    sess = ort.InferenceSession(os.path.join(data, "textcls", "teacher.onnx"))
    tok = Tokenizer.from_file(os.path.join(data, "textcls", "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_len)  # what transformers sets for truncation=True, max_length=max_len
    table = pq.read_table(os.path.join(data, "textcls", "train.parquet")).slice(0, n).to_pylist()
    out = []
    for r, row in enumerate(table):
        ids = np.array([tok.encode(row["text"], add_special_tokens=True).ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        logits = sess.run(["logits"], feed)[0][0]
        out.append({"row": r, "position": 0, "hard_label": row["label"], **soft(logits, T, k, row["label"])})
    return {"teacher": "textcls/teacher.onnx", "data": "textcls/train.parquet", "top_k": k, "temperature": T, "positions": out}


for name, ref in [("digits_k5_T2.json", digits()), ("lm_k8_T2.json", lm()), ("textcls_k3_T2.json", textcls())]:
    with open(os.path.join(here, name), "w") as f:
        json.dump(ref, f, indent=0)
    print(name, len(ref["positions"]), "positions")

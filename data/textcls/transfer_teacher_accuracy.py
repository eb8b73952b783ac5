"""How often the teacher is right on the unlabelled transfer rows of train_transfer.parquet.

The transfer rows are later paragraphs of training docstrings, so each has a true group: the
group of the module its docstring comes from. This walks the same docstrings as
make_transfer.py (stdlib_docs.py), runs teacher.onnx on each transfer row with onnxruntime
(tokenized as distill does, at most 64 tokens) and prints the share whose top-1 is that
group. Run from the repo root (README: 55.1 %, against 73.9 % on test.parquet):
    python data/textcls/transfer_teacher_accuracy.py
Needs: numpy, onnxruntime, pyarrow, tokenizers (the .venv of .ci/setup).
"""
import os
import sys

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
from tokenizers import Tokenizer

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
from stdlib_docs import docstrings  # noqa: E402

rows = pq.read_table(os.path.join(here, "train_transfer.parquet")).to_pylist()
transfer = [r["text"] for r in rows if r["label"] is None]
test_first = {r["text"] for r in pq.read_table(os.path.join(here, "test.parquet")).to_pylist()}
first = {r["text"] for r in rows if r["label"] is not None}

# The group of each transfer paragraph: the first docstring (in walk order) that gave it.
group = {}
for label, d in docstrings():
    paras = [" ".join(p.split()) for p in d.split("\n\n")]
    if paras[0] in first and paras[0] not in test_first:
        for p in paras[1:]:
            group.setdefault(p, label)
missing = [t for t in transfer if t not in group]
assert not missing, f"{len(missing)} transfer rows not found in the walk (another Python version?)"

tok = Tokenizer.from_file(os.path.join(here, "tokenizer.json"))
sess = ort.InferenceSession(os.path.join(here, "teacher.onnx"))
right = 0
for t in transfer:
    ids = np.array([tok.encode(t).ids[:64]], dtype=np.int64)
    logits = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})[0]
    right += int(logits[0].argmax() == group[t])
print(f"transfer rows {len(transfer)}, teacher top-1 = true group on {right / len(transfer):.4f}")

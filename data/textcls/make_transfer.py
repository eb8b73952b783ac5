"""Make the unlabelled transfer rows for the text-classification fixture.

Distillation's classic setting: the teacher labels in-domain text nobody labelled. Here that
text is the *later* paragraphs (2nd, 3rd, ...) of the docstrings whose first paragraph is a
training row of train.parquet: the teacher (trained on first paragraphs only) never saw
them, and no test docstring contributes (its later paragraphs would leak test items).

Writes train_transfer.parquet: the rows of train.parquet first (same order, so row i is
the same row in both files), then one row per later paragraph (at least 6 words) with
`label` null. Run after make_teacher.py, from the repo root:
    python data/textcls/make_transfer.py
Needs: pyarrow (data/requirements-make.txt).
"""
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
from stdlib_docs import docstrings  # noqa: E402

train = pq.read_table(os.path.join(here, "train.parquet")).to_pylist()
first = {r["text"] for r in train}
test_first = {r["text"] for r in pq.read_table(os.path.join(here, "test.parquet")).to_pylist()}

later, seen = [], set()
for _, d in docstrings():
    paras = [" ".join(p.split()) for p in d.split("\n\n")]
    if paras[0] in first and paras[0] not in test_first:
        for p in paras[1:]:
            if len(p.split()) >= 6 and p not in seen and p not in first and p not in test_first:
                seen.add(p)
                later.append(p)

texts = [r["text"] for r in train] + later
labels = [r["label"] for r in train] + [None] * len(later)
pq.write_table(pa.table({"text": pa.array(texts, pa.string()), "label": pa.array(labels, pa.int64())}),
               os.path.join(here, "train_transfer.parquet"), compression="zstd")
print("labelled", len(train), "unlabelled", len(later))

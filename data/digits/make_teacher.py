"""Make the digits classifier teacher and its dataset.

Data: scikit-learn's bundled copy of the UCI optical-recognition-of-handwritten-digits
test set (1797 8x8 images, 10 classes; `sklearn.datasets.load_digits`, no download).
Pixel values 0..16 are scaled to 0..1. Split with a fixed seed into
train (1197 rows) and test (600 rows).

Teacher: an MLP 64 -> 512 -> 512 -> 10 (ReLU, dropout 0.2) trained with Adam on the
train split, exported with `torch.onnx.export` (input `features` [batch, 64] float32,
output `logits` [batch, 10], dynamic batch).

Run from the repo root:  python data/digits/make_teacher.py
Needs: torch==2.9.0 scikit-learn numpy pyarrow onnx (data/requirements-make.txt).
"""
import os
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from sklearn.datasets import load_digits

torch.set_num_threads(2)
torch.manual_seed(0)
here = os.path.dirname(os.path.abspath(__file__))

digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
perm = np.random.default_rng(0).permutation(len(x))
test_idx, train_idx = perm[:600], perm[600:]


def write(name, idx):
    table = pa.table({
        "features": pa.array(list(x[idx]), type=pa.list_(pa.float32(), 64)),
        "label": pa.array(y[idx], type=pa.int64()),
    })
    pq.write_table(table, os.path.join(here, name), compression="zstd")


write("train.parquet", train_idx)
write("test.parquet", test_idx)

model = torch.nn.Sequential(
    torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Dropout(0.2),
    torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Dropout(0.2),
    torch.nn.Linear(512, 10),
)
opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
xt, yt = torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx])
for epoch in range(60):
    model.train()
    order = torch.randperm(len(xt))
    for i in range(0, len(xt), 64):
        b = order[i:i + 64]
        loss = torch.nn.functional.cross_entropy(model(xt[b]), yt[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
model.eval()
with torch.no_grad():
    acc = (model(torch.from_numpy(x[test_idx])).argmax(1).numpy() == y[test_idx]).mean()
print(f"teacher test accuracy: {acc:.4f}")

torch.onnx.export(
    model, (torch.zeros(1, 64),), os.path.join(here, "teacher.onnx"),
    input_names=["features"], output_names=["logits"],
    dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
    opset_version=17, dynamo=False,
)
print("wrote teacher.onnx, train.parquet, test.parquet")

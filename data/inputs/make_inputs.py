"""Make the input-format fixtures: datasets written the ways users' tools write them.

Everything here is cut from the existing fixtures (data/digits/*.parquet and
data/lm/train.jsonl); nothing is downloaded and nothing is random.

codecs/ -- the first 200 rows of data/digits/train.parquet (columns `features`
  fixed_size_list<float>[64] and `label` int64, exactly as in the source file),
  re-written by pyarrow `pq.write_table(table, path, compression=C)` once per codec:
    digits-snappy.parquet  digits-gzip.parquet  digits-lz4.parquet
    digits-brotli.parquet  digits-zstd.parquet  digits-none.parquet
  (lz4 is pyarrow's LZ4_RAW codec; none = uncompressed pages), plus
    digits-pandas.parquet  written by `pandas.DataFrame.to_parquet(path)` with the
    defaults (pyarrow engine, snappy, pandas metadata; the frame comes from
    `table.to_pandas()`, so `features` is re-inferred as a variable list<float>
    and the file carries the pandas index metadata).
  All seven hold the same 200 rows with the same values.

hf-layout/ -- a dataset repository as the Hugging Face Hub lays it out: one directory
  with two splits and a non-data file:
    README.md                              dataset card stub (YAML front matter naming
                                           the splits and their data files)
    data/train-00000-of-00003.parquet      rows   0..69  of the 200 above (row_group_size=32:
                                           row groups of 32, 32, 6)
    data/train-00001-of-00003.parquet      rows  70..134 (one row group)
    data/train-00002-of-00003.parquet      rows 135..199 (one row group)
    data/test-00000-of-00001.parquet       the first 50 rows of data/digits/test.parquet
  Written with pyarrow's default codec (snappy); `features` is cast to list<float>
  (the type `datasets` writes for Sequence(Value("float32"))) and the schema carries a
  `huggingface` metadata entry like `datasets` writes.

train-shards/ -- the same three train-0000N-of-00003.parquet files, alone: a directory
  that is a single split.

jsonl/ -- the first 300 lines of data/lm/train.jsonl (columns text, prompt, completion):
    lm-300.jsonl       the lines byte for byte
    lm-300.jsonl.gz    gzip (Python's gzip module, mtime 0, level 9)
    lm-300.jsonl.zst   one standard zstd frame (the `zstandard` package, level 19, content
                       size in the header); `zstd -d` accepts it
  All three decompress to identical bytes (checked below).

Run from the repo root:  python data/inputs/make_inputs.py
Needs: pyarrow pandas zstandard (data/requirements-make.txt).
"""
import gzip
import io
import json
import os
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

here = os.path.dirname(os.path.abspath(__file__))
data = os.path.dirname(here)

train = pq.read_table(os.path.join(data, "digits", "train.parquet")).slice(0, 200)
test = pq.read_table(os.path.join(data, "digits", "test.parquet")).slice(0, 50)
train = pa.Table.from_batches(train.to_batches())  # drop the slice offset
test = pa.Table.from_batches(test.to_batches())

# ---- codecs ------------------------------------------------------------------
codecs = os.path.join(here, "codecs")
os.makedirs(codecs, exist_ok=True)
for name in ["snappy", "gzip", "lz4", "brotli", "zstd", "none"]:
    path = os.path.join(codecs, f"digits-{name}.parquet")
    pq.write_table(train, path, compression=name)
pd_path = os.path.join(codecs, "digits-pandas.parquet")
train.to_pandas().to_parquet(pd_path)

want = train.to_pylist()
for f in sorted(os.listdir(codecs)):
    meta = pq.ParquetFile(os.path.join(codecs, f)).metadata
    got = pq.read_table(os.path.join(codecs, f)).select(["features", "label"])
    rows = [{"features": list(r["features"]), "label": r["label"]} for r in got.to_pylist()]
    assert rows == want, f
    print(f"codecs/{f}: {meta.num_rows} rows, codec {meta.row_group(0).column(0).compression}, "
          f"schema {got.schema.field('features').type}")

# ---- Hugging Face layout -----------------------------------------------------
hf_features = {
    "features": {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "Sequence"},
    "label": {"dtype": "int64", "_type": "Value"},
}
schema = pa.schema([("features", pa.list_(pa.float32())), ("label", pa.int64())],
                   metadata={"huggingface": json.dumps({"info": {"features": hf_features}})})


def hf(table):
    return table.cast(schema)


hf_dir = os.path.join(here, "hf-layout")
hf_data = os.path.join(hf_dir, "data")
shards = os.path.join(here, "train-shards")
os.makedirs(hf_data, exist_ok=True)
os.makedirs(shards, exist_ok=True)
cuts = [(0, 70), (70, 135), (135, 200)]
for i, (a, b) in enumerate(cuts):
    name = f"train-{i:05d}-of-00003.parquet"
    part = hf(train.slice(a, b - a))
    pq.write_table(part, os.path.join(hf_data, name), row_group_size=32 if i == 0 else None)
    shutil.copyfile(os.path.join(hf_data, name), os.path.join(shards, name))
pq.write_table(hf(test), os.path.join(hf_data, "test-00000-of-00001.parquet"))
with open(os.path.join(hf_dir, "README.md"), "w") as f:
    f.write("""---
license: bsd-3-clause
task_categories:
- image-classification
size_categories:
- n<1K
dataset_info:
  features:
  - name: features
    sequence: float32
  - name: label
    dtype: int64
  splits:
  - name: train
    num_examples: 200
  - name: test
    num_examples: 50
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: test
    path: data/test-*
---

# digits (fixture)

8x8 handwritten digits as 64 floats, with their labels: a 250-row cut of the distill
test fixture data/digits, laid out the way a Hugging Face dataset repository is.
""")
for d in [hf_data, shards]:
    for f in sorted(os.listdir(d)):
        pf = pq.ParquetFile(os.path.join(d, f))
        print(f"{os.path.relpath(os.path.join(d, f), here)}: {pf.metadata.num_rows} rows in "
              f"{pf.metadata.num_row_groups} row groups {[pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]}")
joined = pa.concat_tables([pq.read_table(os.path.join(shards, f"train-{i:05d}-of-00003.parquet")) for i in range(3)])
assert [{"features": list(r["features"]), "label": r["label"]} for r in joined.to_pylist()] == want

# ---- compressed JSONL --------------------------------------------------------
jdir = os.path.join(here, "jsonl")
os.makedirs(jdir, exist_ok=True)
with open(os.path.join(data, "lm", "train.jsonl"), "rb") as f:
    raw = b"".join(f.readline() for _ in range(300))
assert raw.count(b"\n") == 300 and raw.endswith(b"\n")
with open(os.path.join(jdir, "lm-300.jsonl"), "wb") as f:
    f.write(raw)
with open(os.path.join(jdir, "lm-300.jsonl.gz"), "wb") as f:
    with gzip.GzipFile(filename="lm-300.jsonl", mode="wb", fileobj=f, compresslevel=9, mtime=0) as g:
        g.write(raw)
with open(os.path.join(jdir, "lm-300.jsonl.zst"), "wb") as f:
    f.write(zstandard.ZstdCompressor(level=19, write_content_size=True).compress(raw))

with gzip.open(os.path.join(jdir, "lm-300.jsonl.gz"), "rb") as g:
    assert g.read() == raw
with open(os.path.join(jdir, "lm-300.jsonl.zst"), "rb") as f:
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(f.read())).read() == raw
for f in sorted(os.listdir(jdir)):
    print(f"jsonl/{f}: {os.path.getsize(os.path.join(jdir, f))} bytes")
print("done")

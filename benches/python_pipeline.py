"""Stage one done the usual Python way, for the side-by-side benchmark: onnxruntime for the
teacher, numpy for the top-k of log_softmax(logits / T) with the tail mass, pyarrow for
zstd Parquet shards. Same batches (right-padded to the longest row), same k, T, threads and
rows per shard as `distill cache-teacher`; prints rows/s and tokens/s.

    python benches/python_pipeline.py --out /tmp/py-cache --top-k 64 --temperature 2 --batch-size 16 --threads 2
"""
import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--top-k", type=int, default=64)
p.add_argument("--temperature", type=float, default=2.0)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--rows-per-shard", type=int, default=512)
p.add_argument("--max-seq-len", type=int, default=256)
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)

t_start = time.perf_counter()
opts = ort.SessionOptions()
opts.intra_op_num_threads = a.threads
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(os.path.join(root, "data/lm/teacher.onnx"), opts)
tok = Tokenizer.from_file(os.path.join(root, "data/lm/tokenizer.json"))
pad = tok.token_to_id("<|pad|>")
rows = [json.loads(l) for l in open(os.path.join(root, "data/lm/train.jsonl"))]
k, T = a.top_k, a.temperature

cols = {n: [] for n in ["row", "position", "hard_label", "top_ids", "top_logprobs", "tail_logmass"]}
shard, tokens = 0, 0


def flush():
    global shard
    table = pa.table({
        "row": pa.array(cols["row"], pa.uint64()), "position": pa.array(cols["position"], pa.uint32()),
        "hard_label": pa.array(cols["hard_label"], pa.int64()),
        "top_ids": pa.array(cols["top_ids"], pa.list_(pa.uint32())),
        "top_logprobs": pa.array(cols["top_logprobs"], pa.list_(pa.float32())),
        "tail_logmass": pa.array(cols["tail_logmass"], pa.float32()),
    })
    pq.write_table(table, os.path.join(a.out, f"shard-{shard:05}.parquet"), compression="zstd")
    for v in cols.values():
        v.clear()
    shard += 1


for start in range(0, len(rows), a.batch_size):
    batch = rows[start:start + a.batch_size]
    seqs, firsts = [], []
    for r in batch:
        pr = tok.encode(r["prompt"]).ids
        s = (pr + tok.encode(r["completion"], add_special_tokens=False).ids)[: a.max_seq_len]
        seqs.append(s)
        firsts.append(len(pr) - 1)
    n = max(len(s) for s in seqs)
    ids = np.full((len(seqs), n), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = s
        mask[j, : len(s)] = 1
        tokens += len(s)
    logits = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    for j, s in enumerate(seqs):
        z = logits[j, firsts[j]: len(s) - 1].astype(np.float64) / T  # [positions, vocab]
        if len(z) == 0:
            continue
        lse = np.logaddexp.reduce(z, axis=1, keepdims=True)
        lp = z - lse
        top = np.argpartition(-lp, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(lp, top, 1).argsort(1)[:, ::-1]
        top = np.take_along_axis(top, order, 1)
        top_lp = np.take_along_axis(lp, top, 1)
        rest = np.exp(lp)
        np.put_along_axis(rest, top, 0.0, 1)
        tail = np.log(rest.sum(1))
        for q in range(len(z)):
            cols["row"].append(start + j)
            cols["position"].append(firsts[j] + q)
            cols["hard_label"].append(s[firsts[j] + q + 1])
            cols["top_ids"].append(top[q].astype(np.uint32))
            cols["top_logprobs"].append(top_lp[q].astype(np.float32))
            cols["tail_logmass"].append(float(tail[q]))
    if (start + a.batch_size) % a.rows_per_shard == 0:
        flush()
if cols["row"]:
    flush()
dt = time.perf_counter() - t_start
print(json.dumps({"pipeline": "python", "rows": len(rows), "seconds": round(dt, 3), "rows_per_s": round(len(rows) / dt, 1), "tokens_per_s": round(tokens / dt, 1)}))

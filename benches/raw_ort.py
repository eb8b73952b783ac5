"""Raw ONNX Runtime rate on the same job as `distill cache-teacher` (the limit for stage one).

Feeds the teacher exactly the batches distill feeds it (same tokenization, right padding
to the longest row of each batch, same batch size and intra-op threads) and times only
`session.run`. Prints rows/s and tokens/s.

    python benches/raw_ort.py lm --batch-size 16 --threads 2
    python benches/raw_ort.py digits --batch-size 128 --threads 2
    python benches/raw_ort.py big --dir target/big --batch-size 32 --max-batch-tokens 1365 --threads 2

`big` is the real-size fixture (benches/make_big_teacher.py): `text` rows grouped by
length and packed under --max-batch-tokens, as distill batches them.
"""
import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("model", choices=["lm", "digits", "big"])
p.add_argument("--dir", default=None, help="big: the fixture's directory")
p.add_argument("--max-batch-tokens", type=int, default=None, help="big: padded tokens per batch")
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--max-seq-len", type=int, default=256)
a = p.parse_args()

opts = ort.SessionOptions()
opts.intra_op_num_threads = a.threads
opts.inter_op_num_threads = 1
folder = a.dir if a.model == "big" else os.path.join(root, "data", a.model)
sess = ort.InferenceSession(os.path.join(folder, "teacher.onnx"), opts)

batches, tokens = [], 0
if a.model == "lm":
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(root, "data/lm/tokenizer.json"))
    pad = tok.token_to_id("<|pad|>")
    rows = [json.loads(l) for l in open(os.path.join(root, "data/lm/train.jsonl"))]
    seqs = [(tok.encode(r["prompt"]).ids + tok.encode(r["completion"], add_special_tokens=False).ids)[: a.max_seq_len] for r in rows]
    for i in range(0, len(seqs), a.batch_size):
        b = seqs[i:i + a.batch_size]
        n = max(len(s) for s in b)
        ids = np.full((len(b), n), pad, dtype=np.int64)
        mask = np.zeros((len(b), n), dtype=np.int64)
        for j, s in enumerate(b):
            ids[j, :len(s)] = s
            mask[j, :len(s)] = 1
        tokens += sum(len(s) for s in b)
        batches.append({"input_ids": ids, "attention_mask": mask})
elif a.model == "big":
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    rows = [json.loads(l) for l in open(os.path.join(folder, "train.jsonl"))]
    seqs = [tok.encode(r["text"]).ids[: a.max_seq_len] for r in rows]
    budget = a.max_batch_tokens or (256 << 20) // (4 * sess.get_outputs()[0].shape[-1])  # distill's default
    order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))  # longest first, as distill
    i = 0
    while i < len(order):
        fit = max(1, min(a.batch_size, budget // max(1, len(seqs[order[i]]))))
        b = [seqs[j] for j in order[i:i + fit]]
        i += fit
        n = max(len(s) for s in b)
        ids = np.zeros((len(b), n), dtype=np.int64)
        mask = np.zeros((len(b), n), dtype=np.int64)
        for j, s in enumerate(b):
            ids[j, :len(s)] = s
            mask[j, :len(s)] = 1
        tokens += sum(len(s) for s in b)
        batches.append({"input_ids": ids, "attention_mask": mask})
else:
    import pyarrow.parquet as pq
    x = np.array(pq.read_table(os.path.join(root, "data/digits/train.parquet")).column("features").to_pylist(), dtype=np.float32)
    rows = x
    batches = [{"features": x[i:i + a.batch_size]} for i in range(0, len(x), a.batch_size)]

sess.run(None, batches[0])  # warm-up
t0 = time.perf_counter()
for b in batches:
    sess.run(None, b)
dt = time.perf_counter() - t0
out = {"model": a.model, "rows": len(rows), "seconds": round(dt, 3), "rows_per_s": round(len(rows) / dt, 1)}
if tokens:
    out["tokens_per_s"] = round(tokens / dt, 1)
print(json.dumps(out))

"""The top-k inside ONNX Runtime, on the CPU, against the same teacher without it.

Appends to the real-size fixture's graph (benches/make_big_teacher.py; in memory, saved as
target/big/teacher-topk.onnx) what stage one computes per position: LogSoftmax(logits / T),
TopK(k) of it, and the entropy (ReduceSum of p * log p), as the only outputs, so only
[positions, k] values leave the session. Feeds both graphs the batches distill feeds
(length-grouped, the default token budget) at 2 intra-op threads and prints tokens/s; the
figure to compare is `distill cache-teacher`'s own tokens/s on the same fixture
(benches/real_sizes.sh), which also computes the tail mass, encodes and writes the shards.

    .venv-torch/bin/python3 benches/ingraph_topk.py [k] [T]
Needs onnx, onnxruntime, tokenizers, numpy (.venv-torch after benches/encoder.sh's setup).
"""
import json
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from tokenizers import Tokenizer

k = int(sys.argv[1]) if len(sys.argv) > 1 else 64
T = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
fix = "target/big"

m = onnx.load(f"{fix}/teacher.onnx")
g = m.graph
g.initializer.extend([
    helper.make_tensor("topk_T", TensorProto.FLOAT, [], [T]),
    helper.make_tensor("topk_k", TensorProto.INT64, [1], [k]),
    helper.make_tensor("axes_last", TensorProto.INT64, [1], [-1]),
])
g.node.extend([
    helper.make_node("Div", ["logits", "topk_T"], ["z_t"]),
    helper.make_node("LogSoftmax", ["z_t"], ["lsm"], axis=-1),
    helper.make_node("TopK", ["lsm", "topk_k"], ["top_lp", "top_ids"], axis=-1),
    helper.make_node("Exp", ["lsm"], ["p"]),
    helper.make_node("Mul", ["p", "lsm"], ["plogp"]),
    helper.make_node("ReduceSum", ["plogp", "axes_last"], ["neg_entropy"], keepdims=0),
])
del g.output[:]
for name, t in [("top_lp", TensorProto.FLOAT), ("top_ids", TensorProto.INT64), ("neg_entropy", TensorProto.FLOAT)]:
    g.output.append(helper.make_tensor_value_info(name, t, None))
onnx.save(m, f"{fix}/teacher-topk.onnx")

tok = Tokenizer.from_file(f"{fix}/tokenizer.json")
seqs = [tok.encode(json.loads(line)["text"]).ids[:2048] for line in open(f"{fix}/train.jsonl")]
budget = (256 << 20) // (4 * 49152)  # distill's default --max-batch-tokens at this vocabulary
order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))
batches, i = [], 0
while i < len(order):
    fit = max(1, min(32, budget // len(seqs[order[i]])))
    b = [seqs[j] for j in order[i:i + fit]]
    i += fit
    n = max(map(len, b))
    ids = np.zeros((len(b), n), np.int64)
    mask = np.zeros_like(ids)
    for j, s in enumerate(b):
        ids[j, :len(s)], mask[j, :len(s)] = s, 1
    batches.append({"input_ids": ids, "attention_mask": mask})
tokens = sum(map(len, seqs))
for f in ["teacher.onnx", "teacher-topk.onnx"]:
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = 2, 1
    s = ort.InferenceSession(f"{fix}/{f}", o)
    s.run(None, batches[-1])
    t0 = time.perf_counter()
    for b in batches:
        s.run(None, b)
    dt = time.perf_counter() - t0
    print(json.dumps({"graph": f, "k": k, "tokens_per_s": round(tokens / dt, 1), "seconds": round(dt, 2)}))

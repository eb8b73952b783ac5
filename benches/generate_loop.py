"""Raw ONNX Runtime doing `distill generate`'s greedy loop, for benches/generate_speed.sh.

The same batches as distill (prompts in dataset order, `--batch-size` at a time, right
padded, every sequence decoded to --max-new-tokens or its end token), at 2 intra-op threads:
with the KV cache (prefill, then one token per step, past_key_values.* fed from present.*)
or rerunning each sequence per token. Only the session runs and the arg-max are timed; the
top-k soft label distill also computes per token is not done here. Prints
`tokens seconds` and writes the generated ids as JSON lines for a token-for-token check.

Usage: python benches/generate_loop.py MODEL.onnx TOKENIZER PROMPTS.jsonl BATCH NEW kv|rerun IDS_OUT
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

model, tokenizer, prompts, batch, new, mode, ids_out = sys.argv[1:]
batch, new = int(batch), int(new)
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
opts.inter_op_num_threads = 1
s = ort.InferenceSession(model, opts)
tok = Tokenizer.from_file(tokenizer)
eos = tok.token_to_id("</s>")
eos = eos if eos is not None else tok.token_to_id("<|eos|>")
pad = 0
names = [i.name for i in s.get_inputs()]
past_names = [n for n in names if n.startswith("past_key_values")]
past_shape = {i.name: i.shape for i in s.get_inputs() if i.name in past_names}
rows = [tok.encode(json.loads(line)["prompt"]).ids for line in open(prompts, encoding="utf-8")]


def run(ids, mask, positions, past):
    feed = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in names:
        feed["position_ids"] = positions
    for n in past_names:
        shape = past_shape[n]
        feed[n] = past[n] if past is not None else np.zeros((ids.shape[0], shape[1], 0, shape[3]), np.float32)
    out = s.run(None, feed)
    presents = {o.name: v for o, v in zip(s.get_outputs(), out) if o.name.startswith("present")}
    return out[0], presents


def decode_kv(prompts):
    b, width = len(prompts), max(map(len, prompts))
    ids = np.zeros((b, width), np.int64)
    mask = np.zeros((b, width), np.int64)
    for i, p in enumerate(prompts):
        ids[i, : len(p)], mask[i, : len(p)] = p, 1
    positions = np.tile(np.arange(width), (b, 1))
    logits, past = run(ids, mask, positions, None)
    out = [[int(logits[i, len(p) - 1].argmax())] for i, p in enumerate(prompts)]
    done = [o[-1] == eos or new == 1 for o in out]
    while not all(done):
        step_ids = np.array([[o[-1] if not d else pad] for o, d in zip(out, done)], np.int64)
        mask = np.concatenate([mask, np.array([[0 if d else 1] for d in done], np.int64)], axis=1)
        positions = np.array([[len(p) + len(o) - 1 if not d else 0] for p, o, d in zip(prompts, out, done)], np.int64)
        logits, past = run(step_ids, mask, positions, {n: past[n.replace("past_key_values", "present")] for n in past_names})
        for i in range(b):
            if not done[i]:
                out[i].append(int(logits[i, 0].argmax()))
                done[i] = out[i][-1] == eos or len(out[i]) >= new
    return out


def decode_rerun(prompts):
    out = [[] for _ in prompts]
    done = [False] * len(prompts)
    while not all(done):
        active = [i for i in range(len(prompts)) if not done[i]]
        seqs = [prompts[i] + out[i] for i in active]
        width = max(map(len, seqs))
        ids = np.zeros((len(active), width), np.int64)
        mask = np.zeros((len(active), width), np.int64)
        for j, q in enumerate(seqs):
            ids[j, : len(q)], mask[j, : len(q)] = q, 1
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        logits, _ = run(ids, mask, positions, None)
        for j, i in enumerate(active):
            out[i].append(int(logits[j, len(seqs[j]) - 1].argmax()))
            done[i] = out[i][-1] == eos or len(out[i]) >= new
    return out


decode = decode_kv if mode == "kv" else decode_rerun
started = time.perf_counter()
generated = []
for at in range(0, len(rows), batch):
    generated += decode(rows[at : at + batch])
seconds = time.perf_counter() - started
with open(ids_out, "w") as f:
    for g in generated:
        f.write(json.dumps(g) + "\n")
print(sum(map(len, generated)), f"{seconds:.3f}")

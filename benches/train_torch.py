"""The same student, loss and batches as `distill train-student`, in PyTorch eager: the
speed reference for stage two.

Reads the same cache with pyarrow (decoding the documented schema), tokenizes the same
data with the cache's tokenizer.json, builds the same batches (rows of one shard, padded to
the longest row), and trains the same model with the same loss
(alpha * T^2 * KL over top-k + tail bucket + (1 - alpha) * CE) with AdamW.
Prints trained positions/s after a warm-up.

    python benches/train_torch.py lm --cache target/pipelines/lm/cache --data data/lm/train.jsonl --steps 30 --threads 2
    python benches/train_torch.py digits --cache target/pipelines/digits/cache --data data/digits/train.parquet --steps 300
    python benches/train_torch.py textcls --cache target/pipelines/textcls/cache --data data/textcls/train.parquet --batch-size 32 --steps 60
"""
import argparse
import json
import math
import os
import time

import numpy as np
import pyarrow.parquet as pq
import torch

p = argparse.ArgumentParser()
p.add_argument("task", choices=["lm", "digits", "textcls"])
p.add_argument("--cache", required=True)
p.add_argument("--data", required=True)
p.add_argument("--steps", type=int, default=30)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--alpha", type=float, default=0.5)
p.add_argument("--heads", type=int, default=2, help="LM student: query heads")
p.add_argument("--kv-heads", type=int, default=None, help="LM student: K/V heads (grouped-query attention; as transformers' repeat_kv)")
p.add_argument("--d-model", type=int, default=64, help="LM student: width")
p.add_argument("--device", default="cpu", help="LM student: torch device (cpu, cuda)")
p.add_argument("--layers", type=int, default=2, help="LM student: blocks")
p.add_argument("--d-ff", type=int, default=172, help="LM student: SwiGLU width")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)

m = json.load(open(os.path.join(a.cache, "manifest.json")))
k, T, V = m["top_k"], m["temperature"], m["vocab_size"]
step = m["encoding"]["logprob_step"]
shard = pq.read_table(os.path.join(a.cache, m["shards"][0]["file"]))
rows = shard.column("row").to_numpy()
pos = shard.column("position").to_numpy()
ids = np.array(shard.column("top_ids").to_pylist(), dtype=np.int64)
lps = shard.column("top1_logprob").to_numpy()[:, None] - step * np.array(shard.column("logprob_deltas").to_pylist()).cumsum(1)
tail = shard.column("tail_logmass").to_numpy()
hard = shard.column("hard_label").to_numpy()


def kd_loss(logits, t_ids, t_lp, t_tail, t_hard, mask):
    """logits [n, V]; t_ids/t_lp [n, k]; t_tail, t_hard, mask [n]. Like distill, only the
    rows with a cached soft label enter the loss."""
    keep = mask.nonzero()[:, 0]
    logits, t_ids, t_lp, t_tail, t_hard, mask = (x[keep] for x in (logits, t_ids, t_lp, t_tail, t_hard, mask))
    s = torch.log_softmax(logits / T, -1)
    sk = s.gather(1, t_ids)
    p = t_lp.exp()
    inside = (p * (t_lp - sk)).sum(1)
    if k < V:
        rest = (1 - sk.exp().sum(1)).clamp_min(1e-12).log()
        kl = inside + t_tail.exp() * (t_tail - rest)
    else:
        kl = inside
    ce = -torch.log_softmax(logits, -1).gather(1, t_hard[:, None])[:, 0]
    n = mask.sum().clamp_min(1)
    return a.alpha * T * T * (kl * mask).sum() / n + (1 - a.alpha) * (ce * mask).sum() / n


if a.task == "digits":
    x_all = np.array(pq.read_table(a.data).column("features").to_pylist(), dtype=np.float32)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, V))
    order = np.arange(len(rows))

    def batch(i):
        b = order[(i * a.batch_size) % len(order):][: a.batch_size]
        x = torch.from_numpy(x_all[rows[b]])
        one = torch.ones(len(b))
        return model(x), torch.from_numpy(ids[b]), torch.from_numpy(lps[b]).float(), torch.from_numpy(np.where(np.isfinite(tail[b]), tail[b], -1e4)).float(), torch.from_numpy(hard[b]), one, len(b)
elif a.task == "textcls":
    # The encoder student (d_model 64, 2 post-LayerNorm blocks, 2 heads, GELU 256, tanh
    # pooler on the first token) over the rows of the first shard, padded per batch.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(a.cache, "tokenizer.json"))
    max_len = m["text"]["max_seq_len"]
    texts = pq.read_table(a.data).column(m["text"]["text"]).to_pylist()
    enc = {int(r): tok.encode(texts[int(r)]).ids[:max_len] for r in rows}

    class Encoder(torch.nn.Module):
        def __init__(s, d=64, layers=2, h=2, ff=256):
            super().__init__()
            s.word, s.pos, s.typ = torch.nn.Embedding(tok.get_vocab_size(), d), torch.nn.Embedding(max_len, d), torch.nn.Embedding(2, d)
            s.norm = torch.nn.LayerNorm(d, eps=1e-12)
            s.blocks = torch.nn.ModuleList(
                torch.nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, activation="gelu", batch_first=True, layer_norm_eps=1e-12)
                for _ in range(layers)
            )
            s.pool, s.cls = torch.nn.Linear(d, d), torch.nn.Linear(d, V)

        def forward(s, tokens, lengths):
            b, n = tokens.shape
            pad = torch.arange(n)[None, :] >= torch.tensor(lengths)[:, None]
            x = s.norm(s.word(tokens) + s.pos.weight[:n][None] + s.typ.weight[0])
            for blk in s.blocks[:-1]:
                x = blk(x, src_key_padding_mask=pad)
            # Like distill: the last block computes only the pooled first position (its
            # attention still reads every position) - the same logits for less work.
            blk, q = s.blocks[-1], x[:, :1]
            a = blk.self_attn(q, x, x, key_padding_mask=pad, need_weights=False)[0]
            y = blk.norm1(q + a)
            y = blk.norm2(y + blk.linear2(blk.activation(blk.linear1(y))))
            return s.cls(torch.tanh(s.pool(y[:, 0])))

    model = Encoder()
    order = np.arange(len(rows))

    def batch(i):
        b = order[(i * a.batch_size) % len(order):][: a.batch_size]
        seqs = [enc[int(rows[j])] for j in b]
        n = max(len(q) for q in seqs)
        toks = torch.zeros(len(b), n, dtype=torch.long)
        for j, q in enumerate(seqs):
            toks[j, : len(q)] = torch.tensor(q)
        one = torch.ones(len(b))
        return model(toks, [len(q) for q in seqs]), torch.from_numpy(ids[b]), torch.from_numpy(lps[b]).float(), torch.from_numpy(np.where(np.isfinite(tail[b]), tail[b], -1e4)).float(), torch.from_numpy(hard[b]), one, len(b)
else:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(a.cache, "tokenizer.json"))
    text = m["text"]
    data = [json.loads(l) for l in open(a.data)]
    first, n_rows = m["shards"][0]["first_row"], m["shards"][0]["rows"]
    seqs = []
    for r in range(first, first + n_rows):
        d = data[r]
        if text.get("text"):
            s = tok.encode(d[text["text"]]).ids
        else:
            s = tok.encode(d[text["prompt"]]).ids + tok.encode(d[text["completion"]], add_special_tokens=False).ids
        seqs.append(s[: text["max_seq_len"]])
    by_row = {}
    for i, r in enumerate(rows):
        by_row.setdefault(int(r), []).append(i)

    class Block(torch.nn.Module):
        def __init__(s, d, h, ff, kv):
            super().__init__()
            s.h, s.kv = h, kv
            s.n1, s.n2 = torch.nn.RMSNorm(d, eps=1e-5), torch.nn.RMSNorm(d, eps=1e-5)
            s.q, s.o = torch.nn.Linear(d, d, bias=False), torch.nn.Linear(d, d, bias=False)
            s.k, s.v = (torch.nn.Linear(d, d // h * kv, bias=False) for _ in range(2))
            s.g, s.u, s.dn = torch.nn.Linear(d, ff, bias=False), torch.nn.Linear(d, ff, bias=False), torch.nn.Linear(ff, d, bias=False)

        def forward(s, x, mask, cos, sin):
            b, n, d = x.shape
            hd = d // s.h
            h = s.n1(x)
            q = s.q(h).view(b, n, s.h, hd).transpose(1, 2)
            kk, v = (t(h).view(b, n, s.kv, hd).transpose(1, 2) for t in (s.k, s.v))
            rot = lambda t: torch.cat([-t[..., hd // 2:], t[..., : hd // 2]], -1)
            q, kk = q * cos + rot(q) * sin, kk * cos + rot(kk) * sin
            kk, v = kk.repeat_interleave(s.h // s.kv, 1), v.repeat_interleave(s.h // s.kv, 1)
            att = torch.softmax(q @ kk.transpose(2, 3) / math.sqrt(hd) + mask, -1) @ v
            x = x + s.o(att.transpose(1, 2).reshape(b, n, d))
            h = s.n2(x)
            return x + s.dn(torch.nn.functional.silu(s.g(h)) * s.u(h))

    class Decoder(torch.nn.Module):
        def __init__(s, d=64, layers=2, h=2, ff=172, kv=None):
            super().__init__()
            s.h = h
            s.emb = torch.nn.Embedding(V, d)
            s.blocks = torch.nn.ModuleList(Block(d, h, ff, kv or h) for _ in range(layers))
            s.norm = torch.nn.RMSNorm(d, eps=1e-5)
            s.head = torch.nn.Linear(d, V, bias=False)

        def forward(s, tokens, lengths):
            b, n = tokens.shape
            hd = s.emb.weight.shape[1] // s.h
            dev = tokens.device
            inv = 10000.0 ** (-2 * (torch.arange(hd, device=dev) % (hd // 2)).float() / hd)
            ang = torch.arange(n, device=dev).float()[:, None] * inv[None]
            cos, sin = ang.cos()[None, None], ang.sin()[None, None]
            j = torch.arange(n, device=dev)
            keep = (j[None, :] <= j[:, None])[None] & (j[None, None, :] < torch.tensor(lengths, device=dev)[:, None, None])
            mask = torch.where(keep, 0.0, -1e9)[:, None]
            x = s.emb(tokens)
            for blk in s.blocks:
                x = blk(x, mask, cos, sin)
            return x  # hidden states; the norm and head run on the cached positions only

    model = Decoder(d=a.d_model, layers=a.layers, h=a.heads, ff=a.d_ff, kv=a.kv_heads).to(a.device)

    def batch(i):
        rs = [first + ((i * a.batch_size + j) % n_rows) for j in range(a.batch_size)]
        n = max(len(seqs[r - first]) for r in rs)
        toks = torch.zeros(len(rs), n, dtype=torch.long)
        for j, r in enumerate(rs):
            toks[j, : len(seqs[r - first])] = torch.tensor(seqs[r - first])
        hidden = model(toks.to(a.device), [len(seqs[r - first]) for r in rs])
        hidden = hidden.reshape(len(rs) * n, hidden.shape[-1])
        t_ids = torch.zeros(len(rs) * n, k, dtype=torch.long)
        t_lp = torch.full((len(rs) * n, k), -math.log(k))
        t_tail = torch.full((len(rs) * n,), -30.0)
        t_hard = torch.zeros(len(rs) * n, dtype=torch.long)
        mask = torch.zeros(len(rs) * n)
        cnt = 0
        for j, r in enumerate(rs):
            for c in by_row.get(r, []):
                f = j * n + int(pos[c])
                t_ids[f], t_lp[f], t_tail[f], t_hard[f], mask[f] = torch.from_numpy(ids[c]), torch.from_numpy(lps[c]).float(), float(tail[c]), int(hard[c]), 1.0
                cnt += 1
        # Like distill: the final norm and the LM head only at the cached positions.
        keep = mask.nonzero()[:, 0]
        logits = model.head(model.norm(hidden[keep.to(a.device)]))
        on = lambda t: t[keep].to(a.device)
        return logits, on(t_ids), on(t_lp), on(t_tail), on(t_hard), on(mask), cnt

opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
count, t0 = 0, None
for i in range(a.warmup + a.steps):
    if i == a.warmup:
        t0, count = time.perf_counter(), 0
    logits, *targets, cnt = batch(i)
    loss = kd_loss(logits, *targets)
    opt.zero_grad()
    loss.backward()
    opt.step()
    count += cnt
dt = time.perf_counter() - t0
print(json.dumps({"task": a.task, "steps": a.steps, "seconds": round(dt, 3), "positions_per_s": round(count / dt, 1), "threads": a.threads, "torch": torch.__version__}))

"""Train a small Hugging Face student from a distill cache with PyTorch DDP.

    torchrun --nproc_per_node 2 python/examples/ddp_train.py --cache CACHE --data train.jsonl --steps 5
    python python/examples/ddp_train.py --cache CACHE --data train.jsonl --steps 5      # one process

The student: a `transformers` LlamaForCausalLM from a small LlamaConfig (hidden 32, 1 layer,
2 query heads and 1 key/value head, tied embeddings) over the cache's vocabulary, the same
initial weights on every rank (torch.manual_seed(0)). The data: the dataset rows the cache was
made from, tokenized as the cache did (manifest `text`: the prompt with the tokenizer's special
tokens, the completion without, cut to max_seq_len). Global batch i is rows [i*G, (i+1)*G) in
dataset order (G = --global-batch); rank r of W takes the rows of it congruent to r mod W, which
is what CacheDataset(rank=r, world_size=W) read in order gives. Each rank's loss is its share
of the global batch's loss (the counts are all-reduced), times W because DDP averages the
gradients; so W processes take the steps one process takes on the same global batches.

Prints one JSON line per step on rank 0: {"step", "loss"} (the global batch's loss).
Backend gloo (CPU).
"""
import argparse
import json
import os

import torch
import torch.distributed as dist
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from distill_cache import open_cache
from distill_cache.torch import CacheDataset, collate, distillation_loss

p = argparse.ArgumentParser()
p.add_argument("--cache", required=True)
p.add_argument("--data", required=True, help="the JSONL dataset the cache was made from")
p.add_argument("--steps", type=int, default=5)
p.add_argument("--global-batch", type=int, default=8)
p.add_argument("--alpha", type=float, default=0.5)
p.add_argument("--lr", type=float, default=1e-3)
a = p.parse_args()

world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if world > 1:
    dist.init_process_group("gloo")
torch.set_num_threads(1)

cache = open_cache(a.cache)
m = cache.manifest
text = m["text"]
tok = Tokenizer.from_file(os.path.join(a.cache, "tokenizer.json"))
rows = [json.loads(line) for line in open(a.data)]


def tokens(row):
    if text.get("text"):
        ids = tok.encode(row[text["text"]]).ids
    else:
        ids = tok.encode(row[text["prompt"]]).ids + tok.encode(row[text["completion"]], add_special_tokens=False).ids
    return ids[: text["max_seq_len"]]


torch.manual_seed(0)
config = LlamaConfig(vocab_size=m["vocab_size"], hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=text["max_seq_len"],
                     tie_word_embeddings=True)
model = LlamaForCausalLM(config)
if world > 1:
    model = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.AdamW(model.parameters(), lr=a.lr)

assert a.global_batch % world == 0, "--global-batch must be a multiple of the world size"
per_rank = a.global_batch // world
ds = CacheDataset(cache, rank=rank, world_size=world)
for step in range(a.steps):
    items = [ds[(step * per_rank + j) % len(ds)] for j in range(per_rank)]
    batch = collate(items)
    seqs = [tokens(rows[r]) for r in batch["row"].tolist()]
    n = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, : len(s)], mask[j, : len(s)] = torch.tensor(s), 1
    logits = model(input_ids=ids, attention_mask=mask).logits[batch["at"][:, 0], batch["at"][:, 1]]
    counts = torch.tensor([float(len(batch["ids"])), float(batch["labelled"].sum())])
    if world > 1:
        dist.all_reduce(counts)
    loss, _, _ = distillation_loss(logits, batch, m["temperature"], alpha=a.alpha, counts=counts)
    opt.zero_grad()
    (loss * world).backward()
    opt.step()
    total = loss.detach().clone()
    if world > 1:
        dist.all_reduce(total)
    if rank == 0:
        print(json.dumps({"step": step + 1, "loss": total.item()}), flush=True)
if world > 1:
    dist.destroy_process_group()

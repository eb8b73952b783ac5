"""Student decoding speed: `distill generate --student` (the Burn decoder with its KV cache)
beside transformers' `generate` (PyTorch eager, its KV cache) on the same checkpoint, the
same prompts and batches, greedy, on the CPU with the same threads.

Models are built here from transformers configs with random weights, scaled so that the
logits are peaked (speed does not depend on the values; the greedy tokens are then decided
by the model, not by float rounding): the LM pipeline's student shape (Llama, 2 layers, d 64, vocabulary 4096), a
wider one (4 layers, d 256, GQA 8/2 heads) and, with `--smollm2`, a SmolLM2-135M-shaped one
(30 layers, d 576, 9/3 heads, SwiGLU 1536, vocabulary 49152, tied). Prompts: the first
`--prompts` rows of data/lm/valid.jsonl, tokenized with data/lm/tokenizer.json (ids past
its 4096 are never fed; the 49152-wide head is still computed, and both pick among the
tokenizer's 4096 ids: distill always does, transformers with `suppress_tokens`). distill's tokens/s is its
decoding time (as it prints it: prefill, steps and picks, the writing not); transformers'
is the wall time of `generate` over the same batches (left padded, as it needs). The
tokens each writes are compared: equal greedy tokens are reported as a share (padding on
the other side changes float rounding, which may flip a near tie).

    .venv-torch/bin/python3 benches/student_generate.py [--smollm2]    (OMP_NUM_THREADS=2)
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pyarrow.parquet as pq
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shapes(smollm2):
    common = dict(max_position_embeddings=512, rms_norm_eps=1e-5)
    out = {
        "lm student (2 x d64)": LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=2, **common),
        "4 x d256, GQA 8/2": LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                         num_attention_heads=8, num_key_value_heads=2, **common),
    }
    if smollm2:
        out["SmolLM2-135M shape"] = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                                num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                                tie_word_embeddings=True, rope_theta=100000.0, **common)
    return out


def peaked(model):
    """Weights of std 1.5 / sqrt(fan-in), norms near 1: logits of order 1-10, so greedy
    tokens are not decided by float rounding among near-equal logits (transformers' init,
    std 0.02, gives nearly uniform ones at 30 layers)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.5 / p.shape[1] ** 0.5)
            else:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--distill", default=os.path.join(ROOT, "target/release/distill"))
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--smollm2", action="store_true")
    args = ap.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    work = tempfile.mkdtemp(prefix="distill-student-generate-")
    prompts = os.path.join(work, "prompts.jsonl")
    with open(os.path.join(ROOT, "data/lm/valid.jsonl")) as f, open(prompts, "w") as out:
        for line in list(f)[: args.prompts]:
            out.write(json.dumps({"prompt": json.loads(line)["prompt"]}) + "\n")
    print(f"| student | transformers generate (tokens/s) | distill generate --student (tokens/s) | distill / transformers "
          f"| same greedy tokens |")
    print("|---|---|---|---|---|")
    for name, cfg in shapes(args.smollm2).items():
        torch.manual_seed(0)
        model = peaked(LlamaForCausalLM(cfg)).eval()
        d = os.path.join(work, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
        model.save_pretrained(d)
        shutil.copy(os.path.join(ROOT, "data/lm/tokenizer.json"), d)
        out = d.rstrip("-") + "-generated"
        env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
        p = subprocess.run([args.distill, "generate", "--student", d, "--data", prompts, "--out", out, "--temperature", "0",
                            "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.new_tokens),
                            "--eos-id", "0"], capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        distill_rate = float(re.search(r"([0-9.]+) tokens/s", p.stdout).group(1))
        rows = pq.read_table(os.path.join(out, "generated.parquet")).to_pylist()
        # distill picks among the tokenizer's ids only (ids past it cannot be decoded): so does
        # transformers here, by suppressing the rest of a wider head.
        past_tokenizer = list(range(4096, cfg.vocab_size)) or None
        # transformers over the same prompt ids and batches, left padded.
        tokens, seconds, same, total = 0, 0.0, 0, 0
        for start in range(0, len(rows), args.batch_size):
            batch = rows[start:start + args.batch_size]
            width = max(len(r["prompt_ids"]) for r in batch)
            ids = torch.tensor([[0] * (width - len(r["prompt_ids"])) + r["prompt_ids"] for r in batch])
            mask = torch.tensor([[0] * (width - len(r["prompt_ids"])) + [1] * len(r["prompt_ids"]) for r in batch])
            t0 = time.perf_counter()
            with torch.no_grad():
                got = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False,
                                     eos_token_id=0, pad_token_id=0, suppress_tokens=past_tokenizer)
            seconds += time.perf_counter() - t0
            for r, g in zip(batch, got[:, width:].tolist()):
                g = g[: len(r["completion_ids"])]
                tokens += len(r["completion_ids"])
                same += sum(a == b for a, b in zip(g, r["completion_ids"]))
                total += len(r["completion_ids"])
        hf_rate = tokens / seconds
        print(f"| {name} | {hf_rate:.0f} | {distill_rate:.0f} | {distill_rate / hf_rate:.2f}x | {same / total:.3f} |",
              flush=True)
    shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())

"""One round of on-policy distillation in PyTorch: the student writes completions, the teacher
scores them through distill, and the student takes a few steps on the teacher's verdict.

    python python/examples/onpolicy_round.py --distill target/release/distill \\
        --student STUDENT_DIR --teacher data/lm/teacher.onnx --tokenizer data/lm/tokenizer.json \\
        --data data/lm/valid.jsonl --out rounds/1 --steps 4

does, in a fresh --out:

(a) the Hugging Face student (a causal LM directory over the teacher's tokenizer, e.g. the last
    round's OUT/student) samples completions of the prompts at temperature 1, as

        python -m distill_cache.generate --model STUDENT_DIR --data data/lm/valid.jsonl \\
            --prompt-column prompt --out OUT/generated --temperature 1

(b) the teacher scores every completion token:

        distill cache-teacher --teacher data/lm/teacher.onnx --tokenizer data/lm/tokenizer.json \\
            --data OUT/generated/generated.parquet --prompt-column prompt_ids \\
            --completion-column completion_ids --token-ids --temperature 1 --out OUT/cache

    so the cache's hard label at each position is the token the student drew and
    `hard_label_logprob` the teacher's log-prob of it;
(c) --steps AdamW steps of the student on distill_cache's loss with divergence="sampled-rkl"
    (alpha 1: the reverse KL alone), each position's `generation_logprobs` joined from the
    generated dataset's `completion_logprobs`: cache position p of a row predicts token p + 1
    of prompt_ids + completion_ids, which is completion token p + 1 - len(prompt_ids);
(d) the student saved to OUT/student (save_pretrained), the next round's --student.

Prints one JSON line per step: {"step", "loss", "reverse_kl"}, the reverse KL being the
batch's sampled estimate.
"""
import argparse
import json
import os
import subprocess

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill_cache import open_cache
from distill_cache.generate import generate, read_prompts, write_generated
from distill_cache.torch import CacheDataset, collate, distillation_loss

p = argparse.ArgumentParser()
p.add_argument("--distill", required=True, help="the distill binary")
p.add_argument("--student", required=True, help="a Hugging Face causal LM directory")
p.add_argument("--teacher", required=True, help="the teacher's ONNX export")
p.add_argument("--tokenizer", required=True, help="the teacher's tokenizer.json (the student's vocabulary too)")
p.add_argument("--data", required=True, help="prompts: .jsonl or .parquet")
p.add_argument("--prompt-column", default="prompt")
p.add_argument("--out", required=True, help="this round's directory, fresh")
p.add_argument("--max-new-tokens", type=int, default=32)
p.add_argument("--samples-per-prompt", type=int, default=1)
p.add_argument("--steps", type=int, default=4)
p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
p.add_argument("--lr", type=float, default=1e-4)
a = p.parse_args()
torch.manual_seed(0)

# (a) The student writes completions.
tokenizer = AutoTokenizer.from_pretrained(a.student)
model = AutoModelForCausalLM.from_pretrained(a.student).eval()
table = generate(model, tokenizer, read_prompts(a.data, a.prompt_column), max_new_tokens=a.max_new_tokens,
                 temperature=1.0, samples_per_prompt=a.samples_per_prompt)
generated = write_generated(table, os.path.join(a.out, "generated"))

# (b) The teacher scores them.
cache_dir = os.path.join(a.out, "cache")
subprocess.run([a.distill, "cache-teacher", "--teacher", a.teacher, "--tokenizer", a.tokenizer, "--data", generated,
                "--prompt-column", "prompt_ids", "--completion-column", "completion_ids", "--token-ids",
                "--temperature", "1", "--out", cache_dir], check=True)

# (c) The student learns from the teacher's log-probs of its own tokens.
cache = open_cache(cache_dir)
vocab, temperature, max_len = cache.vocab_size, cache.manifest["temperature"], cache.manifest["text"]["max_seq_len"]
seqs = pq.read_table(generated, columns=["prompt_ids", "completion_ids", "completion_logprobs"]).to_pylist()


def collator(items):
    """collate's batch, the rows' token ids (right-padded) and each position's generation log-prob."""
    batch = collate(items)
    tokens = [(seqs[it["row"]]["prompt_ids"] + seqs[it["row"]]["completion_ids"])[:max_len] for it in items]
    batch["input_ids"] = torch.zeros(len(items), max(map(len, tokens)), dtype=torch.long)
    batch["attention_mask"] = torch.zeros_like(batch["input_ids"])
    for j, ids in enumerate(tokens):
        batch["input_ids"][j, : len(ids)] = torch.tensor(ids)
        batch["attention_mask"][j, : len(ids)] = 1
    joined = []
    for it in items:
        s = seqs[it["row"]]
        for pos, label in zip(it["positions"].tolist(), it["hard_label"].tolist()):
            i = pos + 1 - len(s["prompt_ids"])  # the completion token position `pos` predicts
            if not 0 <= i < len(s["completion_ids"]) or s["completion_ids"][i] != label:
                raise ValueError(f"row {it['row']}, position {pos}: the cache's hard label {label} is not "
                                 f"completion token {i} of {generated}; was the cache made from it?")
            joined.append(s["completion_logprobs"][i])
    batch["generation_logprobs"] = torch.tensor(joined)
    return batch


ds = CacheDataset(cache)
loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=True, collate_fn=collator)
opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
model.train()
step = 0
while step < a.steps:
    for batch in loader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits[batch["at"][:, 0], batch["at"][:, 1]][:, :vocab]
        loss, rkl, _ = distillation_loss(logits, batch, temperature, alpha=1.0, cache_temperature=temperature,
                                         divergence="sampled-rkl", generation_logprobs=batch["generation_logprobs"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        print(json.dumps({"step": step, "loss": loss.item(), "reverse_kl": rkl.item()}), flush=True)
        if step == a.steps:
            break

# (d) The next round's student.
model.save_pretrained(os.path.join(a.out, "student"))
tokenizer.save_pretrained(os.path.join(a.out, "student"))

"""Make the causal-LM teacher, its tokenizer and its datasets.

Text: the Python reference-manual topics that ship with CPython itself
(`pydoc_data.topics.topics`, ~465 kB of English prose and code, no download).
Topics are split by name: every 10th topic (sorted) is held out for validation.

Tokenizer: byte-level BPE (4096 tokens) trained on the training topics with
Hugging Face `tokenizers`; `<|bos|>` is prepended to every encoding by the
post-processor; `<|eos|>` and `<|pad|>` are special tokens. Saved as tokenizer.json.

Teacher: a Llama-style decoder built from a `transformers` LlamaConfig (4 layers,
hidden 128, 4 heads, SwiGLU 384, RoPE, RMSNorm, tied embeddings, ~1.7 M parameters),
trained from scratch for a few minutes on 128-token blocks of the training text, keeping
the weights with the best validation loss (checked every 25 steps: the text is small and
a longer run memorises it), then exported the standard Hugging Face way: inputs `input_ids`, `attention_mask`
[batch, seq] int64, output `logits` [batch, seq, 4096], dynamic batch and seq.

Datasets (JSONL): one row per paragraph, with `text`, and `prompt` + `completion`
where prompt is the first ~40% of the paragraph's words and completion the rest
(text == prompt + completion). train.jsonl from training topics, valid.jsonl from
held-out topics.

Run from the repo root:  python data/lm/make_teacher.py
Needs: torch==2.9.0 transformers==4.57.* tokenizers numpy (data/requirements-make.txt).
"""
import copy
import json
import math
import os
import random
import time

import numpy as np
import torch
from pydoc_data.topics import topics
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(2)
torch.manual_seed(0)
random.seed(0)
here = os.path.dirname(os.path.abspath(__file__))
TRAIN_SECONDS = float(os.environ.get("TRAIN_SECONDS", "300"))

names = sorted(topics)
valid_names = set(names[::10])
train_text = [topics[n] for n in names if n not in valid_names]
valid_text = [topics[n] for n in names if n in valid_names]

# ---- tokenizer ---------------------------------------------------------------
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=4096, special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
)
tok.train_from_iterator(train_text, trainer)
bos = tok.token_to_id("<|bos|>")
tok.post_processor = processors.TemplateProcessing(
    single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=[("<|bos|>", bos)],
)
tok.save(os.path.join(here, "tokenizer.json"))
vocab = tok.get_vocab_size()
print("vocab", vocab)


# ---- datasets ----------------------------------------------------------------
def paragraphs(texts):
    out = []
    for t in texts:
        for p in t.split("\n\n"):
            p = " ".join(p.split())
            words = p.split(" ")
            if len(words) < 12:
                continue
            words = words[:60]
            cut = max(3, int(len(words) * 0.4))
            out.append({
                "text": " ".join(words),
                "prompt": " ".join(words[:cut]),
                "completion": " " + " ".join(words[cut:]),
            })
    return out


train_rows = paragraphs(train_text)
valid_rows = paragraphs(valid_text)
random.shuffle(train_rows)
random.shuffle(valid_rows)
train_rows, valid_rows = train_rows[:1500], valid_rows[:200]
for name, rows in [("train.jsonl", train_rows), ("valid.jsonl", valid_rows)]:
    with open(os.path.join(here, name), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
print("rows", len(train_rows), len(valid_rows))

# ---- teacher -----------------------------------------------------------------
config = LlamaConfig(
    vocab_size=vocab, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
    tie_word_embeddings=True, bos_token_id=bos, eos_token_id=tok.token_to_id("<|eos|>"),
    pad_token_id=tok.token_to_id("<|pad|>"), attn_implementation="eager", attention_dropout=0.1,
)
model = LlamaForCausalLM(config)
print("params", sum(p.numel() for p in model.parameters()))

stream = np.array([i for t in train_text for i in tok.encode(t).ids], dtype=np.int64)
vstream = np.array([i for t in valid_text for i in tok.encode(t).ids], dtype=np.int64)
block = 128
vb = torch.from_numpy(np.stack([vstream[i:i + block] for i in range(0, len(vstream) - block - 1, block)][:64]))
best = (float("inf"), 0, None)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
start, step = time.time(), 0
while time.time() - start < TRAIN_SECONDS:
    idx = np.random.randint(0, len(stream) - block - 1, size=16)
    batch = torch.from_numpy(np.stack([stream[i:i + block] for i in idx]))
    lr = 3e-3 * min(1.0, step / 100) * max(0.1, 1 - (time.time() - start) / TRAIN_SECONDS)
    for g in opt.param_groups:
        g["lr"] = lr
    loss = model(input_ids=batch, labels=batch).loss
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 25 == 0:
        model.eval()
        with torch.no_grad():
            vloss = model(input_ids=vb, labels=vb).loss.item()
        model.train()
        if vloss < best[0]:
            best = (vloss, step, copy.deepcopy(model.state_dict()))
        print(f"step {step} loss {loss.item():.3f} validation {vloss:.3f}", flush=True)
    step += 1
model.load_state_dict(best[2])
model.eval()
print(f"teacher: best of {step} steps at step {best[1]}, validation perplexity {math.exp(best[0]):.2f}")


class Export(torch.nn.Module):
    """input_ids, attention_mask [batch, seq] -> logits [batch, seq, vocab].

    Builds the causal + padding mask itself as a 4-D additive mask, which the
    TorchScript exporter traces (transformers' own mask builder does not export).
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask):
        seq = input_ids.shape[1]
        causal = torch.ones(seq, seq, dtype=torch.bool, device=input_ids.device).tril()
        keep = causal[None, None, :, :] & attention_mask[:, None, None, :].bool()
        mask = torch.zeros(keep.shape, dtype=torch.float32).masked_fill(~keep, torch.finfo(torch.float32).min)
        return self.lm(input_ids=input_ids, attention_mask=mask, use_cache=False).logits


ids = torch.tensor([tok.encode("def f(x): return x").ids] * 2)
torch.onnx.export(
    Export(model), (ids, torch.ones_like(ids)), os.path.join(here, "teacher.onnx"),
    input_names=["input_ids", "attention_mask"], output_names=["logits"],
    dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                  "logits": {0: "batch", 1: "seq"}},
    opset_version=17, dynamo=False,
)
print("wrote teacher.onnx tokenizer.json train.jsonl valid.jsonl")

"""Make the real-size benchmark fixture (not committed; benches/real_sizes.sh calls this).

Text: the Python standard library's own sources (every .py file under the running
interpreter's stdlib directory, sorted by path; no download), one document per file.

Tokenizer: byte-level BPE trained with Hugging Face `tokenizers` on that text to 49152
tokens (<|pad|> 0, <|bos|> 1, <|eos|> 2; <|bos|> prepended by the post-processor).

Teacher: a Llama-style decoder from a `transformers` LlamaConfig shaped like the small
models people distil (hidden 256, 4 layers, 8 query heads and 2 key/value heads: grouped-
query attention, SwiGLU 688, RoPE, RMSNorm, tied embeddings; ~16 M parameters, 12.6 M of
them the embedding), trained from scratch for STEPS (default 300) AdamW steps on 8 random
256-token blocks of the other documents so its next-token distributions are peaked like a trained LM's, then exported the
standard Hugging Face way (inputs input_ids, attention_mask [batch, seq] int64; output
logits [batch, seq, 49152]).

Rows: train.jsonl, one `text` row per document cut to 512-2048 tokens (ROWS rows, default
96), for `cache-teacher --text-column text` (every position cached).

Deterministic for a given interpreter and torch build (torch.manual_seed(0), the files in
sorted order, a fixed number of steps).

    .venv-torch/bin/python3 benches/make_big_teacher.py OUT_DIR
"""
import glob
import json
import os
import random
import sys
import sysconfig
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.set_num_threads(2)
torch.manual_seed(0)
random.seed(0)
VOCAB = 49152
STEPS = int(os.environ.get("STEPS", "300"))
ROWS = int(os.environ.get("ROWS", "96"))

# ---- text and tokenizer ----------------------------------------------------------------
stdlib = sysconfig.get_paths()["stdlib"]
files = sorted(p for p in glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True) if "site-packages" not in p)
docs = []
for p in files:
    try:
        t = open(p, encoding="utf-8").read()
    except (UnicodeDecodeError, OSError):
        continue
    if len(t) > 2000:
        docs.append(t)
print(f"{len(docs)} documents, {sum(map(len, docs)) / 1e6:.1f} MB", flush=True)
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train_from_iterator(docs, trainer)
tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 1)])
tok.save(os.path.join(out, "tokenizer.json"))
assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
print("tokenizer", tok.get_vocab_size(), flush=True)

# ---- rows: every other document, cut to 512-2048 tokens ---------------------------------
rows = []
for d in docs[::2]:
    e = tok.encode(d)
    n = min(len(e.ids), random.randint(512, 2048))
    if n >= 512:
        rows.append({"text": d[: e.offsets[n - 1][1]]})  # its first n - 1 tokens after <|bos|>
    if len(rows) == ROWS:
        break
with open(os.path.join(out, "train.jsonl"), "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
print("rows", len(rows), flush=True)

# ---- teacher ---------------------------------------------------------------------------
config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                     num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
                     tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
model = LlamaForCausalLM(config)
print("parameters", sum(p.numel() for p in model.parameters()), flush=True)
stream = torch.tensor([i for d in docs[1::2] for i in tok.encode(d).ids[1:]][: 4_000_000])
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
start = time.time()
model.train()
for step in range(STEPS):
    at = torch.randint(0, len(stream) - 257, (8,))
    x = torch.stack([stream[a:a + 257] for a in at])
    logits = model(input_ids=x[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 25 == 0:
        print(f"step {step} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
model.eval()


class Export(torch.nn.Module):
    """input_ids, attention_mask [batch, seq] -> logits [batch, seq, vocab], with the causal +
    padding mask built as a 4-D additive mask (which the TorchScript exporter traces)."""

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
    Export(model), (ids, torch.ones_like(ids)), os.path.join(out, "teacher.onnx"),
    input_names=["input_ids", "attention_mask"], output_names=["logits"],
    dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                  "logits": {0: "batch", 1: "seq"}},
    opset_version=17, dynamo=False,
)
print("wrote", out, flush=True)

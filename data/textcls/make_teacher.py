"""Make the text-classification teacher, its tokenizer and its datasets.

Task: which part of the Python standard library a docstring comes from. Rows are the first
paragraph of the docstrings of the classes, functions and methods of ~90 stdlib modules
(they ship with CPython itself, no download), labelled with one of 8 groups:
filesystem, network, text, numbers, concurrency, formats, devtools, time. Duplicates and
paragraphs under 6 words are dropped. Split by a fixed shuffle (seed 0): 80% train.parquet,
20% test.parquet, columns `text` (string) and `label` (int64).

Tokenizer: BERT-style WordPiece (lower-cased, 3000 tokens) trained on the training texts
with Hugging Face `tokenizers`; the post-processor wraps every text as `[CLS] ... [SEP]`;
`[PAD]` is id 0. Saved as tokenizer.json.

Teacher: a BERT encoder classifier built from a `transformers` BertConfig (4 layers, hidden
128, 4 heads, intermediate 512, 128 positions, ~0.9 M parameters), trained from scratch on
the training split, keeping the weights with the best accuracy on a held-out tenth of it
(the test split is never seen), then exported the standard Hugging Face way: inputs
`input_ids`, `attention_mask`, `token_type_ids` [batch, seq] int64, output `logits`
[batch, 8], dynamic batch and seq.

Run from the repo root:  python data/textcls/make_teacher.py
Needs: torch==2.9.0 transformers==4.57.* tokenizers numpy pyarrow (data/requirements-make.txt).
"""
import copy
import os
import random
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForSequenceClassification

from stdlib_docs import GROUPS, docstrings

torch.set_num_threads(2)
torch.manual_seed(0)
random.seed(0)
here = os.path.dirname(os.path.abspath(__file__))
TRAIN_SECONDS = float(os.environ.get("TRAIN_SECONDS", "240"))
MAX_LEN = 64


# ---- datasets ----------------------------------------------------------------
rows, seen = [], set()
for label, d in docstrings():
    p = " ".join(d.split("\n\n")[0].split())
    if len(p.split()) >= 6 and p not in seen:
        seen.add(p)
        rows.append({"text": p, "label": label})
random.shuffle(rows)
cut = int(len(rows) * 0.8)
train, test = rows[:cut], rows[cut:]
for name, part in [("train", train), ("test", test)]:
    table = pa.table({"text": pa.array([r["text"] for r in part], pa.string()),
                      "label": pa.array([r["label"] for r in part], pa.int64())})
    pq.write_table(table, os.path.join(here, f"{name}.parquet"), compression="zstd")
print("rows", len(train), len(test), "classes", len(GROUPS))

# ---- tokenizer ---------------------------------------------------------------
tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
tok.normalizer = normalizers.BertNormalizer(lowercase=True)
tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
tok.decoder = decoders.WordPiece()
trainer = trainers.WordPieceTrainer(vocab_size=3000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                    show_progress=False)
tok.train_from_iterator([r["text"] for r in train], trainer)
cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
tok.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
tok.save(os.path.join(here, "tokenizer.json"))
vocab = tok.get_vocab_size()
print("vocab", vocab)


def encode(part):
    ids = [tok.encode(r["text"]).ids[:MAX_LEN] for r in part]
    n = max(len(i) for i in ids)
    x = torch.zeros(len(ids), n, dtype=torch.long)
    mask = torch.zeros(len(ids), n, dtype=torch.long)
    for i, s in enumerate(ids):
        x[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return x, mask, torch.tensor([r["label"] for r in part])


# ---- teacher -----------------------------------------------------------------
config = BertConfig(vocab_size=vocab, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                    intermediate_size=512, max_position_embeddings=128, num_labels=len(GROUPS),
                    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
model = BertForSequenceClassification(config)
print("parameters", sum(p.numel() for p in model.parameters()))
held = len(train) // 10
fit, dev = train[held:], train[:held]
fx, fm, fy = encode(fit)
dx, dm, dy = encode(dev)
tx, tm, ty = encode(test)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def accuracy(x, m, y):
    model.eval()
    with torch.no_grad():
        return (model(input_ids=x, attention_mask=m).logits.argmax(-1) == y).float().mean().item()


best, best_state, start, step = -1.0, None, time.time(), 0
while time.time() - start < TRAIN_SECONDS:
    model.train()
    perm = torch.randperm(len(fy))
    for i in range(0, len(perm), 32):
        b = perm[i:i + 32]
        loss = torch.nn.functional.cross_entropy(model(input_ids=fx[b], attention_mask=fm[b]).logits, fy[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    acc = accuracy(dx, dm, dy)
    if acc > best:
        best, best_state = acc, copy.deepcopy(model.state_dict())
    print(f"step {step} loss {loss.item():.3f} dev acc {acc:.4f}", flush=True)
model.load_state_dict(best_state)
print("dev accuracy", best, "test accuracy", accuracy(tx, tm, ty))

model.eval()
model.config.return_dict = False


class Export(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]


torch.onnx.export(
    Export(model), (tx[:2], tm[:2], torch.zeros_like(tx[:2])), os.path.join(here, "teacher.onnx"),
    input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
    dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                  "token_type_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"}},
    opset_version=17, dynamo=False,
)
print("exported")

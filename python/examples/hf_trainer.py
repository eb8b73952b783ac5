"""A distill cache in the Hugging Face Trainer (TRL's SFTTrainer and GKDTrainer are Trainer
subclasses: the same override serves them): the Dataset yields tokenized rows with their
cached soft labels, the collator pads them, and `compute_loss` is distill's loss.

    python python/examples/hf_trainer.py --cache CACHE --data train.jsonl --steps 3

Prints one JSON line per step: {"step", "loss"} as the Trainer logs it. Before training it
checks that the loss the Trainer computes for the first batch equals distillation_loss
computed by hand on the same batch and the initial weights.
"""
import argparse
import json
import os

import torch
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from distill_cache import open_cache
from distill_cache.torch import CacheDataset, collate, distillation_loss

p = argparse.ArgumentParser()
p.add_argument("--cache", required=True)
p.add_argument("--data", required=True, help="the JSONL dataset the cache was made from")
p.add_argument("--steps", type=int, default=3)
p.add_argument("--out", default="target/hf-trainer")
a = p.parse_args()

cache = open_cache(a.cache)
m, text = cache.manifest, cache.manifest["text"]
tok = Tokenizer.from_file(os.path.join(a.cache, "tokenizer.json"))
rows = [json.loads(line) for line in open(a.data)]


def tokens(row):
    if text.get("text"):
        ids = tok.encode(row[text["text"]]).ids
    else:
        ids = tok.encode(row[text["prompt"]]).ids + tok.encode(row[text["completion"]], add_special_tokens=False).ids
    return ids[: text["max_seq_len"]]


class Rows(torch.utils.data.Dataset):
    """CacheDataset's items with the row's tokens (tokenized as the cache did)."""

    def __init__(self):
        self.cached = CacheDataset(cache)

    def __len__(self):
        return len(self.cached)

    def __getitem__(self, i):
        item = dict(self.cached[i])
        item["input_ids"] = torch.tensor(tokens(rows[item["row"]]))
        return item


def collator(items):
    batch = collate(items)
    n = max(len(it["input_ids"]) for it in items)
    batch["input_ids"] = torch.zeros(len(items), n, dtype=torch.long)
    batch["attention_mask"] = torch.zeros(len(items), n, dtype=torch.long)
    for j, it in enumerate(items):
        batch["input_ids"][j, : len(it["input_ids"])] = it["input_ids"]
        batch["attention_mask"][j, : len(it["input_ids"])] = 1
    return batch


def kd_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[batch["at"][:, 0], batch["at"][:, 1]][:, : m["vocab_size"]]
    return distillation_loss(logits, batch, m["temperature"], alpha=0.5)[0]


class DistillTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = kd_loss(model, inputs)
        return (loss, None) if return_outputs else loss


class Print(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            print(json.dumps({"step": state.global_step, "loss": logs["loss"]}), flush=True)


torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=m["vocab_size"], hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1,
                                     max_position_embeddings=text["max_seq_len"], tie_word_embeddings=True))
args = TrainingArguments(output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=4, learning_rate=1e-3,
                         logging_steps=1, save_strategy="no", report_to=[], remove_unused_columns=False,
                         dataloader_drop_last=True, use_cpu=True, seed=0, disable_tqdm=True)
trainer = DistillTrainer(model=model, args=args, train_dataset=Rows(), data_collator=collator, callbacks=[Print()])
first = next(iter(trainer.get_train_dataloader()))
with torch.no_grad():
    by_hand = kd_loss(model, first).item()
    in_trainer = trainer.compute_loss(model, first).item()
assert abs(by_hand - in_trainer) <= 1e-6 * abs(by_hand), (by_hand, in_trainer)
print(json.dumps({"first_batch_loss": by_hand}), flush=True)
trainer.train()

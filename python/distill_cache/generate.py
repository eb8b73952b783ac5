"""On-policy distillation's first step: a Hugging Face student writes completions of a
prompts' dataset with transformers' `generate`, in the layout of distill's generated
dataset, so `distill cache-teacher --token-ids` can have the teacher score them.

In: a model directory (`from_pretrained`: weights, config, tokenizer) and prompts (a JSONL
or Parquet file, one prompt per row in `--prompt-column`). Out: `OUT/generated.parquet`, one
row per (row, sample) in that order: `prompt` (the text), `completion` (the generated text,
without the end token), `prompt_ids` (the tokenizer's ids of the prompt, its special tokens
as the tokenizer adds them), `completion_ids` (the generated ids, with the end token where
the sequence stopped at one), `stop_reason` (`eos` or `length`), `row`, `sample`, and
`completion_logprobs` (the student's log-prob at temperature 1 of each completion token:
the log-softmax of the raw logits, before temperature and top-p).

    python -m distill_cache.generate --model student/ --data prompts.jsonl --out gen \\
        --max-new-tokens 64 --temperature 1 --samples-per-prompt 2
    distill cache-teacher --teacher teacher.onnx --tokenizer tokenizer.json \\
        --data gen/generated.parquet --prompt-column prompt_ids --completion-column completion_ids \\
        --token-ids --out gen/cache

Unlike `distill generate`, whose draws are seeded by (row, sample, step), the draws here
follow torch's generator from `--seed`, so they depend on `--batch-size`.
"""
import argparse
import json
import os
import sys
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import torch

GENERATED = "generated.parquet"


def _ids():
    """`List<UInt32>` as distill writes it (items named `item`, not nullable)."""
    return pa.list_(pa.field("item", pa.uint32(), nullable=False))


#: The generated dataset's columns: distill generate's, and the student's log-probs.
SCHEMA = pa.schema([
    pa.field("prompt", pa.utf8(), nullable=False),
    pa.field("completion", pa.utf8(), nullable=False),
    pa.field("prompt_ids", _ids(), nullable=False),
    pa.field("completion_ids", _ids(), nullable=False),
    pa.field("stop_reason", pa.utf8(), nullable=False),
    pa.field("row", pa.uint64(), nullable=False),
    pa.field("sample", pa.uint32(), nullable=False),
    pa.field("completion_logprobs", pa.list_(pa.field("item", pa.float32(), nullable=False)), nullable=False),
])


def read_prompts(path, column="prompt"):
    """The prompts of a JSONL or Parquet file, in row order: one string per row of `column`."""
    if str(path).endswith(".parquet"):
        table = pq.read_table(path)
        if column not in table.column_names:
            raise ValueError(f"{path}: no column `{column}` (columns: {', '.join(table.column_names)})")
        values = table.column(column).to_pylist()
    else:
        values = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if column not in row:
                    raise ValueError(f"{path}:{line_no}: no key `{column}` (keys: {', '.join(row)})")
                values.append(row[column])
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ValueError(f"{path}: row {i}: `{column}` is {type(v).__name__}, expected a string")
    return values


def eos_ids_of(model, tokenizer, eos_id=None):
    """The ids that end a sequence: `eos_id` (an int or a list) if given, else the model's
    generation config's, else the tokenizer's end token; [] when none is known."""
    ids = eos_id
    if ids is None:
        ids = getattr(model.generation_config, "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return []
    return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]


def _token_logprobs(new, logits):
    """The log-softmax of the raw logits at each generated token, one step at a time.

    # Shapes
    - `new`: `[b, steps]`, `logits`: `steps` of `[b, vocab]`; returns `[b, steps]`"""
    return torch.stack([torch.log_softmax(l.float(), -1).gather(1, new[:, s, None])[:, 0] for s, l in enumerate(logits)], 1)


def _completion(new_ids, logprobs, eos_ids):
    """One sequence's generated ids and their log-probs cut after its first end token (the
    rest is padding), and why it stopped.

    # Shapes
    - `new_ids`, `logprobs`: `[steps]`"""
    ids = new_ids.tolist()
    stop = next((j for j, t in enumerate(ids) if t in eos_ids), None)
    n = len(ids) if stop is None else stop + 1
    return ids[:n], logprobs[:n].tolist(), "length" if stop is None else "eos"


@torch.no_grad()
def generate(model, tokenizer, prompts, max_new_tokens=64, temperature=1.0, top_p=1.0, samples_per_prompt=1, seed=0,
             eos_id=None, batch_size=8):
    """The student's completions of `prompts` (strings), as a pyarrow Table of SCHEMA: one
    row per (prompt, sample) in that order. Greedy when `temperature` is 0; else sampled at
    `temperature` within the top-`top_p` nucleus (no top-k cut). `batch_size` prompts are
    decoded together, left-padded."""
    from transformers import GenerationConfig

    if temperature < 0 or not 0 < top_p <= 1 or samples_per_prompt < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError("need temperature >= 0, 0 < top_p <= 1, and samples_per_prompt, max_new_tokens, batch_size >= 1")
    if temperature == 0 and samples_per_prompt > 1:
        raise ValueError("greedy decoding (temperature 0) gives one sample per prompt; use a temperature above 0")
    eos_ids = eos_ids_of(model, tokenizer, eos_id)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None and not eos_ids:
            raise ValueError("the tokenizer has no pad or end token to pad batched prompts with; give --eos-id")
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(eos_ids[0])
    greedy = temperature == 0
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    config = GenerationConfig(  # all of it here: none of the model directory's sampling defaults apply
        **sampling, max_new_tokens=max_new_tokens, num_return_sequences=samples_per_prompt,
        eos_token_id=eos_ids or None, pad_token_id=tokenizer.pad_token_id,
        output_logits=True, return_dict_in_generate=True)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    columns = {f.name: [] for f in SCHEMA}
    for start in range(0, len(prompts), batch_size):
        texts = prompts[start:start + batch_size]
        batch = tokenizer(texts, padding=True, return_tensors="pt")  # left-padded
        prompt_ids = [ids[m.bool()].tolist() for ids, m in zip(batch["input_ids"], batch["attention_mask"])]
        for p, ids in enumerate(prompt_ids):
            if not ids:
                raise ValueError(f"row {start + p}: the prompt {texts[p]!r} tokenizes to no ids")
        batch = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        out = model.generate(**batch, generation_config=config, use_model_defaults=False)
        new = out.sequences[:, batch["input_ids"].shape[1]:]  # [b * samples, steps]
        logprobs = _token_logprobs(new, out.logits).cpu()  # [b * samples, steps]
        new = new.cpu()
        for j in range(new.shape[0]):
            p = j // samples_per_prompt
            ids, lps, stop = _completion(new[j], logprobs[j], eos_ids)
            end = len(ids) - (stop == "eos")
            columns["prompt"].append(texts[p])
            columns["completion"].append(tokenizer.decode(ids[:end], skip_special_tokens=True))
            columns["prompt_ids"].append(prompt_ids[p])
            columns["completion_ids"].append(ids)
            columns["stop_reason"].append(stop)
            columns["row"].append(start + p)
            columns["sample"].append(j % samples_per_prompt)
            columns["completion_logprobs"].append(lps)
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def write_generated(table, out_dir):
    """`table` as `out_dir/generated.parquet` (zstd), written to a temporary file beside it
    and renamed over it, so a reader sees the old file or the whole new one. Returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, GENERATED)
    fd, tmp = tempfile.mkstemp(prefix=f".{GENERATED}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f, compression="zstd", compression_level=3)  # as distill writes it
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def main(argv=None):
    """python -m distill_cache.generate: load, generate, write; prints the output's path and counts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = argparse.ArgumentParser(prog="python -m distill_cache.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a Hugging Face model directory (weights, config, tokenizer)")
    p.add_argument("--data", required=True, help="prompts: a .jsonl or .parquet file")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--out", required=True, help="directory for generated.parquet")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 decodes greedily")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--samples-per-prompt", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eos-id", type=int, action="append", help="an id that ends a sequence (repeatable); "
                                                                "default: the model's generation config's")
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    try:
        prompts = read_prompts(a.data, a.prompt_column)
        tokenizer = AutoTokenizer.from_pretrained(a.model)
        model = AutoModelForCausalLM.from_pretrained(a.model).to(a.device).eval()
        table = generate(model, tokenizer, prompts, a.max_new_tokens, a.temperature, a.top_p, a.samples_per_prompt,
                         a.seed, a.eos_id, a.batch_size)
        path = write_generated(table, a.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stopped = sum(s == "eos" for s in table.column("stop_reason").to_pylist())
    print(json.dumps({"out": path, "sequences": table.num_rows, "stopped_at_eos": stopped}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

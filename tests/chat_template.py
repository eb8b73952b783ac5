"""Chat data: distill renders and tokenizes conversations exactly like Hugging Face transformers.

The reference is `AutoTokenizer` over data/lm/tokenizer.json + data/chat/tokenizer_config.json
(a Zephyr-style chat template whose assistant turns are inside `{% generation %}`):
for each conversation of data/chat/train.jsonl,
`apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)`
gives the token ids and the assistant mask. Position p predicts token p + 1, so
- `--positions all` must cache every p in 0..len(ids)-2 with hard label ids[p+1]
  (hence distill's ids equal transformers' past the first, which must be `<|bos|>`);
- `--positions assistant` must cache exactly the p with mask[p+1] == 1, same labels;
- the same dataset as Parquet (data/chat/train.parquet) must give the same cache;
- a conversation with a role the template rejects ("tool") must fail with the template's
  `raise_exception` message.

Usage: python tests/chat_template.py path/to/distill   (torch, transformers 4.57, pyarrow here;
distill finds ONNX Runtime itself).
"""
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict

import pyarrow.parquet as pq
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTILL = os.path.abspath(sys.argv[1])
TEACHER = os.path.join(ROOT, "data/lm/teacher.onnx")
TOKENIZER = os.path.join(ROOT, "data/lm/tokenizer.json")
CONFIG = os.path.join(ROOT, "data/chat/tokenizer_config.json")
TRAIN_JSONL = os.path.join(ROOT, "data/chat/train.jsonl")
TRAIN_PARQUET = os.path.join(ROOT, "data/chat/train.parquet")
PROMPT_COMPLETION = os.path.join(ROOT, "data/chat/prompt_completion.jsonl")
TOL = 1e-5  # float columns of two caches of the same data


class Mismatch(Exception):
    pass


def distill_cache(data, positions, out, fail=False):
    """Run `distill cache-teacher` on chat data; return stderr (fail=True: it must fail)."""
    args = ["cache-teacher", "--teacher", TEACHER, "--tokenizer", TOKENIZER, "--chat-template", CONFIG,
            "--data", data, "--messages-column", "messages", "--positions", positions, "--top-k", "4",
            "--temperature", "2", "--max-seq-len", "2048", "--out", out, "--quiet"]
    p = subprocess.run([DISTILL, *args], capture_output=True, text=True)
    command = "distill " + " ".join(args)
    if fail:
        if p.returncode == 0:
            raise Mismatch(f"expected failure, got success: {command}\n{p.stdout}{p.stderr}")
    elif p.returncode != 0:
        raise Mismatch(f"{command} failed (exit {p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stderr


def read_cache(out):
    """{row: [(position, hard_label), ...] by position} and {row: {position: full record}}."""
    files = sorted(glob.glob(os.path.join(out, "shard-*.parquet")))
    if not files:
        raise Mismatch(f"no shard-*.parquet in {out}")
    pairs, records = defaultdict(list), defaultdict(dict)
    for f in files:
        for rec in pq.read_table(f).to_pylist():
            row, pos = int(rec["row"]), int(rec["position"])
            if pos in records[row]:
                raise Mismatch(f"{out}: row {row} position {pos} cached twice")
            records[row][pos] = rec
            pairs[row].append((pos, rec["hard_label"]))
    return {row: sorted(v) for row, v in pairs.items()}, records


def context(tok, ids, mask, p, width=8):
    """The tokens around position p (p predicts ids[p + 1]), assistant tokens in [brackets]."""
    lo, hi = max(0, p - width), min(len(ids), p + width + 2)
    pieces = []
    for i in range(lo, hi):
        piece = repr(tok.decode([ids[i]]))[1:-1]
        piece = f"[{piece}]" if mask[i] else piece
        pieces.append(f">>{piece}<<" if i == p + 1 else piece)
    return f"tokens {lo}..{hi - 1} (>>next<< is ids[{p + 1}], [..] = assistant mask):\n  " + " ".join(pieces) + \
        f"\n  text: {tok.decode(ids[lo:p + 1])!r} + {tok.decode(ids[p + 1:p + 2])!r} + {tok.decode(ids[p + 2:hi])!r}"


def compare(tok, name, row, expected, got, ids, mask):
    """Raise naming the row, the first differing position and the text around it."""
    if got == expected:
        return
    i = next((i for i, (e, g) in enumerate(zip(expected, got)) if e != g), min(len(expected), len(got)))
    e = expected[i] if i < len(expected) else None
    g = got[i] if i < len(got) else None
    p = min(x[0] for x in (e, g) if x is not None)
    raise Mismatch(
        f"{name}: row {row}: first difference at entry {i}, position {p}: expected (position, hard_label) "
        f"{e}, distill has {g} ({len(expected)} positions expected, {len(got)} cached)\n"
        + (context(tok, ids, mask, p) if p < len(ids) - 1 else f"  (position {p} is past the last one, {len(ids) - 2})"))


def same_cache(name, a, b):
    """Every column of every cached position of `b` equals `a`'s (floats within TOL)."""
    for row in sorted(set(a) | set(b)):
        if set(a.get(row, {})) != set(b.get(row, {})):
            raise Mismatch(f"{name}: row {row}: cached positions differ")
        for pos, ra in a[row].items():
            rb = b[row][pos]
            for col in sorted(set(ra) | set(rb)):
                x, y = ra.get(col), rb.get(col)
                if isinstance(x, float) and isinstance(y, float):
                    ok = (x == y) or (math.isfinite(x) and math.isfinite(y) and abs(x - y) <= TOL)
                elif isinstance(x, list) and isinstance(y, list) and x and isinstance(x[0], float):
                    ok = len(x) == len(y) and all(abs(u - v) <= TOL for u, v in zip(x, y))
                else:
                    ok = x == y
                if not ok:
                    raise Mismatch(f"{name}: row {row} position {pos} column {col!r}: {x!r} vs {y!r}")


def main():
    work = tempfile.mkdtemp(prefix="distill-chat-")
    try:
        hf = os.path.join(work, "hf-tokenizer")
        os.makedirs(hf)
        shutil.copy(TOKENIZER, os.path.join(hf, "tokenizer.json"))
        shutil.copy(CONFIG, os.path.join(hf, "tokenizer_config.json"))
        tok = AutoTokenizer.from_pretrained(hf)
        bos, eos = tok.bos_token_id, tok.eos_token_id

        # ---- transformers' side: ids, assistant masks, expected cached positions
        rows = [json.loads(line) for line in open(TRAIN_JSONL, encoding="utf-8")]
        ids_of, mask_of, want_all, want_assistant = [], [], [], []
        for r, row in enumerate(rows):
            messages = row["messages"]
            out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
            # The fixture is what it claims: Zephyr turns, one mask run per assistant turn ending at its eos.
            text = tok.apply_chat_template(messages, tokenize=False)
            zephyr = tok.bos_token + "".join(f"<|{m['role']}|>\n{m['content']}{tok.eos_token}\n" for m in messages)
            runs = [i for i in range(len(mask)) if mask[i] and (i + 1 == len(mask) or not mask[i + 1])]
            turns = sum(m["role"] == "assistant" for m in messages)
            if text != zephyr or ids[0] != bos or len(runs) != turns or any(ids[i] != eos for i in runs) or mask[0]:
                raise Mismatch(f"row {r}: transformers' rendering/mask is not as this test assumes: {text!r}, "
                               f"{len(runs)} assistant runs for {turns} assistant turns")
            ids_of.append(ids)
            mask_of.append(mask)
            want_all.append([(p, ids[p + 1]) for p in range(len(ids) - 1)])
            want_assistant.append([(p, ids[p + 1]) for p in range(len(ids) - 1) if mask[p + 1] == 1])

        # ---- distill's side
        out1, out2, out3 = (os.path.join(work, n) for n in ("assistant-jsonl", "all-jsonl", "assistant-parquet"))
        distill_cache(TRAIN_JSONL, "assistant", out1)
        distill_cache(TRAIN_JSONL, "all", out2)
        distill_cache(TRAIN_PARQUET, "assistant", out3)
        got1, rec1 = read_cache(out1)
        got2, _ = read_cache(out2)
        got3, rec3 = read_cache(out3)
        for name, got in [("--positions all", got2), ("--positions assistant", got1), ("parquet --positions assistant", got3)]:
            extra = sorted(set(got) - set(range(len(rows))))
            if extra:
                raise Mismatch(f"{name}: cached rows {extra[:5]} are not rows of the dataset ({len(rows)} rows)")
        for r in range(len(rows)):
            compare(tok, "--positions all", r, want_all[r], got2.get(r, []), ids_of[r], mask_of[r])
        for r in range(len(rows)):
            compare(tok, "--positions assistant", r, want_assistant[r], got1.get(r, []), ids_of[r], mask_of[r])
        for r in range(len(rows)):
            compare(tok, "parquet --positions assistant", r, want_assistant[r], got3.get(r, []), ids_of[r], mask_of[r])
        same_cache("parquet vs jsonl (--positions assistant)", rec1, rec3)

        # ---- a role the template rejects
        bad = os.path.join(work, "tool.jsonl")
        messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "tool", "content": "4"},
                    {"role": "assistant", "content": "It is 4."}]
        with open(bad, "w", encoding="utf-8") as f:
            f.write(json.dumps({"messages": messages}) + "\n")
        try:
            tok.apply_chat_template(messages, tokenize=False)
            raise Mismatch("transformers accepted a 'tool' turn: the template should raise")
        except Mismatch:
            raise
        except Exception as e:  # jinja2's TemplateError, with the template's message
            message = str(e)
        stderr = distill_cache(bad, "assistant", os.path.join(work, "tool-out"), fail=True)
        if message not in stderr:
            raise Mismatch(f"distill failed on a 'tool' turn, but its stderr lacks the template's message "
                           f"{message!r}:\n{stderr}")

        # ---- conversational prompt/completion (TRL): completion positions start where the
        # prompt rendered with the generation prompt ends (TRL's completion_mask)
        pc_rows = [json.loads(line) for line in open(PROMPT_COMPLETION, encoding="utf-8")]
        want_pc = []
        for r, row in enumerate(pc_rows):
            prompt_ids = list(tok.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True))
            ids = list(tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True))
            if ids[:len(prompt_ids)] != prompt_ids:
                raise Mismatch(f"prompt_completion row {r}: the prompt's tokens are not a prefix of the conversation's")
            want_pc.append([(p, ids[p + 1]) for p in range(len(prompt_ids) - 1, len(ids) - 1)])
        out4 = os.path.join(work, "prompt-completion")
        args = ["cache-teacher", "--teacher", TEACHER, "--tokenizer", TOKENIZER, "--chat-template", CONFIG,
                "--data", PROMPT_COMPLETION, "--prompt-column", "prompt", "--completion-column", "completion",
                "--top-k", "4", "--temperature", "2", "--max-seq-len", "2048", "--out", out4, "--quiet"]
        p = subprocess.run([DISTILL, *args], capture_output=True, text=True)
        if p.returncode != 0:
            raise Mismatch(f"distill {' '.join(args)} failed:\n{p.stderr}")
        got4, _ = read_cache(out4)
        for r in range(len(pc_rows)):
            if got4.get(r, []) != want_pc[r]:
                raise Mismatch(f"prompt_completion row {r}: cached (position, next token) {got4.get(r, [])[:4]}... "
                               f"vs transformers {want_pc[r][:4]}...")

        # ---- generate from conversations: the prompt is the conversation rendered with the
        # generation prompt, tokenized as transformers does (add_generation_prompt=True)
        convs = os.path.join(work, "conversations.jsonl")
        with open(convs, "w", encoding="utf-8") as f:
            for row in pc_rows:
                f.write(json.dumps({"messages": row["prompt"]}) + "\n")
        gen = os.path.join(work, "generated")
        args = ["generate", "--teacher", TEACHER, "--tokenizer", TOKENIZER, "--chat-template", CONFIG, "--data", convs,
                "--messages-column", "messages", "--max-new-tokens", "4", "--top-k", "4", "--max-seq-len", "2048",
                "--out", gen, "--quiet"]
        p = subprocess.run([DISTILL, *args], capture_output=True, text=True)
        if p.returncode != 0:
            raise Mismatch(f"distill {' '.join(args)} failed:\n{p.stderr}")
        generated = pq.read_table(os.path.join(gen, "generated.parquet")).to_pylist()
        for r, row in enumerate(pc_rows):
            want = list(tok.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True))
            if generated[r]["prompt_ids"] != want:
                raise Mismatch(f"generate row {r}: prompt ids {generated[r]['prompt_ids'][:8]}... vs transformers' "
                               f"{want[:8]}... (add_generation_prompt=True)")

        n_all = sum(map(len, want_all))
        n_assistant = sum(map(len, want_assistant))
        print(f"chat template: {len(rows)} rows, {n_all} positions (--positions all) and {n_assistant} "
              f"(--positions assistant, {n_assistant / n_all:.1%}) equal to transformers' tokens and assistant "
              f"mask; Parquet input gives the same cache; {len(pc_rows)} conversational prompt/completion rows "
              f"({sum(map(len, want_pc))} completion positions) as TRL masks them; generate's prompts from "
              f"{len(pc_rows)} conversations tokenized as add_generation_prompt=True; a 'tool' turn fails with {message!r}")
    except Mismatch as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Hugging Face round trip, against real `transformers` + PyTorch (run by .ci/test).

For a Llama-style causal LM and a BERT sequence classifier:
1. build a small model from a transformers config (random weights, seed 0) and
   save_pretrained it with the project's tokenizer (the Llama one ties its embeddings and
   pads its vocabulary past the tokenizer's, as Qwen/Llama checkpoints often do);
2. `distill predict` runs it in Burn: logits must equal PyTorch's on the same tokens
   (max abs diff <= 1e-4);
3. `distill train-student --student hf:DIR` trains it a few steps from a real cache made by
   `distill cache-teacher`; the run writes RUN/hf, which AutoModelFor*.from_pretrained
   loads: its logits must equal Burn's (`distill predict --student RUN`) within 1e-4,
   and differ from the starting model's (it trained);
4. mismatches are refused: a vocabulary smaller than the cache's, another tokenizer;
5. the decoder families people distil into, each built from a config shaped like the real
   model's (SmolLM2: 9 heads over 3 K/V heads, tied; Llama-3.2: GQA, explicit head_dim,
   llama3 rope scaling, tied; Qwen2.5: Q/K/V biases, tied; Qwen3: head_dim * heads !=
   hidden_size, per-head Q/K norms, tied; Mistral: a sliding window shorter than the rows;
   Llama with yarn, linear and dynamic rope scaling; a bf16 checkpoint in shards): Burn's
   logits equal PyTorch's, `distill generate --student` (greedy, batched, KV cache) equals
   transformers' `generate` token for token with the same log-probs, and a trained Qwen3
   and Mistral come back from RUN/hf in their own model_type with equal logits.

Usage: python tests/hf_roundtrip.py path/to/distill   (needs onnxruntime for the `python3`
on PATH, which distill uses to find ONNX Runtime; torch, transformers, pyarrow here).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig, BertModel,
                          DistilBertConfig, DistilBertForSequenceClassification,
                          BertForSequenceClassification, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTILL = os.path.abspath(sys.argv[1])
TOL = 1e-4
torch.manual_seed(0)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


def distill(*args, fail=False):
    p = subprocess.run([DISTILL, *map(str, args)], capture_output=True, text=True)
    if fail:
        assert p.returncode != 0, f"expected failure: {args}\n{p.stdout}"
        return p.stderr
    assert p.returncode == 0, f"distill {' '.join(map(str, args))} failed:\n{p.stderr}"
    return p.stdout + p.stderr


def generates_as_transformers(name, cls, d):
    """`distill generate --student d` (greedy, 3 prompts to a batch, so rows are padded, and
    through the KV cache) equals transformers' greedy `generate` of each prompt alone token
    for token, stopping at the same end token; each `completion_logprobs` entry equals the
    log-softmax of the logits transformers chose that token from, within 1e-4. The end id
    is a token the model writes early on the first prompt, so one row stops there. A fresh
    model per prompt: dynamic rope scaling keeps state between generate calls."""
    prompts = os.path.join(work, f"{name}-prompts.jsonl")
    with open(lm_rows) as f, open(prompts, "w") as out:
        for line in list(f)[:5]:
            out.write(json.dumps({"prompt": json.loads(line)["prompt"]}) + "\n")

    def hf_greedy(ids, eos):
        model = cls.from_pretrained(d).eval()
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=40, do_sample=False, eos_token_id=eos, pad_token_id=0,
                                 output_logits=True, return_dict_in_generate=True)
        new = out.sequences[0, len(ids):].tolist()
        return new, [float(torch.log_softmax(z[0].double(), -1)[t]) for z, t in zip(out.logits, new)]

    def run(eos):
        out = os.path.join(work, f"{name}-generated-{eos}")
        distill("generate", "--student", d, "--data", prompts, "--out", out, "--max-new-tokens", 40, "--temperature", 0,
                "--batch-size", 3, "--eos-id", eos, "--quiet")
        return pq.read_table(f"{out}/generated.parquet").to_pylist()

    first = run(0)
    eos = first[0]["completion_ids"][5]
    rows = run(eos)
    worst, stopped = 0.0, 0
    for r in rows:
        want, logprobs = hf_greedy(r["prompt_ids"], eos)
        assert r["completion_ids"] == want, f"{name}: row {r['row']}: distill {r['completion_ids']} vs transformers {want}"
        worst = max([worst] + [abs(a - b) for a, b in zip(r["completion_logprobs"], logprobs)])
        stopped += r["stop_reason"] == "eos"
    assert stopped >= 1 and rows[0]["stop_reason"] == "eos", [r["stop_reason"] for r in rows]
    check(f"{name}: generate --student greedy = transformers' generate ({len(rows)} prompts, {stopped} stop at the end id); "
          "completion_logprobs max abs diff", worst, TOL)


def predicted(path):
    return [json.loads(line) for line in open(path)]


def torch_logits(model, tokens, kind):
    # Dynamic NTK rope scaling keeps the frequencies of the longest row seen so far: reset
    # them, so each row is computed as if alone (as distill computes every row).
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is not None and getattr(rotary, "rope_type", "") == "dynamic":
        rotary.inv_freq = rotary.original_inv_freq
        rotary.max_seq_len_cached = rotary.original_max_seq_len
    ids = torch.tensor([tokens])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    return out.numpy()  # [len, vocab] (LM) or [classes]


def max_diff(model, rows, kind):
    return max(float(np.abs(np.asarray(r["logits"], np.float32) - torch_logits(model, r["tokens"], kind)).max()) for r in rows)


def as_json(out):
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def check(name, value, limit):
    print(f"{name}: {value:.3g} (limit {limit:g})")
    assert value <= limit, f"{name} = {value} > {limit}"


work = tempfile.mkdtemp(prefix="distill-hf-")
try:
    # ---------------------------------------------------------------- Llama
    lm_rows = os.path.join(work, "lm.jsonl")
    with open(os.path.join(ROOT, "data/lm/train.jsonl")) as f, open(lm_rows, "w") as out:
        for line in list(f)[:48]:
            out.write(line)
    cache = os.path.join(work, "lm-cache")
    distill("cache-teacher", "--teacher", f"{ROOT}/data/lm/teacher.onnx", "--tokenizer", f"{ROOT}/data/lm/tokenizer.json",
            "--data", lm_rows, "--prompt-column", "prompt", "--completion-column", "completion", "--top-k", 16,
            "--temperature", 2, "--max-seq-len", 128, "--out", cache, "--quiet")
    vocab = 4096
    cfg = LlamaConfig(vocab_size=vocab + 64, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, tie_word_embeddings=True)
    llama = LlamaForCausalLM(cfg).eval()
    hf_in = os.path.join(work, "llama-in")
    llama.save_pretrained(hf_in)
    shutil.copy(f"{ROOT}/data/lm/tokenizer.json", hf_in)

    distill("predict", "--student", hf_in, "--data", lm_rows, "--out", f"{work}/llama-before.jsonl", "--max-rows", 6,
            "--max-seq-len", 128)
    before = predicted(f"{work}/llama-before.jsonl")
    check("llama: Burn vs PyTorch, loaded checkpoint, max abs logit diff", max_diff(llama, before, "lm"), TOL)

    run = os.path.join(work, "llama-run")
    log = distill("train-student", "--cache", cache, "--data", lm_rows, "--student", f"hf:{hf_in}", "--out", run,
                  "--steps", 4, "--batch-size", 8, "--lr", 3e-3, "--alpha", 0.5, "--quiet")
    assert "padded past the cache's" in log and "ties lm_head" in log, log
    trained = AutoModelForCausalLM.from_pretrained(f"{run}/hf").eval()
    assert trained.config.vocab_size == vocab + 64
    distill("predict", "--student", run, "--data", lm_rows, "--out", f"{work}/llama-after.jsonl", "--max-rows", 6)
    after = predicted(f"{work}/llama-after.jsonl")
    check("llama: Burn vs PyTorch, exported after 4 steps, max abs logit diff", max_diff(trained, after, "lm"), TOL)
    moved = max(float(np.abs(np.asarray(a["logits"]) - np.asarray(b["logits"])).max()) for a, b in zip(after, before))
    print(f"llama: logits moved by training: {moved:.3g}")
    assert moved > 1e-2, "training did not change the exported model"
    assert os.path.isfile(f"{run}/hf/tokenizer.json")
    print("llama: eval", distill("eval", "--student", run, "--data", lm_rows).strip())
    # eval of a pretrained checkpoint on plain text (every next token) is transformers'
    # perplexity on the same tokens.
    text_rows = os.path.join(work, "text.jsonl")
    with open(lm_rows) as f, open(text_rows, "w") as out:
        for line in f:
            r = json.loads(line)
            out.write(json.dumps({"text": r["prompt"] + r["completion"]}) + "\n")
    got = as_json(distill("eval", "--student", hf_in, "--data", text_rows, "--max-seq-len", 128, "--json"))
    distill("predict", "--student", hf_in, "--data", text_rows, "--out", f"{work}/text-logits.jsonl", "--max-seq-len", 128)
    nll, n = 0.0, 0
    for r in predicted(f"{work}/text-logits.jsonl"):
        logp = torch.log_softmax(torch.tensor(torch_logits(llama, r["tokens"], "lm"))[:, :vocab + 64], -1)
        t = r["tokens"]
        nll -= sum(float(logp[p, t[p + 1]]) for p in range(len(t) - 1))
        n += len(t) - 1
    want = float(np.exp(nll / n))
    print(f"llama: eval of the pretrained checkpoint {got}, transformers' perplexity {want:.4f} over {n} positions")
    assert got["positions"] == n and abs(got["perplexity"] - want) <= 1e-4 * want, (got, want)
    # eval reads a checkpoint as the cache read the data: the run and its export score alike,
    # and the teacher's figures come beside.
    a = as_json(distill("eval", "--student", run, "--data", lm_rows, "--cache", cache, "--json"))
    b = as_json(distill("eval", "--student", f"{run}/hf", "--data", lm_rows, "--cache", cache, "--json"))
    print("llama: eval of the run", a, "and of its export", b)
    assert a["positions"] == b["positions"] and abs(a["perplexity"] - b["perplexity"]) <= 1e-4 * a["perplexity"], (a, b)
    assert "teacher" in b and b["teacher"]["positions"] == b["positions"], b

    # Refusals: a vocabulary smaller than the cache's, another tokenizer.
    small = os.path.join(work, "llama-small")
    LlamaForCausalLM(LlamaConfig(vocab_size=4000, hidden_size=64, intermediate_size=172, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(small)
    err = distill("train-student", "--cache", cache, "--data", lm_rows, "--student", f"hf:{small}", "--out",
                  f"{work}/r1", "--steps", 1, fail=True)
    assert "vocab_size is 4000" in err and "up to 4095" in err, err
    other_tok = os.path.join(work, "llama-other-tok")
    shutil.copytree(hf_in, other_tok)
    shutil.copy(f"{ROOT}/data/textcls/tokenizer.json", f"{other_tok}/tokenizer.json")
    err = distill("train-student", "--cache", cache, "--data", lm_rows, "--student", f"hf:{other_tok}", "--out",
                  f"{work}/r2", "--steps", 1, fail=True)
    assert "is not the cache's" in err, err
    print("llama: refusals ok")

    # ------------------------------------------------- the decoder families people distil into
    common = dict(vocab_size=vocab, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6)
    families = {
        "smollm2": (LlamaForCausalLM, LlamaConfig(hidden_size=72, num_attention_heads=9, num_key_value_heads=3,
                                                  tie_word_embeddings=True, rope_theta=100000.0, **common)),
        "llama3.2": (LlamaForCausalLM, LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                   tie_word_embeddings=True, rope_theta=500000.0,
                                                   rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                                 "high_freq_factor": 4.0,
                                                                 "original_max_position_embeddings": 32}, **common)),
        "qwen2.5": (Qwen2ForCausalLM, Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                                  tie_word_embeddings=True, rope_theta=1000000.0, use_sliding_window=False,
                                                  **common)),
        "qwen3": (Qwen3ForCausalLM, Qwen3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                                tie_word_embeddings=True, rope_theta=1000000.0, **common)),
        "mistral": (MistralForCausalLM, MistralConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                                                      sliding_window=16, **common)),
        "llama-yarn": (LlamaForCausalLM, LlamaConfig(hidden_size=64, num_attention_heads=4,
                                                     rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                                   "original_max_position_embeddings": 32}, **common)),
        "llama-linear": (LlamaForCausalLM, LlamaConfig(hidden_size=64, num_attention_heads=4,
                                                       rope_scaling={"type": "linear", "factor": 2.0}, **common)),
        "llama-dynamic": (LlamaForCausalLM, LlamaConfig(hidden_size=64, num_attention_heads=4,
                                                        **{**common, "max_position_embeddings": 48},
                                                        rope_scaling={"type": "dynamic", "factor": 2.0})),
    }
    def peaked(model):
        # transformers initialises weights with std 0.02: attention is then nearly uniform
        # and the logits tiny, so a wrong rotary table or mask would hardly show. Larger
        # weights make attention peaked and the logits of order 1-10.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 1.5 / p.shape[1] ** 0.5)
                elif n.endswith("bias"):
                    p.normal_(0.0, 0.5)
                else:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
        return model

    for name, (cls, cfg) in families.items():
        model = peaked(cls(cfg)).eval()
        d = os.path.join(work, name)
        model.save_pretrained(d)
        shutil.copy(f"{ROOT}/data/lm/tokenizer.json", d)
        out = f"{work}/{name}.jsonl"
        distill("predict", "--student", d, "--data", lm_rows, "--out", out, "--max-rows", 6, "--max-seq-len", 128)
        rows = predicted(out)
        assert max(len(r["tokens"]) for r in rows) > 32, "rows longer than the sliding window and original contexts"
        check(f"{name}: Burn vs PyTorch, loaded checkpoint, max abs logit diff", max_diff(model, rows, "lm"), TOL)
        generates_as_transformers(name, cls, d)

    # bf16 weights in two shards: read as f32, the same function as PyTorch's in f32 of them.
    bf16 = os.path.join(work, "qwen3-bf16")
    peaked(Qwen3ForCausalLM(families["qwen3"][1])).to(torch.bfloat16).save_pretrained(bf16, max_shard_size="300KB")
    shutil.copy(f"{ROOT}/data/lm/tokenizer.json", bf16)
    assert os.path.isfile(f"{bf16}/model.safetensors.index.json"), os.listdir(bf16)
    distill("predict", "--student", bf16, "--data", lm_rows, "--out", f"{work}/bf16.jsonl", "--max-rows", 6)
    f32_of_bf16 = AutoModelForCausalLM.from_pretrained(bf16, torch_dtype=torch.float32).eval()
    check("qwen3 bf16 sharded: Burn vs PyTorch (f32 of the bf16 weights)", max_diff(f32_of_bf16, predicted(f"{work}/bf16.jsonl"), "lm"),
          TOL)

    # Exported in the dtype it came in (bf16), or in --export-dtype.
    for flag, want in [([], "bfloat16"), (["--export-dtype", "f32"], "float32")]:
        run = os.path.join(work, f"bf16-run-{want}")
        distill("train-student", "--cache", cache, "--data", lm_rows, "--student", f"hf:{bf16}", "--out", run, "--steps", 2,
                "--batch-size", 8, "--quiet", *flag)
        exported = json.load(open(f"{run}/hf/config.json"))
        assert exported.get("torch_dtype") == want, exported
        from safetensors import safe_open
        with safe_open(f"{run}/hf/model.safetensors", "pt") as f:
            got = str(f.get_tensor("model.embed_tokens.weight").dtype)
        assert got == f"torch.{want}", got
        distill("predict", "--student", f"{run}/hf", "--data", lm_rows, "--out", f"{run}.jsonl", "--max-rows", 4)
        back = AutoModelForCausalLM.from_pretrained(f"{run}/hf", torch_dtype=torch.float32).eval()
        check(f"exported {want}: Burn vs PyTorch, max abs logit diff", max_diff(back, predicted(f"{run}.jsonl"), "lm"), TOL)

    # init-student: blocks copied from a larger checkpoint of the same family. Every block
    # copied gives the teacher's logits; blocks 0 and 3 of 4 give its first block's output.
    teacher4 = peaked(Qwen3ForCausalLM(Qwen3Config(**{**families["qwen3"][1].to_dict(), "num_hidden_layers": 4,
                                                      "layer_types": None}))).eval()
    t4 = os.path.join(work, "qwen3-4")
    teacher4.save_pretrained(t4)
    shutil.copy(f"{ROOT}/data/lm/tokenizer.json", t4)
    ids = torch.tensor([predicted(f"{work}/qwen3.jsonl")[0]["tokens"]])
    with torch.no_grad():
        want = teacher4(input_ids=ids, output_hidden_states=True)
    for layers, compare in [("0,1,2,3", "logits"), ("0,3", "first block")]:
        small = os.path.join(work, "qwen3_init_" + layers.replace(",", "_"))
        print("init-student:", distill("init-student", "--from", t4, "--layers", layers, "--out", small).strip())
        student = AutoModelForCausalLM.from_pretrained(small).eval()
        assert student.config.num_hidden_layers == len(layers.split(",")) and os.path.isfile(f"{small}/tokenizer.json")
        with torch.no_grad():
            got = student(input_ids=ids, output_hidden_states=True)
        a, b = (got.logits, want.logits) if compare == "logits" else (got.hidden_states[1], want.hidden_states[1])
        check(f"init-student --layers {layers}: {compare} vs the teacher's, max abs diff", float((a - b).abs().max()), 1e-6)
    err = distill("init-student", "--from", t4, "--layers", "2,1", "--out", f"{work}/bad-init", fail=True)
    assert "ascending block indices below the checkpoint's 4" in err, err

    # Trained, exported in its own model_type (tied, GQA, q/k norms; a sliding window).
    for name in ["qwen3", "mistral"]:
        run = os.path.join(work, f"{name}-run")
        distill("train-student", "--cache", cache, "--data", lm_rows, "--student", f"hf:{work}/{name}", "--out", run,
                "--steps", 3, "--batch-size", 8, "--lr", 3e-3, "--alpha", 0.5, "--quiet")
        exported = json.load(open(f"{run}/hf/config.json"))
        source = json.load(open(f"{work}/{name}/config.json"))
        assert exported["model_type"] == source["model_type"], exported
        assert exported["tie_word_embeddings"] == source["tie_word_embeddings"], exported
        trained = AutoModelForCausalLM.from_pretrained(f"{run}/hf").eval()
        assert type(trained).__name__ == type(families[name][0](families[name][1])).__name__
        distill("predict", "--student", run, "--data", lm_rows, "--out", f"{work}/{name}-after.jsonl", "--max-rows", 6)
        after = predicted(f"{work}/{name}-after.jsonl")
        check(f"{name}: Burn vs PyTorch, exported after 3 steps, max abs logit diff", max_diff(trained, after, "lm"), TOL)
        before = predicted(f"{work}/{name}.jsonl")
        moved = max(float(np.abs(np.asarray(a["logits"]) - np.asarray(b["logits"])).max()) for a, b in zip(after, before))
        assert moved > 1e-2, f"{name}: training did not change the exported model"
    print("decoder families: ok")

    # ---------------------------------------------------------------- BERT
    cls_rows = os.path.join(work, "cls.jsonl")
    table = pq.read_table(f"{ROOT}/data/textcls/train.parquet").slice(0, 96).to_pylist()
    with open(cls_rows, "w") as out:
        for r in table:
            out.write(json.dumps(r) + "\n")
    cache = os.path.join(work, "cls-cache")
    distill("cache-teacher", "--teacher", f"{ROOT}/data/textcls/teacher.onnx", "--tokenizer",
            f"{ROOT}/data/textcls/tokenizer.json", "--data", cls_rows, "--text-column", "text", "--label-column", "label",
            "--temperature", 1, "--max-seq-len", 64, "--out", cache, "--quiet")
    bert = BertForSequenceClassification(BertConfig(vocab_size=3000, hidden_size=64, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=128,
                                                    max_position_embeddings=64, num_labels=8)).eval()
    hf_in = os.path.join(work, "bert-in")
    bert.save_pretrained(hf_in)
    shutil.copy(f"{ROOT}/data/textcls/tokenizer.json", hf_in)
    distill("predict", "--student", hf_in, "--data", cls_rows, "--out", f"{work}/bert-before.jsonl", "--max-rows", 16,
            "--max-seq-len", 64)
    before = predicted(f"{work}/bert-before.jsonl")
    check("bert: Burn vs PyTorch, loaded checkpoint, max abs logit diff", max_diff(bert, before, "cls"), TOL)
    # The pretrained checkpoint measured before distilling (its `text` and `label` columns).
    out = distill("eval", "--student", hf_in, "--data", cls_rows, "--max-seq-len", 64, "--json")
    got = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    distill("predict", "--student", hf_in, "--data", cls_rows, "--out", f"{work}/bert-all.jsonl", "--max-seq-len", 64)
    labels = [r["label"] for r in table]
    hits = [int(np.argmax(torch_logits(bert, r["tokens"], "cls"))) == labels[r["row"]] for r in predicted(f"{work}/bert-all.jsonl")]
    print(f"bert: eval of the pretrained checkpoint {got}, PyTorch accuracy {np.mean(hits):.4f}")
    assert got["positions"] == len(hits) and abs(got["accuracy"] - float(np.mean(hits))) < 1e-9, got
    run = os.path.join(work, "bert-run")
    distill("train-student", "--cache", cache, "--data", cls_rows, "--student", f"hf:{hf_in}", "--out", run,
            "--steps", 6, "--batch-size", 16, "--lr", 3e-3, "--alpha", 0.5, "--quiet")
    trained = AutoModelForSequenceClassification.from_pretrained(f"{run}/hf").eval()
    distill("predict", "--student", run, "--data", cls_rows, "--out", f"{work}/bert-after.jsonl", "--max-rows", 16)
    after = predicted(f"{work}/bert-after.jsonl")
    check("bert: Burn vs PyTorch, exported after 6 steps, max abs logit diff", max_diff(trained, after, "cls"), TOL)
    moved = max(float(np.abs(np.asarray(a["logits"]) - np.asarray(b["logits"])).max()) for a, b in zip(after, before))
    print(f"bert: logits moved by training: {moved:.3g}")
    assert moved > 1e-2, "training did not change the exported model"
    wrong = os.path.join(work, "bert-3-classes")
    BertForSequenceClassification(BertConfig(vocab_size=3000, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=128, max_position_embeddings=64,
                                             num_labels=3)).save_pretrained(wrong)
    err = distill("train-student", "--cache", cache, "--data", cls_rows, "--student", f"hf:{wrong}", "--out",
                  f"{work}/r4", "--steps", 1, fail=True)
    assert "3 classes" in err and "8" in err, err
    print("bert: refusals ok")

    # DistilBERT (its own weight names, no token types, a ReLU pre-classifier), and a bare
    # BertModel (no `bert.` prefix, no head: one is made for the cache's classes).
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=3000, dim=64, n_layers=2, n_heads=2,
                                                                  hidden_dim=128, max_position_embeddings=64,
                                                                  num_labels=8)).eval()
    bare = BertModel(BertConfig(vocab_size=3000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=128, max_position_embeddings=64), add_pooling_layer=True).eval()
    for name, model in [("distilbert", distil), ("bare-bert", bare)]:
        d = os.path.join(work, name)
        model.save_pretrained(d)
        shutil.copy(f"{ROOT}/data/textcls/tokenizer.json", d)
        if name == "distilbert":
            distill("predict", "--student", d, "--data", cls_rows, "--out", f"{work}/{name}.jsonl", "--max-rows", 16,
                    "--max-seq-len", 64)
            check(f"{name}: Burn vs PyTorch, loaded checkpoint, max abs logit diff",
                  max_diff(model, predicted(f"{work}/{name}.jsonl"), "cls"), TOL)
        run = os.path.join(work, f"{name}-run")
        log = distill("train-student", "--cache", cache, "--data", cls_rows, "--student", f"hf:{d}", "--out", run,
                      "--steps", 4, "--batch-size", 16, "--lr", 3e-3, "--alpha", 0.5, "--quiet")
        exported = json.load(open(f"{run}/hf/config.json"))
        assert exported["model_type"] == json.load(open(f"{d}/config.json"))["model_type"], exported
        assert len(exported["id2label"]) == 8, exported
        if name == "bare-bert":
            assert "no classification head" in log, log
        trained = AutoModelForSequenceClassification.from_pretrained(f"{run}/hf").eval()
        distill("predict", "--student", run, "--data", cls_rows, "--out", f"{work}/{name}-after.jsonl", "--max-rows", 16)
        check(f"{name}: Burn vs PyTorch, exported after 4 steps, max abs logit diff",
              max_diff(trained, predicted(f"{work}/{name}-after.jsonl"), "cls"), TOL)
    print("encoders: ok")
    print("hf round trip: ok")
finally:
    shutil.rmtree(work, ignore_errors=True)

"""Checks of the on-policy pieces of distill_cache: the divergences of
`distill_cache.torch.distillation_loss` and `distill_cache.generate`.

    OMP_NUM_THREADS=2 PYTHONPATH=python .venv-torch/bin/python3 python/tests/test_onpolicy.py

Expected values come from float64 numpy written straight from the definitions in the
docstring of `distillation_loss` (values), from the hand derivation of the gradients given
beside each check, and, for generation, from transformers' own `model.generate` and a
teacher-forced forward pass. Each `test_*` also runs under pytest.
"""
import json
import math
import os
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from distill_cache.torch import MIN_REST, NO_TAIL, distillation_loss

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(REPO, "data", "lm", "tokenizer.json")
PROMPTS = os.path.join(REPO, "data", "lm", "valid.jsonl")


def close(got, want, rel=1e-5, what=""):
    """`got` within `rel` of `want`, relative to max(1, |want|) (elementwise for arrays, to the largest)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= rel * scale, f"{what}: off by {err} (scale {scale}): got {got}, want {want}"


def softmax64(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def log_softmax64(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def cached_batch(n, vocab, k, temperature, seed):
    """A batch as collate gives it, from a random teacher: the top-k log-probs at
    `temperature`, its exact tail log-mass, hard labels drawn from a random student and the
    teacher's log-prob of each (what cache-teacher --token-ids caches)."""
    g = np.random.default_rng(seed)
    teacher = log_softmax64(g.normal(0, 2, (n, vocab)) / temperature)
    ids = np.argsort(-teacher, 1)[:, :k]
    logprobs = np.take_along_axis(teacher, ids, 1)
    tail = np.log1p(-np.exp(logprobs).sum(1)) if k < vocab else np.full(n, -np.inf)
    hard = g.integers(0, vocab, n)
    return {
        "ids": torch.from_numpy(ids),
        "logprobs": torch.from_numpy(logprobs.astype(np.float32)),
        "tail_logmass": torch.from_numpy(np.where(np.isfinite(tail), tail, NO_TAIL).astype(np.float32)),
        "hard_label": torch.from_numpy(hard),
        "hard_label_logprob": torch.from_numpy(teacher[np.arange(n), hard].astype(np.float32)),
        "labelled": torch.ones(n, dtype=torch.bool),
    }


# ---- (i) sampled-rkl: the value, and the REINFORCE gradient by hand ----

def sampled_rkl_by_hand(z, batch, t, alpha, mask, gen):
    """loss and d loss / d z in float64. With s = log_softmax(z / T)[y] and
    d = rho (s - a) held constant, d/dz of alpha T^2 sum(mask d s) / count is
    alpha T^2 (mask / count) d (1 / T) (onehot(y) - softmax(z / T)) = alpha T (mask / count) d
    (onehot(y) - softmax(z / T)); CE's is (1 - alpha) (labelled / n_ce) (softmax(z) - onehot(y))."""
    n, vocab = z.shape
    y = batch["hard_label"].numpy()
    a = batch["hard_label_logprob"].numpy().astype(np.float64)
    onehot = np.eye(vocab)[y]
    s = log_softmax64(z / t)[np.arange(n), y]
    s1 = log_softmax64(z)[np.arange(n), y]
    rho = np.ones(n) if gen is None else np.minimum(np.exp(s1 - gen), 2.0)
    d = np.where(mask > 0, rho * (s - a), 0.0)
    count = max(mask.sum(), 1.0)
    kl = (mask * d).sum() / count
    ce = -s1.mean()
    loss = alpha * t * t * kl + (1 - alpha) * ce
    grad = alpha * t * (mask / count * d)[:, None] * (onehot - softmax64(z / t))
    grad += (1 - alpha) / n * (softmax64(z) - onehot)
    return loss, kl, ce, grad


def test_sampled_rkl_value_and_gradient():
    n, vocab, k, t = 9, 40, 6, 1.5
    batch = cached_batch(n, vocab, k, t, seed=1)
    g = np.random.default_rng(2)
    z = g.normal(0, 1.5, (n, vocab))
    mask = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1], np.float64)
    batch["hard_label_logprob"][2] = float("nan")  # masked out: must not reach the loss
    s1 = log_softmax64(z)[np.arange(n), batch["hard_label"].numpy()]
    gen = s1 + g.normal(0, 0.5, n)
    gen[0] = s1[0] - 3.0  # rho = e^3, capped at 2
    for alpha in (1.0, 0.6):
        for g_lp in (None, gen):
            logits = torch.tensor(z, dtype=torch.float32, requires_grad=True)
            gl = None if g_lp is None else torch.tensor(g_lp, dtype=torch.float32)
            loss, kl, ce = distillation_loss(logits, batch, t, alpha=alpha, mask=torch.from_numpy(mask), cache_temperature=t,
                                             divergence="sampled-rkl", generation_logprobs=gl)
            loss.backward()
            want = sampled_rkl_by_hand(z, batch, t, alpha, mask, g_lp)
            what = f"sampled-rkl alpha={alpha} rho={'none' if g_lp is None else 'given'}"
            close(loss.item(), want[0], what=what + " loss")
            close(kl.item(), want[1], what=what + " kl")
            close(ce.item(), want[2], what=what + " ce")
            close(logits.grad.numpy(), want[3], rel=1e-5, what=what + " gradient")


def test_sampled_rkl_refusals():
    n, vocab, t = 4, 20, 1.0
    batch = cached_batch(n, vocab, 5, t, seed=3)
    logits = torch.zeros(n, vocab)
    for call, words in [
        (lambda: distillation_loss(logits, batch, 2.0, cache_temperature=1.0, divergence="sampled-rkl"), ("2.0", "1.0")),
        (lambda: distillation_loss(logits, dict(batch, hard_label_logprob=torch.full((n,), float("nan"))), t,
                                   divergence="sampled-rkl"), ("position 0",)),
        (lambda: distillation_loss(logits, batch, t, divergence="sampled-rkl", generation_logprobs=torch.zeros(n + 1)),
         ("[4]",)),
        (lambda: distillation_loss(logits, batch, t, divergence="reverse-kl", generation_logprobs=torch.zeros(n)),
         ("sampled-rkl",)),
        (lambda: distillation_loss(logits, batch, t, divergence="jsd:1.5"), ("between 0 and 1",)),
        (lambda: distillation_loss(logits, batch, t, divergence="jsd"), ("beta",)),
        (lambda: distillation_loss(logits, batch, t, divergence="reverse-kl:0.1"), ("no argument",)),
        (lambda: distillation_loss(logits, batch, t, divergence="tvd"), ("forward-kl, reverse-kl, jsd:BETA, sampled-rkl",)),
    ]:
        try:
            call()
        except ValueError as e:
            assert all(w in str(e) for w in words), (str(e), words)
        else:
            raise AssertionError(f"no error; expected one naming {words}")


# ---- (ii) forward-kl, reverse-kl and jsd over the cached support, against float64 ----

def support64(z, batch, t, bucket):
    """Teacher and student log-probs over the support, float64, from the definitions."""
    ids = batch["ids"].numpy()
    teacher = batch["logprobs"].numpy().astype(np.float64)
    if bucket:
        q = np.take_along_axis(softmax64(z / t), ids, 1)
        rest = np.maximum(1 - q.sum(1), MIN_REST)
        tail = batch["tail_logmass"].numpy().astype(np.float64)
        return np.c_[teacher, tail], np.log(np.c_[q, rest])
    return log_softmax64(teacher), log_softmax64(np.take_along_axis(z, ids, 1) / t)


def terms64(name, beta, logp, logq):
    p, q = np.exp(logp), np.exp(logq)
    if name == "forward-kl":
        return np.where(p == 0, 0.0, p * (logp - logq)), -p / q
    if name == "reverse-kl":
        d = logq - np.maximum(logp, math.log(MIN_REST))
        return q * d, d + 1
    m = beta * p + (1 - beta) * q
    return beta * p * (logp - np.log(m)) + (1 - beta) * q * (logq - np.log(m)), (1 - beta) * (logq - np.log(m))


def gradient64(z, batch, t, bucket, g, logq, w):
    """d/dz of sum_o term(q_o) weighted by `w` per position, the chain rule written out as
    distill's fused loss does (src/loss/divergence.rs): with g_o = d term / d q_o and
    c = sum_o g_o q_o, bucket: (1/T) q_T,j (g_rest - c) for every j plus (1/T) q_j (g_j - g_rest)
    at the cached ids (g_rest = 0 where the rest is clamped); renormalised: (1/T) s_j (g_j - c)
    at the cached ids."""
    n, _ = z.shape
    ids = batch["ids"].numpy()
    q = np.exp(logq)
    c = (g * q).sum(1, keepdims=True)
    out = np.zeros_like(z)
    rows = np.arange(n)[:, None]
    if bucket:
        clamped = 1 - np.take_along_axis(softmax64(z / t), ids, 1).sum(1) < MIN_REST
        g_rest = np.where(clamped, 0.0, g[:, -1])[:, None]
        out += softmax64(z / t) * (g_rest - c)
        np.add.at(out, (rows, ids), q[:, :-1] * (g[:, :-1] - g_rest))
    else:
        np.add.at(out, (rows, ids), q * (g - c))
    return out / t * w[:, None]


def test_divergences_equal_float64():
    t, alpha = 2.0, 0.7
    for vocab, k, tail in [(50, 8, "bucket"), (50, 8, "renormalize"), (30, 30, "bucket")]:
        n = 6
        batch = cached_batch(n, vocab, k, t, seed=vocab + k)
        z = np.random.default_rng(4).normal(0, 2, (n, vocab))
        mask = np.array([1, 0, 1, 1, 1, 1], np.float64)
        for divergence in ("forward-kl", "reverse-kl", "jsd:0.3", "jsd:0.9"):
            name, _, b = divergence.partition(":")
            logits = torch.tensor(z, dtype=torch.float32, requires_grad=True)
            loss, kl, ce = distillation_loss(logits, batch, t, alpha=alpha, tail=tail, mask=torch.from_numpy(mask),
                                             cache_temperature=t, divergence=divergence)
            loss.backward()
            bucket = tail == "bucket" and k < vocab
            logp, logq = support64(z, batch, t, bucket)
            term, g = terms64(name, float(b) if b else None, logp, logq)
            per = term.sum(1)
            want_kl = (per * mask).sum() / mask.sum()
            s1 = log_softmax64(z)[np.arange(n), batch["hard_label"].numpy()]
            want_loss = alpha * t * t * want_kl + (1 - alpha) * -s1.mean()
            what = f"{divergence} tail={tail} k={k}/{vocab}"
            close(kl.item(), want_kl, what=what + " kl")
            close(loss.item(), want_loss, what=what + " loss")
            w = alpha * t * t * mask / mask.sum()
            onehot = np.eye(vocab)[batch["hard_label"].numpy()]
            want_grad = gradient64(z, batch, t, bucket, g, logq, w) + (1 - alpha) / n * (softmax64(z) - onehot)
            close(logits.grad.numpy(), want_grad, rel=1e-5, what=what + " gradient")


def test_hard_label_logprob_reaches_the_batch():
    """CacheDataset's items and collate carry hard_label_logprob, NaN where the cache has null."""
    from distill_cache.torch import collate

    items = [{"row": r, "positions": torch.arange(2), "ids": torch.zeros(2, 3, dtype=torch.long),
              "logprobs": torch.zeros(2, 3), "tail_logmass": torch.zeros(2), "hard_label": torch.tensor([4, -1]),
              "hard_label_logprob": torch.tensor([-1.5, float("nan")]), "labelled": torch.tensor([True, False]),
              "hidden": {}} for r in range(2)]
    got = collate(items)["hard_label_logprob"]
    assert got.shape == (4,) and got.dtype == torch.float32 and torch.isnan(got[1::2]).all(), got


# ---- (iii) distill_cache.generate against transformers' generate ----

def tiny_student(directory):
    """A random LlamaForCausalLM over the project's tokenizer, saved as a model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=TOKENIZER, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96,
                                         vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return model.eval(), tok


def reference(model, tok, prompt, max_new_tokens, eos):
    """transformers' greedy generate of one prompt, unbatched: the new ids."""
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                         eos_token_id=eos, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_generate_greedy_equals_transformers():
    from distill_cache import generate as gen

    max_new = 12
    with tempfile.TemporaryDirectory() as d:
        model, tok = tiny_student(os.path.join(d, "student"))
        rows = [json.loads(line) for line in open(PROMPTS)][:5]
        data = os.path.join(d, "prompts.jsonl")
        with open(data, "w") as f:
            f.writelines(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows)
        args = ["--model", os.path.join(d, "student"), "--data", data, "--out", os.path.join(d, "gen"),
                "--temperature", "0", "--max-new-tokens", str(max_new), "--batch-size", "2", "--device", "cpu"]
        assert gen.main(args) == 0
        first = pq.read_table(os.path.join(d, "gen", "generated.parquet"))
        # An end token the greedy student writes at its 4th step on row 0: that row must stop there.
        eos = first.column("completion_ids")[0].as_py()[3]
        assert gen.main(args + ["--eos-id", str(eos)]) == 0
        table = pq.read_table(os.path.join(d, "gen", "generated.parquet"))
        assert table.schema.equals(gen.SCHEMA), table.schema
        assert table.column("stop_reason")[0].as_py() == "eos", table.column("stop_reason")
        for i, r in enumerate(rows):
            got = {name: table.column(name)[i].as_py() for name in table.column_names}
            want = reference(model, tok, r["prompt"], max_new, eos)
            if eos in want:
                want = want[: want.index(eos) + 1]
            assert got["completion_ids"] == want, (i, got["completion_ids"], want)
            assert got["stop_reason"] == ("eos" if want[-1] == eos else "length"), (i, got["stop_reason"])
            assert (got["row"], got["sample"], got["prompt"]) == (i, 0, r["prompt"])
            assert got["prompt_ids"] == tok(r["prompt"])["input_ids"]
            text_ids = want[:-1] if got["stop_reason"] == "eos" else want
            assert got["completion"] == tok.decode(text_ids, skip_special_tokens=True)
            lps = np.array(got["completion_logprobs"])
            assert len(lps) == len(want) and np.isfinite(lps).all() and (lps <= 0).all(), lps
            # The log-probs are the raw logits' (temperature 1), as a teacher-forced pass gives them.
            seq = torch.tensor([got["prompt_ids"] + want])
            with torch.no_grad():
                forced = torch.log_softmax(model(seq).logits[0].double(), -1)
            at = len(got["prompt_ids"]) - 1 + np.arange(len(want))
            close(lps, forced[at, want].numpy(), rel=1e-4, what=f"row {i} completion_logprobs")


def test_generate_samples_in_row_sample_order():
    from distill_cache import generate as gen

    with tempfile.TemporaryDirectory() as d:
        model, tok = tiny_student(os.path.join(d, "student"))
        prompts = [json.loads(line)["prompt"] for line in open(PROMPTS)][:3]
        pq.write_table(pa.table({"question": prompts}), os.path.join(d, "prompts.parquet"))
        loaded = gen.read_prompts(os.path.join(d, "prompts.parquet"), "question")
        table = gen.generate(model, tok, loaded, max_new_tokens=5, temperature=0.8, top_p=0.9, samples_per_prompt=2,
                             seed=7, batch_size=2)
        path = gen.write_generated(table, os.path.join(d, "gen"))
        assert sorted(os.listdir(os.path.join(d, "gen"))) == ["generated.parquet"]  # no temporary file left
        back = pq.read_table(path)
        assert back.column("row").to_pylist() == [0, 0, 1, 1, 2, 2]
        assert back.column("sample").to_pylist() == [0, 1, 0, 1, 0, 1]
        assert back.column("prompt").to_pylist() == [p for p in prompts for _ in range(2)]
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
        for ids, lps in zip(back.column("completion_ids").to_pylist(), back.column("completion_logprobs").to_pylist()):
            assert len(ids) == len(lps) and all(math.isfinite(x) and x <= 0 for x in lps)


if __name__ == "__main__":
    failed = 0
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                print(f"ok   {name}")
            except Exception as e:  # noqa: BLE001 - report every check, then fail
                failed += 1
                print(f"FAIL {name}: {type(e).__name__}: {e}")
    sys.exit(1 if failed else 0)

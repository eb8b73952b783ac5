"""PyTorch side: a rank-sharded Dataset over a cache's rows, a collate function, and the
distillation loss distill trains with (`alpha * T^2 * D + (1 - alpha) * CE`, D a divergence
over the cached top-k with the tail bucket or renormalised: forward KL by default, reverse
KL, JSD, or the sampled reverse KL of on-policy distillation).

    from distill_cache import open_cache
    from distill_cache.torch import CacheDataset, collate, distillation_loss
    ds = CacheDataset(open_cache("cache/lm"), rank=rank, world_size=world)
    for batch in torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate):
        # batch["row"]: dataset rows (tokenize them as the cache did: manifest["text"]);
        # batch["at"]: [n, 2] (index in the batch, position) of each cached position
        logits = model(...)[batch["at"][:, 0], batch["at"][:, 1]]      # [n, vocab]
        loss = distillation_loss(logits, batch, temperature=ds.temperature, alpha=0.5)
"""
import math

import numpy as np
import torch

#: Floor of the student's rest mass before its log (distill's MIN_REST).
MIN_REST = 1e-12
#: A tail of -inf (k = vocabulary) is carried as this log-mass (distill's training value).
NO_TAIL = -1e4


class CacheDataset(torch.utils.data.Dataset):
    """The cache's rows with cached positions, one item per row, split over `world_size`
    ranks as `torch.utils.data.DistributedSampler(shuffle=False)` splits a dataset: the row
    list is padded (by repeating its start) to a multiple of `world_size` and rank `r` takes
    every `world_size`-th row from `r`. The rows are decoded into memory when it is built."""

    def __init__(self, cache, rank=0, world_size=1):
        self.cache = cache
        self.temperature = cache.manifest["temperature"]
        self.k, self.vocab_size = cache.k, cache.vocab_size
        self.sampled = cache.manifest.get("sampled") is not None
        rows = list(cache.rows())
        if not rows:
            raise ValueError(f"{cache.path}: no cached positions")
        total = math.ceil(len(rows) / world_size) * world_size
        padded = rows + rows[: total - len(rows)]
        self.rows = padded[rank:total:world_size]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        r = self.rows[i]
        tail = np.where(np.isfinite(r["tail_logmass"]), r["tail_logmass"], NO_TAIL).astype(np.float32)
        return {
            "row": r["row"],
            "positions": torch.from_numpy(np.ascontiguousarray(r["positions"])),
            "ids": torch.from_numpy(np.ascontiguousarray(r["ids"])),
            "logprobs": torch.from_numpy(np.ascontiguousarray(r["logprobs"])),
            "tail_logmass": torch.from_numpy(tail),
            "hard_label": torch.from_numpy(np.ascontiguousarray(r["hard_label"])),
            "hard_label_logprob": torch.from_numpy(np.ascontiguousarray(r["hard_label_logprob"])),
            "labelled": torch.from_numpy(np.ascontiguousarray(r["labelled"])),
            "hidden": {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in r["hidden"].items()},
        }


def collate(items):
    """Items of CacheDataset -> one batch: `row` [b] (dataset rows), `at` [n, 2] (index in
    the batch, position) and the targets of the n cached positions, row after row."""
    at = torch.cat([torch.stack([torch.full_like(it["positions"], j), it["positions"]], 1) for j, it in enumerate(items)])
    cat = lambda key: torch.cat([it[key] for it in items])
    return {
        "row": torch.tensor([it["row"] for it in items]),
        "at": at,
        "ids": cat("ids"),
        "logprobs": cat("logprobs"),
        "tail_logmass": cat("tail_logmass"),
        "hard_label": cat("hard_label"),
        # The teacher's log p_T(hard_label) over its full distribution (NaN where null): [n].
        "hard_label_logprob": cat("hard_label_logprob"),
        "labelled": cat("labelled"),
        # The cached teacher hidden states (cache-teacher --hidden-states): [n, dim] each.
        "hidden": {name: torch.cat([it["hidden"][name] for it in items]) for name in items[0]["hidden"]},
    }


#: The divergences `distillation_loss` takes, spelled as distill's `--divergence`.
DIVERGENCES = ("forward-kl", "reverse-kl", "jsd:BETA", "sampled-rkl")
#: sampled-rkl's cap on the importance weight of a token drawn by an older student.
MAX_IMPORTANCE_WEIGHT = 2.0


def parse_divergence(divergence):
    """`"forward-kl"`, `"reverse-kl"`, `"jsd:BETA"` (0 < BETA < 1) or `"sampled-rkl"` ->
    (name, beta), beta None but for the JSD; anything else is a ValueError saying why."""
    name, sep, arg = str(divergence).partition(":")
    if name == "jsd":
        try:
            beta = float(arg)
        except ValueError:
            raise ValueError(f"divergence {divergence!r}: jsd needs its beta, a number: 'jsd:0.5'") from None
        if not 0 < beta < 1:
            raise ValueError(f"divergence {divergence!r}: jsd's beta must be strictly between 0 and 1 (got {beta})")
        return name, beta
    if name in ("forward-kl", "reverse-kl", "sampled-rkl") and not sep:
        return name, None
    if name in ("forward-kl", "reverse-kl", "sampled-rkl"):
        raise ValueError(f"divergence {divergence!r}: {name} takes no argument")
    raise ValueError(f"unknown divergence {divergence!r} (known: {', '.join(DIVERGENCES)})")


def _check_cache_temperature(t, cache_temperature, why):
    """Refuse a training temperature `t` other than the cache's, `why` saying what needs it."""
    if cache_temperature is not None and abs(cache_temperature - t) > 1e-6:
        raise ValueError(f"temperature {t} differs from the cache's {cache_temperature}: {why}")


def _support(logits, batch, t, tail, cache_temperature):
    """The teacher's and the student's log-probs over the cached support: the k cached ids
    and the rest of the vocabulary as one outcome (`tail="bucket"` and k < vocabulary), or
    the k ids with both renormalised over them (`"renormalize"`, or k = vocabulary).

    # Shapes
    - `logits`: `[n, vocab]`; returns (`logp`, `logq`), each `[n, k + 1]` (bucket) or `[n, k]`"""
    vocab, k = logits.shape[1], batch["ids"].shape[1]
    ids, teacher = batch["ids"].to(logits.device), batch["logprobs"].to(logits.device, torch.float32)
    if tail == "bucket" and k < vocab:
        _check_cache_temperature(t, cache_temperature, f"the tail mass at {t} is not in the cache, so the tail bucket "
                                                       "cannot serve it (distill refuses the same); use tail='renormalize'")
        sk = torch.log_softmax(logits.float() / t, -1).gather(1, ids)  # student log-probs at T over the cached ids
        student_rest = (1 - sk.exp().sum(1)).clamp_min(MIN_REST).log()
        tail_lm = batch["tail_logmass"].to(logits.device, torch.float32)
        return torch.cat([teacher, tail_lm[:, None]], 1), torch.cat([sk, student_rest[:, None]], 1)
    if tail in ("bucket", "renormalize"):
        if cache_temperature is not None and abs(cache_temperature - t) > 1e-6:
            teacher = teacher.double() * (cache_temperature / t)  # re-tempered, as distill does
        logp = torch.log_softmax(teacher, -1).float()
        return logp, torch.log_softmax(logits.float().gather(1, ids) / t, -1)
    raise ValueError(f"tail must be 'bucket' or 'renormalize', got {tail!r}")


def _divergence_terms(name, beta, logp, logq):
    """Each outcome's term of the divergence `name` between the teacher's `p` and the
    student's `q` (see distillation_loss); an outcome the teacher gives no mass adds no
    forward-KL term.

    # Shapes
    - `logp`, `logq`: `[n, outcomes]`; returns `[n, outcomes]`"""
    p, q = logp.exp(), logq.exp()
    if name == "forward-kl":
        return torch.where(p == 0, torch.zeros_like(p), p * (logp - logq))
    if name == "reverse-kl":
        return q * (logq - logp.clamp_min(math.log(MIN_REST)))
    m = beta * p + (1 - beta) * q
    logm = m.log()
    return beta * p * (logp - logm) + (1 - beta) * q * (logq - logm)


def _sampled_rkl(logits, batch, t, mask, generation_logprobs, cache_temperature):
    """sampled-rkl's per-position estimate `d` (detached) and the student's `log q_T(y)`
    `s` (with its graph), at each position's hard label `y`.

    # Shapes
    - `logits`: `[n, vocab]`, `mask`, `generation_logprobs`: `[n]`; returns (`d`, `s`), each `[n]`"""
    n = logits.shape[0]
    _check_cache_temperature(t, cache_temperature, "sampled-rkl compares the student with the teacher's log-prob of "
                                                   "the token at the cache's temperature; train at the cache's")
    if "hard_label_logprob" not in batch:
        raise ValueError("sampled-rkl needs batch['hard_label_logprob'] (the teacher's log-prob of each hard label), "
                         "which distill_cache.torch.collate provides")
    teacher = batch["hard_label_logprob"].to(logits.device, torch.float32)
    missing = (mask > 0) & ~torch.isfinite(teacher)
    if missing.any():
        i = int(missing.nonzero()[0, 0])
        raise ValueError(f"sampled-rkl needs the teacher's log-prob of each position's hard label, and position {i} "
                         "of the batch has none (the cache holds no hard label there); mask such positions out")
    y = batch["hard_label"].to(logits.device).clamp_min(0)[:, None]
    s = torch.log_softmax(logits.float() / t, -1).gather(1, y)[:, 0]
    with torch.no_grad():
        rho = torch.ones_like(s)
        if generation_logprobs is not None:
            if tuple(generation_logprobs.shape) != (n,):
                raise ValueError(f"generation_logprobs has shape {tuple(generation_logprobs.shape)}, expected [{n}] "
                                 "(one per position of logits)")
            now = torch.log_softmax(logits.float(), -1).gather(1, y)[:, 0]
            then = generation_logprobs.to(logits.device, torch.float32)
            # NaN: the generation's log-prob is unknown (weight 1), as distill reads it.
            rho = torch.where(then.isnan(), torch.ones_like(s), (now - then).exp().clamp_max(MAX_IMPORTANCE_WEIGHT))
        d = torch.where(mask > 0, rho * (s - teacher), torch.zeros_like(s))
    return d, s


def distillation_loss(logits, batch, temperature, alpha=0.5, tail="bucket", mask=None, cache_temperature=None, counts=None,
                      divergence="forward-kl", generation_logprobs=None):
    """distill's loss at `logits` [n, vocab] (the cache's vocabulary; slice off padding):
    `alpha * T^2 * mean_mask D + (1 - alpha) * mean_labelled CE`. CE is at T = 1 over the
    labelled positions. Returns (loss, kl, ce), each a 0-d tensor, `kl` the mean of D; only
    `loss` is meant to be backpropagated.

    D, the `divergence`, is over the cached support: the cached ids with the teacher's exact
    tail mass as one more outcome (`tail="bucket"`, against the student's `1 - sum_k q`,
    floored at 1e-12) or the top-k renormalised (`"renormalize"`; also the full vocabulary
    when k = vocabulary). With the teacher's `p` and the student's `q` (at T) there, D sums
    over the outcomes:

    - `"forward-kl"` (default): `p (log p - log q)`
    - `"reverse-kl"`: `q (log q - max(log p, ln 1e-12))`
    - `"jsd:BETA"` (0 < BETA < 1): `BETA p (log p - log m) + (1 - BETA) q (log q - log m)`,
      `m = BETA p + (1 - BETA) q`
    - `"sampled-rkl"`: the per-token reverse KL of on-policy distillation, for a cache of the
      student's own completions (`cache-teacher --token-ids`), whose hard label `y` is the
      token the student drew: `d = rho (log q_T(y) - log p_T(y))`, `log p_T(y)` the cache's
      `hard_label_logprob` (so T must be the cache's temperature). `rho` is 1, or with
      `generation_logprobs` `min(q_1(y) / q_gen(y), 2)` (1 where an entry is NaN: unknown):
      the student's current probability of `y` at T = 1 over the one it had when it drew it (a truncated importance weight, for
      a student that has moved since it generated). The value is `alpha T^2 mean_mask d +
      (1 - alpha) CE`; the gradient is that of the REINFORCE surrogate `alpha T^2
      mean_mask(stopgrad(d) log q_T(y)) + (1 - alpha) CE`, since `E_{y~q}[(log q - log p)
      grad log q]` is the reverse KL's gradient: in the logits,
      `alpha T (mask_i / count) d_i (onehot(y_i) - softmax(z_i / T))` plus CE's. `tail` and
      the cached top-k are not used.

    `temperature` must be the cache's for the tail bucket (the tail at another temperature
    is unknown) and for sampled-rkl; with `"renormalize"` and a `cache_temperature` that
    differs, the cached log-probs are re-tempered to it first, as distill does.

    `counts` = (positions, labelled positions) replaces the means' denominators: with the
    global batch's counts (all-reduced), each rank's loss is its share of the global batch's
    loss, which is what data-parallel training over several ranks needs to equal one
    process on the same global batches (see python/examples/ddp_train.py).

    # Shapes
    - `logits`: `[n, vocab]`; `batch`: collate's, `ids`/`logprobs` `[n, k]`, `tail_logmass`,
      `hard_label`, `hard_label_logprob`, `labelled` `[n]`
    - `mask`, `generation_logprobs` (log-probs at T = 1, from distill_cache.generate's
      `completion_logprobs`): `[n]`
    - returns three 0-d tensors"""
    name, beta = parse_divergence(divergence)
    if generation_logprobs is not None and name != "sampled-rkl":
        raise ValueError(f"generation_logprobs serves divergence='sampled-rkl' only, not {divergence!r}")
    n = logits.shape[0]
    mask = torch.ones(n, device=logits.device) if mask is None else mask.to(logits.device, torch.float32)
    labelled = batch["labelled"].to(logits.device, torch.float32)
    t = float(temperature)
    hard = batch["hard_label"].to(logits.device).clamp_min(0)
    ce = -torch.log_softmax(logits.float(), -1).gather(1, hard[:, None])[:, 0]
    n_kl, n_ce = (mask.sum(), labelled.sum()) if counts is None else (torch.as_tensor(c, dtype=torch.float32) for c in counts)
    n_kl = n_kl.to(logits.device).clamp_min(1)
    ce_mean = (ce * labelled).sum() / n_ce.to(logits.device).clamp_min(1)
    if name == "sampled-rkl":
        d, s = _sampled_rkl(logits, batch, t, mask, generation_logprobs, cache_temperature)
        kl_mean = (d * mask).sum() / n_kl
        surrogate = (d * mask * s).sum() / n_kl  # its gradient is the reverse KL's, in expectation
        kd = kl_mean + (surrogate - surrogate.detach())  # the value of kl_mean, the gradient of the surrogate
    else:
        logp, logq = _support(logits, batch, t, tail, cache_temperature)
        kl = _divergence_terms(name, beta, logp, logq).sum(1)
        kd = kl_mean = (kl * mask).sum() / n_kl
    loss = alpha * t * t * kd + (1 - alpha) * ce_mean
    return loss, kl_mean, ce_mean

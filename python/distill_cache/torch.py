"""PyTorch side: a rank-sharded Dataset over a cache's rows, a collate function, and the
distillation loss distill trains with (`alpha * T^2 * KL + (1 - alpha) * CE`, forward KL
over the cached top-k with the tail bucket or renormalised).

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
        "labelled": cat("labelled"),
        # The cached teacher hidden states (cache-teacher --hidden-states): [n, dim] each.
        "hidden": {name: torch.cat([it["hidden"][name] for it in items]) for name in items[0]["hidden"]},
    }


def distillation_loss(logits, batch, temperature, alpha=0.5, tail="bucket", mask=None, cache_temperature=None, counts=None):
    """distill's loss at `logits` [n, vocab] (the cache's vocabulary; slice off padding):
    `alpha * T^2 * mean_mask KL + (1 - alpha) * mean_labelled CE`. The KL is forward KL over
    the cached ids, with the teacher's exact tail mass as one more outcome (`tail="bucket"`,
    against the student's `1 - sum_k q`) or the top-k renormalised (`"renormalize"`; also
    the full KL when k = vocabulary). CE is at T = 1 over the labelled positions. Returns
    (loss, kl, ce), each a 0-d tensor; only `loss` is meant to be backpropagated.

    `temperature` must be the cache's for the tail bucket (the tail at another temperature
    is unknown); with `"renormalize"` and a `cache_temperature` that differs, the cached
    log-probs are re-tempered to it first, as distill does.

    `counts` = (positions, labelled positions) replaces the means' denominators: with the
    global batch's counts (all-reduced), each rank's loss is its share of the global batch's
    loss, which is what data-parallel training over several ranks needs to equal one
    process on the same global batches (see python/examples/ddp_train.py)."""
    n, vocab = logits.shape
    k = batch["ids"].shape[1]
    ids, teacher = batch["ids"].to(logits.device), batch["logprobs"].to(logits.device, torch.float32)
    mask = torch.ones(n, device=logits.device) if mask is None else mask.to(logits.device, torch.float32)
    labelled = batch["labelled"].to(logits.device, torch.float32)
    t = float(temperature)
    s = torch.log_softmax(logits.float() / t, -1)
    sk = s.gather(1, ids)  # [n, k] student log-probs at T over the cached ids
    if tail == "bucket" and k < vocab:
        if cache_temperature is not None and abs(cache_temperature - t) > 1e-6:
            raise ValueError(
                f"temperature {t} differs from the cache's {cache_temperature}: the tail mass at {t} is not in the "
                "cache, so the tail bucket cannot serve it (distill refuses the same); use tail='renormalize'")
        p = teacher.exp()
        inside = (p * (teacher - sk)).sum(1)
        rest = 1 - sk.exp().sum(1)
        student_rest = rest.clamp_min(MIN_REST).log()
        tail_lm = batch["tail_logmass"].to(logits.device, torch.float32)
        pr = tail_lm.exp()
        rest_term = torch.where(pr == 0, torch.zeros_like(pr), pr * (tail_lm - student_rest))
        kl = inside + rest_term
    elif tail in ("bucket", "renormalize"):
        if cache_temperature is not None and abs(cache_temperature - t) > 1e-6:
            teacher = teacher.double() * (cache_temperature / t)
        tt = torch.log_softmax(teacher, -1).float()  # renormalised over the cached ids
        ss = torch.log_softmax(logits.float().gather(1, ids) / t, -1)
        kl = (tt.exp() * (tt - ss)).sum(1)
    else:
        raise ValueError(f"tail must be 'bucket' or 'renormalize', got {tail!r}")
    hard = batch["hard_label"].to(logits.device).clamp_min(0)
    ce = -torch.log_softmax(logits.float(), -1).gather(1, hard[:, None])[:, 0]
    n_kl, n_ce = (mask.sum(), labelled.sum()) if counts is None else (torch.as_tensor(c, dtype=torch.float32) for c in counts)
    kl_mean = (kl * mask).sum() / n_kl.clamp_min(1)
    ce_mean = (ce * labelled).sum() / n_ce.clamp_min(1)
    loss = alpha * t * t * kl_mean + (1 - alpha) * ce_mean
    return loss, kl_mean, ce_mean

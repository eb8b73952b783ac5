"""Read a distill cache (docs/cache-format.md) from Python: the manifest verified as
distill verifies it, the shards decoded exactly as the format says, per dataset row.

    import distill_cache
    cache = distill_cache.open_cache("cache/lm")          # or "s3://bucket/cache/lm"
    cache.verify()                                         # every shard's size, SHA-256 and stamp
    for row in cache.rows():                               # one dict per dataset row
        row["row"], row["positions"], row["ids"], row["logprobs"], row["tail_logmass"]

`distill_cache.torch` (needs torch) has a rank-sharded `torch.utils.data.Dataset` and the
distillation loss, equal to distill's (forward KL, reverse KL, JSD, and the sampled reverse KL
of on-policy distillation). `distill_cache.generate` (needs transformers) has a Hugging Face
student write completions in distill's generated-dataset layout, for `distill cache-teacher
--token-ids` to score (python/examples/onpolicy_round.py runs one round).
"""
from .cache import Cache, CacheError, open_cache

__all__ = ["Cache", "CacheError", "open_cache"]

"""python -m distill_cache verify|inspect CACHE"""
import argparse
import sys

from . import CacheError, open_cache


def main(argv=None):
    """Run `verify` or `inspect` on one cache; a refused cache is one `error:` line, exit 1."""
    p = argparse.ArgumentParser(prog="python -m distill_cache", description="Check or describe a distill cache.")
    p.add_argument("command", choices=["verify", "inspect"])
    p.add_argument("cache", help="a cache directory or URI (s3://, gs://, file://)")
    a = p.parse_args(argv)
    try:
        cache = open_cache(a.cache)
        if a.command == "verify":
            n = cache.verify()
            print(f"{a.cache}: {n} shards match the manifest")
        else:
            for i in range(len(cache.manifest["shards"])):
                cache.read_shard(i)  # as distill inspect does: every shard read and checked
            print(cache.summary())
    except (CacheError, OSError, ValueError) as e:  # OSError, ValueError: what pyarrow's filesystems raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hostile caches: one damaged copy of a good cache per way a cache from someone else can
lie, for testing that distill's two readers (`distill verify`, `python -m distill_cache
verify`) both refuse each one in one line, without hanging or exhausting memory.

    python3 tests/hostile_caches.py GOOD_CACHE_DIR OUT_DIR [OTHER_CACHE_DIR]

GOOD_CACHE_DIR is a cache made by `distill cache-teacher` (stamped shards, at least one);
OTHER_CACHE_DIR, if given, is a cache of the same data made with another `--temperature`,
whose first shard is copied in for the `shard_from_other_cache` case (left out: that case
is skipped). Each case's cache is written to OUT_DIR/NAME/cache (files it points at from
outside lie in OUT_DIR/NAME), and OUT_DIR/cases.json lists them as [{"name", "dir", "why"}],
`dir` absolute. The `control` case is an unmodified copy that both readers must accept;
every other case must be refused. Needs numpy and python/distill_cache (its port of the
manifest checksum, checked first against the good manifest's own).
"""
import copy
import hashlib
import json
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from distill_cache import manifest as mf  # noqa: E402

MANIFEST = "manifest.json"


def read_text(cache):
    """The manifest text of `cache`."""
    with open(os.path.join(cache, MANIFEST), encoding="utf-8") as f:
        return f.read()


def write(path, text):
    """Replace whatever is at `path` (a file or a link) with the file `text`."""
    if os.path.lexists(path):
        os.remove(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def resealed(m):
    """The manifest `m` as JSON with its checksum recomputed, as distill would write it."""
    m = dict(m, checksum=mf.compute_checksum(m))
    return mf.dump(m, "Manifest")


def edit_text(pattern, replacement):
    """A mutation replacing the first top-level line of the manifest matching `pattern`."""
    def mutate(d, m, text):
        new, n = re.subn(pattern, replacement, text, count=1, flags=re.M)
        assert n == 1, pattern
        write(os.path.join(d, MANIFEST), new)
    return mutate


def edit_raw(change):
    """A mutation applying `change` to the manifest's plain JSON, checksum left as it was."""
    def mutate(d, m, text):
        raw = json.loads(text)
        change(raw)
        write(os.path.join(d, MANIFEST), json.dumps(raw, indent=2))
    return mutate


def edit_sealed(change):
    """A mutation applying `change` to the typed manifest and recomputing its checksum, so
    only a check other than the checksum can refuse it."""
    def mutate(d, m, text):
        m = copy.deepcopy(m)
        change(m, d)
        write(os.path.join(d, MANIFEST), resealed(m))
    return mutate


def first_shard(d, m):
    """The path of the first shard of the cache copy `d`."""
    return os.path.join(d, m["shards"][0]["file"])


def replace_shard(make):
    """A mutation replacing the first shard with what `make(path)` puts there."""
    def mutate(d, m, text):
        path = first_shard(d, m)
        os.remove(path)
        make(path)
    return mutate


def link_outside(d, m, text):
    """Move the first shard out of the cache directory and leave a link to it in its place."""
    path = first_shard(d, m)
    target = os.path.join(os.path.dirname(d), "outside.parquet")
    shutil.move(path, target)
    os.symlink(target, path)


def manifest_outside(d, m, text):
    """Move manifest.json out of the cache directory and leave a link to it in its place."""
    path = os.path.join(d, MANIFEST)
    target = os.path.join(os.path.dirname(d), "outside.json")
    shutil.move(path, target)
    os.symlink(target, path)


def truncate(d, m, text):
    """Cut the last byte off the first shard."""
    path = first_shard(d, m)
    os.truncate(path, os.path.getsize(path) - 1)


def escape_name(m, d):
    """Name the first shard `../x.parquet` and put a valid copy of it there."""
    shutil.copyfile(first_shard(d, m), os.path.join(os.path.dirname(d), "x.parquet"))
    m["shards"][0]["file"] = "../x.parquet"


def over_cap(d, m, text):
    """A valid, correctly checksummed manifest padded with spaces past the 64 MiB cap."""
    body = resealed(m)
    write(os.path.join(d, MANIFEST), body + " " * (mf.MANIFEST_CAP + 1 - len(body.encode("utf-8"))))


def other_shard(other):
    """Copy `other`'s first shard over ours and record its size and SHA-256, so only the
    shard's stamp tells it is from another cache."""
    def change(m, d):
        src = os.path.join(other, m["shards"][0]["file"])
        shutil.copyfile(src, first_shard(d, m))
        with open(src, "rb") as f:
            data = f.read()
        m["shards"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    return change


def twice_temperature(m, d):
    """Double the temperature."""
    m["temperature"] = m["temperature"] * 2


def blank_checksum(raw):
    """Blank the checksum and double the temperature."""
    raw["checksum"] = ""
    raw["temperature"] = raw["temperature"] * 2


def cases(other):
    """(name, why, mutation) of every case; a mutation gets (copy dir, typed manifest, text)."""
    c = [
        ("control", "an unmodified copy of the good cache: both readers accept it", lambda d, m, t: None),
        ("manifest_dev_zero", "manifest.json is a link to /dev/zero: an endless read unless only bounded regular files are read",
         lambda d, m, t: (os.remove(os.path.join(d, MANIFEST)), os.symlink("/dev/zero", os.path.join(d, MANIFEST)))),
        ("manifest_fifo", "manifest.json is a FIFO: opening it blocks forever unless opened non-blocking and checked first",
         lambda d, m, t: (os.remove(os.path.join(d, MANIFEST)), os.mkfifo(os.path.join(d, MANIFEST)))),
        ("manifest_over_cap", "manifest.json is a regular file over the 64 MiB manifest cap (valid JSON, valid checksum, padded with spaces)",
         over_cap),
        ("manifest_link_outside", "manifest.json is a link to a valid copy outside the cache directory: no link out of the directory is followed",
         manifest_outside),
        ("manifest_not_json", "manifest.json is not JSON", lambda d, m, t: write(os.path.join(d, MANIFEST), "this is not a manifest\n")),
        ("manifest_missing_key", "manifest.json lacks `top_k`", edit_raw(lambda raw: raw.pop("top_k"))),
        ("manifest_unknown_key", "manifest.json has a key distill does not know (`extra`)", edit_raw(lambda raw: raw.update(extra=1))),
        ("manifest_wrong_type", "manifest.json's `top_k` is a string", edit_raw(lambda raw: raw.update(top_k=str(raw["top_k"])))),
        ("manifest_duplicate_key", "manifest.json names `top_k` twice (same value, so a checksum of the text still matches)",
         edit_text(r'^  "top_k": (\d+),$', r'  "top_k": \1,\n  "top_k": \1,')),
        ("manifest_nan", "manifest.json's temperature is NaN, which is not JSON", edit_text(r'^  "temperature": [^,\n]+,$', '  "temperature": NaN,')),
        ("manifest_deeply_nested", "manifest.json's settings hold arrays nested 100000 deep (a recursive parser's stack)",
         edit_text(r'^  "settings": \{', '  "settings": {"deep": ' + "[" * 100000 + "]" * 100000 + ",")),
        ("blank_checksum", "checksum set to \"\" and the temperature edited: a blank checksum must not switch the check off",
         edit_raw(blank_checksum)),
        ("temperature_edited", "temperature doubled and the checksum recomputed: only the shards' stamps tell",
         edit_sealed(twice_temperature)),
        ("complete_false", "manifest.json says complete: false (checksum recomputed)", edit_sealed(lambda m, d: m.update(complete=False))),
        ("shard_name_escapes", "a shard named ../x.parquet (a valid copy waits there; checksum recomputed)", edit_sealed(escape_name)),
        ("top_k_over_vocab", "top_k above vocab_size (checksum recomputed)", edit_sealed(lambda m, d: m.update(top_k=m["vocab_size"] + 1))),
        ("vocab_over_max", "vocab_size 2^24 + 1, over the largest vocabulary a manifest may declare (checksum recomputed)",
         edit_sealed(lambda m, d: m.update(vocab_size=mf.MAX_VOCAB + 1))),
        ("rows_not_covered", "dataset and totals claim one row more than the shards cover (checksum recomputed)",
         edit_sealed(lambda m, d: (m["dataset"].update(rows=m["dataset"]["rows"] + 1), m["totals"].update(rows=m["totals"]["rows"] + 1)))),
        ("shard_fifo", "the first shard is a FIFO", replace_shard(os.mkfifo)),
        ("shard_dev_zero", "the first shard is a link to /dev/zero", replace_shard(lambda p: os.symlink("/dev/zero", p))),
        ("shard_link_outside", "the first shard is a link to a valid copy outside the cache directory: no link out of the directory is followed",
         link_outside),
        ("shard_truncated", "the first shard lost its last byte", truncate),
        ("shard_missing", "the first shard is gone", lambda d, m, t: os.remove(first_shard(d, m))),
    ]
    if other:
        c.append(("shard_from_other_cache", "the first shard comes from a cache made at another temperature, its size and SHA-256 "
                  "recorded and the checksum recomputed: only its stamp tells", edit_sealed(other_shard(other))))
    return c


def main(argv):
    """Write every case under OUT_DIR and OUT_DIR/cases.json."""
    if len(argv) not in (3, 4):
        sys.exit(__doc__)
    good, out = os.path.abspath(argv[1]), os.path.abspath(argv[2])
    other = os.path.abspath(argv[3]) if len(argv) == 4 else None
    text = read_text(good)
    m = mf.read_manifest(text)
    if mf.compute_checksum(m) != m["checksum"]:
        sys.exit(f"{good}: the ported checksum {mf.compute_checksum(m)} is not the recorded {m['checksum']}")
    if not m["shards"]:
        sys.exit(f"{good}: a cache with at least one shard is needed")
    if os.path.exists(out) and os.listdir(out):
        if not os.path.exists(os.path.join(out, "cases.json")):
            sys.exit(f"{out}: not empty and not an earlier OUT_DIR (no cases.json): give a new directory")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    listed = []
    for name, why, mutate in cases(other):
        d = os.path.join(out, name)
        os.makedirs(d)
        shutil.copytree(good, os.path.join(d, "cache"))
        d = os.path.join(d, "cache")
        mutate(d, m, text)
        listed.append({"name": name, "dir": d, "why": why})
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(listed, f, indent=2)
    print(f"{out}: {len(listed)} cases{'' if other else ' (no OTHER_CACHE_DIR: shard_from_other_cache skipped)'}")


if __name__ == "__main__":
    main(sys.argv)

"""The cache reader: manifest checks, shard checksums and decoding (pyarrow + numpy)."""
import hashlib
import json
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class CacheError(Exception):
    """A cache that is not what its manifest says, or not one this reader can read."""


def _compact(text):
    """JSON text without the whitespace outside strings: distill writes manifest.json
    pretty-printed and checksums the compact form of the same serialisation."""
    out, in_string, escaped = [], False, False
    for ch in text:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif ch not in " \t\r\n":
            out.append(ch)
    return "".join(out)


def open_cache(path, filesystem=None):
    """Open the cache at `path`: a directory, or a URI pyarrow's filesystems understand
    (s3://, gs://, abfs://, file://); or pass a `pyarrow.fs.FileSystem` (an fsspec one
    through `pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))`)."""
    if filesystem is None:
        if "://" in str(path):
            filesystem, path = pafs.FileSystem.from_uri(str(path))
        else:
            filesystem = pafs.LocalFileSystem()
    return Cache(filesystem, str(path).rstrip("/"))


class Cache:
    """An opened cache whose manifest has been read and checked."""

    def __init__(self, fs, path):
        self.fs, self.path = fs, path
        where = posixpath.join(path, MANIFEST)
        try:
            with fs.open_input_stream(where) as f:
                text = f.read().decode("utf-8")
        except (FileNotFoundError, OSError) as e:
            raise CacheError(f"{where}: cannot read the manifest ({e}); a cache being written has only manifest.partial.json") from e
        self.manifest = m = json.loads(text)
        self._check_manifest(text)
        self.k, self.vocab_size = m["top_k"], m["vocab_size"]
        self.encoding = m["encoding"]["logprobs"]
        self.step = m["encoding"]["logprob_step"]

    def _fail(self, what):
        raise CacheError(f"{self.path}: {what}")

    def _check_manifest(self, text):
        m = self.manifest
        if m.get("schema_version") != SCHEMA_VERSION:
            self._fail(f"schema_version {m.get('schema_version')}, this reader reads {SCHEMA_VERSION}")
        if not m.get("complete"):
            self._fail("the manifest is not complete")
        if m.get("checksum"):
            compact = _compact(text).replace(f'"checksum":"{m["checksum"]}"', '"checksum":""', 1)
            if hashlib.sha256(compact.encode("utf-8")).hexdigest() != m["checksum"]:
                self._fail("manifest.json's checksum does not match its content (edited by hand?)")
        at, positions = 0, 0
        for s in m["shards"]:
            if "/" in s["file"] or s["file"].startswith("."):
                self._fail(f"shard file name {s['file']!r} is not a plain file name")
            if s["first_row"] != at:
                self._fail(f"shard {s['file']} starts at row {s['first_row']}, expected {at}")
            at += s["rows"]
            positions += s["positions"]
        if at != m["dataset"]["rows"] or at != m["totals"]["rows"]:
            self._fail(f"the shards cover {at} rows, the dataset has {m['dataset']['rows']}")
        if positions != m["totals"]["positions"]:
            self._fail(f"the shards hold {positions} positions, totals.positions says {m['totals']['positions']}")

    def _shard_bytes(self, s):
        where = posixpath.join(self.path, s["file"])
        with self.fs.open_input_stream(where) as f:
            data = f.read()
        if len(data) != s["bytes"]:
            self._fail(f"{s['file']} is {len(data)} bytes, the manifest records {s['bytes']}")
        sha = hashlib.sha256(data).hexdigest()
        if sha != s["sha256"]:
            self._fail(f"{s['file']}: checksum mismatch (file {sha}, manifest {s['sha256']})")
        return data

    def verify(self):
        """Check every shard's size and SHA-256 against the manifest; returns the count."""
        for s in self.manifest["shards"]:
            self._shard_bytes(s)
        return len(self.manifest["shards"])

    def read_shard(self, index):
        """Shard `index`, checked and decoded: a dict of numpy arrays, one entry per cached
        position (`ids`, `logprobs` `[n, k]`; `hidden` a dict of `[n, dim]` float32)."""
        s = self.manifest["shards"][index]
        t = pq.read_table(pa.BufferReader(self._shard_bytes(s)))
        if t.num_rows != s["positions"]:
            self._fail(f"{s['file']} has {t.num_rows} positions, the manifest records {s['positions']}")
        k = self.k
        n = t.num_rows

        def lists(name, dtype):
            col = t.column(name).combine_chunks()
            offsets = col.offsets.to_numpy()
            if not (np.diff(offsets) == k).all():
                self._fail(f"{s['file']}: `{name}` lists are not all {k} long")
            values = col.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[0] + n * k]
            return values.astype(dtype).reshape(n, k)

        ids = lists("top_ids", np.int64)
        if n and ids.max() >= self.vocab_size:
            self._fail(f"{s['file']}: an id is outside the vocabulary of {self.vocab_size}")
        top1 = t.column("top1_logprob").to_numpy().astype(np.float64)
        if self.encoding == "delta_u16":
            deltas = lists("logprob_deltas", np.float64)
            logprobs = (top1[:, None] - self.step * deltas.cumsum(1)).astype(np.float32)
        else:
            logprobs = lists("top_logprobs", np.float32)
        hard = t.column("hard_label")
        out = {
            "row": t.column("row").to_numpy().astype(np.int64),
            "position": t.column("position").to_numpy().astype(np.int64),
            "hard_label": hard.fill_null(-1).to_numpy().astype(np.int64),
            "labelled": hard.is_valid().to_numpy(zero_copy_only=False),
            "hard_label_logprob": t.column("hard_label_logprob").fill_null(np.nan).to_numpy().astype(np.float32),
            "ids": ids,
            "logprobs": logprobs,
            "tail_logmass": t.column("tail_logmass").to_numpy().astype(np.float32),
            "entropy": t.column("entropy").to_numpy().astype(np.float32),
            "hidden": {},
        }
        for h in self.manifest.get("hidden_states", []):
            col = t.column(h["column"]).combine_chunks()
            offsets = col.offsets.to_numpy()
            if not (np.diff(offsets) == h["dim"]).all():
                self._fail(f"{s['file']}: `{h['column']}` lists are not all {h['dim']} long")
            values = col.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[0] + n * h["dim"]]
            out["hidden"][h["output"]] = values.astype(np.float32).reshape(n, h["dim"])
        if n and not ((out["row"] >= s["first_row"]) & (out["row"] < s["first_row"] + s["rows"])).all():
            self._fail(f"{s['file']}: a row lies outside the shard's rows")
        return out

    def rows(self, shards=None):
        """One dict per dataset row that has cached positions, in dataset order: `row`,
        `positions` `[p]`, `ids`/`logprobs` `[p, k]`, `tail_logmass`, `hard_label`,
        `labelled` `[p]` (and `hidden`)."""
        for i in (range(len(self.manifest["shards"])) if shards is None else shards):
            b = self.read_shard(i)
            starts = np.flatnonzero(np.r_[True, b["row"][1:] != b["row"][:-1]]) if len(b["row"]) else []
            ends = list(starts[1:]) + [len(b["row"])]
            for a, e in zip(starts, ends):
                yield {
                    "row": int(b["row"][a]),
                    "positions": b["position"][a:e],
                    "ids": b["ids"][a:e],
                    "logprobs": b["logprobs"][a:e],
                    "tail_logmass": b["tail_logmass"][a:e],
                    "hard_label": b["hard_label"][a:e],
                    "labelled": b["labelled"][a:e],
                    "hidden": {name: v[a:e] for name, v in b["hidden"].items()},
                }

    def summary(self):
        m = self.manifest
        b = sum(s["bytes"] for s in m["shards"])
        pos = max(1, m["totals"]["positions"])
        lines = [
            f"cache {self.path}",
            f"  schema v{m['schema_version']}, written by {m['tool']['name']} {m['tool']['version']}",
            f"  task {m['task']}, positions {m['positions']}",
            f"  teacher {m['teacher']['file']} (sha256 {m['teacher']['sha256'][:12]})",
            f"  vocab_size {m['vocab_size']}, top_k {m['top_k']}, temperature {m['temperature']}",
            f"  rows {m['totals']['rows']}, positions {m['totals']['positions']}, shards {len(m['shards'])}",
            f"  bytes {b}: {b / pos:.1f} per position",
        ]
        if m.get("sampled"):
            lines.append(f"  sampled soft labels: {m['sampled']}")
        for h in m.get("hidden_states", []):
            lines.append(f"  hidden state {h['output']}: {h['dim']} values per position")
        return "\n".join(lines)

"""The cache reader: manifest checks, shard checksums, stamps and decoding (pyarrow +
numpy). It refuses what `distill verify` refuses: see manifest.py for the manifest, and
`Cache._read` for the files (only bounded regular files, and no link out of the cache)."""
import fcntl
import hashlib
import json
import os
import posixpath
import stat

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import manifest as mf

SCHEMA_VERSION = mf.SCHEMA_VERSION
MANIFEST = "manifest.json"
PARTIAL_MANIFEST = "manifest.partial.json"
LOCK = ".distill.lock"


class CacheError(Exception):
    """A cache that is not what its manifest says, or not one this reader can read."""


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


def _kind(mode):
    """What a file that is not a regular one is, in words."""
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "not a regular file"


def _read_fd(fd, n):
    """Up to `n` bytes from the open descriptor `fd`."""
    chunks = []
    while n > 0:
        chunk = os.read(fd, min(n, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _list_list(t):
    """`List<t>` as distill writes it (items named `item`, not nullable)."""
    return pa.list_(pa.field("item", t, nullable=False))


class Cache:
    """An opened cache whose manifest has been read and checked."""

    def __init__(self, fs, path):
        if isinstance(fs, pafs.SubTreeFileSystem) and isinstance(fs.base_fs, pafs.LocalFileSystem):
            fs, path = fs.base_fs, posixpath.join(fs.base_path, path).rstrip("/")  # a local directory: links are checked
        self.fs, self.path = fs, path
        self.local = isinstance(fs, pafs.LocalFileSystem)
        self._hold = self._read_hold() if self.local else None
        where = posixpath.join(path, MANIFEST)
        self._missing_manifest(where)
        data = self._read(self._inside(MANIFEST, "the cache"), cap=mf.MANIFEST_CAP)
        try:
            m = mf.read_manifest(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise CacheError(f"cache {where}: manifest is not valid: not UTF-8 ({e.reason} at byte {e.start})") from None
        except mf.Invalid as e:
            raise CacheError(f"cache {where}: manifest is not valid: {e}") from None
        try:
            mf.check_checksum(m)
            mf.validate(m)
        except mf.Invalid as e:
            raise CacheError(f"cache {where}: {e}") from None
        if not m["complete"]:
            raise CacheError(f"cache {where}: manifest.json says complete: false; a cache being written has only manifest.partial.json")
        self.manifest = m
        self.k, self.vocab_size = m["top_k"], m["vocab_size"]
        self.encoding = m["encoding"]["logprobs"]
        self.step = m["encoding"]["logprob_step"]

    def __getstate__(self):
        """A pickled reader (a DataLoader worker's copy) leaves the lock to the original."""
        return dict(self.__dict__, _hold=None)

    def _fail(self, where, what):
        """Refuse the cache, naming the file `where`."""
        raise CacheError(f"cache {where}: {what}")

    def _read_hold(self):
        """A shared lock on the cache's lock file while this reader lives, so a writer
        (`cache-teacher --overwrite`, `merge`) cannot replace the shards mid-read; refused
        while a writer holds it. None where there is no lock file, or it is not a regular one."""
        lock = os.path.join(self.path, LOCK)
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return None
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if isinstance(e, BlockingIOError):
                raise CacheError(f"{self.path}: a distill process is writing this cache (it holds {lock}); wait for it to finish") from None
            raise CacheError(f"{lock}: {e.strerror}") from None
        return os.fdopen(fd, "rb")  # closed, and the lock released, with the reader

    def _missing_manifest(self, where):
        """Refuse a directory without manifest.json, saying what it holds instead."""
        if self.fs.get_file_info(where).type != pafs.FileType.NotFound:
            return
        try:
            names = [posixpath.basename(i.path) for i in self.fs.get_file_info(pafs.FileSelector(self.path))]
        except (OSError, pa.ArrowException):
            names = []
        if any(n.startswith("manifest.part-") for n in names):
            self._fail(self.path, "holds part manifests of a sharded capture (cache-teacher --part I/N) but no manifest.json; "
                                  "combine the parts with `distill merge --out DIR PART_DIR...`")
        if PARTIAL_MANIFEST in names:
            self._fail(self.path, "incomplete cache: cache-teacher did not finish (manifest.partial.json but no manifest.json); "
                                  "rerun the same cache-teacher command to resume it")
        self._fail(self.path, "no manifest.json: not a distill cache directory")

    def _inside(self, name, what="manifest.json"):
        """The path of `name` (a file `what` names) if, links resolved, it stays inside the
        cache directory."""
        where = posixpath.join(self.path, name)
        if self.local:
            real_dir, real = os.path.realpath(self.path), os.path.realpath(where)
            if os.path.commonpath([real_dir, real]) != real_dir:
                raise CacheError(f"{where}: {what} names {json.dumps(name)}, a link that leads out of {self.path} (to {real})")
        return where

    def _read(self, where, cap=None, size=None):
        """The whole of the regular file `where`, refused unread if it is anything else (a
        FIFO, a device, a directory), over `cap` bytes, or not `size` bytes. A local file is
        opened non-blocking and checked on the open descriptor, so a FIFO neither blocks nor
        is read and a link swapped after a check cannot slip a device in."""
        if not self.local:
            info = self.fs.get_file_info(where)
            if info.type == pafs.FileType.NotFound:
                self._fail(where, "shard listed in manifest.json is missing")
            if info.type != pafs.FileType.File:
                raise CacheError(f"{where}: is not a regular file; distill reads only regular files here")
            self._check_size(where, info.size, cap, size)
            try:
                with self.fs.open_input_stream(where) as f:
                    data = f.read(info.size + 1)
            except (OSError, pa.ArrowException) as e:
                raise CacheError(f"{where}: {e}") from None
            return self._check_read(where, info.size, data)
        try:
            fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            self._fail(where, "shard listed in manifest.json is missing")
        except OSError as e:
            raise CacheError(f"{where}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CacheError(f"{where}: is {_kind(st.st_mode)}; distill reads only regular files here")
            self._check_size(where, st.st_size, cap, size)
            return self._check_read(where, st.st_size, _read_fd(fd, st.st_size + 1))
        except OSError as e:
            raise CacheError(f"{where}: {e.strerror}") from None
        finally:
            os.close(fd)

    def _check_size(self, where, n, cap, size):
        """Refuse a file of `n` bytes over `cap`, or other than the `size` its shard records."""
        if cap is not None and n > cap:
            raise CacheError(f"{where}: is {n} bytes, over the {cap}-byte limit for a cache manifest")
        if size is not None and n != size:
            self._fail(where, f"shard is {n} bytes but manifest.json records {size} (truncated or replaced)")

    def _check_read(self, where, n, data):
        """`data`, if it is the `n` bytes stat reported (one more: the file grew)."""
        if len(data) != n:
            raise CacheError(f"{where}: changed size while it was read ({n} bytes, then {len(data)})")
        return data

    def _shard_bytes(self, s):
        """Shard `s`'s bytes, checked against the size and SHA-256 the manifest records."""
        where = self._inside(s["file"])
        data = self._read(where, size=s["bytes"])
        sha = hashlib.sha256(data).hexdigest()
        if sha != s["sha256"]:
            self._fail(where, f"checksum mismatch: file has sha256 {sha}, manifest.json records {s['sha256']}")
        return where, data

    def _parquet(self, where, data):
        """The Parquet file in `data` (its footer parsed)."""
        try:
            return pq.ParquetFile(pa.BufferReader(data))
        except (OSError, ValueError, pa.ArrowException) as e:
            raise CacheError(f"{where}: parquet: {e}") from None

    def _check_stamp(self, where, s, metadata):
        """The shard's stamp (Parquet key-value metadata) must describe the shard the manifest
        lists: the same fingerprint, place and settings. Shards written before stamps existed
        carry none and are read as before."""
        text = (metadata.metadata or {}).get(mf.STAMP_METADATA_KEY.encode())
        if text is None:
            return
        try:
            stamp = mf.load(mf.parse(text.decode("utf-8")), "ShardStamp", "")
        except (UnicodeDecodeError, mf.Invalid) as e:
            self._fail(where, f"the shard's `{mf.STAMP_METADATA_KEY}` metadata is not valid: {e}")
        why = mf.stamp_difference(stamp, mf.expected_stamp(self.manifest, s))
        if why:
            self._fail(where, f"does not belong to this cache as manifest.json describes it ({why}): "
                              "a shard copied from another cache, or an edited manifest")

    def verify(self):
        """Check every shard's size, SHA-256 and stamp against the manifest; returns the count."""
        for s in self.manifest["shards"]:
            where, data = self._shard_bytes(s)
            self._check_stamp(where, s, self._parquet(where, data).metadata)
        return len(self.manifest["shards"])

    def _check_layout(self, where, pf, size):
        """Every column chunk inside the file, and every column of the shard schema there with
        its type."""
        meta = pf.metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                col = meta.row_group(g).column(c)
                start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
                length = col.total_compressed_size
                if start is None or start < 0 or length < 0 or start + length > size:
                    self._fail(where, f"row group {g}, column {col.path_in_schema}: chunk at {start}+{length} lies outside the {size}-byte file")
        want = {"row": pa.uint64(), "position": pa.uint32(), "hard_label": pa.int64(), "hard_label_logprob": pa.float32(),
                "top_ids": _list_list(pa.uint32()), "top1_logprob": pa.float32()}
        if self.encoding == "delta_u16":
            want["logprob_deltas"] = _list_list(pa.uint16())
        else:
            want["top_logprobs"] = _list_list(pa.float32())
        want.update(tail_logmass=pa.float32(), entropy=pa.float32())
        want.update((h["column"], _list_list(pa.float16())) for h in self.manifest["hidden_states"])
        schema = pf.schema_arrow
        for name, t in want.items():
            if schema.get_field_index(name) < 0:
                self._fail(where, f"column `{name}` is missing")
            found = schema.field(name).type
            if found != t or (pa.types.is_list(t) and found.value_field.name != "item"):
                self._fail(where, f"column `{name}` has type {found} but the schema says {t}")

    def read_shard(self, index):
        """Shard `index`, checked and decoded: a dict of numpy arrays, one entry per cached
        position (`ids`, `logprobs` `[n, k]`; `hidden` a dict of `[n, dim]` float32)."""
        s = self.manifest["shards"][index]
        where, data = self._shard_bytes(s)
        pf = self._parquet(where, data)
        self._check_layout(where, pf, len(data))
        self._check_stamp(where, s, pf.metadata)
        if pf.metadata.num_rows != s["positions"]:
            self._fail(where, f"shard has {pf.metadata.num_rows} positions but manifest.json records {s['positions']}")
        try:
            t = pf.read()
        except (OSError, ValueError, pa.ArrowException) as e:
            raise CacheError(f"{where}: parquet: {e}") from None
        n = t.num_rows
        rows = t.column("row").to_numpy().astype(np.int64)
        end = s["first_row"] + s["rows"]
        outside = (rows < s["first_row"]) | (rows >= end)
        if outside.any():
            self._fail(where, f"row {rows[outside.argmax()]} lies outside the shard's rows {s['first_row']}..{end} recorded in manifest.json")

        def lists(name, width, dtype):
            """The `[n, width]` values of the list column `name`, each list checked to hold `width`."""
            col = t.column(name).combine_chunks()
            offsets = col.offsets.to_numpy()
            wrong = np.flatnonzero(np.diff(offsets) != width)
            if len(wrong):
                i = wrong[0]
                expected = "the manifest's dim" if name.startswith("hidden_") else "top_k"
                self._fail(where, f"`{name}` of position {i} in the batch has {offsets[i + 1] - offsets[i]} entries, expected {expected} = {width}")
            if col.null_count:
                self._fail(where, f"`{name}` has null lists")
            values = col.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[0] + n * width]
            return values.astype(dtype).reshape(n, width)

        ids = lists("top_ids", self.k, np.int64)
        if n and ids.max() >= self.vocab_size:
            self._fail(where, f"token id {ids.max()} in `top_ids` is outside the vocabulary of {self.vocab_size}")
        top1 = t.column("top1_logprob").to_numpy().astype(np.float64)
        if self.encoding == "delta_u16":
            deltas = lists("logprob_deltas", self.k, np.float64)
            logprobs = (top1[:, None] - self.step * deltas.cumsum(1)).astype(np.float32)
        else:
            logprobs = lists("top_logprobs", self.k, np.float32)
        hard = t.column("hard_label")
        return {
            "row": rows,
            "position": t.column("position").to_numpy().astype(np.int64),
            "hard_label": hard.fill_null(-1).to_numpy().astype(np.int64),
            "labelled": hard.is_valid().to_numpy(zero_copy_only=False),
            "hard_label_logprob": t.column("hard_label_logprob").fill_null(np.nan).to_numpy().astype(np.float32),
            "ids": ids,
            "logprobs": logprobs,
            "tail_logmass": t.column("tail_logmass").to_numpy().astype(np.float32),
            "entropy": t.column("entropy").to_numpy().astype(np.float32),
            "hidden": {h["output"]: lists(h["column"], h["dim"], np.float32) for h in self.manifest["hidden_states"]},
        }

    def rows(self, shards=None):
        """One dict per dataset row that has cached positions, in dataset order: `row`,
        `positions` `[p]`, `ids`/`logprobs` `[p, k]`, `tail_logmass`, `hard_label`,
        `hard_label_logprob` (NaN where null), `labelled` `[p]` (and `hidden`)."""
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
                    "hard_label_logprob": b["hard_label_logprob"][a:e],
                    "labelled": b["labelled"][a:e],
                    "hidden": {name: v[a:e] for name, v in b["hidden"].items()},
                }

    def summary(self):
        """What `python -m distill_cache inspect` prints."""
        m = self.manifest
        b = sum(s["bytes"] for s in m["shards"])
        pos = max(1, m["totals"]["positions"])
        lines = [
            f"cache {self.path}",
            f"  schema v{m['schema_version']}, written by {m['tool']['name']} {m['tool']['version']}",
            f"  task {m['task']}, positions {m['positions']}",
            f"  teacher {m['teacher']['file']} (sha256 {m['teacher']['sha256'][:12]})",
            f"  vocab_size {m['vocab_size']}, top_k {m['top_k']}, temperature {mf.format_float(m['temperature'], f32=True)}",
            f"  rows {m['totals']['rows']}, positions {m['totals']['positions']}, shards {len(m['shards'])}",
            f"  bytes {b}: {b / pos:.1f} per position",
        ]
        if m.get("sampled"):
            lines.append(f"  sampled soft labels: {m['sampled']}")
        for h in m.get("hidden_states", []):
            lines.append(f"  hidden state {h['output']}: {h['dim']} values per position")
        return "\n".join(lines)

"""manifest.json and shard stamps as distill reads them (src/cache/manifest.rs, stamp.rs):
parsed into the same typed fields (unknown, missing, duplicate and mistyped keys refused,
naming the key), checksummed over the JSON serde_json writes for those fields, and held to
the same structural rules."""
import hashlib
import json
import math
import re
from decimal import Decimal

import numpy as np

SCHEMA_VERSION = 1
# Manifest files larger than this are refused before they are read (src/untrusted.rs Cap::Manifest).
MANIFEST_CAP = 64 << 20
# Parquet key-value metadata key of a shard's stamp (src/cache/schema.rs STAMP_METADATA_KEY).
STAMP_METADATA_KEY = "distill.shard"
# The largest vocabulary (or class count) a manifest may declare (manifest.rs MAX_VOCAB).
MAX_VOCAB = 1 << 24
# Halfway from the largest f32 to 2**128: a number this large or larger reads as infinity.
F32_EDGE = 2.0**128 - 2.0**103
F32_MAX = float(np.finfo(np.float32).max)
# serde_json refuses JSON nested this deep or deeper.
DEPTH_LIMIT = 128

U32, U64, I64, F32, F64, BOOL, STR, VALUE = "u32", "u64", "i64", "f32", "f64", "bool", "str", "value"
INT_RANGES = {U32: (0, 2**32 - 1), U64: (0, 2**64 - 1), I64: (-(2**63), 2**63 - 1)}
DEFAULT, SKIP = "default", "skip"  # serde(default); serde(default, skip_serializing_if = <is default>)


def opt(ty):
    """`Option<ty>`."""
    return ("opt", ty)


def vec(ty):
    """`Vec<ty>`."""
    return ("vec", ty)


def enum(*names):
    """A Rust enum of unit variants, written as their snake_case names."""
    return ("enum", names)


POSITIONS = enum("example", "completion", "all", "assistant")
LOGPROBS = enum("delta_u16", "f32")

# Each struct's fields in declaration order (serde writes them in this order), with their
# types and serde attributes; every struct has deny_unknown_fields.
STRUCTS = {
    "Manifest": [
        ("schema_version", U32, None), ("complete", BOOL, None), ("part", opt("PartInfo"), SKIP),
        ("tool", "ToolInfo", None), ("task", enum("classification", "causal_lm"), None),
        ("teacher", "TeacherInfo", None), ("tokenizer", opt("TokenizerInfo"), None),
        ("vocab_size", U64, None), ("top_k", U64, None), ("temperature", F32, None),
        ("positions", POSITIONS, None), ("encoding", "EncodingInfo", None),
        ("dataset", "DatasetInfo", None), ("text", opt("TextColumns"), None),
        ("features", vec(STR), None), ("label_column", opt(STR), None),
        ("sampled", opt("SampledInfo"), SKIP), ("hidden_states", vec("HiddenStateInfo"), SKIP),
        ("generation", opt("GenerationInfo"), SKIP), ("rows_per_shard", U64, None),
        ("fingerprint", STR, None), ("settings", VALUE, None), ("command", vec(STR), None),
        ("totals", "Totals", None), ("shards", vec("ShardInfo"), None), ("checksum", STR, DEFAULT),
    ],
    "PartInfo": [("index", U64, None), ("count", U64, None)],
    "ToolInfo": [("name", STR, None), ("version", STR, None)],
    "TeacherInfo": [
        ("file", STR, None), ("sha256", STR, None), ("bytes", U64, None),
        ("external_data", vec("ExternalDataInfo"), SKIP), ("inputs", vec("IoInfo"), None),
        ("outputs", vec("IoInfo"), None), ("logits_output", STR, None),
    ],
    "ExternalDataInfo": [("file", STR, None), ("bytes", U64, None), ("sha256", STR, None)],
    "IoInfo": [("name", STR, None), ("dtype", STR, None), ("shape", vec(I64), None), ("filled_from", opt(STR), SKIP)],
    "TokenizerInfo": [("file", STR, None), ("sha256", STR, None), ("vocab_size", U64, None)],
    "EncodingInfo": [("logprobs", LOGPROBS, None), ("logprob_step", F64, None), ("max_abs_error", F64, None), ("compression", STR, None)],
    "DatasetInfo": [("file", STR, None), ("format", STR, None), ("sha256", STR, None), ("rows", U64, None), ("files", vec("DataFileInfo"), SKIP)],
    "DataFileInfo": [("file", STR, None), ("rows", U64, None), ("bytes", U64, None), ("sha256", STR, None)],
    "TextColumns": [
        ("text", opt(STR), None), ("prompt", opt(STR), None), ("completion", opt(STR), None),
        ("messages", opt(STR), SKIP), ("conversational", BOOL, SKIP), ("token_ids", BOOL, SKIP),
        ("chat_template_sha256", opt(STR), SKIP), ("positions", POSITIONS, None), ("max_seq_len", U64, None),
    ],
    "SampledInfo": [("draws", U64, None), ("seed", U64, None), ("exact_top", U64, SKIP)],
    "HiddenStateInfo": [
        ("output", STR, None), ("column", STR, None), ("teacher_dim", U64, None), ("dim", U64, None),
        ("projection_seed", opt(U64), SKIP),
    ],
    "GenerationInfo": [
        ("prompts", "DatasetInfo", None), ("prompt_column", STR, None), ("chat", BOOL, None),
        ("dataset_file", STR, None), ("max_new_tokens", U64, None), ("temperature", F32, None),
        ("top_p", F32, None), ("samples_per_prompt", U32, None), ("seed", U64, None),
        ("eos_ids", vec(U32), None), ("kv_cache", BOOL, None), ("stopped_at_eos", U64, None),
    ],
    "Totals": [("rows", U64, None), ("positions", U64, None), ("truncated_rows", U64, None), ("rows_without_positions", U64, None)],
    "ShardInfo": [
        ("file", STR, None), ("first_row", U64, None), ("rows", U64, None), ("positions", U64, None),
        ("bytes", U64, None), ("sha256", STR, None),
    ],
    "ShardStamp": [
        ("fingerprint", STR, None), ("index", U64, None), ("first_row", U64, None), ("rows", U64, None),
        ("top_k", U64, None), ("vocab_size", U64, None), ("temperature", F32, None),
        ("logprobs", LOGPROBS, None), ("logprob_step", F64, None), ("features", vec(STR), None),
        ("label_column", opt(STR), None),
    ],
}


class Invalid(ValueError):
    """JSON that does not read as the type distill expects, or breaks a manifest rule."""


class _Pairs(list):
    """A JSON object's (key, value) pairs in file order, duplicates kept."""


def _int(text):
    """An integer literal; `-0` reads as the float -0.0, as serde_json reads it."""
    return -0.0 if text == "-0" else int(text)


class _Literal(float):
    """A float read from JSON that keeps its literal, for reading it as an f32."""


def _float(text):
    """A float literal; one beyond f64 is refused, as serde_json refuses it."""
    value = _Literal(text)
    if math.isinf(value):
        raise Invalid(f"number out of range: {text[:40]}")
    value.text = text
    return value


def _to_f32(v, key):
    """The f32 serde_json reads the JSON number `v` as: the nearest f32 to the number as
    written (ties to even), not to its f64; one that rounds past the largest f32 is out of
    range."""
    def exact():
        """|v| as written, exactly."""
        return Decimal(v.text if isinstance(v, _Literal) else v).copy_abs()

    d = float(v)
    a = abs(d)
    if a >= F32_EDGE and not (a == F32_EDGE and exact() < Decimal(F32_EDGE)):
        raise Invalid(f"`{key}`: number out of range for an f32")
    f = float(np.float32(a)) if a < F32_EDGE else F32_MAX
    if f != a:
        with np.errstate(over="ignore"):
            other = float(np.nextafter(np.float32(f), np.float32(np.inf if a > f else 0.0)))
        if (f + other) / 2 == a:  # the f64 sits on a midpoint of two f32: the literal decides
            e = exact()
            f = max(f, other) if e > Decimal(a) else min(f, other) if e < Decimal(a) else f
    return math.copysign(f, d)


def _constant(text):
    """NaN and Infinity are not JSON."""
    raise Invalid(f"{text} is not a JSON value")


def parse(text):
    """Parse JSON text as serde_json does, objects kept as `_Pairs` for the typed reading."""
    try:
        value = json.loads(text, object_pairs_hook=_Pairs, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise Invalid("recursion limit exceeded (JSON nested too deeply)") from None
    except Invalid:
        raise
    except ValueError as e:  # json.JSONDecodeError, an integer too long to convert
        raise Invalid(str(e)) from None
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, list):  # an array, or an object's pairs
            if depth >= DEPTH_LIMIT:
                raise Invalid("recursion limit exceeded (JSON nested too deeply)")
            items = (x for pair in v for x in pair) if isinstance(v, _Pairs) else v
            stack.extend((x, depth + 1) for x in items)
        elif isinstance(v, str) and not _is_utf8(v):
            raise Invalid(f"lone surrogate in a string: {json.dumps(v)[:60]}")
    return value


def _is_utf8(s):
    """Whether `s` can be written as UTF-8 (a lone surrogate from a `\\ud800` escape cannot)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(v):
    """What a parsed JSON value is, in words."""
    if isinstance(v, _Pairs):
        return "an object"
    if isinstance(v, list):
        return "an array"
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return f"the number {getattr(v, 'text', v)}"
    return f"the string {json.dumps(v)[:60]}"


def _at(key, name):
    """The dotted key of field `name` inside `key`."""
    return f"{key}.{name}" if key else name


def default(ty):
    """The value serde(default) gives a missing field of type `ty`."""
    if isinstance(ty, tuple):
        return None if ty[0] == "opt" else []
    return {BOOL: False, STR: ""}.get(ty, 0)


def load(v, ty, key):
    """`v` (from `parse`) read as serde reads type `ty`; the error names `key`. Structs
    become dicts holding every field, f32 values the float32 they round to."""
    if isinstance(ty, tuple):
        kind, inner = ty
        if kind == "opt":
            return None if v is None else load(v, inner, key)
        if kind == "vec":
            if not isinstance(v, list) or isinstance(v, _Pairs):
                raise Invalid(f"`{key}` must be an array, not {_kind(v)}")
            return [load(x, inner, f"{key}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, _Pairs) and len(v) == 1 and v[0][1] is None:
            v = v[0][0]  # serde also reads a unit variant written as {"name": null}
        if not isinstance(v, str) or v not in inner:
            raise Invalid(f"`{key}` must be one of {', '.join(inner)}, not {_kind(v)}")
        return v
    if ty in STRUCTS:
        return _load_struct(v, ty, key)
    if ty == VALUE:
        return _load_value(v, key)
    if ty == BOOL and isinstance(v, bool) or ty == STR and isinstance(v, str):
        return v
    if ty in INT_RANGES and type(v) is int and INT_RANGES[ty][0] <= v <= INT_RANGES[ty][1]:
        return v
    if ty in (F32, F64) and type(v) in (int, float, _Literal):
        try:
            return _to_f32(v, key) if ty == F32 else float(v)
        except OverflowError:
            raise Invalid(f"`{key}`: number out of range") from None
    want = {BOOL: "true or false", STR: "a string", F32: "a number", F64: "a number"}.get(ty)
    want = want or "an integer in {}..={}".format(*INT_RANGES[ty])
    raise Invalid(f"`{key}` must be {want}, not {_kind(v)}")


def _load_struct(v, name, key):
    """A struct from an object (or, as serde also reads it, an array of its fields in order)."""
    fields = STRUCTS[name]
    names = [f[0] for f in fields]
    if isinstance(v, _Pairs):
        given = {}
        for k, x in v:
            if k not in names:
                raise Invalid(f"unknown field `{_at(key, k)}`, expected one of {', '.join(names)}")
            if k in given:
                raise Invalid(f"duplicate field `{_at(key, k)}`")
            given[k] = x
    elif isinstance(v, list) and len(v) <= len(fields):
        given = dict(zip(names, v))
    else:
        raise Invalid(f"{f'`{key}`' if key else 'the top level'} must be an object ({name}), not {_kind(v)}")
    out = {}
    for field, ty, attr in fields:
        if field in given:
            out[field] = load(given[field], ty, _at(key, field))
        elif attr or (isinstance(v, _Pairs) and isinstance(ty, tuple) and ty[0] == "opt"):
            out[field] = default(ty)
        else:
            raise Invalid(f"missing field `{_at(key, field)}`")
    return out


def _load_value(v, key):
    """A `serde_json::Value` (preserve_order): a repeated key keeps its first place and its
    last value; an integer outside i64/u64 becomes a float."""
    if isinstance(v, _Pairs):
        return {k: _load_value(x, _at(key, k)) for k, x in dict(v).items()}
    if isinstance(v, list):
        return [_load_value(x, f"{key}[{i}]") for i, x in enumerate(v)]
    if type(v) is int and not -(2**63) <= v < 2**64:
        try:
            return float(v)
        except OverflowError:
            raise Invalid(f"`{key}`: number out of range") from None
    return float(v) if isinstance(v, _Literal) else v


def format_float(x, f32=False):
    """A finite float as serde_json (zmij) writes it: the shortest digits that read back to
    the same f64 (or f32), plainly for decimal exponents -5..=15 (f32: -6..=12), else as
    `1.5e+20` / `1e-7`."""
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    text = np.format_float_scientific(np.float32(x) if f32 else np.float64(x), unique=True, trim="-")
    sign, text = ("-", text[1:]) if text.startswith("-") else ("", text)
    mantissa, exponent = text.split("e")
    digits, e = mantissa.replace(".", ""), int(exponent)
    low, high = (-6, 12) if f32 else (-5, 15)
    if not low <= e <= high:
        return f"{sign}{digits[0]}{'.' + digits[1:] if len(digits) > 1 else ''}e{'+' if e >= 0 else '-'}{abs(e)}"
    if len(digits) - 1 <= e:
        return f"{sign}{digits}{'0' * (e + 1 - len(digits))}.0"
    if e >= 0:
        return f"{sign}{digits[:e + 1]}.{digits[e + 1:]}"
    return f"{sign}0.{'0' * (-e - 1)}{digits}"


def _string(s):
    """A JSON string as serde_json writes it (UTF-8, control characters escaped)."""
    return json.dumps(s, ensure_ascii=False)


def dump(v, ty):
    """Compact JSON of `v` (from `load`) as serde_json writes a value of type `ty`."""
    if isinstance(ty, tuple):
        kind, inner = ty
        if kind == "opt":
            return "null" if v is None else dump(v, inner)
        if kind == "vec":
            return "[" + ",".join(dump(x, inner) for x in v) + "]"
        return _string(v)
    if ty in STRUCTS:
        parts = [f"{_string(f)}:{dump(v[f], t)}" for f, t, attr in STRUCTS[ty] if not (attr == SKIP and v[f] == default(t))]
        return "{" + ",".join(parts) + "}"
    if ty == F32:
        return format_float(v, f32=True) if math.isfinite(v) else "null"
    return _dump_value(v)


def _dump_value(v):
    """Compact JSON of a `serde_json::Value`."""
    if isinstance(v, dict):
        return "{" + ",".join(f"{_string(k)}:{_dump_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_dump_value(x) for x in v) + "]"
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, int):
        return str(v)
    return _string(v)


def read_manifest(text):
    """A manifest's JSON text read into typed fields (`Manifest` in manifest.rs)."""
    return load(parse(text), "Manifest", "")


def compute_checksum(m):
    """SHA-256 of the manifest's compact JSON with `checksum` set to "" (compute_checksum)."""
    return hashlib.sha256(dump(dict(m, checksum=""), "Manifest").encode("utf-8")).hexdigest()


def check_checksum(m):
    """Refuse a manifest whose `checksum` is not the one its content hashes to (a blank or
    missing one included)."""
    want = compute_checksum(m)
    if m["checksum"] != want:
        raise Invalid(
            f"manifest checksum mismatch (records {_string(m['checksum'])}, content hashes to {want}): "
            "the manifest was edited or damaged"
        )


SHARD_NAME = re.compile(r"shard-([0-9]{1,9})\.parquet")


def shard_index(name):
    """The index `j` of `shard-j.parquet`, or None for any other name."""
    match = SHARD_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def _f32_text(t):
    """An f32 as Rust's `{}` prints it (no exponent)."""
    return np.format_float_positional(np.float32(t), unique=True, trim="-").replace("nan", "NaN")


def validate(m):
    """The structural rules of `Manifest::validate`: known schema version, a vocabulary
    within MAX_VOCAB and top_k within it, a positive temperature, sampled entries that add
    up to top_k, plain shard file names, shards that tile the rows in order and totals that
    add up."""
    if m["schema_version"] != SCHEMA_VERSION:
        raise Invalid(f"schema_version {m['schema_version']} is not supported (this distill reads {SCHEMA_VERSION})")
    if m["vocab_size"] > MAX_VOCAB:
        raise Invalid(
            f"vocab_size {m['vocab_size']} is over the limit of {MAX_VOCAB} (the largest real vocabularies are ~262k): "
            "a damaged or forged manifest"
        )
    if m["top_k"] == 0 or m["top_k"] > m["vocab_size"]:
        raise Invalid(f"top_k {m['top_k']} must be in 1..={m['vocab_size']} (vocab_size)")
    if not (m["temperature"] > 0 and math.isfinite(m["temperature"])):
        raise Invalid(f"temperature {_f32_text(m['temperature'])} must be > 0")
    s = m["sampled"]
    if s is not None and s["exact_top"] + s["draws"] != m["top_k"]:
        raise Invalid(f"sampled soft labels of {s['exact_top']} exact + {s['draws']} drawn entries, but top_k is {m['top_k']}")
    if m["part"] is not None:
        return _validate_part(m, m["part"])
    next_row, positions = 0, 0
    for i, s in enumerate(m["shards"]):
        if shard_index(s["file"]) is None:
            raise Invalid(f"shard {i} file {_string(s['file'])} is not a plain shard-NNNNN.parquet name")
        if s["first_row"] != next_row:
            raise Invalid(f"shard {s['file']} starts at row {s['first_row']} but the previous shard ended at row {next_row}")
        next_row = s["first_row"] + s["rows"]
        if next_row >= 2**64:
            raise Invalid(f"shard {s['file']} row count overflows")
        positions = min(positions + s["positions"], 2**64 - 1)
    if m["complete"]:
        if next_row != m["dataset"]["rows"] or next_row != m["totals"]["rows"]:
            raise Invalid(f"shards cover {next_row} rows but the dataset has {m['dataset']['rows']} (totals say {m['totals']['rows']})")
        if positions != m["totals"]["positions"]:
            raise Invalid(f"shards hold {positions} positions but totals say {m['totals']['positions']}")


def _validate_part(m, part):
    """`validate_part`: a part manifest holds the shards `j` with `j % count == index`, each
    at row `j * rows_per_shard`, in increasing order."""
    index, count = part["index"], part["count"]
    if count == 0 or index >= count:
        raise Invalid(f"part {index}/{count} is not a valid slice")
    last, rows, positions = None, 0, 0
    for s in m["shards"]:
        j = shard_index(s["file"])
        if j is None:
            raise Invalid(f"shard file {_string(s['file'])} is not a plain shard-NNNNN.parquet name")
        if j % count != index or (last is not None and j <= last):
            raise Invalid(f"shard {s['file']} does not belong to part {index}/{count} in order")
        if j * m["rows_per_shard"] >= 2**64 or s["first_row"] != j * m["rows_per_shard"] or s["rows"] > m["rows_per_shard"]:
            raise Invalid(f"shard {s['file']} does not start at row {j} x {m['rows_per_shard']}")
        last = j
        rows = min(rows + s["rows"], 2**64 - 1)
        positions = min(positions + s["positions"], 2**64 - 1)
    if m["complete"] and (rows != m["totals"]["rows"] or positions != m["totals"]["positions"]):
        raise Invalid(
            f"part shards hold {rows} rows / {positions} positions but totals say {m['totals']['rows']} / {m['totals']['positions']}"
        )


def expected_stamp(m, shard):
    """The stamp the manifest `m` says `shard` carries (`ShardStamp::of`)."""
    index = shard_index(shard["file"])
    return {
        "fingerprint": m["fingerprint"], "index": 2**64 - 1 if index is None else index,
        "first_row": shard["first_row"], "rows": shard["rows"], "top_k": m["top_k"],
        "vocab_size": m["vocab_size"], "temperature": m["temperature"],
        "logprobs": m["encoding"]["logprobs"], "logprob_step": m["encoding"]["logprob_step"],
        "features": m["features"], "label_column": m["label_column"],
    }


def stamp_difference(stamp, expected):
    """The first field in which `stamp` (what the shard says) differs from `expected`, as
    `name: the shard says X, the manifest Y` (`ShardStamp::difference`), or None."""
    for name, ty, _ in STRUCTS["ShardStamp"]:
        if stamp[name] != expected[name]:
            text = F64 if ty == F32 else ty  # serde_json::Value holds an f32 as its f64 widening
            return f"{name}: the shard says {dump(stamp[name], text)}, the manifest {dump(expected[name], text)}"
    return None

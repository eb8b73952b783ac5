#!/usr/bin/env bash
# Each pipeline in pipelines/ with its optimiser settings removed from [train] (lr, batch_size,
# steps, epochs, weight_decay), so train-student's defaults apply; the data, student, alpha
# and tail stay the pipeline's. Prints each pipeline's results table (distilled against hard
# labels only, its [eval] seeds). DEFAULTS_TRY="lr = 0.001; steps = 1000" puts those keys
# back into every [train] instead, to compare candidate defaults.
#     bash benches/defaults.sh [pipeline.toml ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo build --release --quiet
bin=target/release/distill
pipes=("$@")
[ ${#pipes[@]} -gt 0 ] || pipes=(pipelines/*.toml)
for p in "${pipes[@]}"; do
    name=$(basename "$p" .toml)
    # A copy one directory below the repository root, so its "../" paths resolve as the
    # original's do; the students go to target/defaults/NAME.
    copy="target/defaults-$name.toml"
    python3 - "$p" "$copy" "$name" <<'PY'
import os, re, sys
src, dst, name = sys.argv[1:]
out, section = [], None
for line in open(src):
    m = re.match(r"\s*\[(\w+)\]", line)
    if m:
        section = m.group(1)
    key = re.match(r"\s*(\w+)\s*=", line)
    if section == "train" and key and key.group(1) in {"lr", "batch_size", "steps", "epochs", "weight_decay"}:
        continue
    if section == "train" and key and key.group(1) == "out":
        line = f'out = "../target/defaults/{name}"\n' + os.environ.get("DEFAULTS_TRY", "").replace("; ", "\n") + "\n"
    out.append(line)
open(dst, "w").write("".join(out))
PY
    echo "## $name (defaults)"
    $bin run "$copy" --quiet
done

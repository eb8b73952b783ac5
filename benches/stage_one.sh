#!/usr/bin/env bash
# Stage one side by side, in one run, on the same teacher (data/lm), data, batch size (16),
# k (64), T (2) and thread count: raw ONNX Runtime inference alone (the limit),
# `distill cache-teacher`, and the Python pipeline (onnxruntime + numpy + pyarrow).
# Prints each one's tokens/s and the ratios. Needs .venv (bash .ci/setup) and `tokenizers`
# (pip install tokenizers) for the two Python runs.
#     bash benches/stage_one.sh [threads]
# DISTILL_BIN=path runs that binary instead of building one (a machine without cargo).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=$threads
bin=${DISTILL_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin=./target/release/distill
fi
tmp=$(mktemp -d)
raw=$(python3 benches/raw_ort.py lm --batch-size 16 --threads "$threads")
ours=$("$bin" cache-teacher --pipeline pipelines/lm.toml --out "$tmp/ours" --threads "$threads" --quiet | head -1)
py=$(python3 benches/python_pipeline.py --out "$tmp/py" --top-k 64 --temperature 2 --batch-size 16 --threads "$threads")
ours_tps=$(echo "$ours" | sed -E 's/.*, ([0-9.]+) tokens\/s.*/\1/')
raw_tps=$(echo "$raw" | python3 -c "import json,sys; print(json.load(sys.stdin)['tokens_per_s'])")
py_tps=$(echo "$py" | python3 -c "import json,sys; print(json.load(sys.stdin)['tokens_per_s'])")
echo "raw ONNX Runtime:        $raw_tps tokens/s"
echo "distill cache-teacher:   $ours_tps tokens/s   ($ours)"
echo "Python pipeline:         $py_tps tokens/s"
python3 -c "print(f'ratio distill / raw ORT: {$ours_tps/$raw_tps:.2f}x   distill / Python: {$ours_tps/$py_tps:.2f}x')"
rm -rf "$tmp"

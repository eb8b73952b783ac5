#!/usr/bin/env bash
# Stage two side by side, in one run, on the same caches, batches and thread count:
# `distill train-student` on flex (pure Rust) and, with TCH=1, on tch (libtorch 2.9.0 CPU),
# against the same student, loss and batches in PyTorch eager (benches/train_torch.py).
# Prints trained positions/s (LM) and rows/s (encoder) and the ratios to PyTorch.
#     bash benches/stage_two.sh [threads]          # TCH=1 also builds and runs --features tch
# Needs .venv (bash .ci/setup) and a torch 2.9.0 venv (bash .ci/setup-hf: .venv-torch).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads
py=${TORCH_PY:-.venv-torch/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
backends=(flex)
if [ "${TCH:-0}" = 1 ]; then
    eval "$(bash .ci/setup-tch)"
    cargo build --release --quiet --features tch
    cp target/release/distill "$tmp/distill-tch"
    backends+=(tch)
fi
cargo build --release --quiet
cp target/release/distill "$tmp/distill-flex"
# The caches (stage one; seconds for these two teachers).
for p in lm textcls; do
    [ -f "target/pipelines/$p/cache/manifest.json" ] ||
        "$tmp/distill-flex" cache-teacher --pipeline "pipelines/$p.toml" --quiet >/dev/null
done
# distill's rate over its training steps: the run's time less its waits for the loader
# thread (reading, joining and tokenizing a shuffle group; the first group is always waited
# for). train_torch.py likewise times its step loop only, after tokenizing and warm-up.
# The whole run's rate (with those waits) is printed beside it.
rate() { sed -E 's/.* positions\/s \(([0-9.]+) excluding data waits\).*/\1/'; }
whole() { sed -E 's/.*, ([0-9.]+) positions\/s \(.*/\1/'; }
row() { # task alpha student steps batch data [train_torch.py flags]
    local task=$1 alpha=$2 student=$3 steps=$4 bs=$5 data=$6 torch
    torch=$($py benches/train_torch.py "$task" --cache "target/pipelines/$task/cache" --data "$data" \
        --steps "$steps" --batch-size "$bs" --threads "$threads" --alpha "$alpha" "${@:7}" |
        $py -c "import json,sys; print(json.load(sys.stdin)['positions_per_s'])")
    printf '%-8s alpha %-4s %-7s PyTorch eager %8.0f' "$task" "$alpha" "${label:-}" "$torch"
    for b in "${backends[@]}"; do
        local out r w
        out=$("$tmp/distill-$b" train-student --cache "target/pipelines/$task/cache" --data "$data" --out "$tmp/run-$b" \
            --student "$student" --steps "$steps" --batch-size "$bs" --alpha "$alpha" --device "$b" --quiet)
        r=$(rate <<<"$out") w=$(whole <<<"$out")
        rm -rf "$tmp/run-$b"
        printf '   %s %6.0f (%.2fx; whole run %.0f, %.2fx)' "$b" "$r" "$(python3 -c "print($r / $torch)")" "$w" "$(python3 -c "print($w / $torch)")"
    done
    echo
}
echo "positions/s (LM: trained positions; encoder: rows), $threads threads, $(date -u +%F)"
for alpha in 0 0.5; do
    row lm "$alpha" decoder:d_model=64,layers=2 40 16 data/lm/train.jsonl
done
# Grouped-query attention: 4 query heads over 2 K/V heads (PyTorch: transformers' repeat_kv).
label=gqa row lm 0.5 decoder:d_model=64,layers=2,heads=4,kv_heads=2 40 16 data/lm/train.jsonl --heads 4 --kv-heads 2
for alpha in 0 0.7; do
    row textcls "$alpha" encoder:d_model=64,layers=2,heads=2,d_ff=256 100 32 data/textcls/train.parquet
done

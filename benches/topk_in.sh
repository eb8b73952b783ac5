#!/usr/bin/env bash
# Where stage one computes the soft labels: `cache-teacher --topk-in rust` (the default: the
# logits copied out of ONNX Runtime, top-k on the worker thread) against `--topk-in
# onnxruntime` (log-softmax, top-k, tail and entropy as nodes appended to the teacher's
# graph), side by side, k = 64, 2 threads: on data/lm (the LM pipeline's cache, vocabulary
# 4096) and on the 49152-token fixture of benches/make_big_teacher.py (target/big, made by
# benches/real_sizes.sh; skipped when absent). Tokens/s and peak RSS of each.
#     bash benches/topk_in.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo build --release --quiet
bin=target/release/distill
out=target/topk-in
mkdir -p "$out"
run() { # name how args...
    local name=$1 how=$2; shift 2
    rm -rf "$out/$name-$how"
    /usr/bin/time -f "%M" -o "$out/$name-$how.rss" $bin cache-teacher "$@" --top-k 64 --threads 2 --topk-in "$how" \
        --out "$out/$name-$how" --quiet >"$out/$name-$how.out"
    grep -o '[0-9.]* tokens/s' "$out/$name-$how.out" | head -1 | cut -d' ' -f1
}
echo "| teacher | --topk-in rust (tokens/s) | --topk-in onnxruntime (tokens/s) | onnxruntime / rust | peak RSS rust / onnxruntime |"
echo "|---|---|---|---|---|"
row() { # label name args...
    local label=$1 name=$2; shift 2
    local r o
    r=$(run "$name" rust "$@")
    o=$(run "$name" onnxruntime "$@")
    python3 -c "import sys; r, o = map(float, sys.argv[2:4]); print(f'| {sys.argv[1]} | {r:.0f} | {o:.0f} | {o / r:.2f}x | {int(sys.argv[4]) // 1024} / {int(sys.argv[5]) // 1024} MB |')" \
        "$label" "$r" "$o" "$(cat "$out/$name-rust.rss")" "$(cat "$out/$name-onnxruntime.rss")"
}
row "data/lm (V 4096)" lm --teacher data/lm/teacher.onnx --tokenizer data/lm/tokenizer.json --data data/lm/train.jsonl \
    --prompt-column prompt --completion-column completion --temperature 2 --max-seq-len 256
if [ -f target/big/teacher.onnx ]; then
    row "target/big (V 49152, rows 512-2048)" big --teacher target/big/teacher.onnx --tokenizer target/big/tokenizer.json \
        --data target/big/train.jsonl --text-column text --max-seq-len 2048 --rows-per-shard 96
fi

#!/usr/bin/env bash
# Generation speed: `distill generate` (greedy, --threads 2) with the KV cache and rerunning
# each sequence (--kv-cache off), beside raw ONNX Runtime doing the same loops in Python
# (benches/generate_loop.py: same batches, 2 threads, only the session runs and the arg-max
# timed). The with-past fixture data/exports/gqa-with-past (a GQA Llama, 2 layers, d 64,
# vocabulary 4096), 64 prompts of data/lm/valid.jsonl, batches of 16, 64 new tokens.
# distill's tokens/s are its decoding time (the soft label of every token included, the
# writing not); the generated ids of the four runs are checked equal.
#     bash benches/generate_speed.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo build --release --quiet
bin=target/release/distill
model=data/exports/gqa-with-past/model.onnx
tok=data/exports/gqa-with-past/tokenizer.json
out=target/generate-speed
rm -rf "$out" && mkdir -p "$out"
head -64 data/lm/valid.jsonl >"$out/prompts.jsonl"
rate() { python3 -c "import sys; t, s = map(float, sys.argv[1:]); print(f'{t / s:.0f}')" "$@"; }
declare -A tps share
for mode in kv rerun; do
    read -r tokens seconds < <(python3 benches/generate_loop.py "$model" "$tok" "$out/prompts.jsonl" 16 64 "$mode" "$out/ort-$mode.jsonl")
    tps[ort-$mode]=$(rate "$tokens" "$seconds")
    flag=$([ "$mode" = kv ] && echo auto || echo off)
    line=$($bin generate --teacher "$model" --tokenizer "$tok" --data "$out/prompts.jsonl" --out "$out/distill-$mode" \
        --batch-size 16 --max-new-tokens 64 --threads 2 --cache-top-k 64 --kv-cache "$flag" --quiet | head -1)
    tps[distill-$mode]=$(printf '%.0f' "$(echo "$line" | sed -E 's/.*, ([0-9.]+) tokens\/s.*/\1/')")
    share[$mode]=$(echo "$line" | sed -E 's/.*\(([0-9]+) % of the time.*/\1/')
    python3 -c "
import json, sys, pyarrow.parquet as pq
a = pq.read_table('$out/distill-$mode/generated.parquet').column('completion_ids').to_pylist()
b = [json.loads(l) for l in open('$out/ort-$mode.jsonl')]
assert a == b, 'distill and onnxruntime generated other tokens ($mode)'
"
done
ratio() { python3 -c "import sys; a, b = map(float, sys.argv[1:]); print(f'{a / b:.2f}x')" "$@"; }
echo "| decoding | raw ONNX Runtime (tokens/s) | distill generate (tokens/s) | distill / raw | distill: share on soft labels and picks |"
echo "|---|---|---|---|---|"
echo "| KV cache | ${tps[ort-kv]} | ${tps[distill-kv]} | $(ratio "${tps[distill-kv]}" "${tps[ort-kv]}") | ${share[kv]} % |"
echo "| rerun each sequence | ${tps[ort-rerun]} | ${tps[distill-rerun]} | $(ratio "${tps[distill-rerun]}" "${tps[ort-rerun]}") | ${share[rerun]} % |"
echo
echo "KV cache over rerun: raw $(ratio "${tps[ort-kv]}" "${tps[ort-rerun]}"), distill $(ratio "${tps[distill-kv]}" "${tps[distill-rerun]}")"

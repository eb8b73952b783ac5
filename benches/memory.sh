#!/usr/bin/env bash
# Peak RSS of `distill train-student` on an LM cache 1x and 10x as large (the training data
# repeated 10 times, cached with the same settings), 40 steps, seeds 0-7. The peak of one run
# depends on the batch shapes it meets (the longest row of a batch sizes its tensors), so the
# comparison is the largest peak over the seeds: streaming keeps it flat in the cache size.
# train-student holds `--shuffle-window` shards at a time (default 4; the 1x cache has 3):
#     bash benches/memory.sh [shuffle-window]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=2 RAYON_NUM_THREADS=2
cargo build --release --quiet
window=()
[ -n "${1:-}" ] && window=(--shuffle-window "$1")
tmp=$(mktemp -d)
for i in $(seq 10); do cat data/lm/train.jsonl; done > "$tmp/train10.jsonl"
for n in 1 10; do
    data=data/lm/train.jsonl
    [ $n = 10 ] && data=$tmp/train10.jsonl
    ./target/release/distill cache-teacher --teacher data/lm/teacher.onnx --tokenizer data/lm/tokenizer.json \
        --data "$data" --prompt-column prompt --completion-column completion --top-k 64 --temperature 2 \
        --rows-per-shard 512 --out "$tmp/cache$n" --quiet > /dev/null
    bytes=$(du -sb "$tmp/cache$n" | cut -f1)
    peaks=""
    for seed in 0 1 2 3 4 5 6 7; do
        rm -rf "$tmp/run$n"
        /usr/bin/time -f "%M" -o "$tmp/rss" ./target/release/distill train-student --cache "$tmp/cache$n" --data "$data" \
            --out "$tmp/run$n" --student decoder:d_model=64,layers=2,heads=2,d_ff=172 --steps 40 --batch-size 16 \
            --seed $seed "${window[@]}" --quiet > /dev/null
        peaks="$peaks $(cat "$tmp/rss")"
    done
    echo $peaks | tr ' ' '\n' | sort -n | tail -1 > "$tmp/rss$n"
    echo "cache ${n}x: $bytes bytes, train-student peak RSS per seed (KiB):$peaks; max $(cat "$tmp/rss$n")"
done
python3 -c "print(f'peak RSS 10x / 1x: {$(cat "$tmp/rss10")/$(cat "$tmp/rss1"):.3f}')"
rm -rf "$tmp"

#!/usr/bin/env bash
# Stage one and two at a real vocabulary: the 49152-token Llama-style fixture of
# benches/make_big_teacher.py (made on the first run into target/big, ~10 minutes; needs
# .venv-torch, set up by .ci/setup-hf), 96 rows of 512-2048 tokens, every position cached.
#   stage one: cache-teacher at k = 64 and 128 beside raw ONNX Runtime on the same batches
#     (2 threads); bytes per entry and per position; peak RSS with the default token budget
#     and with none (--batch-size 8, --max-batch-tokens 10^6);
#   stage two: a decoder student (d 256, 2 layers, 4 heads, 2 K/V heads, SwiGLU 688,
#     vocabulary 49152), 4 rows per batch: peak RSS and positions/s with the chunked head +
#     loss (the default) and unchunked (--loss-chunk 10^6), beside PyTorch eager.
#     bash benches/real_sizes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo build --release --quiet
bin=target/release/distill
fix=target/big
out=target/real-sizes
mkdir -p "$out"
if [ ! -f "$fix/teacher.onnx" ]; then
    bash .ci/setup-hf
    .venv-torch/bin/python3 benches/make_big_teacher.py "$fix" >&2
fi
cache() { # out k extra...
    local dir=$1 k=$2; shift 2
    rm -rf "$dir"
    /usr/bin/time -f "%M %e" -o "$dir.time" $bin cache-teacher --teacher "$fix/teacher.onnx" --tokenizer "$fix/tokenizer.json" \
        --data "$fix/train.jsonl" --text-column text --top-k "$k" --max-seq-len 2048 --rows-per-shard 96 --threads 2 \
        --out "$dir" --quiet "$@" >"$dir.out"
}
echo "== stage one"
python3 benches/raw_ort.py big --dir "$fix" --batch-size 32 --threads 2 --max-seq-len 2048 | tee "$out/raw.json"
for k in 64 128; do
    cache "$out/cache-k$k" "$k"
    python3 - "$out/cache-k$k" "$k" "$out/raw.json" <<'PY'
import json, math, re, sys
d, k, raw = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3]))
m = json.load(open(f"{d}/manifest.json"))
rss, secs = open(f"{d}.time").read().split()
line = open(f"{d}.out").read()
tps = float(re.search(r"([\d.]+) tokens/s", line).group(1))
b = sum(s["bytes"] for s in m["shards"])
pos = m["totals"]["positions"]
ids_floor = k * math.ceil(math.log2(m["vocab_size"])) / 8
print(f"k = {k}: {tps:.0f} tokens/s = {tps / raw['tokens_per_s']:.2f}x raw ONNX Runtime ({raw['tokens_per_s']:.0f}); "
      f"{b / (pos * k):.2f} bytes/entry, {b / pos:.1f} bytes/position (ids alone at ceil(log2 V) bits: {ids_floor:.0f}); "
      f"peak RSS {int(rss) / 1024:.0f} MB; {pos} positions")
import collections, pyarrow.parquet as pq
cols = collections.Counter()
for s in m["shards"]:
    md = pq.ParquetFile(f"{d}/{s['file']}").metadata
    for g in range(md.num_row_groups):
        for c in range(md.num_columns):
            cc = md.row_group(g).column(c)
            cols[cc.path_in_schema.split(".")[0]] += cc.total_compressed_size
print("  bytes per position by column: " + ", ".join(f"{c} {n / pos:.1f}" for c, n in cols.most_common()))
PY
done
cache "$out/cache-nobudget" 64 --batch-size 8 --max-batch-tokens 1000000
echo "k = 64 without a token budget (8 rows per batch): peak RSS $(( $(cut -d' ' -f1 "$out/cache-nobudget.time") / 1024 )) MB"
cmp <(python3 -c "import json; print([s['sha256'] for s in json.load(open('$out/cache-k64/manifest.json'))['shards']])") \
    <(python3 -c "import json; print([s['sha256'] for s in json.load(open('$out/cache-nobudget/manifest.json'))['shards']])") \
    && echo "  (the same shards as with the budget)"

echo "== stage two"
student=decoder:d_model=256,layers=2,heads=4,kv_heads=2,d_ff=688
for chunk in default 1000000; do
    run="$out/run-$chunk"
    rm -rf "$run"
    extra=()
    [ "$chunk" = default ] || extra=(--loss-chunk "$chunk")
    /usr/bin/time -f "%M" -o "$run.rss" $bin train-student --cache "$out/cache-k64" --data "$fix/train.jsonl" --student "$student" \
        --out "$run" --steps 8 --batch-size 4 --quiet "${extra[@]}" >"$run.out"
    echo "loss chunk $chunk: $(grep -o '[0-9]* positions/s ([0-9]* excluding data waits)' "$run.out"), peak RSS $(( $(cat "$run.rss") / 1024 )) MB"
done
/usr/bin/time -f "%M" -o "$out/torch.rss" .venv-torch/bin/python3 benches/train_torch.py lm --cache "$out/cache-k64" \
    --data "$fix/train.jsonl" --steps 6 --warmup 2 --batch-size 4 --threads 2 --d-model 256 --layers 2 --heads 4 --kv-heads 2 --d-ff 688 \
    | tee "$out/torch.json"
echo "PyTorch eager: peak RSS $(( $(cat "$out/torch.rss") / 1024 )) MB"

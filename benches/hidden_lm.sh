#!/usr/bin/env bash
# Hidden-state distillation on the LM pipeline: the pipeline's cache settings from the
# teacher with its final hidden state as an output (data/lm/teacher-hidden.onnx, the same
# weights), the pipeline's student and training, plus --hidden-layers 2:hidden with each
# --hidden-loss, 3 seeds; beside the pipeline's distilled student (no hidden term).
#     bash benches/hidden_lm.sh [weight]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo build --release --quiet
bin=target/release/distill
weight=${1:-1}
[ -f target/pipelines/lm/cache-eval/manifest.json ] || $bin run pipelines/lm.toml --quiet >/dev/null
out=target/hidden-lm
cache=$out/cache
# pipelines/lm.toml's [cache], with the hidden state.
[ -f "$cache/manifest.json" ] || $bin cache-teacher --teacher data/lm/teacher-hidden.onnx --tokenizer data/lm/tokenizer.json \
    --data data/lm/train.jsonl --prompt-column prompt --completion-column completion --top-k 64 --temperature 2 \
    --batch-size 16 --rows-per-shard 512 --max-seq-len 256 --hidden-states hidden --out "$cache" --quiet >/dev/null
bytes=$(python3 -c "import json; m = json.load(open('$cache/manifest.json')); print(round(sum(s['bytes'] for s in m['shards']) / m['totals']['positions'], 1))")
echo "cache with the hidden state: $bytes bytes per position"
echo "| student | held-out perplexity | top-1 agreement with teacher |"
echo "|---|---|---|"
for loss in none cosine mse; do
    results=()
    for seed in 0 1 2; do
        run="$out/$loss-seed$seed"
        rm -rf "$run"
        if [ "$loss" = none ]; then extra=(); else extra=(--hidden-layers 2:hidden --hidden-loss "$loss" --hidden-weight "$weight"); fi
        $bin train-student --pipeline pipelines/lm.toml --cache "$cache" --seed "$seed" --out "$run" --quiet "${extra[@]}" >/dev/null
        results+=("$($bin eval --student "$run" --data data/lm/valid.jsonl --cache target/pipelines/lm/cache-eval --json)")
    done
    printf '%s\n' "${results[@]}" | python3 -c "
import json, statistics as st, sys
r = [json.loads(l) for l in sys.stdin]
f = lambda k, n: f'{st.mean(x[k] for x in r):.{n}f} ± {st.stdev(x[k] for x in r):.{n}f}'
name = {'none': 'distilled (the pipeline: no hidden term)', 'cosine': '+ hidden 2:hidden, cosine, weight $weight', 'mse': '+ hidden 2:hidden, MSE, weight $weight'}['$loss']
print(f'| {name} | {f(\"perplexity\", 2)} | {f(\"top1_agreement\", 4)} |')
"
done

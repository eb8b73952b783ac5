#!/usr/bin/env bash
# Sampled soft labels against the top-k on the LM pipeline: the pipeline's cache settings
# (T = 2) with --soft-labels sampled:N (an argument N) or topk+sampled:K,N (an argument
# K,N) in place of --top-k 64, its student and training, 3 seeds; the cache's bytes per
# position, held-out perplexity, NLL, ECE and agreement.
#     bash benches/sampled.sh [N | K,N ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo build --release --quiet
bin=target/release/distill
[ -f target/pipelines/lm/cache-eval/manifest.json ] || $bin run pipelines/lm.toml --quiet >/dev/null
out=target/sampled
mkdir -p "$out"
ns=("$@")
[ ${#ns[@]} -gt 0 ] || ns=(64 128)
echo "| soft labels | bytes / position | held-out perplexity | NLL | ECE | top-1 agreement |"
echo "|---|---|---|---|---|---|"
for n in topk "${ns[@]}"; do
    if [ "$n" = topk ]; then cache=target/pipelines/lm/cache; label="top-64 (the pipeline)"; else
        cache="$out/cache-${n/,/-}"
        case "$n" in *,*) label="topk+sampled:$n" ;; *) label="sampled:$n" ;; esac
        # pipelines/lm.toml's [cache] without its top_k.
        [ -f "$cache/manifest.json" ] || $bin cache-teacher --teacher data/lm/teacher.onnx --tokenizer data/lm/tokenizer.json \
            --data data/lm/train.jsonl --prompt-column prompt --completion-column completion --temperature 2 --batch-size 16 \
            --rows-per-shard 512 --max-seq-len 256 --soft-labels "$label" --out "$cache" --quiet >/dev/null
    fi
    bytes=$(python3 -c "import json; m = json.load(open('$cache/manifest.json')); print(round(sum(s['bytes'] for s in m['shards']) / m['totals']['positions'], 1))")
    results=()
    for seed in 0 1 2; do
        run="$out/run-${n/,/-}-seed$seed"
        rm -rf "$run"
        $bin train-student --pipeline pipelines/lm.toml --cache "$cache" --seed "$seed" --out "$run" --quiet >/dev/null
        results+=("$($bin eval --student "$run" --data data/lm/valid.jsonl --cache target/pipelines/lm/cache-eval --json)")
    done
    printf '%s\n' "${results[@]}" | python3 -c "
import json, statistics as st, sys
r = [json.loads(l) for l in sys.stdin]
f = lambda k, n: f'{st.mean(x[k] for x in r):.{n}f} ± {st.stdev(x[k] for x in r):.{n}f}'
print(f'| $label | $bytes | {f(\"perplexity\", 2)} | {f(\"nll\", 4)} | {f(\"ece\", 4)} | {f(\"top1_agreement\", 4)} |')
"
done

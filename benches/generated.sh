#!/usr/bin/env bash
# Sequence-level distillation on the LM fixture: the teacher writes a completion for each
# training prompt (`distill generate`, T = 1, top-p 1, 32 new tokens at most, the soft labels
# at T = 2 with k = 64 as the LM pipeline caches them), and the pipeline's student trains on
# the generated text with hard labels only (alpha 0) and with the soft labels (alpha 0.5),
# the pipeline's other [train] settings; 3 seeds, held-out data/lm/valid.jsonl, beside the
# pipeline's own students (trained on the original completions).
#     bash benches/generated.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo build --release --quiet
bin=target/release/distill
[ -f target/pipelines/lm/cache-eval/manifest.json ] || $bin run pipelines/lm.toml --quiet >/dev/null
out=target/generated
if [ ! -f "$out/gen/cache/manifest.json" ]; then
    rm -rf "$out/gen"
    $bin generate --teacher data/lm/teacher.onnx --tokenizer data/lm/tokenizer.json --data data/lm/train.jsonl \
        --out "$out/gen" --max-new-tokens 32 --temperature 1 --top-p 1 --seed 0 --top-k 64 --soft-temperature 2 \
        --max-seq-len 256 --quiet | head -1
fi
echo "| student (the LM pipeline's) | trained on | held-out perplexity | top-1 agreement with teacher |"
echo "|---|---|---|---|"
for alpha in 0 0.5; do
    results=()
    for seed in 0 1 2; do
        run="$out/alpha$alpha-seed$seed"
        rm -rf "$run"
        $bin train-student --pipeline pipelines/lm.toml --cache "$out/gen/cache" --data "$out/gen/generated.parquet" \
            --alpha "$alpha" --seed "$seed" --out "$run" --quiet >/dev/null
        results+=("$($bin eval --student "$run" --data data/lm/valid.jsonl --cache target/pipelines/lm/cache-eval --json)")
    done
    printf '%s\n' "${results[@]}" | python3 -c "
import json, statistics as st, sys
r = [json.loads(l) for l in sys.stdin]
f = lambda k, n: f'{st.mean(x[k] for x in r):.{n}f} ± {st.stdev(x[k] for x in r):.{n}f}'
name = 'hard labels only (alpha = 0)' if '$alpha' == '0' else 'distilled (alpha = 0.5)'
print(f'| {name} | teacher-generated completions | {f(\"perplexity\", 2)} | {f(\"top1_agreement\", 4)} |')
"
done

#!/usr/bin/env bash
# The LM pipeline's distilled student per --divergence, 3 seeds each: held-out perplexity
# and top-1 agreement with the teacher (mean ± standard deviation), beside forward KL and
# hard labels only. Uses the pipeline's cache and eval cache (made by `distill run
# pipelines/lm.toml`, or here if missing) and its [student] and [train] settings.
#     bash benches/divergences.sh [divergence ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo build --release --quiet
bin=target/release/distill
[ -f target/pipelines/lm/cache-eval/manifest.json ] || $bin run pipelines/lm.toml --quiet >/dev/null
out=target/divergences
mkdir -p "$out"
divs=("$@")
[ ${#divs[@]} -gt 0 ] || divs=(forward-kl reverse-kl jsd:0.5 jsd:0.1 tvd skew-kl:0.1 skew-rkl:0.1)
echo "| divergence | held-out perplexity | top-1 agreement with teacher |"
echo "|---|---|---|"
for d in hard "${divs[@]}"; do
    results=()
    for seed in 0 1 2; do
        run="$out/${d//:/-}-seed$seed"
        rm -rf "$run"
        if [ "$d" = hard ]; then extra=(--alpha 0); else extra=(--divergence "$d"); fi
        $bin train-student --pipeline pipelines/lm.toml --seed "$seed" --out "$run" --quiet "${extra[@]}" >/dev/null
        results+=("$($bin eval --student "$run" --data data/lm/valid.jsonl --cache target/pipelines/lm/cache-eval --json)")
    done
    printf '%s\n' "${results[@]}" | python3 -c "
import json, statistics as st, sys
r = [json.loads(l) for l in sys.stdin]
f = lambda k, n: f'{st.mean(x[k] for x in r):.{n}f} ± {st.stdev(x[k] for x in r):.{n}f}'
print(f'| {\"hard labels only (alpha = 0)\" if \"$d\" == \"hard\" else \"$d\"} | {f(\"perplexity\", 2)} | {f(\"top1_agreement\", 4)} |')
"
done

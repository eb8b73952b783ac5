#!/usr/bin/env bash
# On-policy rounds on the LM pipeline (pipelines/lm-onpolicy.toml), one run per variant of
# [onpolicy] divergence and lambda, 3 seeds each: the teacher's NLL of each student's own
# completions of the held-out prompts (greedy and sampled at T = 1), its own NLL of them,
# held-out perplexity and top-1 agreement, beside the distilled student and the baselines at
# equal student steps (more steps on the training cache; on the teacher's own completions,
# as many positions as the rounds score). The teacher's completions are made once and shared.
#     bash benches/onpolicy.sh ["DIVERGENCE LAMBDA" ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo build --release --quiet
bin=target/release/distill
out=target/onpolicy
mkdir -p "$out"
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=("jsd:0.5 1" "reverse-kl 1" "jsd:0.5 0.5" "sampled-rkl 1")
shared=""
for v in "${variants[@]}"; do
    read -r div lambda <<<"$v"
    name="${div//:/-}-lambda-$lambda"
    file="$out/$name.toml"
    sed -e "s#^out = \"../target/pipelines/lm-onpolicy/students\"#out = \"$PWD/$out/$name\"#" \
        -e "s#\"\\.\\./#\"$PWD/#" -e "s/^divergence = .*/divergence = \"$div\"/" -e "s/^lambda = .*/lambda = $lambda/" \
        pipelines/lm-onpolicy.toml >"$file"
    if [ -n "$shared" ] && [ ! -d "$out/$name/onpolicy-teacher-written" ]; then
        mkdir -p "$out/$name" && cp -r "$shared" "$out/$name/"
    fi
    echo "== $div, lambda $lambda ($file)"
    /usr/bin/time -f "   %e s" $bin run "$file" --quiet 2>&1 | sed -n '/^| student | teacher NLL/,/seeds/p;/ s$/p'
    shared="$out/$name/onpolicy-teacher-written"
done

#!/usr/bin/env bash
# Sequence-level distillation on the LM fixture, beside the LM pipeline: `distill run
# pipelines/lm-generated.toml` (the teacher writes one completion of each training prompt,
# sampled at T = 1, 32 new tokens at most, and caches the soft labels of the tokens it wrote
# at T = 2, k = 64; the LM pipeline's student trains on them with hard labels only and with
# the soft labels; 3 seeds; held-out data/lm/valid.jsonl), and `distill run pipelines/lm.toml`
# (the same student on the dataset's own completions). Prints both results tables.
#     bash benches/generated.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo build --release --quiet
bin=target/release/distill
[ -f target/pipelines/lm/students/results.md ] || $bin run pipelines/lm.toml --quiet >/dev/null
$bin run pipelines/lm-generated.toml --quiet | grep -E "generated.parquet: " >&2
echo "trained on the dataset's completions (pipelines/lm.toml):"
cat target/pipelines/lm/students/results.md
echo
echo "trained on teacher-written completions (pipelines/lm-generated.toml):"
cat target/pipelines/lm-generated/students/results.md

#!/usr/bin/env bash
# Does distillation help a BERT-style encoder? The literature's setting on the textcls
# fixture: the teacher (4-layer BERT, 0.739 held-out) saw the labels of the training rows;
# the student sees the labels of only the first 300 of the 1761 training rows, and the
# teacher's soft labels on all of them (the other 1461 are its unlabelled transfer set).
# Each ingredient is added in turn, over 10 seeds, paired by seed; the last lines are
# paired t-tests. Held-out: data/textcls/test.parquet (441 rows, never trained on).
#     bash benches/encoder.sh [seeds]
# The first run sets up .venv-torch (bash .ci/setup-hf, plus onnx and onnxruntime) to
# rebuild the teacher as a Hugging Face checkpoint (data/textcls/teacher_to_hf.py) for
# `init-student`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo build --release --quiet
bin=target/release/distill
seeds=${1:-10}
out=target/encoder
mkdir -p "$out"

# The data: train.parquet with the labels of rows 300.. set to null.
python3 -c "
import pyarrow as pa, pyarrow.parquet as pq
t = pq.read_table('data/textcls/train.parquet')
labels = [l if i < 300 else None for i, l in enumerate(t.column('label').to_pylist())]
pq.write_table(pa.table({'text': t.column('text'), 'label': pa.array(labels, pa.int64())}), '$out/train-300-labels.parquet')
"
data=$out/train-300-labels.parquet
# The teacher's soft labels (T = 1, all 8 classes) with its pooled output and last hidden
# state; and the teacher on the held-out rows (for agreement).
[ -f "$out/cache/manifest.json" ] || $bin cache-teacher --teacher data/textcls/teacher-hidden.onnx \
    --tokenizer data/textcls/tokenizer.json --data "$data" --text-column text --label-column label \
    --max-seq-len 64 --temperature 1 --top-k 8 --rows-per-shard 512 --hidden-states pooled,last_hidden_state \
    --out "$out/cache" --quiet >/dev/null
[ -f "$out/cache-eval/manifest.json" ] || $bin cache-teacher --teacher data/textcls/teacher.onnx \
    --tokenizer data/textcls/tokenizer.json --data data/textcls/test.parquet --text-column text --label-column label \
    --max-seq-len 64 --top-k 1 --out "$out/cache-eval" --quiet >/dev/null
# A 2-layer student from the teacher's blocks 1 and 3 (embeddings, pooler and classifier too).
if [ ! -f "$out/teacher-hf/config.json" ]; then
    bash .ci/setup-hf
    .venv-torch/bin/python3 -c "import onnx, onnxruntime" 2>/dev/null \
        || .venv-torch/bin/python3 -m pip install --quiet --disable-pip-version-check onnx==1.23.2 onnxruntime==1.31.1 >&2
    .venv-torch/bin/python3 data/textcls/teacher_to_hf.py "$out/teacher-hf" >/dev/null
fi
[ -f "$out/init-1-3/config.json" ] || $bin init-student --from "$out/teacher-hf" --layers 1,3 --out "$out/init-1-3" >/dev/null

fresh=(--student encoder:d_model=64,layers=2,heads=2,d_ff=256 --lr 3e-3 --weight-decay 0.1)
init=(--student "hf:$out/init-1-3" --lr 1e-3 --weight-decay 0.1)
run() { # name seed flags...
    local name=$1 seed=$2; shift 2
    local dir="$out/$name-seed$seed"
    rm -rf "$dir"
    $bin train-student --cache "$out/cache" --data "$data" --out "$dir" --steps 1000 --batch-size 32 --seed "$seed" --quiet "$@" >/dev/null
    $bin eval --student "$dir" --data data/textcls/test.parquet --cache "$out/cache-eval" --json >"$dir/eval.json"
}
names=(hard-fresh kd-fresh hard-init kd-init kd-init-cosine kd-init-mse)
for seed in $(seq 0 $((seeds - 1))); do
    run hard-fresh "$seed" "${fresh[@]}" --alpha 0
    run kd-fresh "$seed" "${fresh[@]}" --alpha 0.7
    run hard-init "$seed" "${init[@]}" --alpha 0
    run kd-init "$seed" "${init[@]}" --alpha 0.7
    run kd-init-cosine "$seed" "${init[@]}" --alpha 0.7 --hidden-layers 2:last_hidden_state --hidden-loss cosine
    run kd-init-mse "$seed" "${init[@]}" --alpha 0.7 --hidden-layers 2:last_hidden_state --hidden-loss mse
done
python3 - "$out" "$seeds" "${names[@]}" <<'PY'
import json, math, statistics as st, sys
out, seeds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
acc = {n: [json.load(open(f"{out}/{n}-seed{s}/eval.json"))["accuracy"] for s in range(seeds)] for n in names}
agree = {n: [json.load(open(f"{out}/{n}-seed{s}/eval.json"))["top1_agreement"] for s in range(seeds)] for n in names}
label = {
    "hard-fresh": "hard labels only (300 rows), fresh student",
    "kd-fresh": "+ soft labels on all 1761 rows (alpha 0.7)",
    "hard-init": "hard labels only (300 rows), student from teacher blocks 1, 3",
    "kd-init": "+ soft labels on all 1761 rows (alpha 0.7)",
    "kd-init-cosine": "+ hidden-state loss, cosine (student layer 2 : teacher last_hidden_state)",
    "kd-init-mse": "+ hidden-state loss, MSE (same pair)",
}
def t_test(a, b):
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    t = st.mean(d) / (st.stdev(d) / math.sqrt(n)) if st.stdev(d) > 0 else float("inf")
    # Two-sided p of Student's t with n - 1 degrees of freedom (Simpson's rule on the density).
    k = n - 1
    c = math.gamma((k + 1) / 2) / (math.sqrt(k * math.pi) * math.gamma(k / 2))
    f = lambda x: c * (1 + x * x / k) ** (-(k + 1) / 2)
    x, steps = abs(t), 20000
    h = x / steps
    inner = h / 3 * (f(0) + f(x) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, steps)))
    return st.mean(d), st.stdev(d), t, max(0.0, 1 - 2 * inner)
print(f"| student | held-out accuracy ({seeds} seeds) | top-1 agreement with teacher |")
print("|---|---|---|")
for n in names:
    print(f"| {label[n]} | {st.mean(acc[n]):.4f} ± {st.stdev(acc[n]):.4f} | {st.mean(agree[n]):.4f} ± {st.stdev(agree[n]):.4f} |")
print()
for a, b in [("kd-fresh", "hard-fresh"), ("kd-init", "hard-init"), ("kd-init-cosine", "kd-init"), ("kd-init-mse", "kd-init"),
             ("kd-init", "hard-fresh")]:
    m, s, t, p = t_test(acc[a], acc[b])
    pv = "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}"
    print(f"{a} - {b}: {m:+.4f} (paired sd {s:.4f}, t = {t:.2f}, {pv}, better on {sum(x > y for x, y in zip(acc[a], acc[b]))} of {seeds})")
print()
for n in names:
    print(n, " ".join(f"{x:.4f}" for x in acc[n]))
PY

#!/usr/bin/env bash
# On a GPU machine (16 cores, one NVIDIA GPU), with a prebuilt release binary and the
# real-size fixture (benches/make_big_teacher.py; made here if missing, ~10 minutes on 2
# cores, less on 16): stage one on the CPU at 16 threads and with ONNX Runtime's CUDA
# execution provider (needs the onnxruntime-gpu wheel: ORT_DYLIB_PATH to its
# libonnxruntime.so), each with the soft labels computed in Rust (the default) and inside
# ONNX Runtime (--topk-in onnxruntime: only [positions, k] leave the device), and stage two on libtorch CUDA (a `--features tch` build with a
# CUDA libtorch) beside PyTorch eager on the same GPU. Under 10 minutes; prints one line per
# measurement. Not run by CI.
#     bash benches/gpu.sh [path/to/distill]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/distill}
fix=target/big
out=target/gpu
mkdir -p "$out"
[ -f "$fix/teacher.onnx" ] || .venv-torch/bin/python3 benches/make_big_teacher.py "$fix" >&2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for dev in "cpu --threads 16" "cpu --threads 16 --topk-in onnxruntime" "cuda" "cuda --topk-in onnxruntime"; do
    rm -rf "$out/cache"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    $bin cache-teacher --teacher "$fix/teacher.onnx" --tokenizer "$fix/tokenizer.json" --data "$fix/train.jsonl" \
        --text-column text --top-k 64 --max-seq-len 2048 --rows-per-shard 96 --out "$out/cache" --quiet --device $dev \
        | grep -o '[0-9.]* tokens/s' | sed "s/^/stage one, --device $dev: /"
    echo "  $(echo "$(date +%s.%N) - $start" | bc) s"
done
for dev in cpu cuda; do
    rm -rf "$out/generate-$dev"
    head -64 data/lm/valid.jsonl >"$out/prompts.jsonl"
    $bin generate --teacher data/exports/gqa-with-past/model.onnx --tokenizer data/exports/gqa-with-past/tokenizer.json \
        --data "$out/prompts.jsonl" --out "$out/generate-$dev" --batch-size 16 --max-new-tokens 64 --device "$dev" --quiet \
        | head -1 | grep -o '[0-9.]* tokens/s' | sed "s/^/generate (KV cache, the with-past fixture), --device $dev: /"
done
student=decoder:d_model=256,layers=2,heads=4,kv_heads=2,d_ff=688
for device in tch-cuda flex; do
    rm -rf "$out/run-$device"
    $bin train-student --cache "$out/cache" --data "$fix/train.jsonl" --student "$student" --out "$out/run-$device" \
        --steps 20 --batch-size 8 --device "$device" --quiet | grep -o '[0-9]* positions/s ([0-9]* excluding data waits)' \
        | sed "s/^/stage two, --device $device: /" || echo "stage two, --device $device: did not run"
done
.venv-torch/bin/python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null \
    && .venv-torch/bin/python3 benches/train_torch.py lm --cache "$out/cache" --data "$fix/train.jsonl" --steps 20 \
        --batch-size 8 --threads 16 --d-model 256 --layers 2 --heads 4 --kv-heads 2 --d-ff 688 --device cuda \
    || echo "PyTorch on the GPU: not available"

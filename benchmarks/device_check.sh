#!/usr/bin/env bash
# Issue 14's GPU figures in one device run (H200: about 5 minutes of the 15).
#
# Prepare here, once (the device has torch, transformers, peft, accelerate, pytest; not lm-eval):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl lm_eval==0.4.13 dill
# Then, with the device tool: run(command="bash benchmarks/device_check.sh", carry=[".whl"],
# timeout_s=540). What it writes under $OUT comes back: gpu_tests.log, bench_gpu.json, bench_gpu.log.
set -uo pipefail
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# Mixed-adapter scoring equals one adapter at a time in bf16; the CUDA training test.
timeout 120 python3 -m pytest -q -m gpu tests/test_mixed_scoring.py tests/test_training.py \
    2>&1 | tee "$OUT/gpu_tests.log"
# The three stand-ins: scoring vs HFLM, LoRA step vs HF Trainer + PEFT.
timeout 360 python3 benchmarks/bench_gpu.py > "$OUT/bench_gpu.json" 2> "$OUT/bench_gpu.log"
echo "bench_gpu exit $?"
tail -c 3000 "$OUT/bench_gpu.json"

#!/usr/bin/env bash
# One short device run for the speed issues: the paper's GPU-time table on CUDA (fp16 autocast, bf16 too)
# at batch 16 and batch 1, eager, compiled and with CUDA graphs, inference and training.
# Results land in benchmarks/results/ (or $OUT when run through the device tool).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-benchmarks/results}"
b() { python -m scalenet bench --device cuda --out-dir "$out" "$@"; }
b --batch-size 16 --repeats 30
b --batch-size 1 --repeats 50
b --batch-size 16 --repeats 30 --compile
b --batch-size 1 --repeats 50 --compile
b --batch-size 16 --repeats 30 --cuda-graphs
b --batch-size 1 --repeats 50 --cuda-graphs
b --batch-size 16 --repeats 20 --train
# the CUDA checks of the fast path (skipped on machines without CUDA)
if python -c "import pytest" 2>/dev/null; then python -m pytest -q tests/test_fast_path.py -k cuda | tee "$out/gpu-tests.txt"; fi
# bf16 autocast, batch 16 and 1, eager and compiled
b --batch-size 16 --repeats 30 --precision bf16
b --batch-size 1 --repeats 50 --precision bf16
b --batch-size 16 --repeats 30 --precision bf16 --compile
# the CUDA latency cost model (issue 15), eager and compiled, checked on the other published models
for mode in "" "--compile"; do
  python -m scalenet latency-model --device cuda --batch-size 16 $mode --no-progress \
    --out "$out/latency-model-cuda-b16${mode:+-compile}.json" --check scalenet50_light,scalenet101,scalenet152 \
    | tee "$out/latency-model-cuda-b16${mode:+-compile}.txt"
done

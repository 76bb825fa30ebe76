#!/usr/bin/env bash
# One short device run for the speed issue: the paper's GPU-time table on CUDA at batch 16
# and batch 1, eager and compiled, inference and training. Results land in
# benchmarks/results/ (copied back from $OUT when run through the device tool).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-benchmarks/results}"
python -m scalenet bench --device cuda --batch-size 16 --repeats 30 --out-dir "$out"
python -m scalenet bench --device cuda --batch-size 1 --repeats 50 --out-dir "$out"
python -m scalenet bench --device cuda --batch-size 16 --repeats 30 --compile --out-dir "$out"
python -m scalenet bench --device cuda --batch-size 16 --repeats 20 --train --out-dir "$out"

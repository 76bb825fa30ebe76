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
# issue 22: one supernet per GPU (allocate --jobs = the number of GPUs, two networks per GPU in turn);
# each run's checkpoint records the GPU its worker was given
ngpu=$(python -c "import torch; print(torch.cuda.device_count())")
tmp="$(mktemp -d)"
PYTHONPATH="$PWD/tests:$PYTHONPATH" python -c "from pathlib import Path; from helpers import make_image_folder; make_image_folder(Path('$tmp/data'), classes=3, per_class=32, size=32)"
python -m scalenet allocate --data "$tmp/data" --out "$tmp/a.json" --layers 1,1 --width 8 --epochs 2 --batch-size 16 \
  --repeats $((2 * ngpu)) --jobs "$ngpu" --no-progress | tee "$out/gpu-jobs.txt"
python - "$tmp/a.runs" <<'PY' | tee -a "$out/gpu-jobs.txt"
import pathlib, sys
from scalenet.checkpoint import read_state_dict
for d in sorted(pathlib.Path(sys.argv[1]).glob("supernet-*")):
    print(d.name, read_state_dict(d / "last.pt")["trained_on"])
PY
# the supernet of the ImageNet layout against ResNet-50 on the GPU: step time and batch-64 memory
python benchmarks/seed_cost.py --device cuda --batch-size 64 --repeats 10 --out-dir "$out"
python benchmarks/seed_cost.py --device cuda --batch-size 64 --repeats 10 --amp --out-dir "$out"
# issue 30: the release's speed test in TensorFlow on the GPU (tf.function with and without XLA, batch 16 and 1).
# The device image has no TensorFlow; where one with GPU support is installed this runs, else it says why not.
if python -c "import tensorflow as tf, sys; sys.exit(0 if tf.config.list_physical_devices('GPU') else 1)" 2>/dev/null; then
  python benchmarks/tf_speed.py --device gpu --out-dir "$out" --repeats 30 --repeats-b1 50 | tee "$out/tf-speed-gpu.txt"
else
  echo "tf_speed: skipped, no TensorFlow with a GPU here (pip install 'tensorflow[and-cuda]')" | tee "$out/tf-speed-gpu.txt"
fi

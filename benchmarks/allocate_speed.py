"""The allocation issue's acceptance check: ``scalenet allocate`` with its defaults, on the demo's
Fashion-MNIST setting, run from the command line with different seeds. Times each run (wall,
including start-up) and compares every pair of the resulting allocations per stage against
chance (two random draws of as many neurons from the supernet's pool).

The seeds are 16 apart, so no two runs share a supernet (each trains seeds S..S+15 by default).

    .venv/bin/python benchmarks/allocate_speed.py [--seeds 0,16,32]

Writes benchmarks/results/allocate-<device>.json and .md.
"""

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from scalenet import Structure
from scalenet.agreement import Chance, block_counts, shares, stage_counts, tv
from scalenet.allocation import DEFAULT_COMBINE, DEFAULT_REPEATS, supernet_structure
from scalenet.devices import device_name, device_slug
from scalenet.fileio import atomic_write_text

# the demo's seed recipe (scalenet demo --profile quick); everything else is allocate's default
DEMO_SETTING = ["--data", "fashion-mnist", "--train-subset", "8000", "--val-subset", "2000", "--layers", "1,1,1",
                "--width", "12", "--batch-size", "64", "--warmup", "0.2", "--no-augment", "--channels-last",
                "--no-progress"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,16,32")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for s in seeds:
            out = Path(tmp) / f"seed{s}.json"
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "scalenet", "allocate", *DEMO_SETTING, "--seed", str(s), "--out", str(out)],
                           check=True, stdout=subprocess.DEVNULL)
            runs[s] = {"seconds": time.perf_counter() - t, "structure": Structure.load(out)}
            print(f"seed {s}: {runs[s]['seconds']:.0f} s", flush=True)
    pool = supernet_structure((1, 1, 1), stem="small", width=12, image_size=28)
    kept = [sum(r[:-1]) for r in runs[seeds[0]]["structure"].rows]
    chance = Chance(pool, kept, draws=4000).stage_tv()
    pairs = []
    for a, b in itertools.combinations(seeds, 2):
        sa, sb = (stage_counts(block_counts(runs[s]["structure"]), (1, 1, 1)) for s in (a, b))
        pairs.append({"seeds": [a, b], "ratio_by_stage": [tv(shares(x), shares(y)) / c for x, y, c in zip(sa, sb, chance)]})
    cpu = device_name(torch.device("cpu"))
    result = {
        "what": "scalenet allocate with its defaults on the demo's Fashion-MNIST setting: "
                + " ".join(DEMO_SETTING) + f" (repeats {DEFAULT_REPEATS}, combine {DEFAULT_COMBINE}, one seed epoch)",
        "device": f"CPU: {cpu}",
        "torch": torch.__version__,
        "seconds_wall_including_startup": {str(s): round(r["seconds"], 1) for s, r in runs.items()},
        "chance_tv_by_stage": chance,
        "pairs": pairs,
        "mean_ratio_by_stage": [statistics.mean(p["ratio_by_stage"][i] for p in pairs) for i in range(3)],
        "stage_shares": {str(s): [shares(c) for c in stage_counts(block_counts(r["structure"]), (1, 1, 1))]
                         for s, r in runs.items()},
    }
    lines = [f"`scalenet allocate` defaults on the demo setting, {result['device']} "
             "(`python benchmarks/allocate_speed.py`)", "",
             "| seeds | ratio to chance, stage 1 | stage 2 | stage 3 |", "|---|---:|---:|---:|"]
    lines += [f"| {p['seeds'][0]} vs {p['seeds'][1]} | " + " | ".join(f"{v:.2f}" for v in p["ratio_by_stage"]) + " |"
              for p in pairs]
    lines += ["| mean | " + " | ".join(f"{v:.2f}" for v in result["mean_ratio_by_stage"]) + " |", "",
              "Wall time per allocation: " + ", ".join(f"seed {s}: {v:.0f} s" for s, v in
                                                      result["seconds_wall_including_startup"].items())]
    slug = device_slug(cpu)
    out = Path(__file__).parent / "results"
    atomic_write_text(out / f"allocate-{slug}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / f"allocate-{slug}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

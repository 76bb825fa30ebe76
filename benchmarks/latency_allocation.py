"""What latency-aware allocation buys on this CPU: ImageNet layout, batch 16, 224 px.

Selections (no training: from one supernet run's scores, ``scalenet allocate --scores``'s path)
under a MACs budget and under latency budgets predicted by the compiled cost model, then
ResNet-50 (BN folded), the published ScaleNet-50 (fused) and every selection (fused) measured
in the same process, interleaved, compiled (inductor, freezing) and eager; both cost models'
predictions stand beside the measurements.

    .venv/bin/python benchmarks/fashion_mnist_folder.py /tmp/fm224
    .venv/bin/scalenet allocate --data /tmp/fm224 --out /tmp/supernet.json --width-mult 1.36 --repeats 1 --jobs 1 \\
        --epochs 1 --batch-size 16 --lr 0.01 --warmup 0.2 --workers 1
    .venv/bin/scalenet latency-model --out benchmarks/results/latency-model-amd-epyc-2-threads-compile.json \\
        --compile --configs 14 --repeats 5 --threads 2
    .venv/bin/python benchmarks/latency_allocation.py --scores /tmp/seed.scores.json \\
        --eager benchmarks/results/latency-model-amd-epyc-2-threads.json \\
        --compiled benchmarks/results/latency-model-amd-epyc-2-threads-compile.json

Writes benchmarks/results/latency-allocation-<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torchvision

from scalenet import Structure
from scalenet.allocation import LatencyBudget, MacsBudget, Selection, load_runs, select_runs
from scalenet.bench import _count, _fold_bn
from scalenet.devices import device_slug
from scalenet.factory import create_model
from scalenet.fileio import atomic_write_text
from scalenet.fuse import fuse
from scalenet.latency import LatencyModel, _timer, current_settings
from scalenet.timing import interleaved

RESULTS = Path(__file__).resolve().parent / "results"


def at_macs(runs, seed, settings, model: LatencyModel, macs: int, multiple_of: int | None, alpha: float) -> Structure:
    """The latency-budget selection whose MACs come closest to ``macs`` from above (bisection on
    the latency target): "a latency-aware allocation at these MACs"."""
    lo, hi = model.predict(seed) * 0.05, model.predict(seed)
    best = None
    for _ in range(18):
        mid = (lo + hi) / 2
        try:
            s = select_runs(runs, seed, LatencyBudget(mid, model), settings,
                            Selection(alpha=alpha, multiple_of=multiple_of)).structure
        except ValueError:
            lo = mid
            continue
        if s.macs() >= macs:
            best, hi = s, mid
        else:
            lo = mid
    if best is None:
        raise SystemExit(f"no latency budget reaches {macs:,} MACs")
    return best


def runners_for(models: dict[str, Callable[[], torch.nn.Module]], compile: bool) -> dict[str, Callable[[], None]]:
    """One forward per call, each model built and (``compile``) compiled once, as the cost
    models time their blocks (scalenet.latency's timer)."""
    prepare, _ = _timer(current_settings("cpu", 2, 16, 224, compile))
    runners = {}
    for name, build in models.items():
        runners[name] = prepare(build(), (16, 3, 224, 224))
        runners[name]()  # compiles now, not inside the timed rounds
    return runners


def measure(runners: dict[str, Callable[[], None]], label: str, repeats: int) -> dict[str, float]:
    times = interleaved(runners, repeats, warmup=1, progress=label)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scores", required=True, help="the supernet run's .scores.json")
    ap.add_argument("--eager", required=True, help="eager cost model (b16, 224)")
    ap.add_argument("--compiled", required=True, help="compiled cost model (b16, 224)")
    ap.add_argument("--multiple-of", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=1.0, help="scores per ms^alpha for the latency-aware selections")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed-note", default="one supernet, 1 epoch of 1,000 images of a 224-px ImageFolder made "
                    "from Fashion-MNIST (benchmarks/fashion_mnist_folder.py), val top-1 33.5%")
    args = ap.parse_args()
    torch.set_num_threads(2)
    eager, compiled = LatencyModel.load(args.eager), LatencyModel.load(args.compiled)
    for model, flag in ((eager, False), (compiled, True)):
        model.check(current_settings("cpu", 2, 16, 224, flag), "cost model")
    runs, seed, settings = load_runs(args.scores)
    settings = {**settings, "num_classes": 1000, "in_chans": 3}  # the ImageNet head, as the published models
    sn50 = Structure.published("scalenet50")
    m, alpha = args.multiple_of, args.alpha
    references = {"resnet50 (BN folded)": lambda: _fold_bn(torchvision.models.resnet50()),
                  "scalenet50 (published)": lambda: fuse(create_model(sn50))}
    # round A: the references compiled, for ResNet-50's compiled latency and to calibrate the
    # compiled model's 'other' (the machine drifts between the model's measurement and now)
    compiled_runners = runners_for(references, True)
    first = measure(compiled_runners, "compiled references", args.repeats)
    t_resnet = first["resnet50 (BN folded)"]
    other_at_fit = compiled.other
    compiled.other += first["scalenet50 (published)"] - compiled.predict(sn50)
    sel: dict[str, Structure] = {
        "macs-aware @ ScaleNet-50 MACs": select_runs(runs, seed, MacsBudget(sn50.macs()), settings).structure,
        f"latency-aware (a={alpha:g}) @ ScaleNet-50 MACs": at_macs(runs, seed, settings, compiled, sn50.macs(), None,
                                                                   alpha),
        f"latency-aware (a={alpha:g}) @ ScaleNet-50 MACs, multiple of {m}": at_macs(
            runs, seed, settings, compiled, sn50.macs(), m, alpha),
        "latency-aware (a=0) @ ResNet-50 compiled latency": select_runs(
            runs, seed, LatencyBudget(t_resnet, compiled), settings).structure,
        f"latency-aware (a={alpha:g}) @ ResNet-50 compiled latency": select_runs(
            runs, seed, LatencyBudget(t_resnet, compiled), settings, Selection(alpha=alpha)).structure,
    }
    builders = {name: (lambda s=s: fuse(create_model(s))) for name, s in sel.items()}
    # round B: everything compiled (the references reuse their compiled graphs), then everything eager
    compiled_runners.update(runners_for(builders, True))
    measured = {"compiled": measure(compiled_runners, "compiled networks", args.repeats)}
    measured["eager"] = measure(runners_for({**references, **builders}, False), "eager networks", args.repeats)
    other_for_budgets = compiled.other
    # the predicted columns: each model's 'other' calibrated on ScaleNet-50 in the same round as the
    # networks it is compared with (the machine drifts by several percent between rounds A and B)
    for mode, model in (("eager", eager), ("compiled", compiled)):
        model.other += measured[mode]["scalenet50 (published)"] - model.predict(sn50)

    rows: list[dict[str, Any]] = []
    structures = {"resnet50 (BN folded)": None, "scalenet50 (published)": sn50, **sel}
    for name, s in structures.items():
        row = {"name": name, "macs": s.macs() if s is not None else _count(torchvision.models.resnet50(), 224)[0],
               "rows": [list(r) for r in s.rows] if s is not None else None}
        for mode, model in (("eager", eager), ("compiled", compiled)):
            base = measured[mode]["resnet50 (BN folded)"]
            row[mode] = {"ms": measured[mode][name], "vs_resnet50": measured[mode][name] / base,
                         "predicted_ms": model.predict(s) if s is not None else None}
        rows.append(row)
    out = {"device": f"{eager.settings.device_name} ({eager.settings.threads} threads)", "torch": torch.__version__,
           "batch_size": 16, "image_size": 224, "repeats": args.repeats, "scores": args.seed_note, "alpha": alpha,
           "resnet50_compiled_ms_round_a": t_resnet, "compiled_other_at_fit": other_at_fit,
           "compiled_other_for_budgets": other_for_budgets, "compiled_other_round_b": compiled.other, "rows": rows}
    slug = device_slug(out["device"])
    atomic_write_text(RESULTS / f"latency-allocation-{slug}.json", json.dumps(out, indent=1) + "\n")
    atomic_write_text(RESULTS / f"latency-allocation-{slug}.md", format_md(out))
    print(format_md(out))


def format_md(out: dict[str, Any]) -> str:
    lines = [f"# Latency-aware allocation, {out['device']}", "",
             f"ImageNet layout, batch {out['batch_size']}, {out['image_size']} px, fp32, channels_last, fused (BN folded), "
             f"eval; compiled = inductor with freezing; median of {out['repeats']} interleaved rounds per mode, every "
             f"network in the same process. Scores: {out['scores']}. Selections as `scalenet allocate --scores` makes "
             f"them (no training); latency-aware ones use the compiled cost model, alpha {out['alpha']:g} = scores per "
             "ms^alpha. Predicted: the cost model with its 'other' term calibrated on ScaleNet-50 in the same round "
             "(so ScaleNet-50's error is 0 by construction). ResNet-50's compiled latency, the budget of the last two "
             f"rows, was measured in a first round ({out['resnet50_compiled_ms_round_a']:.0f} ms, with ScaleNet-50 "
             "calibrating the model for those budgets); the table is the second round. "
             "`.venv/bin/python benchmarks/latency_allocation.py`", "",
             "| network | GMACs | eager ms | / ResNet-50 | predicted | compiled ms | / ResNet-50 | predicted |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in out["rows"]:
        cells = [r["name"], f"{r['macs'] / 1e9:.3f}"]
        for mode in ("eager", "compiled"):
            c = r[mode]
            err = "-" if c["predicted_ms"] is None else f"{c['predicted_ms']:.0f} ({c['predicted_ms'] / c['ms'] - 1:+.1%})"
            cells += [f"{c['ms']:.0f}", f"{c['vs_resnet50']:.3f}", err]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

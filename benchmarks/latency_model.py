"""The latency cost model on this machine: fit it on ScaleNet-50's layout (one SA block per stage
timed at several channel splits, BN folded as ``scalenet.fuse`` deploys it), then compare its
prediction with the measured latency of whole networks: the four published (learned)
ScaleNets and uniform splits of the same neurons per block.

    .venv/bin/python benchmarks/latency_model.py [--batch-size 16] [--image-size 224] [--repeats 5] [--compile]

Writes benchmarks/results/latency-model-<device>[-compile].json (the model itself, usable with
``scalenet info --latency``) and latency-model-<device>[-compile].md (the error table).
"""

import argparse
import json
from pathlib import Path

from scalenet import Structure
from scalenet.devices import device_slug
from scalenet.fileio import atomic_write_text
from scalenet.latency import current_settings, measure_latency_model, prediction_errors


def uniform_like(name: str) -> Structure:
    """The published structure's neurons per block, split evenly over its scales."""
    s = Structure.published(name)
    n = len(s.scales)
    rows = [[sum(r[:-1]) // n + (1 if i < sum(r[:-1]) % n else 0) for i in range(n)] for r in s.rows]
    return Structure.from_channels(rows, s.layers, scales=s.scales, stem=s.stem, width=s.width, name=f"{name} uniform")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--configs", type=int, default=14)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    settings = current_settings("cpu", None, args.batch_size, args.image_size, args.compile)
    model = measure_latency_model(Structure.published("scalenet50"), settings, configs=args.configs,
                                  repeats=args.repeats)
    checks = {name: Structure.published(name) for name in ("scalenet50_light", "scalenet50", "scalenet101", "scalenet152")}
    checks.update({f"{name} uniform": uniform_like(name) for name in ("scalenet50_light", "scalenet50")})
    first_other = model.other
    rows = prediction_errors(model, checks, args.repeats, progress=True, calibrate_on="scalenet50")
    model.fit["check"] = rows
    out = Path(__file__).resolve().parent / "results" / (
        f"latency-model-{device_slug(settings.device_name)}-{settings.threads}-threads" + ("-compile" if args.compile else ""))
    model.save(out.with_suffix(".json"))
    lines = [f"# Latency cost model, {settings.device_name} ({settings.threads} threads)", "",
             f"Fitted on ScaleNet-50's layout: one SA block per stage, {args.configs} channel splits each, fused (BN "
             f"folded), eval, channels_last, batch {args.batch_size}, {args.image_size} px, "
             f"{'compiled' if args.compile else 'eager'}, median of {args.repeats} interleaved rounds; 'other' (stem, "
             f"first-block shortcuts, head) calibrated on ScaleNet-50 itself. torch {settings.torch}. "
             "`.venv/bin/python benchmarks/latency_model.py`", "",
             "| stage | base ms | fixed ms per branch x1 / x2 / x4 / x7 | ms per neuron x1 / x2 / x4 / x7 | fit residual, max |",
             "|---:|---:|---|---|---:|"]
    for i, (c, p) in enumerate(zip(model.stages, model.fit["points"])):
        lines.append(f"| {i + 1} | {c.base:.1f} | {' / '.join(f'{v:.2f}' for v in c.fixed)} | "
                     f"{' / '.join(f'{v:.3f}' for v in c.per_neuron)} | {max(map(abs, p['residual_ms'])):.1f} ms |")
    lines += ["", f"other (stem, shortcuts, head): {model.other:.1f} ms, calibrated on ScaleNet-50 in the same interleaved "
              f"rounds as the networks below ({first_other:.1f} ms from the fit's own ScaleNet-50 timing, "
              f"{model.fit['reference_ms']:.1f} ms then; the machine drifts by several percent within minutes).", "",
              "| network | measured ms | predicted ms | error |", "|---|---:|---:|---:|"]
    for r in rows:
        error = "(calibration)" if r["calibration"] else f"{100 * r['error']:+.1f}%"
        lines.append(f"| {r['name']} | {r['measured_ms']:.0f} | {r['predicted_ms']:.0f} | {error} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({r["name"]: round(100 * r["error"], 1) for r in rows if not r["calibration"]}))


if __name__ == "__main__":
    main()

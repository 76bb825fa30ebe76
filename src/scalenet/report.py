"""Pictures, tables and reports: allocation charts (paper Fig. 1 style), training curves, the
stage table of an allocation, the study's table and plot, and the demo's markdown report."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .fileio import atomic_write
from .structure import Structure

__all__ = [
    "plot_allocation", "plot_curves", "save_figure", "stage_summary", "format_stage_summary", "format_study", "plot_study",
    "render_demo",
]

# one colour per scale, fine to coarse
SCALE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Writes a matplotlib figure as a PNG, atomically, and closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_allocation(structure: Structure, path: str | os.PathLike, title: str | None = None,
                    runs: Sequence[Structure] | None = None) -> Path:
    """One stacked bar per block: the proportion of neurons given to each scale. With ``runs``
    (the allocations of single supernets that were combined into ``structure``), a second
    panel shows each scale's share per block: the combined share as a bar, each run's as a dot,
    so the spread across runs is visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = list(structure.blocks())
    width = max(5.0, 0.32 * len(specs) * (1 + 0.6 * bool(runs)) + 2.5)
    if runs:
        fig, (ax, spread) = plt.subplots(2, 1, figsize=(width, 6.8), gridspec_kw=dict(height_ratios=[1, 1.1]))
    else:
        fig, ax = plt.subplots(figsize=(width, 3.6))
    bottom = [0.0] * len(specs)
    for i, scale in enumerate(structure.scales):
        share = [s.channels[i] / s.width for s in specs]
        ax.bar(range(len(specs)), share, bottom=bottom, color=SCALE_COLOURS[i % len(SCALE_COLOURS)],
               label=f"x{scale}", width=0.85)
        bottom = [b + v for b, v in zip(bottom, share)]
    _block_axis(ax, structure, specs)
    ax.set_xlabel("block (stage.index); numbers above: neurons kept")
    for x, s in enumerate(specs):
        ax.text(x, 1.01, str(s.width), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.legend(title="scale", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    ax.set_title(title or f"{structure.name or 'structure'}: neurons per scale", pad=22)
    if runs:
        _plot_spread(spread, structure, runs)
        fig.tight_layout()
    return save_figure(fig, path)


def _block_axis(ax, structure: Structure, specs: list) -> None:
    """One bar slot per block, dotted lines between stages, shares from 0 to 1."""
    for stage in range(1, len(structure.layers)):
        ax.axvline(sum(structure.layers[:stage]) - 0.5, color="black", lw=0.8, ls=":")
    ax.set_xticks(range(len(specs)))
    ax.set_xticklabels([s.name.replace("layer", "") for s in specs], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(specs) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of neurons")


def _plot_spread(ax, structure: Structure, runs: Sequence[Structure]) -> None:
    specs = list(structure.blocks())
    n = len(structure.scales)
    step = 0.8 / n
    for i, scale in enumerate(structure.scales):
        colour = SCALE_COLOURS[i % len(SCALE_COLOURS)]
        xs = [b - 0.4 + step * (i + 0.5) for b in range(len(specs))]
        ax.bar(xs, [s.channels[i] / s.width for s in specs], width=step * 0.9, color=colour, alpha=0.45)
        for run in runs:
            run_specs = list(run.blocks())
            ax.scatter(xs, [s.channels[i] / s.width for s in run_specs], s=9, color=colour, edgecolor="black",
                       linewidths=0.3, zorder=3)
    _block_axis(ax, structure, specs)
    ax.set_title(f"per scale: combined (bars) and each of the {len(runs)} supernets (dots)", fontsize=9)


def plot_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, title: str = "") -> Path:
    """Training loss and validation top-1 per epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, records in runs.items():
        epochs = [r["epoch"] for r in records]
        ax_loss.plot(epochs, [r["train_loss"] for r in records], marker="o", label=name)
        ax_acc.plot(epochs, [100 * r["val_top1"] for r in records], marker="o", label=name)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation top-1 (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def stage_summary(structure: Structure) -> list[dict[str, Any]]:
    """Per stage: blocks, neurons per block, share of each scale (for the terminal table)."""
    out = []
    for stage in range(len(structure.layers)):
        specs = [s for s in structure.blocks() if s.stage == stage]
        totals = [sum(s.channels[i] for s in specs) for i in range(len(structure.scales))]
        n = sum(totals)
        out.append({
            "stage": stage + 1,
            "blocks": len(specs),
            "side": specs[0].side,
            "planes": specs[0].planes,
            "neurons_per_block": [s.width for s in specs],
            "share": [t / n for t in totals],
        })
    return out


def format_stage_summary(structure: Structure) -> str:
    head = " ".join(f"x{s}".rjust(6) for s in structure.scales)
    lines = [f"{'stage':>5} {'side':>5} {'planes':>6} {'neurons/block':>14} | share {head}"]
    for r in stage_summary(structure):
        per_block = ",".join(map(str, r["neurons_per_block"]))
        share = " ".join(f"{100 * s:5.1f}%" for s in r["share"])
        lines.append(f"{r['stage']:>5} {r['side']:>5} {r['planes']:>6} {per_block:>14} |       {share}")
    return "\n".join(lines)


def format_study(report: dict[str, Any]) -> str:
    """The study's markdown table."""
    s = report["settings"]
    lat = report.get("latency")
    matched = (f"{lat['target_ms']:.2f} ms measured latency (within {100 * lat['tolerance']:g}%)" if lat else
               f"{report['target_macs']:,} MACs (within 1%)")
    lines = [f"# Study on {s['data']}: {len(report['arms'])} arms at {matched}, {s['seeds']} seeds each", ""]
    if lat:
        st = lat["settings"]
        threads = f" ({st['threads']} threads)" if st["threads"] else ""
        alpha = lat["alpha"]
        target = "the given target" if s.get("latency_ms") else "the learned arm's (MACs-aware) measurement"
        lines += [
            f"Latency: fused forward, eval, batch {st['batch_size']}, {st['image_size']} px, "
            f"{'compiled' if st['compile'] else 'eager'}, {st['device_name']}{threads}; measured (median of "
            f"{lat.get('repeats', 7)} interleaved rounds, all arms together) before training. The target is {target}; every other arm is "
            "selected under a predicted budget (the cost model's milliseconds; for an arm whose predicted budget no "
            "selection meets, its MACs), calibrated until its measurement lands within the tolerance "
            f"({len(lat['rounds'])} round(s) of timing). The latency arm keeps neurons by score "
            f"per ms^{alpha}.",
            "",
        ]
    lines += [
        f"Each arm trained {s['epochs']} epochs (batch {s['batch_size']}, LR {s['lr']}, "
        f"{'crop + flip' if s['augment'] else 'no augmentation'}, "
        f"{'all' if not s['train_subset'] else format(s['train_subset'], ',')} training images); test top-1 on "
        f"{report['test_images']:,} images.",
        "",
        "| arm | test top-1 (mean ± std) | per seed | MACs | params |"
        + (" budget (predicted ms, or MACs) | predicted ms | measured ms |" if lat else ""),
        "|---|---:|---|---:|---:|" + ("---:|---:|---:|" if lat else ""),
    ]
    for arm, a in report["arms"].items():
        per_seed = ", ".join(f"{100 * v:.2f}" for v in a["top1_by_seed"])
        budget = a.get("budget") or {}
        latency_ms = budget.get("latency_ms", budget.get("ms"))  # "ms": studies of format 1
        budget = (f"{latency_ms:.2f} ms" if latency_ms is not None else f"{budget['macs'] / 1e6:.2f} M MACs" if budget
                  else "—")
        ms = f" {budget} | {a['predicted_ms']:.2f} | {a['measured_ms']:.2f} |" if lat else ""
        lines.append(f"| {arm} | {100 * a['top1']:.2f}% ± {100 * a['top1_std']:.2f} | {per_seed} | "
                     f"{a['macs'] / 1e6:.2f} M | {a['params'] / 1e3:.1f} K |{ms}")
    lines += ["", "Paired by seed, with a 95% t-interval:", "", "| difference | mean (points) | 95% interval |",
              "|---|---:|---|"]
    for name, c in report["comparisons"].items():
        verdict = "above 0" if c["low"] > 0 else "below 0" if c["high"] < 0 else "includes 0"
        lines.append(f"| {name} | {100 * c['mean']:+.2f} | [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}] ({verdict}) |")
    return "\n".join(lines) + "\n"


def plot_study(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Left: each arm's per-seed test top-1 (dots) with mean ± std. Right: the paired differences
    with their 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["arms"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw=dict(width_ratios=[1.2, 1]))
    for i, arm in enumerate(arms):
        a = report["arms"][arm]
        left.scatter([i] * len(a["top1_by_seed"]), [100 * v for v in a["top1_by_seed"]], s=14, alpha=0.7)
        left.errorbar([i + 0.18], [100 * a["top1"]], yerr=[100 * a["top1_std"]], fmt="o", color="black", capsize=4)
    left.set_xticks(range(len(arms)))
    left.set_xticklabels(arms, rotation=20)
    left.set_ylabel("test top-1 (%)")
    left.set_title("per seed (dots), mean ± std (black)", fontsize=9)
    left.grid(alpha=0.3, axis="y")
    names = list(report["comparisons"])
    for j, name in enumerate(names):
        c = report["comparisons"][name]
        right.errorbar([100 * c["mean"]], [j], xerr=[[100 * (c["mean"] - c["low"])], [100 * (c["high"] - c["mean"])]],
                       fmt="o", color="black", capsize=4)
    right.axvline(0, color="grey", lw=0.8, ls="--")
    right.set_yticks(range(len(names)))
    right.set_yticklabels(names)
    right.set_xlabel("difference in test top-1 (points), 95% interval")
    right.set_title("paired by seed", fontsize=9)
    lat = report.get("latency")
    matched = f"{lat['target_ms']:.2f} ms predicted" if lat else f"{report['target_macs'] / 1e6:.2f} M MACs"
    fig.suptitle(f"{report['settings']['data']}: arms at {matched}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def render_demo(report: dict[str, Any], learned: Structure) -> str:
    """The demo's ``report.md``: the models side by side, the allocation's reproducibility, the
    pictures, the committed studies' finding and the learned allocation per stage."""
    m = report["models"]
    descriptions = {
        "scalenet": "learned allocation (this run)",
        "uniform": "SA blocks, equal neurons per scale",
        "resnet": "plain bottleneck, one 3x3 conv",
    }
    spread = report["profile"]["study"]["seeds"] > 1
    lines = [
        "# ScaleNet demo on Fashion-MNIST",
        "",
        f"Profile `{report['profile']['name']}`, {report['device']}; whole run {report['seconds'] / 60:.1f} min.",
        "",
        "| model | what | test top-1 | MACs | params | CPU latency, batch 1 | batch 256 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("scalenet", "uniform", "resnet"):
        r = m[name]
        acc = f"{100 * r['top1']:.2f}%" + (f" ± {100 * r['top1_std']:.2f}" if spread else "")
        lines.append(
            f"| {name} | {descriptions[name]} | {acc} | {r['macs'] / 1e6:.2f} M | {r['params'] / 1e3:.1f} K | "
            f"{r['latency_ms_batch1']:.2f} ms | {r['latency_ms_batch256']:.0f} ms |"
        )
    lines += ["", *_agreement_lines(report)]
    lines += [
        "",
        f"Test top-1 on {report['test_images']:,} Fashion-MNIST test images"
        + (f", mean ± standard deviation over {report['profile']['study']['seeds']} seeds." if spread else ", one run per model:"
           " differences of a few tenths of a percent are within run-to-run noise."),
        "MACs are multiply-adds of convs and the classifier; latency is the median of interleaved repeats in one process.",
        "",
        "![allocation](allocation.png)",
        "",
        "![curves](curves.png)",
        "",
        "Is the allocation worth it? " + report["study_findings"],
        "",
        "Learned allocation, per stage:",
        "",
        "```",
        format_stage_summary(learned),
        "```",
        "",
        "Notes:",
        "",
        *[f"- {n}" for n in report["notes"]],
        f"- supernet validation top-1 before selection: {100 * (report['supernet_val_top1'] or 0):.2f}%",
        "",
    ]
    return "\n".join(lines)


def _agreement_lines(report: dict[str, Any]) -> list[str]:
    n = report["agreement_runs"]
    lines = [
        f"Reproducibility of the allocation: its {n} supernet(s) against chance (random draws of as many neurons "
        "from the supernet's pool), by stage. Ratio: their mean pairwise TV distance over chance's "
        "(below 1: they agree "
        "better than chance); z: how far their mean allocation sits from the uniform split, in standard deviations "
        "of chance's.",
        "",
        "| stage | " + " | ".join(str(s["stage"]) for s in report["agreement"]) + " |",
        "|---|" + "---:|" * len(report["agreement"]),
        "| ratio to chance | " + " | ".join("-" if s["ratio"] is None else f"{s['ratio']:.2f}x" for s in report["agreement"]) + " |",
        "| preference z | " + " | ".join("-" if s["z"] is None else f"{s['z']:.1f}" for s in report["agreement"]) + " |",
    ]
    return lines

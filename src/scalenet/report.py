"""Pictures and reports: allocation charts (paper Fig. 1 style) and training curves."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .fileio import atomic_write
from .structure import Structure

__all__ = ["plot_allocation", "plot_curves", "save_figure"]

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
    (the allocations of single seed networks that were combined into ``structure``), a second
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
    ax.set_title(f"per scale: combined (bars) and each of the {len(runs)} seed networks (dots)", fontsize=9)


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

"""Pictures and reports: allocation charts (paper Fig. 1 style) and training curves."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .fileio import atomic_write
from .structure import Structure

__all__ = ["plot_allocation", "plot_curves"]

# one colour per scale, fine to coarse
SCALE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _save(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_allocation(structure: Structure, path: str | os.PathLike, title: str | None = None) -> Path:
    """One stacked bar per block: the proportion of neurons given to each scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = list(structure.blocks())
    fig, ax = plt.subplots(figsize=(max(5.0, 0.32 * len(specs) + 2.5), 3.6))
    bottom = [0.0] * len(specs)
    for i, scale in enumerate(structure.scales):
        share = [s.channels[i] / s.width for s in specs]
        ax.bar(range(len(specs)), share, bottom=bottom, color=SCALE_COLOURS[i % len(SCALE_COLOURS)],
               label=f"x{scale}", width=0.85)
        bottom = [b + v for b, v in zip(bottom, share)]
    for stage in range(1, len(structure.layers)):
        ax.axvline(sum(structure.layers[:stage]) - 0.5, color="black", lw=0.8, ls=":")
    ax.set_xticks(range(len(specs)))
    ax.set_xticklabels([s.name.replace("layer", "") for s in specs], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(specs) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of neurons")
    ax.set_xlabel("block (stage.index); numbers above: neurons kept")
    for x, s in enumerate(specs):
        ax.text(x, 1.01, str(s.width), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.legend(title="scale", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    ax.set_title(title or f"{structure.name or 'structure'}: neurons per scale", pad=22)
    return _save(fig, path)


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
    return _save(fig, path)

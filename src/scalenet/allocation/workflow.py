"""What ``scalenet allocate`` does around the allocation itself: its outputs checked before any
work, the supernets trained already (a sidecar or run folders), the latency budget for a
device's settings, and the result trained from scratch."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

from ..errors import SettingPathNotFound
from ..fileio import check_output_file, check_output_files
from ..latency import current_settings, requested_model
from ..structure import Structure
from ..training import CHECKPOINT_FORMAT, RunDir, TrainConfig, TrainResult, train
from .budgets import LatencyBudget, budget_from
from .pipeline import AllocationResult, SupernetRun, SupernetSettings, load_runs
from .supernets import load_supernet_runs, runs_dir_for, supernet_run_dirs

__all__ = ["check_outputs", "require_supernet_runs", "trained_supernets", "latency_budget", "train_result"]


def check_outputs(out: str | os.PathLike, *, force: bool = False, then_train: bool = False,
                  run_dir: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """The structure file, its sidecar and chart, and (``then_train``) the run directory of the
    result's training, default ``<OUT stem>_run`` beside it: all checked before any work."""
    out = check_output_file(out, "--out", "structure.json", force=force)
    sidecar, chart = AllocationResult.outputs(out)
    check_output_files({sidecar: "the scores file written beside the structure",
                        chart: "the chart written beside the structure"}, "--out", "structure.json", force)
    if not then_train:
        return out, None
    run = Path(run_dir) if run_dir else out.with_name(out.stem + "_run")
    RunDir(run, CHECKPOINT_FORMAT).check_new()  # refused now, not after the allocation
    return out, run


def require_supernet_runs(out: str | os.PathLike, repeats: int) -> None:
    """A strict resume: the supernet runs of the structure ``out`` (in ``OUT.runs``) must be there to
    continue (``allocate(resume=True)`` itself starts them when there are none)."""
    runs = runs_dir_for(out)
    if not any(RunDir(d, CHECKPOINT_FORMAT).has_checkpoint() for d in supernet_run_dirs(runs, repeats)):
        raise SettingPathNotFound(f"{{resume=True}}: no supernet runs in {runs}; start without {{resume=True}} "
                                  f"(or {{resume='auto'}})",
                                  "resume")


def trained_supernets(*, scores: str | os.PathLike | None = None, runs: Sequence[str | os.PathLike] | None = None
                  ) -> tuple[list[SupernetRun], Structure, SupernetSettings]:
    """Supernets trained already, to select from again: an allocation's sidecar
    (``scores``) or ``scalenet train`` run folders of the supernet structure (``runs``)."""
    if (scores is None) == (runs is None):
        raise ValueError("select from either a scores sidecar or supernet runs, not both")
    return load_runs(scores) if scores is not None else load_supernet_runs(runs)


def latency_budget(ms: float, image_size: int, *, model: str | os.PathLike | None = None, device: str = "cpu",
                   threads: int | None = None, batch_size: int = 16, compile: bool = False) -> LatencyBudget:
    """A latency budget of ``ms`` for a device's settings: predicted by the cost model in
    ``model`` (checked against the settings), or by the cached one for them (found for the
    supernet's layout when the budget is resolved, measured once when missing)."""
    wanted = current_settings(device, threads, batch_size, image_size, compile, option="--latency-device")
    return budget_from(latency_ms=ms, latency_model=requested_model(model, wanted))


def train_result(result: AllocationResult, data, cfg: TrainConfig, epochs: int,
                 run_dir: str | os.PathLike) -> TrainResult:
    """The allocated structure trained from scratch, with the supernets' recipe for ``epochs``."""
    return train(result.structure, data, dataclasses.replace(cfg, epochs=epochs), run_dir)

"""The training loop every task shares: :func:`train_one_epoch` (where a training step runs) and
:func:`fit` (the epochs around it: resume, validation, records, checkpoints) for any
:class:`Task`. Classification and detection bring only their step and their metric.

- :class:`Updater`: the optimiser, its LR schedule and the AMP scaler. One call is one
  optimisation step; a NaN or inf loss stops the run with :class:`TrainingError`.
- What is written, and when, is the :class:`~scalenet.training.checkpointing.CheckpointSaver`'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol

import torch
from torch import nn

from .checkpointing import CheckpointSaver, RunDir, check_same_run, describe_position, rng_state, set_rng_state
from .distributed import DistContext, autocast

__all__ = [
    "TrainingError", "Updater", "Task", "EpochTally", "FitResult", "train_one_epoch", "fit", "batches",
    "progress_bar", "format_rate",
]


class TrainingError(RuntimeError):
    """The run cannot go on (diverged loss). The message says what happened and what is kept."""



def progress_bar(iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar over ``iterable`` (the iterable itself when not enabled)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)


def format_rate(value: float) -> str:
    """Images per second: whole numbers, or two decimals for slow runs."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"



@dataclass
class Updater:
    """The optimiser, its per-iteration LR schedule and the AMP gradient scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler

    def step(self, loss: torch.Tensor, *, where: str, kept: str, advice: str) -> None:
        """Backward and one (AMP-scaled) step with the LR update; a NaN or inf loss stops the run
        with a :class:`TrainingError` saying where, what is kept and what to try."""
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {float(loss.detach())} at {where}; {kept}; {advice}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state(self, model: nn.Module) -> dict[str, Any]:
        """What a checkpoint needs to continue a run exactly (the epoch is added by the caller)."""
        return {
            "version": 1,
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }

    def restore(self, ckpt: Mapping[str, Any], model: nn.Module) -> None:
        """The inverse of :meth:`state`."""
        model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])



class Task(Protocol):
    """What a training task brings to :func:`fit`: its step and its metric."""

    label: str  # progress bars and log lines
    checkpoint_format: str
    train_prefix: str  # record keys of the training means: prefix + part name ("train_" + "loss")
    best_key: str  # checkpoint entry holding the best metric so far ("best_top1")
    metric: str  # record entry that decides best.pt ("val_top1"); absent: never best
    initial_best: float
    advice: str  # what to try when the loss diverges

    def step(self, net: nn.Module, inputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        """Forward on one batch: ``{"loss": total, **parts}`` (all logged, "loss" optimised)."""

    def validate(self, net: nn.Module) -> dict[str, Any]:
        """Record entries after an epoch (``val_*`` metrics, ``skipped_images``), every rank."""

    def describe(self, record: Mapping[str, Any]) -> str:
        """The validation part of an epoch's log line, e.g. ", val top-1 90.12%"."""

    def identity(self) -> dict[str, Any]:
        """What a resumed checkpoint must agree on (structure, classes)."""

    def identity_of(self, ckpt: Mapping[str, Any]) -> dict[str, Any]:
        """The same, read from a checkpoint."""

    def checkpoint(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Task entries of a checkpoint (structure, class names, configuration)."""


def batches(loader: Iterable) -> Iterable[tuple[Any, Any, int]]:
    """``(inputs, targets, skipped)`` from loaders that yield pairs or triples (unreadable samples skipped)."""
    for batch in loader:
        yield (batch[0], batch[1], batch[2]) if len(batch) == 3 else (batch[0], batch[1], 0)


@dataclass
class EpochTally:
    """The running sums of an epoch (loss parts weighted by images, images, unreadable samples,
    seconds); a step checkpoint stores them so that a resumed epoch's record covers all of it."""

    sums: dict[str, float] = field(default_factory=dict)
    images: float = 0.0
    skipped: float = 0.0
    seconds: float = 0.0  # before this process's share of the epoch
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self.started

    def state(self, d: DistContext) -> dict[str, Any]:
        """The tally summed over ranks (every rank must call it), for a checkpoint."""
        keys = sorted(self.sums)
        reduced = d.all_reduce([self.sums[k] for k in keys] + [self.images, self.skipped])
        return {"sums": dict(zip(keys, reduced)), "images": reduced[-2], "skipped": reduced[-1], "seconds": self.elapsed()}

    @classmethod
    def resumed(cls, state: Mapping[str, Any] | None, main: bool) -> "EpochTally":
        """The tally a resumed epoch starts from: the checkpoint's sums on rank 0 (they already
        cover every rank), zeros elsewhere."""
        if not state:
            return cls()
        if not main:
            return cls({k: 0.0 for k in state["sums"]}, seconds=float(state["seconds"]))
        return cls(dict(state["sums"]), float(state["images"]), float(state["skipped"]), float(state["seconds"]))


def train_one_epoch(
    net: nn.Module,
    loader: Iterable,
    step: Callable[[nn.Module, Any, Any], dict[str, torch.Tensor]],
    updater: Updater,
    *,
    epoch: int,
    desc: str,
    kept: str,
    advice: str,
    d: DistContext,
    amp: bool = False,
    regularizer: Callable[[], torch.Tensor] | None = None,
    progress: bool = True,
    first_step: int = 0,
    tally: EpochTally | None = None,
    after_step: Callable[[int, EpochTally], None] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: ``step`` computes the losses of a batch, ``updater`` steps.

    ``epoch`` (0-based) and the step number locate a diverged loss; ``desc`` labels the
    progress bar. Returns the image-weighted means of ``step``'s outputs (summed over ranks), ``images``,
    ``skipped`` (unreadable samples) and ``seconds``. Empty batches (all samples unreadable)
    are skipped. ``regularizer`` adds a penalty (e.g. L1 on BN scales) to the optimised loss.

    Resuming inside an epoch: ``loader`` yields the remaining batches, ``first_step`` counts the
    ones done and ``tally`` holds their sums. ``after_step(steps done, tally)`` runs after each
    batch (checkpoints, SIGTERM).
    """
    net.train()
    tally = tally or EpochTally()
    t0 = time.perf_counter()
    seen_here = 0
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = progress_bar(loader, total, desc, progress and d.main)
    for i, (inputs, targets, s) in enumerate(batches(bar), start=first_step):
        tally.skipped += s
        n = len(targets)
        if n:
            with autocast(d.device, amp):
                parts = step(net, inputs, targets)
            if regularizer is not None:
                parts["loss"] = parts["loss"] + regularizer()
            updater.step(parts["loss"], where=f"epoch {epoch + 1}, step {i + 1}", kept=kept, advice=advice)
            for k, v in parts.items():
                tally.sums[k] = tally.sums.get(k, 0.0) + float(v.detach()) * n
            tally.images += n
            seen_here += n
            if hasattr(bar, "set_postfix"):
                rate = seen_here * d.world_size / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{tally.sums['loss'] / max(tally.images, 1):.3f}", lr=f"{updater.lr:.4g}",
                                img_s=format_rate(rate))
        if after_step is not None:
            after_step(i + 1, tally)
    state = tally.state(d)
    out = {k: v / max(state["images"], 1) for k, v in state["sums"].items()}
    out.update(images=state["images"], skipped=state["skipped"], seconds=state["seconds"])
    return out


@dataclass
class FitResult:
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best: float = 0.0


@dataclass
class _Position:
    """Where the epochs start (a fresh run, or a resumed checkpoint) and the run's records so far."""

    best: float
    epoch: int = 0  # epochs done
    step: int = 0  # steps done inside the next epoch
    tally: dict[str, Any] | None = None  # that epoch's sums so far
    metrics: list[dict[str, Any]] = field(default_factory=list)


def fit(
    task: Task,
    model: nn.Module,
    updater: Updater,
    loader: Any,
    saver: CheckpointSaver,
    *,
    epochs: int,
    d: DistContext,
    resume: bool = False,
    compile: bool = False,
    amp: bool = False,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    on_epoch: Callable[[nn.Module, dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Trains ``model`` for ``epochs`` epochs with ``task``'s step and metric; ``saver`` writes
    the run (records, checkpoints, TensorBoard; SIGTERM raises :class:`Preempted` once the
    position is saved).

    ``loader`` yields ``(inputs, targets)`` or ``(inputs, targets, skipped)``, has a
    ``batch_size`` and a ``sampler`` with ``set_epoch(epoch, start)``. ``resume`` first restores
    the saver's run's newest complete checkpoint exactly, inside an epoch too.
    ``on_epoch(model, record)`` runs after each epoch's validation (e.g. to watch a ranking settle).
    """
    at = _restore(task, model, updater, saver.run, d) if resume else _Position(task.initial_best)
    net = d.wrap(model, compile)
    penalty = (lambda: regularizer(model)) if regularizer is not None else None
    note_skipped = True

    trained_on = d.describe()  # once: every checkpoint of this process records it

    def checkpoint(epochs_done: int, record: Mapping[str, Any], **position: Any) -> dict[str, Any]:
        """The run's state now: at an epoch's end, or inside the next one with ``position``."""
        return {"format": task.checkpoint_format, "epoch": epochs_done, **position, **updater.state(model),
                **task.checkpoint(record), task.best_key: at.best, "trained_on": trained_on,
                **({"epoch_record": dict(record)} if record else {})}  # the log line it ends

    with saver.start(at.epoch, at.metrics):
        for epoch in range(at.epoch, epochs):
            loader.sampler.set_epoch(epoch, at.step * loader.batch_size)
            desc = f"{task.label} epoch {epoch + 1}/{epochs}"
            stats = train_one_epoch(
                net, loader, task.step, updater, epoch=epoch, desc=desc, d=d, amp=amp, regularizer=penalty,
                progress=progress, kept=saver.kept(epoch), advice=task.advice, first_step=at.step,
                tally=EpochTally.resumed(at.tally, d.main),
                after_step=saver.step_hook(lambda **position: checkpoint(epoch, {}, **position)),
            )
            at.step, at.tally = 0, None
            record, improved = _validated(task, net, epoch, stats, updater.lr, at)
            if on_epoch is not None:
                on_epoch(model, record)
            if d.main:
                note_skipped = _report(task, desc, record, note_skipped)
            saver.end_epoch(lambda: checkpoint(epoch + 1, record), record, improved, more=epoch + 1 < epochs)
    saver.finish()
    return FitResult(at.metrics, at.best)


def _validated(task: Task, net: nn.Module, epoch: int, stats: dict[str, float], lr: float,
               at: _Position) -> tuple[dict[str, Any], bool]:
    """The epoch's record after validation (appended to ``at.metrics``), and whether it improved
    the best metric (``at.best`` updated)."""
    t = time.perf_counter()
    val = task.validate(net)
    record = _epoch_record(task, epoch, stats, val, lr, time.perf_counter() - t)
    improved = task.metric in record and record[task.metric] > at.best
    at.best = max(at.best, record[task.metric]) if task.metric in record else at.best
    at.metrics.append(record)
    return record, improved


def _restore(task: Task, model: nn.Module, updater: Updater, run: RunDir, d: DistContext) -> _Position:
    """Restores the run's newest complete checkpoint exactly (rank 0 chooses it, every rank reads
    it): the epochs done, the steps done inside the next one, the epoch's tally so far, the best
    metric and the records of the epochs done."""
    path, ckpt = run.latest() if d.main else (None, None)
    path = d.broadcast(path)
    ckpt = ckpt if d.main else run.read(path)
    check_same_run(path, task.identity_of(ckpt), task.identity(),
                   "resume with the same model, data and batch size, or choose another --out")
    updater.restore(ckpt, model)
    start = int(ckpt["epoch"])
    if d.main:
        print(f"resuming {run.path} from {path.name} ({describe_position(ckpt)})", flush=True)
    return _Position(float(ckpt[task.best_key]), start, int(ckpt.get("step", 0)), ckpt.get("tally"),
                     run.read_metrics(upto=start, last=ckpt.get("epoch_record")))


def _report(task: Task, desc: str, record: Mapping[str, Any], note_skipped: bool) -> bool:
    """Prints an epoch's line, and once a note on unreadable images; returns whether the note is still due."""
    if note_skipped and record.get("skipped_images"):
        print(f"note: skipped {record['skipped_images']} unreadable images", flush=True)
        note_skipped = False
    print(f"{desc}: loss {record[task.train_prefix + 'loss']:.4f}{task.describe(record)}, "
          f"{format_rate(record['images_per_s'])} img/s, {record['seconds']:.1f} s", flush=True)
    return note_skipped


def _epoch_record(task: Task, epoch: int, stats: dict[str, float], val: dict[str, Any], lr: float,
                  val_seconds: float) -> dict[str, Any]:
    train_parts = {k: v for k, v in stats.items() if k not in ("images", "skipped", "seconds")}
    skipped = int(stats["skipped"] + val.pop("skipped_images", 0))
    record: dict[str, Any] = {"epoch": epoch + 1, **{task.train_prefix + k: v for k, v in train_parts.items()}, **val}
    record.update(lr=lr, seconds=stats["seconds"] + val_seconds, train_seconds=stats["seconds"],
                  images_per_s=stats["images"] / max(stats["seconds"], 1e-9))
    if skipped:
        record["skipped_images"] = skipped
    return record

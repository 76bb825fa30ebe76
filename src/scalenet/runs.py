"""The run layer every training task shares: classification and detection bring only their step
and their metric.

- :class:`DistContext`: torchrun's environment (rank, world size, device), the process group,
  metric reduction across ranks and the DDP wrapper.
- :class:`RunDir`: a run directory. It checks that the directory can be written, refuses to
  overwrite a run unless told to resume, reads and validates ``last.pt`` on resume, keeps
  ``metrics.jsonl`` in step with the checkpoint, and writes ``best.pt``/``last.pt`` atomically.
- :class:`Updater`: the optimiser, its LR schedule and the AMP scaler. One call is one
  optimisation step; a NaN or inf loss stops the run with :class:`TrainingError`.
- :func:`train_one_epoch`: where a training step runs. :func:`fit`: the epoch loop around it
  (resume, validation, records, checkpoints, TensorBoard) for any :class:`Task`.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import CheckpointError, read_state_dict, save_weights
from .fileio import atomic_write, atomic_write_text

__all__ = [
    "DistContext",
    "setup_distributed",
    "RunDir",
    "Updater",
    "Task",
    "TrainingError",
    "train_one_epoch",
    "batches",
    "fit",
    "seed_all",
    "unwrap",
    "autocast",
    "progress_bar",
    "format_rate",
    "in_processes",
    "auto_jobs",
]


class TrainingError(RuntimeError):
    """The run cannot go on (diverged loss). The message says what happened and what is kept."""


# ---------------------------------------------------------------------------- distributed
@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files, logs and progress bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, values: list[float]) -> list[float]:
        """Sums of ``values`` over all ranks (the values themselves with one process)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def wrap(self, model: nn.Module, compile: bool = False) -> nn.Module:
        """``model`` under DDP when there are several ranks, then compiled if asked."""
        net = model
        if self.enabled:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        return torch.compile(net) if compile else net


def setup_distributed() -> DistContext:
    """Reads torchrun's environment; starts the process group when there is more than one rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def seed_all(seed: int) -> None:
    """Seeds torch, Python's and NumPy's generators (a run's starting point)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def autocast(device: torch.device, enabled: bool):
    """Mixed precision: fp16 on CUDA, bf16 on CPU (a no-op when not enabled)."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def progress_bar(iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar over ``iterable`` (the iterable itself when not enabled)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)


def format_rate(value: float) -> str:
    """Images per second: whole numbers, or two decimals for slow runs."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


# ---------------------------------------------------------------------------- RNG state
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), np_state[2], np_state[3], np_state[4]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- the optimisation step
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
            "rng": _rng_state(),
        }

    def restore(self, ckpt: Mapping[str, Any], model: nn.Module) -> None:
        """The inverse of :meth:`state`."""
        model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])


# ---------------------------------------------------------------------------- run directory
class RunDir:
    """A run directory: ``last.pt``, ``best.pt``, ``metrics.jsonl`` (one record per epoch) and,
    at the end, ``model.safetensors`` with the best weights. Checkpoints carry ``format`` so
    that a directory of another task is not mistaken for this one."""

    def __init__(self, path: str | os.PathLike, checkpoint_format: str):
        self.path = Path(path)
        self.format = checkpoint_format

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def prepare(self, resume: bool) -> None:
        """Creates the directory; with ``resume`` it must hold ``last.pt``, without it must not."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"output directory {self.path} is a file; choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise PermissionError(
                f"output directory {self.path} is not writable ({e.strerror or e}); choose another --out"
            ) from None
        if resume and not self.last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.last}; start without --resume")
        if not resume and self.last.is_file():
            raise ValueError(
                f"{self.path} already holds a run ({self.last}); pass --resume to continue it or choose another --out"
            )

    def read(self, path: Path | None = None) -> dict[str, Any]:
        """A checkpoint of this run's format (``last.pt`` by default)."""
        path = path or self.last
        ckpt = read_state_dict(path)
        if ckpt.get("format") != self.format or "model" not in ckpt:
            raise CheckpointError(f"{path}: not a {self.format} checkpoint")
        return ckpt

    def kept(self, epoch: int) -> str:
        """What survives a failure now, for error messages."""
        return f"{self.last} (epoch {epoch}) is kept" if epoch > 0 else "nothing was saved"

    def read_metrics(self, upto: int) -> list[dict[str, Any]]:
        """The records of epochs ``1..upto`` (those of the checkpoint being resumed)."""
        if not self.metrics_file.is_file():
            return []
        records = [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]
        return [r for r in records if r["epoch"] <= upto]

    def reset_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrites the log to exactly ``records`` (drops epochs past the resumed checkpoint)."""
        atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in records))

    def save(self, ckpt: dict[str, Any], record: dict[str, Any], improved: bool) -> None:
        """Appends ``record`` to the log, then writes ``best.pt`` (when ``improved``) and ``last.pt``.
        In that order: a kill in between leaves ``last.pt`` one epoch behind, and a resume
        drops the log lines past it."""
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if improved:
            atomic_write(self.best, lambda f: torch.save(ckpt, f))
        atomic_write(self.last, lambda f: torch.save(ckpt, f))

    def export_best_weights(self) -> Path | None:
        """``model.safetensors`` with the weights of ``best.pt`` (None when there is no best)."""
        if not self.best.is_file():
            return None
        return save_weights(read_state_dict(self.best)["model"], self.path / "model.safetensors")


def check_same_run(path: Path, saved: Mapping[str, Any], current: Mapping[str, Any], advice: str) -> None:
    """Raises one line naming what differs between a checkpoint's run and this one."""
    differ = [k for k in current if saved.get(k) != current[k]]
    if differ:
        raise ValueError(f"{path} holds a run with a different {' and '.join(differ)}; {advice}")


# ---------------------------------------------------------------------------- the loop
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
) -> dict[str, float]:
    """One pass over ``loader``: ``step`` computes the losses of a batch, ``updater`` steps.

    ``epoch`` (0-based) and the step number locate a diverged loss; ``desc`` labels the
    progress bar. Returns the image-weighted means of ``step``'s outputs (summed over ranks), ``images``,
    ``skipped`` (unreadable samples) and ``seconds``. Empty batches (all samples unreadable)
    are skipped. ``regularizer`` adds a penalty (e.g. L1 on BN scales) to the optimised loss.
    """
    net.train()
    t0 = time.perf_counter()
    sums: dict[str, float] = {}
    seen = skipped = 0.0
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = progress_bar(loader, total, desc, progress and d.main)
    for i, (inputs, targets, s) in enumerate(batches(bar)):
        skipped += s
        n = len(targets)
        if n == 0:
            continue
        with autocast(d.device, amp):
            parts = step(net, inputs, targets)
        if regularizer is not None:
            parts["loss"] = parts["loss"] + regularizer()
        updater.step(parts["loss"], where=f"epoch {epoch + 1}, step {i + 1}", kept=kept, advice=advice)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
        seen += n
        if hasattr(bar, "set_postfix"):
            rate = seen * d.world_size / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", lr=f"{updater.lr:.4g}", img_s=format_rate(rate))
    keys = list(sums)
    reduced = d.all_reduce([sums[k] for k in keys] + [seen, skipped])
    seen, skipped = reduced[-2], reduced[-1]
    out = {k: v / max(seen, 1) for k, v in zip(keys, reduced)}
    out.update(images=seen, skipped=skipped, seconds=time.perf_counter() - t0)
    return out


@dataclass
class FitResult:
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best: float = 0.0


def fit(
    task: Task,
    model: nn.Module,
    updater: Updater,
    loader: Any,
    *,
    epochs: int,
    run: RunDir | None,
    d: DistContext,
    resume: bool = False,
    compile: bool = False,
    amp: bool = False,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    on_epoch: Callable[[nn.Module, dict[str, Any]], None] | None = None,
    progress: bool = True,
    tensorboard: bool = False,
) -> FitResult:
    """Trains ``model`` for ``epochs`` epochs with ``task``'s step and metric.

    ``loader`` yields ``(inputs, targets)`` or ``(inputs, targets, skipped)`` and has a
    ``sampler`` with ``set_epoch``. With ``run`` (rank 0 writes it) every epoch appends to
    ``metrics.jsonl`` and writes ``last.pt`` (``best.pt`` when ``task.metric`` improves);
    ``resume`` first restores ``run.last`` exactly. Without ``run`` nothing is written.
    ``on_epoch(model, record)`` runs after each epoch's validation (e.g. to watch a ranking settle).
    """
    start, best, metrics = _restore(task, model, updater, run) if resume and run is not None else (0, task.initial_best, [])
    net = d.wrap(model, compile)
    writer = None
    if run is not None and d.main:
        run.reset_metrics(metrics)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run.path / "tensorboard"), purge_step=start + 1)
    penalty = (lambda: regularizer(model)) if regularizer is not None else None
    note_skipped = True
    try:
        for epoch in range(start, epochs):
            loader.sampler.set_epoch(epoch)
            desc = f"{task.label} epoch {epoch + 1}/{epochs}"
            stats = train_one_epoch(
                net, loader, task.step, updater, epoch=epoch, desc=desc, d=d, amp=amp, regularizer=penalty,
                progress=progress, kept=run.kept(epoch) if run is not None else "nothing was saved", advice=task.advice,
            )
            t = time.perf_counter()
            val = task.validate(net)
            record = _epoch_record(task, epoch, stats, val, updater.lr, time.perf_counter() - t)
            improved = task.metric in record and record[task.metric] > best
            best = max(best, record[task.metric]) if task.metric in record else best
            metrics.append(record)
            if on_epoch is not None:
                on_epoch(model, record)
            if d.main:
                note_skipped = _report(task, desc, record, note_skipped)
            if run is not None and d.main:
                ckpt = {"format": task.checkpoint_format, "epoch": epoch + 1, **updater.state(model),
                        **task.checkpoint(record), task.best_key: best}
                run.save(ckpt, record, improved)
                if writer is not None:
                    _log_scalars(writer, record, epoch + 1)
            d.barrier()
    finally:
        if writer is not None:
            writer.close()
    if run is not None and d.main:
        run.export_best_weights()
    return FitResult(metrics, best)


def _restore(task: Task, model: nn.Module, updater: Updater, run: RunDir) -> tuple[int, float, list[dict[str, Any]]]:
    """Restores ``run.last`` exactly; returns the epochs done, the best metric and their records."""
    ckpt = run.read()
    check_same_run(run.last, task.identity_of(ckpt), task.identity(), "resume with the same model and data")
    updater.restore(ckpt, model)
    start = int(ckpt["epoch"])
    return start, float(ckpt[task.best_key]), run.read_metrics(upto=start)


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


def _log_scalars(writer, record: Mapping[str, Any], step: int) -> None:
    for k, v in record.items():
        if k != "epoch" and isinstance(v, (int, float)):
            writer.add_scalar(k, v, step)
    writer.flush()


# ---------------------------------------------------------------------------- several runs at once
def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def auto_jobs(tasks: int) -> int:
    """How many small trainings to run at once: one per core on CPU (measured on 2 cores: two
    single-thread runs finish 1.56x sooner than one after the other with two threads), one
    with CUDA (the runs share the GPU)."""
    if torch.cuda.is_available():
        return 1
    return max(1, min(tasks, torch.get_num_threads()))


def in_processes(fn: Callable[[Any], Any], payloads: Sequence[Any], jobs: int = 1,
                 on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
    """``[fn(p) for p in payloads]``, ``jobs`` at a time in fresh worker processes that share
    this process's cores (``cores // jobs`` threads each): small CPU trainings scale poorly
    with threads, so two single-thread runs finish sooner than one two-thread run after the
    other. ``fn`` must be importable (a module-level function); ``on_result(i, result)`` is
    called as each finishes. ``jobs=1`` runs in this process."""
    if jobs < 1:
        raise ValueError(f"--jobs must be 1 or more, got {jobs}")
    results: list[Any] = [None] * len(payloads)
    if jobs == 1 or len(payloads) <= 1:
        for i, p in enumerate(payloads):
            results[i] = fn(p)
            if on_result is not None:
                on_result(i, results[i])
        return results
    import concurrent.futures as cf
    import multiprocessing

    threads = max(1, torch.get_num_threads() // jobs)
    with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_limit_threads,
                                initargs=(threads,)) as pool:
        futures = {pool.submit(fn, p): i for i, p in enumerate(payloads)}
        for f in cf.as_completed(futures):
            i = futures[f]
            results[i] = f.result()
            if on_result is not None:
                on_result(i, results[i])
    return results

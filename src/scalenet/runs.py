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
import re
import signal
import threading
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
    "Preempted",
    "PREEMPTED_EXIT_CODE",
    "DEFAULT_SAVE_EVERY",
    "train_one_epoch",
    "EpochTally",
    "describe_position",
    "batches",
    "fit",
    "autocast",
    "progress_bar",
    "format_rate",
    "in_processes",
    "auto_jobs",
]


class TrainingError(RuntimeError):
    """The run cannot go on (diverged loss). The message says what happened and what is kept."""


#: The exit code after SIGTERM, once the checkpoint is written: 128 + SIGTERM, what a process
#: killed by the signal reports. Non-zero, so torchrun's agent restarts the workers (while
#: ``--max-restarts`` allows) and schedulers that requeue failed jobs do so.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM

#: Minutes between checkpoints inside an epoch (``--save-every``). Counted from the last
#: checkpoint of any kind, so runs whose epochs are shorter than this only save at epoch ends.
DEFAULT_SAVE_EVERY = 15.0


class Preempted(Exception):
    """SIGTERM arrived: every rank finished its step and the position was saved. Exit with
    :data:`PREEMPTED_EXIT_CODE`; the same command with ``--resume auto`` continues."""

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, checkpoint: Path | None):
        self.checkpoint = checkpoint
        where = f"the run's position is in {checkpoint}" if checkpoint else "nothing was saved (no run directory)"
        super().__init__(f"stopped by SIGTERM after finishing its step; {where}; "
                         "run the same command with --resume auto to continue")


class _SigtermFlag:
    """While active (main thread only), SIGTERM sets :attr:`requested` instead of killing the
    process; the previous handler comes back on exit."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> "_SigtermFlag":
        if self.enabled:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGTERM, self._previous)


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

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a picklable object)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module, compile: bool = False) -> nn.Module:
        """``model`` under DDP when there are several ranks, then compiled if asked."""
        net = model
        if self.enabled:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        return torch.compile(net) if compile else net


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch (or not launched by torchrun at all),
    from the environment alone: for code that prints after the process group is gone."""
    return int(os.environ.get("RANK", "0")) == 0


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
        backend = "nccl" if cuda else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=_attempt_store(rank, world_size, int(restart)), rank=rank,
                                    world_size=world_size)
    return DistContext(rank, world_size, local_rank, device)


def _attempt_store(rank: int, world_size: int, attempt: int) -> dist.Store:
    """The rendezvous store of one torchrun attempt. torchrun's agent keeps one store across
    restarts, and the process group's keys carry no attempt number: after a restart, a rank
    could read the address a worker of the previous attempt had published and fail to connect
    ("Gloo connectFullMesh failed ... Connection refused"; 4 restarts in 6 on this machine).
    A prefix per attempt keeps the attempts apart."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, world_size, is_master=not agent_hosts_it and rank == 0,
                          timeout=dist.constants.default_pg_timeout, multi_tenant=True)
    return dist.PrefixStore(f"scalenet/attempt-{attempt}", store)


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
_STEP_FILE = re.compile(r"step-e(\d+)-s(\d+)\.pt$")


class NoCheckpointLeft(CheckpointError):
    """Every checkpoint of a run directory is damaged: ``damaged`` says why, file by file."""

    def __init__(self, path: Path, damaged: list[str], advice: str = "start a new run with another --out"):
        self.path, self.damaged = path, damaged
        super().__init__(f"no complete checkpoint left in {path} to resume from: {'; '.join(damaged)}; {advice}")


class RunDir:
    """A run directory: ``last.pt`` (end of the latest epoch), ``best.pt``, up to two step
    checkpoints ``step-eEEEE-sSSSSSSS.pt`` (inside epoch ``EEEE``, after ``SSSSSSS`` of its
    steps), ``metrics.jsonl`` (one record per epoch) and, at the end, ``model.safetensors``
    with the best weights. Checkpoints carry ``format`` so that a directory of another task is
    not mistaken for this one."""

    #: step checkpoints kept (the newest ones): the latest, and one to fall back on
    KEEP_STEPS = 2

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

    def step_file(self, epochs_done: int, steps: int) -> Path:
        return self.path / f"step-e{epochs_done + 1:04d}-s{steps:07d}.pt"

    def step_files(self) -> list[tuple[tuple[int, int], Path]]:
        """``((epochs done, steps), path)`` of the step checkpoints, newest first."""
        found = []
        for f in self.path.glob("step-e*-s*.pt") if self.path.is_dir() else []:
            m = _STEP_FILE.match(f.name)
            if m:
                found.append(((int(m.group(1)) - 1, int(m.group(2))), f))
        return sorted(found, reverse=True)

    def has_checkpoint(self) -> bool:
        return self.last.is_file() or bool(self.step_files())

    def prepare(self, resume: bool | str) -> bool:
        """Creates the directory and says whether the run resumes. ``resume=True``: it must hold a
        checkpoint; ``False``: it must not; ``"auto"``: resume when it holds one."""
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
        held = self.has_checkpoint()
        if resume and not held:
            if resume == "auto":
                self.check_new()
                return False
            raise FileNotFoundError(f"--resume: no checkpoint in {self.path}; start without --resume (or --resume auto)")
        if not resume:
            self.check_new()
        return held

    def check_new(self) -> None:
        """Refuses (one line) a directory a new run would overwrite: a file, a run's checkpoints,
        or epoch records that no checkpoint continues. Creates nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"output directory {self.path} is a file; choose another --out")
        if self.has_checkpoint():
            newest = self.last.name if self.last.is_file() else self.step_files()[0][1].name
            raise ValueError(
                f"{self.path} already holds a run ({newest}); pass --resume (or --resume auto) to continue it or "
                "choose another --out"
            )
        if self.metrics_file.is_file() and self.metrics_file.stat().st_size > 0:
            raise ValueError(
                f"{self.path} holds {self.metrics_file.name} with epoch records but no checkpoint to continue them; "
                "choose another --out, or delete the folder to start over there"
            )

    def open(self, resume: bool | str, d: DistContext) -> bool:
        """:meth:`prepare` on rank 0, its answer (whether the run resumes) on every rank."""
        return bool(d.broadcast(self.prepare(resume) if d.main else None))

    def read(self, path: Path | None = None) -> dict[str, Any]:
        """A checkpoint of this run's format (``last.pt`` by default)."""
        path = path or self.last
        ckpt = read_state_dict(path)
        if ckpt.get("format") != self.format or "model" not in ckpt:
            raise CheckpointError(f"{path}: not a {self.format} checkpoint")
        return ckpt

    def latest(self) -> tuple[Path, dict[str, Any]]:
        """The newest complete checkpoint: a step checkpoint past ``last.pt``, else ``last.pt``,
        else the older step checkpoints and ``best.pt``. A file that cannot be read (cut off
        mid-write, damaged) is passed over with a one-line note naming it and what is used
        instead; with none left, one :class:`CheckpointError` lists them."""
        damaged: list[str] = []
        last = None
        if self.last.is_file():
            try:
                last = self.read(self.last)
            except CheckpointError as e:
                damaged.append(_reason(self.last, e))
        last_position = (int(last["epoch"]), 0) if last is not None else (-1, -1)
        steps = self.step_files()
        candidates = [p for pos, p in steps if pos > last_position] + ([self.last] if last is not None else [])
        candidates += [p for pos, p in steps if pos <= last_position] + [self.best]
        for path in candidates:
            if path == self.best and not path.is_file():
                continue
            try:
                ckpt = last if path == self.last else self.read(path)
            except CheckpointError as e:
                damaged.append(_reason(path, e))
                continue
            if damaged:
                print(f"note: {'; '.join(damaged)}; resuming from {path.name} instead "
                      f"({describe_position(ckpt)})", flush=True)
            return path, ckpt
        raise NoCheckpointLeft(self.path, damaged)

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

    def save_step(self, ckpt: dict[str, Any]) -> Path:
        """Writes a step checkpoint (atomically) and removes all but the newest :attr:`KEEP_STEPS`."""
        path = self.step_file(int(ckpt["epoch"]), int(ckpt["step"]))
        atomic_write(path, lambda f: torch.save(ckpt, f))
        for _, old in self.step_files()[self.KEEP_STEPS :]:
            old.unlink(missing_ok=True)
        return path

    def export_best_weights(self) -> Path | None:
        """``model.safetensors`` with the weights of ``best.pt`` (None when there is no best)."""
        if not self.best.is_file():
            return None
        return save_weights(read_state_dict(self.best)["model"], self.path / "model.safetensors")


def _reason(path: Path, e: Exception) -> str:
    """One short clause on why ``path`` cannot be resumed from."""
    text = str(e)
    if "not a readable" in text:
        return f"{path.name} is cut off or damaged (unreadable)"
    return f"{path.name}: {text.split(': ', 1)[-1]}"


def describe_position(ckpt: Mapping[str, Any]) -> str:
    """Where a checkpoint stands, e.g. "epoch 3, step 120" (inside epoch 3) or "end of epoch 2"."""
    epoch, step = int(ckpt["epoch"]), int(ckpt.get("step", 0))
    return f"epoch {epoch + 1}, step {step}" if step else f"end of epoch {epoch}"


def check_same_run(path: Path, saved: Mapping[str, Any], current: Mapping[str, Any], advice: str) -> None:
    """Raises one line naming what differs between a checkpoint's run and this one (short scalar
    values are shown, e.g. the data set's name; entries an older checkpoint lacks are not compared)."""
    differ = []
    for k, v in current.items():
        old = saved.get(k)
        if old is not None and old != v:
            short = all(isinstance(x, (str, int, float)) and len(str(x)) <= 120 for x in (old, v))
            differ.append(f"{k} ({old} there, {v} here)" if short else k)
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
    save_every: float | None = DEFAULT_SAVE_EVERY,
) -> FitResult:
    """Trains ``model`` for ``epochs`` epochs with ``task``'s step and metric.

    ``loader`` yields ``(inputs, targets)`` or ``(inputs, targets, skipped)``, has a
    ``batch_size`` and a ``sampler`` with ``set_epoch(epoch, start)``. With ``run`` (rank 0
    writes it) every epoch appends to ``metrics.jsonl`` and writes ``last.pt`` (``best.pt``
    when ``task.metric`` improves), and a step checkpoint is written whenever ``save_every``
    minutes have passed since the last checkpoint (None: only at epoch ends). ``resume``
    first restores the run's newest complete checkpoint exactly, inside an epoch too.

    SIGTERM (with ``run``): every rank finishes its step, rank 0 writes a step checkpoint and
    :class:`Preempted` is raised. Without ``run`` nothing is written and SIGTERM is not caught.
    ``on_epoch(model, record)`` runs after each epoch's validation (e.g. to watch a ranking settle).
    """
    if save_every is not None and not save_every > 0:
        raise ValueError(f"--save-every must be a positive number of minutes, got {save_every}")
    start, first_step, tally_state, best, metrics = 0, 0, None, task.initial_best, []
    if resume and run is not None:
        start, first_step, tally_state, best, metrics = _restore(task, model, updater, run, d)
    net = d.wrap(model, compile)
    writer = None
    if run is not None and d.main:
        run.reset_metrics(metrics)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run.path / "tensorboard"), purge_step=start + 1)
    penalty = (lambda: regularizer(model)) if regularizer is not None else None
    note_skipped = True
    last_save = time.monotonic()

    def checkpoint(epochs_done: int, record: Mapping[str, Any], **position: Any) -> dict[str, Any]:
        """The run's state now: at an epoch's end, or inside the next one with ``position``."""
        return {"format": task.checkpoint_format, "epoch": epochs_done, **position, **updater.state(model),
                **task.checkpoint(record), task.best_key: best}

    with _SigtermFlag(run is not None) as sigterm:

        def after_step(steps: int, tally: EpochTally) -> None:
            nonlocal last_save
            due = save_every is not None and time.monotonic() - last_save >= 60 * save_every
            stop, due = (bool(v) for v in d.all_reduce([float(sigterm.requested), float(due and d.main)]))
            if not (stop or due):
                return
            ckpt = checkpoint(epoch, {}, step=steps, tally=tally.state(d))
            path = run.save_step(ckpt) if d.main else None
            last_save = time.monotonic()
            d.barrier()
            if stop:
                raise Preempted(path)

        try:
            for epoch in range(start, epochs):
                loader.sampler.set_epoch(epoch, first_step * loader.batch_size)
                desc = f"{task.label} epoch {epoch + 1}/{epochs}"
                stats = train_one_epoch(
                    net, loader, task.step, updater, epoch=epoch, desc=desc, d=d, amp=amp, regularizer=penalty,
                    progress=progress, kept=run.kept(epoch) if run is not None else "nothing was saved",
                    advice=task.advice, first_step=first_step, tally=EpochTally.resumed(tally_state, d.main),
                    after_step=after_step if run is not None else None,
                )
                first_step, tally_state = 0, None
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
                    run.save(checkpoint(epoch + 1, record), record, improved)
                    if writer is not None:
                        _log_scalars(writer, record, epoch + 1)
                last_save = time.monotonic()
                d.barrier()
                if run is not None and bool(d.all_reduce([float(sigterm.requested)])[0]) and epoch + 1 < epochs:
                    raise Preempted(run.last)
        finally:
            if writer is not None:
                writer.close()
    if run is not None and d.main:
        run.export_best_weights()
    return FitResult(metrics, best)


def _restore(task: Task, model: nn.Module, updater: Updater, run: RunDir,
             d: DistContext) -> tuple[int, int, dict[str, Any] | None, float, list[dict[str, Any]]]:
    """Restores the run's newest complete checkpoint exactly (rank 0 chooses it, every rank reads
    it); returns the epochs done, the steps done inside the next one, the epoch's tally so far,
    the best metric and the records of the epochs done."""
    path, ckpt = run.latest() if d.main else (None, None)
    path = d.broadcast(path)
    ckpt = ckpt if d.main else run.read(path)
    check_same_run(path, task.identity_of(ckpt), task.identity(),
                   "resume with the same model, data and batch size, or choose another --out")
    updater.restore(ckpt, model)
    start = int(ckpt["epoch"])
    if d.main:
        print(f"resuming {run.path} from {path.name} ({describe_position(ckpt)})", flush=True)
    return start, int(ckpt.get("step", 0)), ckpt.get("tally"), float(ckpt[task.best_key]), run.read_metrics(upto=start)


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

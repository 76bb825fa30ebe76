"""What a run keeps on disk, and the one object that decides when to write it.

- :class:`RunDir`: a run directory. It checks that the directory can be written, refuses to
  overwrite a run unless told to resume, reads and validates checkpoints (falling back past a
  damaged one), keeps ``metrics.jsonl`` in step with the checkpoint, and writes
  ``best.pt``/``last.pt`` atomically.
- :class:`CheckpointSaver`: what a training loop calls after each step and each epoch. It owns
  the save-every timer, the TensorBoard writer and preemption (SIGTERM), as timm's
  ``CheckpointSaver`` owns its rotation.
- RNG state for an exact resume (:func:`rng_state`).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..checkpoint import CheckpointError, read_state_dict, save_weights
from ..data import first_difference, format_names
from ..errors import SettingError
from ..fileio import atomic_write, atomic_write_text
from .distributed import DistContext

__all__ = [
    "RunDir", "NoCheckpointLeft", "CheckpointSaver", "Preempted", "PREEMPTED_EXIT_CODE", "DEFAULT_SAVE_EVERY",
    "describe_position", "check_same_run", "rng_state", "set_rng_state",
]


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
        where = f"the run's position is in {checkpoint}" if checkpoint else "rank 0 saved the run's position"
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


def rng_state() -> dict[str, Any]:
    """Every generator a run draws from (torch, CUDA, NumPy, Python), for a checkpoint."""
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


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
            raise SettingError(f"output directory {self.path} is a file; choose another {{run_dir}}", "run_dir")
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
            raise SettingError(f"output directory {self.path} is a file; choose another {{run_dir}}", "run_dir")
        if self.has_checkpoint():
            newest = self.last.name if self.last.is_file() else self.step_files()[0][1].name
            raise SettingError(
                f"{self.path} already holds a run ({newest}); pass {{resume=True}} (or {{resume='auto'}}) "
                "to continue it or "
                "choose another {run_dir}", "resume", "run_dir")
        if self.metrics_file.is_file() and self.metrics_file.stat().st_size > 0:
            raise SettingError(
                f"{self.path} holds {self.metrics_file.name} with epoch records but no checkpoint to continue them; "
                "choose another {run_dir}, or delete the folder to start over there", "run_dir")

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

    def read_metrics(self, upto: int, last: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The records of epochs ``1..upto`` (those of the checkpoint being resumed). ``last``: the
        record an epoch's checkpoint carries, which stands in for a log line a kill kept from
        being written (:meth:`save` writes the checkpoint first)."""
        records = []
        if self.metrics_file.is_file():
            records = [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]
        records = [r for r in records if r["epoch"] <= upto]
        if last and last.get("epoch") == upto and (not records or records[-1]["epoch"] < upto):
            records.append(dict(last))
        return records

    def reset_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrites the log to exactly ``records`` (drops epochs past the resumed checkpoint)."""
        atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in records))

    def save(self, ckpt: dict[str, Any], record: dict[str, Any], improved: bool) -> None:
        """Writes ``best.pt`` (when ``improved``) and ``last.pt``, then appends ``record`` to the log.
        In that order, a kill at any moment leaves a run that resumes: the log is at most one
        line behind ``last.pt``, which carries that line (``epoch_record``,
        :meth:`read_metrics`). The other order left, after a kill in the first epoch's save, a
        log line and no checkpoint: a folder ``--resume auto`` must refuse."""
        if improved:
            atomic_write(self.best, lambda f: torch.save(ckpt, f))
        atomic_write(self.last, lambda f: torch.save(ckpt, f))
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

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


def _entries_that_differ(old: Mapping[str, Any], new: Mapping[str, Any], most: int = 6) -> str:
    keys = [k for k in sorted({*old, *new}, key=str) if old.get(k) != new.get(k)]
    shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in keys[:most])
    return shown + (f"; ... ({len(keys)} differ)" if len(keys) > most else "")


def check_same_run(path: Path, saved: Mapping[str, Any], current: Mapping[str, Any], advice: str) -> None:
    """Raises one line naming what differs between a checkpoint's run and this one (short scalar
    values are shown, e.g. the data set's name; entries an older checkpoint lacks are not compared)."""
    differ = []
    for k, v in current.items():
        old = saved.get(k)
        if old is not None and old != v:
            short = all(isinstance(x, (str, int, float)) and len(str(x)) <= 120 for x in (old, v))
            names = all(isinstance(x, (list, tuple)) and all(isinstance(n, str) for n in x) for x in (old, v))
            table = all(isinstance(x, Mapping) for x in (old, v))
            differ.append(f"{k} ({old} there, {v} here)" if short else
                          f"{k} ({format_names(old)} there, {format_names(v)} here; {first_difference(old, v)})" if names
                          else f"{k} ({_entries_that_differ(old, v)})" if table else k)
    if differ:
        raise ValueError(f"{path} holds a run with a different {' and '.join(differ)}; {advice}")



class CheckpointSaver:
    """What a run writes while it trains, and when: rank 0 writes, every rank takes part in the
    decisions (so that all stop at the same step).

    - after every step (:meth:`after_step`): a step checkpoint once ``save_every`` minutes
      have passed since the last checkpoint of any kind (None: epoch ends only), and on
      SIGTERM a step checkpoint followed by :class:`Preempted`;
    - after every epoch (:meth:`end_epoch`): the record appended to ``metrics.jsonl``,
      ``last.pt`` (and ``best.pt`` when improved), TensorBoard scalars, and :class:`Preempted`
      when SIGTERM arrived during the epoch;
    - at the end (:meth:`finish`): ``model.safetensors`` with the best weights.

    Use it as a context manager around the epochs (:meth:`start` opens the TensorBoard writer,
    entering installs the SIGTERM handler; leaving restores and closes them).
    """

    def __init__(self, run: RunDir, d: DistContext, *, save_every: float | None = DEFAULT_SAVE_EVERY,
                 tensorboard: bool = False):
        if save_every is not None and not save_every > 0:
            raise SettingError(f"{{save_every}} must be a positive number of minutes, got {save_every}", "save_every")
        self.run, self.d, self.save_every, self.tensorboard = run, d, save_every, tensorboard
        self._sigterm = _SigtermFlag(True)
        self._writer = None
        self._last_save = time.monotonic()

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.d.main

    def start(self, epochs_done: int, metrics: list[dict[str, Any]]) -> "CheckpointSaver":
        """Before the first epoch: the log cut back to ``metrics`` (those of the resumed
        checkpoint) and the TensorBoard writer opened past ``epochs_done``."""
        if self.writes:
            self.run.reset_metrics(metrics)
            if self.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run.path / "tensorboard"), purge_step=epochs_done + 1)
        self._last_save = time.monotonic()
        return self

    def __enter__(self) -> "CheckpointSaver":
        self._sigterm.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._sigterm.__exit__(*exc)

    def kept(self, epoch: int) -> str:
        """What survives a failure now, for error messages."""
        return self.run.kept(epoch)

    def step_hook(self, checkpoint: Callable[..., dict[str, Any]]) -> Callable[[int, Any], None]:
        """The ``after_step`` of :func:`~scalenet.training.loop.train_one_epoch`;
        ``checkpoint(step=, tally=)`` gives the run's state inside the epoch."""
        return lambda steps, tally: self.after_step(checkpoint, steps, tally)

    def after_step(self, checkpoint: Callable[..., dict[str, Any]], steps: int, tally) -> None:
        """A step checkpoint when one is due or SIGTERM arrived (then :class:`Preempted`)."""
        due = self.save_every is not None and time.monotonic() - self._last_save >= 60 * self.save_every
        stop, due = (bool(v) for v in self.d.all_reduce([float(self._sigterm.requested), float(due and self.d.main)]))
        if not (stop or due):
            return
        ckpt = checkpoint(step=steps, tally=tally.state(self.d))
        path = self.run.save_step(ckpt) if self.d.main else None
        self._last_save = time.monotonic()
        self.d.barrier()
        if stop:
            raise Preempted(path)

    def end_epoch(self, checkpoint: Callable[[], dict[str, Any]], record: Mapping[str, Any], improved: bool,
                  more: bool) -> None:
        """The epoch's record and checkpoints (``checkpoint()`` gives the state); :class:`Preempted`
        when SIGTERM arrived and ``more`` epochs were to follow."""
        if self.writes:
            self.run.save(checkpoint(), dict(record), improved)
            if self._writer is not None:
                _log_scalars(self._writer, record, int(record["epoch"]))
        self._last_save = time.monotonic()
        self.d.barrier()
        if bool(self.d.all_reduce([float(self._sigterm.requested)])[0]) and more:
            raise Preempted(self.run.last)

    def finish(self) -> None:
        """After the last epoch: the best weights as ``model.safetensors``."""
        if self.writes:
            self.run.export_best_weights()


def _log_scalars(writer, record: Mapping[str, Any], step: int) -> None:
    for k, v in record.items():
        if k != "epoch" and isinstance(v, (int, float)):
            writer.add_scalar(k, v, step)
    writer.flush()

"""Worker processes for small trainings run side by side (supernets, study runs): on a CPU,
several single-thread runs finish sooner than one after the other with all threads; on a
machine with several GPUs, each worker process owns one GPU for its lifetime."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch

from ..errors import SettingError
from .distributed import under_torchrun

__all__ = ["auto_jobs", "check_jobs", "gpu_slots", "in_processes", "jobs_for"]


def gpu_slots() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (respecting the
    caller's own ``CUDA_VISIBLE_DEVICES``); empty without CUDA."""
    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        return [v.strip() for v in visible.split(",") if v.strip()][:count]
    return [str(i) for i in range(count)]


def auto_jobs(tasks: int) -> int:
    """How many small trainings to run at once: one per GPU with CUDA, else one per core (measured
    on 2 cores: two single-thread runs finish 1.56x sooner than one after the other with two
    threads)."""
    gpus = gpu_slots()
    return max(1, min(tasks, len(gpus) if gpus else torch.get_num_threads()))


def jobs_for(jobs: int | None, tasks: int, what: str) -> int:
    """How many of ``tasks`` trainings (``what``, for the message) run at once: one under torchrun,
    where each trains with DDP across all ranks (``--jobs`` above 1 refused), else ``jobs`` or
    :func:`auto_jobs`."""
    if under_torchrun():
        if (jobs or 1) > 1:
            raise SettingError(f"under torchrun the {what} train one after another, each with DDP across all ranks; "
                             "drop {jobs}", "jobs")
        return 1
    return auto_jobs(tasks) if jobs is None else jobs


def check_jobs(jobs: int | None) -> None:
    """Refuses ``--jobs`` below 1, or above the number of GPUs with CUDA (one training per GPU)."""
    if jobs is None:
        return
    if jobs < 1:
        raise SettingError(f"{{jobs}} must be 1 or more, got {jobs}", "jobs")
    gpus = gpu_slots()
    if gpus and jobs > len(gpus):
        raise SettingError(f"{{jobs}} {jobs}: this machine has {len(gpus)} GPU(s) (CUDA_VISIBLE_DEVICES "
                           f"{','.join(gpus)}) and each training takes one; give {{jobs}} {len(gpus)} or fewer "
                           "(or torchrun for DDP)", "jobs")


def _start_worker(threads: int, devices) -> None:
    """A worker's set-up: its share of the cores and, with GPUs, one GPU of its own (taken from
    the queue before anything in the process touches CUDA, so cuda:0 is that GPU)."""
    torch.set_num_threads(threads)
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices.get(timeout=60)


def in_processes(fn: Callable[[Any], Any], payloads: Sequence[Any], jobs: int = 1,
                 on_result: Callable[[int, Any], None] | None = None,
                 devices: Sequence[str] | None = None) -> list[Any]:
    """``[fn(p) for p in payloads]``, ``jobs`` at a time in fresh worker processes that share
    this process's cores (``cores // jobs`` threads each): small CPU trainings scale poorly
    with threads, so two single-thread runs finish sooner than one two-thread run after the
    other. With GPUs (``devices``: ``CUDA_VISIBLE_DEVICES`` entries, default
    :func:`gpu_slots`) each worker sees only one of them, a different one per worker, so
    trainings running at the same time never share a GPU. ``fn`` must be importable (a
    module-level function); ``on_result(i, result)`` is called as each finishes. ``jobs=1``
    runs in this process."""
    if jobs < 1:
        raise SettingError(f"{{jobs}} must be 1 or more, got {jobs}", "jobs")
    results: list[Any] = [None] * len(payloads)
    if jobs == 1 or len(payloads) <= 1:
        for i, p in enumerate(payloads):
            results[i] = fn(p)
            if on_result is not None:
                on_result(i, results[i])
        return results
    import concurrent.futures as cf
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    devices = list(gpu_slots() if devices is None else devices)
    queue = None
    if devices:
        if jobs > len(devices):
            raise SettingError(f"{{jobs}} {jobs}: only {len(devices)} GPU(s) ({','.join(devices)}); give {{jobs}} "
                             f"{len(devices)} or fewer", "jobs")
        queue = context.Queue()
        for device in devices[:jobs]:
            queue.put(device)
    threads = max(1, torch.get_num_threads() // jobs)
    with cf.ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(threads, queue)) as pool:
        futures = {pool.submit(fn, p): i for i, p in enumerate(payloads)}
        for f in cf.as_completed(futures):
            i = futures[f]
            results[i] = f.result()
            if on_result is not None:
                on_result(i, results[i])
    return results

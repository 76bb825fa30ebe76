"""Interleaved timing: the one loop behind every side-by-side speed figure.

A shared, noisy machine drifts by several percent within minutes. Timing models one after
another would charge that drift to whichever ran last; interleaving (each round calls every
model once, in turn) spreads it over all of them, and ratios of medians taken in the same
rounds cancel most of it.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping

__all__ = ["interleaved", "summarize"]


def interleaved(
    runners: Mapping[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    progress: str | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each runner over ``repeats`` interleaved rounds, after ``warmup``
    untimed calls of each. ``sync`` runs before and after each timed call (e.g. a CUDA
    synchronisation); ``progress`` is a bar label (None: no bar)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    sync = sync or (lambda: None)
    for run in runners.values():
        for _ in range(warmup):
            run()
        sync()
    rounds = range(repeats)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc=progress, leave=False)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in rounds:
        for name, run in runners.items():
            sync()
            t = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - t)
    return times


def summarize(times: Mapping[str, list[float]], reference: str | None = None) -> dict[str, dict[str, float]]:
    """Median and minimum in milliseconds per runner, and with ``reference`` the ratio of each
    median to the reference's (key ``ratio_to_<reference>``)."""
    base = statistics.median(times[reference]) if reference is not None else None
    out = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        row = {"median_ms": 1e3 * median, "min_ms": 1e3 * min(ts)}
        if base is not None:
            row[f"ratio_to_{reference}"] = median / base
        out[name] = row
    return out

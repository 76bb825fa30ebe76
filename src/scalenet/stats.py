"""Statistics for comparisons over training seeds: Student's t quantiles and paired intervals
(no SciPy: the t CDF is integrated numerically, accurate to ~1e-10 for these uses)."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

__all__ = ["t_quantile", "paired_interval"]


def _t_cdf(t: float, df: int) -> float:
    """Student's t CDF by Simpson integration of the density (accurate to ~1e-10 here)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    n = 2000
    h = abs(t) / n
    f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
    area = h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    return 0.5 + math.copysign(area, t)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` (paired) with its two-sided t-interval."""
    d = [x - y for x, y in zip(a, b)]
    if len(d) < 2:
        raise ValueError("a paired interval needs at least 2 pairs")
    mean, sd = statistics.mean(d), statistics.stdev(d)
    half = t_quantile(0.5 + level / 2, len(d) - 1) * sd / math.sqrt(len(d))
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": len(d), "level": level}

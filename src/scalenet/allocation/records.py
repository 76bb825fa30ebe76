"""The records the allocation modules share: how the supernets were trained and scored
(:class:`SupernetSettings`), how neurons are selected (:class:`Selection`) and one trained
supernet (:class:`SupernetRun`). :mod:`.pipeline` and :mod:`.supernets` both import them from here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..structure import Structure
from .combine import COMBINES
from .importance import BlockScores
from .rounding import multiple_pool
from .select import SELECTORS, check_alpha

__all__ = ["DEFAULT_COMBINE", "SIDECAR_VERSION", "RENAMED_KEYS", "current_keys", "SupernetSettings", "Selection",
           "SupernetRun"]

DEFAULT_COMBINE = "mean"  # see DEFAULT_REPEATS in .pipeline for the measurement

#: The format of the files an allocation writes (sidecar, structure meta, ``allocation.json``; a
#: study's ``settings.json`` renames alike).
#: Version 2 named the over-complete network the *supernet* (the paper's "seed network"; "seed"
#: now means a random seed only) and gave a MACs budget the key of its setting, ``macs``.
SIDECAR_VERSION = 2
#: Keys of version 1 files and their version 2 names: readers take either.
RENAMED_KEYS = {"seed_width": "supernet_width", "seed_epochs": "supernet_epochs", "macs_target": "macs",
                "seed_rows": "supernet_rows", "seed_val_top1": "supernet_val_top1", "seed_subset": "supernet_subset"}


def current_keys(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` (settings or meta of any version) with version 1 keys under their version 2 names."""
    return {RENAMED_KEYS.get(k, k): v for k, v in raw.items()}


@dataclass(frozen=True, kw_only=True)
class SupernetSettings:
    """How the supernets were trained and scored: what their scores depend on (the first
    part of a sidecar's ``settings``)."""

    data: str
    image_size: int
    num_classes: int
    in_chans: int
    layers: tuple[int, ...] = ()
    scales: tuple[int, ...] = (1, 2, 4, 7)
    supernet_width: int | tuple[int, ...] | None = None
    importance: str = "BNScale"
    normalizer: str | None = "max"
    importance_alpha: float | None = 0.0  # kept for old sidecars: scores are stored unweighted now
    sparsity: float = 0.0
    supernet_epochs: int | None = None
    seed: int = 0
    repeats: int = 1

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("layers", "scales", "supernet_width"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "SupernetSettings":
        """The record from a sidecar's ``settings`` (which also hold the selection's entries)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in current_keys(raw).items() if k in known}
        for key in ("layers", "scales", "supernet_width"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class Selection:
    """How neurons are kept under the budget: ``scope`` (:data:`SELECTORS`), how several
    supernets are combined (:data:`COMBINES`), ``alpha`` (scores per unit of cost,
    :func:`weigh_by_cost`) and the rounding of each branch to a multiple of ``multiple_of``."""

    scope: str = "block"
    alpha: float = 0.0
    combine: str = DEFAULT_COMBINE
    multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.scope not in SELECTORS:
            raise ValueError(f"scope {self.scope!r} is unknown; use {' or '.join(SELECTORS)}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine {self.combine!r} is unknown; use {' or '.join(COMBINES)}")
        check_alpha(self.alpha)

    def check(self, supernet: Structure) -> None:
        """Refuses a ``multiple_of`` the supernet cannot offer, before any training or selection."""
        if self.multiple_of is not None:
            multiple_pool(supernet, self.multiple_of)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "Selection":
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})


@dataclass(kw_only=True)
class SupernetRun:
    """One trained supernet: its random seed, its neurons' scores, its own allocation under the
    budget, and its training records."""

    seed: int
    scores: list[BlockScores]
    structure: Structure
    metrics: list[dict[str, Any]] = field(default_factory=list)

"""A study's settings: its arms, the training recipe every arm shares, :class:`StudyConfig`,
and the study directory it runs in."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..allocation.records import current_keys
from ..errors import SettingError, mention
from ..fileio import check_writable_dir
from ..training import TrainConfig, check_jobs

__all__ = ["ARMS", "LATENCY_ARMS", "TOLERANCE", "LATENCY_TOLERANCE", "LATENCY_REPEATS", "CALIBRATION_ROUNDS",
           "LATENCY_ALPHA", "latency_alpha", "STUDY_RECIPE", "RECIPE_SETTINGS", "StudyConfig", "STUDY_FILES",
           "prepare_directory"]


ARMS = ("learned", "uniform", "random", "resnet", "heuristic")


#: Arms that need a latency model (``--latency-model``); not in the default set.
LATENCY_ARMS = ("latency",)


TOLERANCE = 0.01


#: A study matched in latency: every arm's measured latency lands within this fraction of the
#: target, after at most CALIBRATION_ROUNDS adjustments of its predicted budget. The ratio of two
#: networks' medians scatters by 3-5% between rounds on a shared 2-core CPU (five rounds of 15
#: interleaved repeats, Fashion-MNIST layout at batch 256), so a tighter tolerance chases noise.
LATENCY_TOLERANCE = 0.05


#: Interleaved repeats per timing round (each arm's median).
LATENCY_REPEATS = 15


CALIBRATION_ROUNDS = 4


#: The latency arm's default alpha: scores per millisecond.
LATENCY_ALPHA = 1.0


def latency_alpha(alpha: float | None) -> float:
    return LATENCY_ALPHA if alpha is None else alpha


#: Every arm's training recipe unless told otherwise: short runs without augmentation.
STUDY_RECIPE = TrainConfig(epochs=2, batch_size=64, lr=0.1, wd=5e-4, warmup=0.2, augment=False, channels_last=True,
                           tensorboard=False)


#: The recipe's entries a study's settings record (flat, beside the study's own).
RECIPE_SETTINGS = ("seed", "epochs", "batch_size", "lr", "wd", "warmup", "augment")


@dataclass
class StudyConfig:
    data: str = "fashion-mnist"
    arms: tuple[str, ...] = ARMS
    seeds: int = 5
    width_mult: float | None = None  # the learned arm's budget (default 1.0), or:
    macs: int | None = None
    layers: tuple[int, ...] | None = None
    width: int | None = None
    image_size: int | None = None
    # every arm's recipe; its seed is the first training seed, and the allocation's supernets start there too
    train: TrainConfig = field(default_factory=lambda: dataclasses.replace(STUDY_RECIPE))
    train_subset: int | None = None
    val_subset: int | None = 2000  # per-epoch validation; the final test uses the whole split
    # the learned arm's allocation
    repeats: int | None = None  # None: the library's default
    supernet_epochs: int | None = None  # None: the library's default (one epoch per 8,000 images)
    supernet_subset: int | None = 8000
    # matching in latency instead of MACs
    latency_model: str | None = None  # a cost model file (scalenet latency-model)
    latency_ms: float | None = None  # every arm's latency budget (default: the learned arm's prediction)
    latency_alpha: float | None = None  # the latency arm's scores per ms**alpha (None: LATENCY_ALPHA)
    latency_tolerance: float | None = None  # every arm's measured latency within this of the target (None: LATENCY_TOLERANCE)
    jobs: int | None = None  # concurrent trainings (cores / jobs threads, or a GPU, each); None: one per core or GPU

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def progress(self) -> bool:
        return self.train.progress

    def settings(self) -> dict[str, Any]:
        """What decides the results (not how many processes run them, nor progress bars), flat:
        the study's entries and the recipe's :data:`RECIPE_SETTINGS`."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("train", "jobs")}
        if self.latency_model is None:  # matched in MACs: the studies recorded before latency calibration resume
            del own["latency_tolerance"]
        else:
            own["latency_tolerance"] = self.tolerance()
        flat = {**own, **{k: getattr(self.train, k) for k in RECIPE_SETTINGS}}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in flat.items()}

    def tolerance(self) -> float:
        """How close every arm's measured latency must land to the target (a fraction)."""
        return LATENCY_TOLERANCE if self.latency_tolerance is None else self.latency_tolerance

    @classmethod
    def from_settings(cls, flat: dict[str, Any], **extra: Any) -> "StudyConfig":
        """The inverse of :meth:`settings` (``extra``: ``jobs``, ``progress``), e.g. in a worker process."""
        values = {**current_keys(flat), **extra}
        recipe = {k: values.pop(k) for k in (*RECIPE_SETTINGS, "progress") if k in values}
        for key in ("arms", "layers"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values, train=dataclasses.replace(STUDY_RECIPE, **recipe))

    def check(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS + LATENCY_ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS + LATENCY_ARMS)}")
        if self.latency_model is None and (self.latency_ms is not None or any(a in LATENCY_ARMS for a in self.arms)):
            raise SettingError("the latency arm and {latency_ms} need {latency_model} (a cost model from scalenet "
                               "latency-model)", "latency_ms", "latency_model")
        if self.latency_tolerance is not None and self.latency_model is None:
            raise SettingError("{latency_tolerance} applies to a study matched in latency; give {latency_model} too",
                               "latency_tolerance", "latency_model")
        if self.latency_tolerance is not None and not 0 < self.latency_tolerance < 0.5:
            raise SettingError(f"{{latency_tolerance}} is a fraction of the target latency, above 0 and below 0.5 "
                               f"(0.05 is 5%), got {self.latency_tolerance}", "latency_tolerance")
        if self.latency_ms is None and self.latency_model is not None and "learned" not in self.arms:
            raise SettingError("matching in latency needs the learned arm or {latency_ms}", "latency_ms")
        if "latency" in self.arms and "learned" not in self.arms:
            raise ValueError("the latency arm selects from the learned arm's supernets; add the learned arm")
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise SettingError(f"{{arms}} must name each arm once, got {','.join(self.arms) or 'none'}", "arms")
        if self.seeds < 2:
            raise SettingError(f"{{seeds}} must be at least 2 for an interval (mean ± std and a paired "
                               "t-interval), got "
                               f"{self.seeds}", "seeds")
        if self.width_mult is not None and self.macs is not None:
            raise SettingError("give {width_mult} or {macs}, not both", "width_mult", "macs")
        check_jobs(self.jobs)


#: What a study directory holds (structures/ may be filled by hand beforehand, as the README shows).
STUDY_FILES = frozenset({"settings.json", "structures", "results", "runs", "study.json", "study.md", "study.png",
                         "latency.json"})


def prepare_directory(cfg: StudyConfig, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SettingError(f"{{out}} {out} is a file; choose a directory", "out")
    check_writable_dir(out.parent if not out.exists() else out)
    foreign = sorted(p.name for p in out.iterdir() if p.name not in STUDY_FILES and not p.name.startswith(".")) if out.is_dir() else []
    if foreign:
        raise SettingError(f"{{out}} {out} holds files that are not a study's ({', '.join(foreign[:3])}"
                           f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory", "out")
    saved = out / "settings.json"
    if saved.is_file():
        old = current_keys(json.loads(saved.read_text()))  # a study of format 1 compares under its new keys
        differ = sorted(k for k in set(old) | set(cfg.settings()) if old.get(k) != cfg.settings().get(k))
        if differ:
            raise SettingError(f"{out} holds a study with other settings ({', '.join(map(mention, differ))}); resume "
                               "it with the same settings or choose another {out}", "out", *differ)
    (out / "structures").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(exist_ok=True)

"""Is the allocation worth it? A controlled comparison at matched MACs, over several seeds.

Arms (each a structure of the same layout, MACs within 1% of the learned allocation's, or of
``macs`` when given):

- ``learned``: the data-driven allocation (:func:`scalenet.allocation.allocate`);
- ``uniform``: the same neurons per block split as evenly as integers allow over the scales;
- ``random``: neurons ranked by random scores and kept per block under the same MACs budget
  (a fresh draw for every training seed);
- ``resnet``: the plain bottleneck (one 3x3 conv, the single scale x1);
- ``heuristic``: "fine early, coarse late": each stage's scale shares interpolated, by depth,
  from the published ScaleNet-50's stage shares;
- ``latency`` (only with a latency model, not in the default set): the learned arm's seed
  networks, selected again under a latency budget with scores per millisecond
  (``latency_alpha``, see :func:`scalenet.allocation.weigh_by_cost`).

With ``latency_model`` (a :class:`scalenet.latency.LatencyModel` file) the arms are matched in
*measured* latency instead of MACs, the plain ResNet included (the cost model predicts any
subset of its scales): each arm is selected under the learned (MACs-aware) arm's predicted
latency, or ``latency_ms``, then every arm is timed (fused, eval, the model's settings) and
an arm more than ``latency_tolerance`` from the target is selected again under a calibrated
budget until its measurement lands (:func:`_matched_in_latency`); predictions and
measurements are both reported.
Under torchrun every run trains with DDP across all ranks, one after another; rank 0 times
the arms and writes every file.

Every arm is trained from scratch with the same recipe and ``seeds`` training seeds, and
tested on the whole evaluation split. The report gives mean ± std per arm and, paired by
seed, the difference of the learned arm to each other arm with a 95% t-interval. One
allocation serves all seeds of the learned arm: the interval covers training noise, not the
allocation's own run-to-run spread (which ``scalenet allocate`` reports against chance).

A study directory resumes: finished runs are read back, not retrained; a run killed mid-way
continues from its ``last.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .allocation import (
    BlockScores, Budget, LatencyBudget, MacsBudget, Selection, WidthBudget, allocate, budget_from, default_layout,
    load_runs, seed_epochs, seed_structure, select, select_runs,
)
from .fileio import atomic_write_text
from .report import format_study, plot_study, stage_summary
from .structure import Structure
from .training import (
    TrainConfig, check_jobs, in_processes, is_main_process, jobs_for, setup_distributed, under_torchrun,
)

__all__ = [
    "ARMS", "RULES", "ARM_BUILDERS", "STUDY_RECIPE", "StudyConfig", "run_study", "build_arms", "summarize_study",
    "paired_interval", "t_quantile", "arm_structure", "format_study",
]

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


def _latency_alpha(alpha: float | None) -> float:
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
    # every arm's recipe; its seed is the first training seed, and the allocation's seed networks start there too
    train: TrainConfig = field(default_factory=lambda: dataclasses.replace(STUDY_RECIPE))
    train_subset: int | None = None
    val_subset: int | None = 2000  # per-epoch validation; the final test uses the whole split
    # the learned arm's allocation
    repeats: int | None = None  # None: the library's default
    seed_epochs: int | None = None  # None: the library's default (one epoch per 8,000 images)
    seed_subset: int | None = 8000
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
        values = {**flat, **extra}
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
            raise ValueError("the latency arm and --latency-ms need --latency-model (a cost model from scalenet "
                             "latency-model)")
        if self.latency_tolerance is not None and self.latency_model is None:
            raise ValueError("--latency-tolerance applies to a study matched in latency; give --latency-model too")
        if self.latency_tolerance is not None and not 0 < self.latency_tolerance < 0.5:
            raise ValueError(f"--latency-tolerance is a fraction of the target latency, above 0 and below 0.5 "
                             f"(0.05 is 5%), got {self.latency_tolerance}")
        if self.latency_ms is None and self.latency_model is not None and "learned" not in self.arms:
            raise ValueError("matching in latency needs the learned arm or --latency-ms")
        if "latency" in self.arms and "learned" not in self.arms:
            raise ValueError("the latency arm selects from the learned arm's seed networks; add the learned arm")
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"--arms must name each arm once, got {','.join(self.arms) or 'none'}")
        if self.seeds < 2:
            raise ValueError(f"--seeds must be at least 2 for an interval (mean ± std and a paired t-interval), got {self.seeds}")
        if self.width_mult is not None and self.macs is not None:
            raise ValueError("give --width-mult or --macs, not both")
        check_jobs(self.jobs)


# ---------------------------------------------------------------------------- statistics
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


# ---------------------------------------------------------------------------- the arms' structures
def _published_stage_shares(scales: Sequence[int], stages: int) -> list[list[float]]:
    """ScaleNet-50's per-stage scale shares, interpolated linearly by relative depth to ``stages``."""
    published = [s["share"] for s in stage_summary(Structure.published("scalenet50"))]
    if tuple(scales) != Structure.published("scalenet50").scales:
        raise ValueError(f"the heuristic arm follows ScaleNet-50's scales 1,2,4,7; this study uses {','.join(map(str, scales))}")
    out = []
    for i in range(stages):
        t = i / max(1, stages - 1) * (len(published) - 1)
        j = min(int(t), len(published) - 2)
        w = t - j
        out.append([(1 - w) * a + w * b for a, b in zip(published[j], published[j + 1])])
    return out


def _apportioned(pool: Structure, shares_by_stage: Sequence[Sequence[float]]) -> list[BlockScores]:
    """Scores that make any top-k selection split k over the scales in proportion to the stage's
    shares: the n-th neuron of a scale with share w scores w / (2n + 1) (Sainte-Lague's
    apportionment; equal shares give a round robin from the finest scale)."""
    return [
        BlockScores(spec.name, [[w / (2 * n + 1) for n in range(c)] for w, c in zip(shares_by_stage[spec.stage], spec.channels)],
                    pool.neuron_macs(spec))
        for spec in pool.blocks()
    ]


def _uniform(pool: Structure, random_seed: int) -> tuple[Structure, list[BlockScores]]:
    return pool, _apportioned(pool, [[1.0] * len(pool.scales)] * len(pool.layers))


def _heuristic(pool: Structure, random_seed: int) -> tuple[Structure, list[BlockScores]]:
    return pool, _apportioned(pool, _published_stage_shares(pool.scales, len(pool.layers)))


def _resnet(pool: Structure, random_seed: int) -> tuple[Structure, list[BlockScores]]:
    """One 3x3 conv: a pool of the single scale x1."""
    pool = Structure.uniform(pool.layers, [4 * p for p in pool.stage_planes()], scales=(1,), stem=pool.stem,
                             width=pool.width, image_size=pool.image_size)
    return pool, _apportioned(pool, [[1.0]] * len(pool.layers))


def _random(pool: Structure, random_seed: int) -> tuple[Structure, list[BlockScores]]:
    g = torch.Generator().manual_seed(random_seed)
    return pool, [BlockScores(spec.name, [torch.rand(c, generator=g).tolist() for c in spec.channels],
                              pool.neuron_macs(spec)) for spec in pool.blocks()]


#: The arms with a fixed rule: (seed pool, random seed) -> the pool to select from and its
#: neurons' scores, which any top-k selection under the budget then follows.
RULES = {"uniform": _uniform, "random": _random, "resnet": _resnet, "heuristic": _heuristic}


def arm_structure(arm: str, pool: Structure, target: "int | Budget", num_classes: int, in_chans: int,
                  random_seed: int = 0) -> Structure:
    """A non-learned arm in ``pool``'s layout (a seed structure: abundant, uniform neurons per
    scale) with MACs within 1% of ``target`` (or under another budget, e.g. a
    :class:`LatencyBudget`): its neurons ranked by the arm's rule (:data:`RULES`) and kept per
    block under that budget, as the learned arm's are ranked by |gamma|."""
    if arm not in RULES:
        raise ValueError(f"arm {arm!r} has no fixed structure")
    budget = MacsBudget(target, TOLERANCE) if isinstance(target, int) else target
    pool, scores = RULES[arm](pool, random_seed)
    try:
        structure = select(scores, budget.bind(pool, num_classes, in_chans))[0]
    except ValueError as e:
        if isinstance(budget, LatencyBudget):  # the cost model was fitted on SA blocks, not on this arm's
            costs = budget.bind(pool, num_classes, in_chans).costs
            inside = costs.lowest <= budget.ms <= costs.highest
            reason = str(e) if inside else (f"the cost model predicts its pool at {costs.format(costs.lowest)} to "
                                            f"{costs.format(costs.highest)}")
            raise ValueError(
                f"the {arm} arm cannot match {budget.describe()} predicted within 1% ({reason}); a model fitted on SA "
                "blocks may misjudge this arm's blocks (compare with scalenet latency-model --check): match the study "
                "in MACs, or change --width") from None
        raise ValueError(f"the {arm} arm cannot match {budget.describe()} within 1% ({e}); choose a larger budget or "
                         "--width") from None
    return dataclasses.replace(structure, name=arm if arm != "random" else f"random-{random_seed}")


# ---------------------------------------------------------------------------- running a study
#: What a study directory holds (structures/ may be filled by hand beforehand, as the README shows).
STUDY_FILES = frozenset({"settings.json", "structures", "results", "runs", "study.json", "study.md", "study.png",
                         "latency.json"})


def _prepare(cfg: StudyConfig, out: Path) -> None:
    from .fileio import check_writable_dir

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a directory")
    check_writable_dir(out.parent if not out.exists() else out)
    foreign = sorted(p.name for p in out.iterdir() if p.name not in STUDY_FILES and not p.name.startswith(".")) if out.is_dir() else []
    if foreign:
        raise ValueError(f"--out {out} holds files that are not a study's ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory")
    saved = out / "settings.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        differ = sorted(k for k in set(old) | set(cfg.settings()) if old.get(k) != cfg.settings().get(k))
        if differ:
            raise ValueError(f"{out} holds a study with other settings ({', '.join(differ)}); resume it with the same "
                             "settings or choose another --out")
    (out / "structures").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(exist_ok=True)


def _on_rank_0(work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0 only under torchrun (what writes files or times networks), its
    JSON-able result (or its one-line error) sent to every rank; ``work()`` without torchrun."""
    if not under_torchrun():
        return work()
    d = setup_distributed()  # the group the seed networks' training started, or a new one
    outcome = None
    if d.main:
        try:
            outcome = ("ok", work())
        except ValueError as e:
            outcome = ("error", str(e))
    kind, value = d.broadcast(outcome)
    if kind == "error":
        raise ValueError(value)
    return value


def _layout(cfg: StudyConfig, image_size: int) -> dict[str, Any]:
    layout = default_layout(image_size)
    return dict(layers=tuple(cfg.layers or layout["layers"]), width=cfg.width or layout["width"], stem=layout["stem"])


def _learned(cfg: StudyConfig, out: Path) -> Structure:
    from .data import build_data

    path = out / "structures" / "learned.json"
    if path.is_file():
        return Structure.load(path)
    data = build_data(cfg.data, cfg.image_size, train_subset=cfg.seed_subset, val_subset=cfg.val_subset, seed=cfg.seed)
    layout = _layout(cfg, data.image_size)
    given = cfg.width_mult is not None or cfg.macs is not None
    budget = budget_from(cfg.width_mult, cfg.macs) if given else WidthBudget(1.0)
    recipe = dataclasses.replace(cfg.train, epochs=cfg.seed_epochs or seed_epochs(len(data.train)))
    result = allocate(data, budget, layers=layout["layers"], width=layout["width"], jobs=cfg.jobs, train_config=recipe,
                      runs=out / "structures" / "learned.runs", resume=True, name="learned",
                      **({} if cfg.repeats is None else {"repeats": cfg.repeats}))

    def save() -> dict[str, Any]:
        result.save(path, title=f"learned allocation for the study ({data.name})")
        return result.structure.to_json()

    return Structure.from_json(_on_rank_0(save), source=str(path))


@dataclass
class _Arms:
    """What every arm's builder may use: the study, the seed pool, the budget and the learned arm."""

    cfg: StudyConfig
    out: Path
    pool: Structure
    budget: Budget
    learned: Structure | None
    num_classes: int
    in_chans: int


def _latency_arm(a: _Arms, random_seed: int) -> Structure:
    """The learned arm's seed networks, selected again under the latency budget (scores per ms)."""
    runs, seed, training = load_runs(a.out / "structures" / "learned.scores.json")
    selection = Selection(alpha=_latency_alpha(a.cfg.latency_alpha))
    return select_runs(runs, seed, a.budget, training, selection, name="latency").structure


#: Every arm's builder, by name: (the study's arms context, the training seed) -> its structure.
ARM_BUILDERS = {
    "learned": lambda a, s: a.learned,
    "latency": _latency_arm,
    **{arm: (lambda a, s, arm=arm: arm_structure(arm, a.pool, a.budget, a.num_classes, a.in_chans, s)) for arm in RULES},
}
#: Arms built afresh for every training seed.
PER_SEED = ("random",)


def _macs_target(cfg: StudyConfig, pool: Structure, learned: Structure | None, num_classes: int, in_chans: int) -> int:
    """The MACs every arm matches: ``--macs``, the learned arm's, or (no learned arm) the uniform
    split's at the width multiplier."""
    if cfg.macs is not None:
        return cfg.macs
    if learned is not None:
        return learned.macs(None, num_classes, in_chans)
    k = [WidthBudget(cfg.width_mult or 1.0).neurons(p, 10**9) for p in pool.stage_planes()]
    return Structure.uniform(pool.layers, [max(1, round(c / len(pool.scales))) for c in k], stem=pool.stem,
                             width=pool.width, image_size=pool.image_size).macs(None, num_classes, in_chans)


def _latency_budget(cfg: StudyConfig, pool: Structure, learned: Structure | None, image_size: int) -> LatencyBudget:
    """Every arm's latency budget: ``--latency-ms``, or the learned arm's prediction by the
    study's cost model, checked against this machine at the study's image size."""
    from .latency import LatencyModel, current_settings

    model = LatencyModel.load(cfg.latency_model)
    st = model.settings  # this machine, at the study's image size, as the model was measured
    model.check(current_settings(st.device, st.threads, st.batch_size, image_size, st.compile), "--latency-model")
    model.check_structure(pool)
    return LatencyBudget(cfg.latency_ms or model.predict(learned), model, TOLERANCE)


def build_arms(cfg: StudyConfig, out: Path, num_classes: int, in_chans: int, image_size: int) -> dict[str, Any]:
    """Every arm's structure (the random arm: one per training seed), matched in MACs (or in
    measured latency, :func:`_matched_in_latency`), cached in ``out/structures``. Raises one
    clear error when an arm cannot match."""
    layout = _layout(cfg, image_size)
    pool = seed_structure(layout["layers"], stem=layout["stem"], width=layout["width"], image_size=image_size)
    learned = _learned(cfg, out) if "learned" in cfg.arms else None
    macs = _macs_target(cfg, pool, learned, num_classes, in_chans)
    by_latency = cfg.latency_model is not None
    budget = _latency_budget(cfg, pool, learned, image_size) if by_latency else MacsBudget(macs, TOLERANCE)
    context = _Arms(cfg, out, pool, budget, learned, num_classes, in_chans)
    if by_latency:
        arms, latency = _matched_in_latency(context)
    else:
        arms, latency = {arm: _build_arm(context, arm) for arm in cfg.arms}, None
    for arm, s in arms.items():
        for seed, structure in (s.items() if isinstance(s, dict) else [(None, s)]):
            name = arm if seed is None else f"{arm}-seed{seed}"
            if arm != "learned" and is_main_process():
                structure.save(out / "structures" / f"{name}.json")
    target_macs = macs if not by_latency else learned.macs(None, num_classes, in_chans) if learned else None
    return {"target_macs": target_macs, "latency": latency, "arms": arms}


def _build_arm(a: _Arms, arm: str, budget: dict[str, float] | None = None) -> Any:
    """One arm's structure (the random arm: ``{seed: structure}``), under the study's budget or
    under ``budget``: ``{"ms": predicted milliseconds}`` or ``{"macs": MACs}``."""
    if budget is not None:
        b = dataclasses.replace(a.budget, ms=budget["ms"]) if "ms" in budget else MacsBudget(int(budget["macs"]),
                                                                                             TOLERANCE)
        a = dataclasses.replace(a, budget=b)
    build = ARM_BUILDERS[arm]
    seeds = range(a.cfg.seed, a.cfg.seed + a.cfg.seeds)
    return {s: build(a, s) for s in seeds} if arm in PER_SEED else build(a, 0)


def _rebudgeted(a: _Arms, arm: str, budget: dict[str, float] | None, structure: Structure | None,
                ratio: float) -> tuple[dict[str, float], Any]:
    """An arm's next budget and structure, its latency to be scaled by ``ratio``: the predicted
    budget scaled (``budget`` None: the study's own), or, for a rule arm whose predicted budget
    no selection meets (a cost model fitted on SA blocks can misjudge a plain bottleneck), its
    MACs scaled instead: what the cost model lacks is then measured."""
    if budget is None or "ms" in budget:
        try:
            ms = {"ms": (budget["ms"] if budget else a.budget.ms) * ratio}
            return ms, _build_arm(a, arm, ms)
        except ValueError:
            if arm not in RULES or (structure is None and a.learned is None):
                raise
    reference = structure if structure is not None else a.learned
    macs = {"macs": round(reference.macs(None, a.num_classes, a.in_chans) * ratio)}
    return macs, _build_arm(a, arm, macs)


def _first(structures: dict[str, Any]) -> dict[str, Structure]:
    """The structure timed for each arm (the random arm: its first seed's)."""
    return {arm: next(iter(s.values())) if isinstance(s, dict) else s for arm, s in structures.items()}


def _matched_in_latency(a: _Arms) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every arm matched in *measured* latency, within ``latency_tolerance``.

    Each arm is first selected under the predicted budget, then all arms are timed together
    (fused, eval, interleaved rounds, the cost model's settings). The target is ``latency_ms``
    or the learned arm's measurement in the same rounds (so that the machine's drift between
    rounds does not count). An arm outside the tolerance is selected again under a predicted
    budget scaled by target / measured, and all are timed again, up to
    :data:`CALIBRATION_ROUNDS` times: the cost model's error differs by arm (a plain
    bottleneck's block form was never measured), the measurement is what is matched. The
    learned arm is the reference and is not adjusted. Every round is kept in
    ``out/latency.json``; a resumed study rebuilds the arms from the budgets recorded there
    instead of timing again."""
    path = a.out / "latency.json"
    if not path.is_file():
        _on_rank_0(lambda: _calibrate(a, path))  # timed once, by one process; the other ranks wait
    record = json.loads(path.read_text())
    return {arm: _build_arm(a, arm, record["budget"][arm]) for arm in a.cfg.arms}, record


def _calibrate(a: _Arms, path: Path) -> dict[str, Any]:
    """The calibration rounds of :func:`_matched_in_latency`; writes and returns their record."""
    from .latency import time_networks

    cfg, model = a.cfg, a.budget.model
    tolerance = cfg.tolerance()
    budgets: dict[str, Any] = {"learned": None} if "learned" in cfg.arms else {}  # MACs-aware, as allocated
    arms = {"learned": a.learned} if "learned" in cfg.arms else {}
    adjusted = [arm for arm in cfg.arms if arm != "learned"]
    for arm in adjusted:
        try:
            budgets[arm], arms[arm] = _rebudgeted(a, arm, None, None, 1.0)
        except ValueError as e:
            raise ValueError(f"the {arm} arm cannot be matched in latency: {e}") from None
    rounds: list[dict[str, Any]] = []
    while True:
        timed = _first({arm: arms[arm] for arm in cfg.arms})
        measured = time_networks(timed, model.settings, repeats=LATENCY_REPEATS, progress=cfg.progress)
        target = cfg.latency_ms or measured["learned"]
        rounds.append({"target_ms": target, "budget": dict(budgets),
                       "predicted_ms": {arm: model.predict(s) for arm, s in timed.items()}, "measured_ms": measured})
        off = [arm for arm in adjusted if abs(measured[arm] / target - 1) > tolerance]
        if not off:
            break
        if len(rounds) > CALIBRATION_ROUNDS:
            worst = max(off, key=lambda arm: abs(measured[arm] / target - 1))
            raise ValueError(
                f"the {worst} arm measures {measured[worst]:.2f} ms after {CALIBRATION_ROUNDS} calibration rounds, "
                f"{100 * (measured[worst] / target - 1):+.1f}% from the target {target:.2f} ms; the measurements may be "
                f"too noisy here: raise --latency-tolerance (now {tolerance}) or measure the cost model at a larger batch "
                "(scalenet latency-model --batch-size)")
        for arm in off:
            try:
                budgets[arm], arms[arm] = _rebudgeted(a, arm, budgets[arm], timed[arm], target / measured[arm])
            except ValueError as e:
                raise ValueError(f"calibrating the {arm} arm to the measured target {target:.2f} ms (it measured "
                                 f"{measured[arm]:.2f} ms under {_describe(budgets[arm])}): {e}") from None
    last = rounds[-1]
    record = {"target_ms": last["target_ms"], "tolerance": tolerance, "repeats": LATENCY_REPEATS,
              "settings": dataclasses.asdict(model.settings),
              "budget": budgets, "predicted_ms": last["predicted_ms"], "measured_ms": last["measured_ms"],
              "rounds": rounds}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return record


def _describe(budget: dict[str, float] | None) -> str:
    """An arm's budget in a study matched in latency, for tables and messages."""
    if budget is None:
        return "its own allocation"
    return f"a predicted {budget['ms']:.2f} ms" if "ms" in budget else f"{budget['macs'] / 1e6:.2f} M MACs"


def _run_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def train_run(payload: dict[str, Any]) -> dict[str, Any]:
    """Trains and tests one (arm, seed) run; writes ``results/<arm>-seed<k>.json`` (in a worker
    process when the study runs several at once)."""
    from .data import build_data
    from .training import NoCheckpointLeft, evaluate, train

    cfg = StudyConfig.from_settings(payload["config"])
    out, arm, seed = Path(payload["out"]), payload["arm"], payload["seed"]
    structure = Structure.from_json(payload["structure"], source=f"{arm} structure")
    data = build_data(cfg.data, cfg.image_size, train_subset=cfg.train_subset, val_subset=cfg.val_subset, seed=cfg.seed)
    test = build_data(cfg.data, cfg.image_size, seed=cfg.seed)
    run_dir = out / "runs" / _run_name(arm, seed)
    train_cfg = dataclasses.replace(cfg.train, seed=seed, progress=payload.get("bars", False))
    try:
        result = train(structure, data, train_cfg, run_dir, resume=(run_dir / "last.pt").is_file(),
                       description=f"{arm} seed {seed}")
    except NoCheckpointLeft as e:  # one run is lost, not the study: name the directory to delete
        raise NoCheckpointLeft(e.path, e.damaged, f"delete {run_dir} and run the study again (only that run is "
                                                  "trained again)") from None
    final = evaluate(result.model, test.loader("val", 500))
    record = {
        "arm": arm, "seed": seed, "top1": final["top1"], "top5": final["top5"], "test_images": final["images"],
        "macs": structure.macs(None, data.num_classes, data.in_chans),
        "params": structure.params(data.num_classes, data.in_chans),
        "train_seconds": sum(r["train_seconds"] for r in result.metrics),
        "val_top1_by_epoch": [r["val_top1"] for r in result.metrics],
    }
    if is_main_process():
        atomic_write_text(out / "results" / f"{_run_name(arm, seed)}.json", json.dumps(record, indent=2) + "\n")
    return record


def run_study(cfg: StudyConfig, out: str | os.PathLike) -> dict[str, Any]:
    """Builds the arms, trains every (arm, seed) run not yet done (``cfg.jobs`` at a time) and
    writes ``study.json``, ``study.md`` and ``study.png`` to ``out``. Returns the report."""
    from .data import build_data

    cfg.check()
    out = Path(out)
    _prepare(cfg, out)
    spec = build_data(cfg.data, cfg.image_size, val_subset=1, seed=cfg.seed)  # classes, channels, size
    built = build_arms(cfg, out, spec.num_classes, spec.in_chans, spec.image_size)
    main = is_main_process()  # under torchrun rank 0 writes; every run trains with DDP across the ranks
    if main:
        atomic_write_text(out / "settings.json", json.dumps(cfg.settings(), indent=2) + "\n")
    runs = [(arm, seed) for seed in range(cfg.seed, cfg.seed + cfg.seeds) for arm in cfg.arms]
    done = {r: json.loads((out / "results" / f"{_run_name(*r)}.json").read_text())
            for r in runs if (out / "results" / f"{_run_name(*r)}.json").is_file()}
    todo = [r for r in runs if r not in done]

    def payload(arm: str, seed: int) -> dict[str, Any]:
        structure = built["arms"][arm][seed] if arm == "random" else built["arms"][arm]
        return {"config": cfg.settings(), "out": str(out), "arm": arm, "seed": seed, "structure": structure.to_json(),
                "bars": cfg.progress and jobs == 1}

    jobs = jobs_for(cfg.jobs, len(todo), "study runs")
    bar = _bar(len(runs), len(done), cfg.progress and main)

    def finished(i: int, record: dict[str, Any]) -> None:
        done[todo[i]] = record
        bar.update(1)

    in_processes(train_run, [payload(*r) for r in todo], jobs, on_result=finished)
    bar.close()
    report = summarize_study(cfg, built["target_macs"], [done[r] for r in runs], built["latency"])
    if main:
        atomic_write_text(out / "study.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(out / "study.md", format_study(report))
        plot_study(report, out / "study.png")
    return report


def _bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="study runs", disable=not enabled, dynamic_ncols=True)


def summarize_study(cfg: StudyConfig, target: int, results: list[dict[str, Any]],
                    latency: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per arm mean ± std of test top-1; paired (by seed) differences of the learned arm to each
    other arm (or of the first arm, without a learned one) with 95% t-intervals; with
    ``latency`` (matched in latency), each arm's predicted and measured milliseconds."""
    arms = {}
    for arm in cfg.arms:
        rs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        top1 = [r["top1"] for r in rs]
        arms[arm] = {"top1": statistics.mean(top1), "top1_std": statistics.stdev(top1), "top1_by_seed": top1,
                     "seeds": [r["seed"] for r in rs], "macs": statistics.mean(r["macs"] for r in rs),
                     "params": statistics.mean(r["params"] for r in rs),
                     "train_seconds": statistics.mean(r["train_seconds"] for r in rs)}
        if latency is not None:
            arms[arm].update(budget=latency["budget"][arm], predicted_ms=latency["predicted_ms"][arm],
                             measured_ms=latency["measured_ms"][arm])
    base = "learned" if "learned" in arms else cfg.arms[0]
    comparisons = {
        f"{base} - {arm}": paired_interval(arms[base]["top1_by_seed"], arms[arm]["top1_by_seed"])
        for arm in cfg.arms if arm != base
    }
    if latency is not None:  # the latency arm's alpha as used, for the report
        latency = {**latency, "alpha": _latency_alpha(cfg.latency_alpha)}
    return {"settings": cfg.settings(), "target_macs": target, "latency": latency, "arms": arms, "comparisons": comparisons,
            "test_images": results[0]["test_images"] if results else 0}

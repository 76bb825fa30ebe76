"""A study matched in measured latency: every arm's budget calibrated until its measurement lands
within the tolerance of the target (:func:`matched_in_latency`). Budgets are typed
(:class:`LatencyBudget`, :class:`MacsBudget`); ``latency.json`` records them as
``{"latency_ms": predicted milliseconds}`` (``{"ms": ...}`` before format 2) or ``{"macs": MACs}``
(None: the learned arm's own allocation)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..allocation import Budget, LatencyBudget, MacsBudget
from ..errors import SettingError, within
from ..fileio import atomic_write_text
from ..structure import Structure
from ..latency import LatencyModel, current_settings, time_networks
from ..training import on_main_rank
from .arms import RULES, ArmContext, build_arm, timed_structures
from .config import CALIBRATION_ROUNDS, LATENCY_REPEATS, TOLERANCE, StudyConfig

__all__ = ["latency_budget", "matched_in_latency", "budget_record", "budget_from_record", "describe_budget"]


def latency_budget(cfg: StudyConfig, pool: Structure, learned: Structure | None, image_size: int) -> LatencyBudget:
    """Every arm's latency budget: ``--latency-ms``, or the learned arm's prediction by the
    study's cost model, checked against this machine at the study's image size."""
    model = LatencyModel.load(cfg.latency_model)
    st = model.settings  # this machine, at the study's image size, as the model was measured
    model.check(current_settings(st.device, st.threads, st.batch_size, image_size, st.compile), "--latency-model")
    model.check_structure(pool)
    return LatencyBudget(cfg.latency_ms or model.predict(learned), model, TOLERANCE)


def rebudgeted(a: ArmContext, arm: str, budget: Budget | None, structure: Structure | None,
               ratio: float) -> tuple[Budget, Any]:
    """An arm's next budget and structure, its latency to be scaled by ``ratio``: the predicted
    budget scaled (``budget`` None: the study's own), or, for a rule arm whose predicted budget
    no selection meets (a cost model fitted on SA blocks can misjudge a plain bottleneck), its
    MACs scaled instead: what the cost model lacks is then measured."""
    if budget is None or isinstance(budget, LatencyBudget):
        try:
            ms = dataclasses.replace(a.budget,
                                     latency_ms=(budget.latency_ms if budget else a.budget.latency_ms) * ratio)
            return ms, build_arm(a, arm, ms)
        except ValueError:
            if arm not in RULES or (structure is None and a.learned is None):
                raise
    reference = structure if structure is not None else a.learned
    macs = MacsBudget(round(reference.macs(None, a.num_classes, a.in_chans) * ratio), TOLERANCE)
    return macs, build_arm(a, arm, macs)


def matched_in_latency(a: ArmContext) -> tuple[dict[str, Any], dict[str, Any]]:
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
        on_main_rank(lambda: _calibrate(a, path))  # timed once, by one process; the other ranks wait
    record = json.loads(path.read_text())
    return {arm: build_arm(a, arm, budget_from_record(a, record["budget"][arm])) for arm in a.cfg.arms}, record


def _calibrate(a: ArmContext, path: Path) -> dict[str, Any]:
    """The calibration rounds of :func:`matched_in_latency`; writes and returns their record."""
    cfg, model = a.cfg, a.budget.model
    tolerance = cfg.tolerance()
    budgets: dict[str, Budget | None] = {"learned": None} if "learned" in cfg.arms else {}  # MACs-aware, as allocated
    arms = {"learned": a.learned} if "learned" in cfg.arms else {}
    adjusted = [arm for arm in cfg.arms if arm != "learned"]
    for arm in adjusted:
        try:
            budgets[arm], arms[arm] = rebudgeted(a, arm, None, None, 1.0)
        except ValueError as e:
            raise within(f"the {arm} arm cannot be matched in latency: ", e) from None
    rounds: list[dict[str, Any]] = []
    while True:
        timed = timed_structures({arm: arms[arm] for arm in cfg.arms})
        measured = time_networks(timed, model.settings, repeats=LATENCY_REPEATS, progress=cfg.progress)
        target = cfg.latency_ms or measured["learned"]
        rounds.append({"target_ms": target, "budget": {arm: budget_record(b) for arm, b in budgets.items()},
                       "predicted_ms": {arm: model.predict(s) for arm, s in timed.items()}, "measured_ms": measured})
        off = [arm for arm in adjusted if abs(measured[arm] / target - 1) > tolerance]
        if not off:
            break
        if len(rounds) > CALIBRATION_ROUNDS:
            worst = max(off, key=lambda arm: abs(measured[arm] / target - 1))
            raise SettingError(
                f"the {worst} arm measures {measured[worst]:.2f} ms after {CALIBRATION_ROUNDS} calibration rounds, "
                f"{100 * (measured[worst] / target - 1):+.1f}% from the target {target:.2f} ms; the measurements may be "
                f"too noisy here: raise {{latency_tolerance}} (now {tolerance}) or "
                "measure the cost model at a larger batch "
                "(scalenet latency-model --batch-size)", "latency_tolerance")
        for arm in off:
            try:
                budgets[arm], arms[arm] = rebudgeted(a, arm, budgets[arm], timed[arm], target / measured[arm])
            except ValueError as e:
                raise within(f"calibrating the {arm} arm to the measured target {target:.2f} ms (it measured "
                             f"{measured[arm]:.2f} ms under {describe_budget(budgets[arm])}): ", e) from None
    last = rounds[-1]
    record = {"target_ms": last["target_ms"], "tolerance": tolerance, "repeats": LATENCY_REPEATS,
              "settings": dataclasses.asdict(model.settings),
              "budget": rounds[-1]["budget"], "predicted_ms": last["predicted_ms"], "measured_ms": last["measured_ms"],
              "rounds": rounds}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return record


def describe_budget(budget: Budget | None) -> str:
    """An arm's budget in a study matched in latency, for tables and messages."""
    if budget is None:
        return "its own allocation"
    return f"a predicted {budget.latency_ms:.2f} ms" if isinstance(budget, LatencyBudget) \
        else f"{budget.macs / 1e6:.2f} M MACs"


def budget_record(budget: Budget | None) -> dict[str, float] | None:
    """An arm's budget as ``latency.json`` records it, under the budget's setting name."""
    if budget is None:
        return None
    return {"latency_ms": budget.latency_ms} if isinstance(budget, LatencyBudget) else {"macs": budget.macs}


def budget_from_record(a: ArmContext, record: dict[str, float] | None) -> Budget | None:
    """The inverse of :func:`budget_record`: a predicted latency under the study's cost model, or MACs
    (studies before format 2 recorded a latency as ``ms``)."""
    if record is None:
        return None
    if "latency_ms" in record or "ms" in record:
        return dataclasses.replace(a.budget, latency_ms=record.get("latency_ms", record.get("ms")))
    return MacsBudget(int(record["macs"]), TOLERANCE)

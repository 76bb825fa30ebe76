"""Latency budgets and rounding to multiples, with a fake cost model of known numbers (no real
timing in tests: the measurement runs in benchmarks/latency_allocation.py)."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from scalenet import Structure
from scalenet.allocation import (
    BlockScores,
    LatencyBudget,
    LatencyCost,
    MacsBudget,
    SupernetRun,
    WidthBudget,
    load_runs,
    round_channels,
    supernet_structure,
    select,
    select_runs,
    SupernetSettings,
    Selection,
)
from scalenet.cli import main
from scalenet.latency import LatencyModel, LatencySettings, StageCost, cache_path, current_settings

SCALES = (1, 2, 4, 7)
# per stage: base, fixed ms per branch (scales 1,2,4,7), ms per neuron
COSTS = [StageCost(3.0, [0.5, 0.8, 1.1, 6.0], [0.02, 0.015, 0.01, 0.012]),
         StageCost(2.0, [0.4, 0.6, 0.9, 5.0], [0.03, 0.02, 0.018, 0.011]),
         StageCost(1.5, [0.3, 0.5, 0.7, 4.0], [0.05, 0.03, 0.02, 0.02])]
OTHER = 4.0


def fake_model(settings: LatencySettings | None = None) -> LatencyModel:
    settings = settings or LatencySettings("cpu", "Test CPU", 2, 4, 32, False, "2.x")
    return LatencyModel(settings, SCALES, (1, 1, 1), 8, "small", [dataclasses.replace(c) for c in COSTS], OTHER)


def by_hand(structure: Structure) -> float:
    """The fake model's prediction, written out: each present branch's fixed cost once per block."""
    total = OTHER
    for spec in structure.blocks():
        cost = COSTS[spec.stage]
        total += cost.base + sum(f for f, c in zip(cost.fixed, spec.channels) if c) + sum(
            p * c for p, c in zip(cost.per_neuron, spec.channels))
    return total


def random_scores(supernet: Structure, generator_seed: int = 0) -> list[BlockScores]:
    g = torch.Generator().manual_seed(generator_seed)
    return [BlockScores(spec.name, [torch.rand(c, generator=g).tolist() for c in spec.channels], supernet.neuron_macs(spec))
            for spec in supernet.blocks()]


@pytest.fixture
def supernet():
    return supernet_structure((2, 2, 2), stem="small", width=8, image_size=32)  # 8/16/32 neurons per scale


def test_the_cost_charges_a_branch_fixed_cost_with_its_first_neuron_only(supernet):
    costs = LatencyCost(fake_model(), supernet)
    assert costs.added(0, 3, 0) == pytest.approx(6.0 + 0.012)  # the first x7 neuron opens the branch
    assert costs.added(0, 3, 1) == pytest.approx(0.012)
    assert costs.added(5, 1, 7) == pytest.approx(0.03)
    assert costs.highest == pytest.approx(by_hand(supernet))
    one = Structure.from_channels([[1, 0, 0, 0]] * 6, (2, 2, 2), stem="small", width=8, image_size=32)
    assert costs.lowest == pytest.approx(by_hand(one))  # one x1 neuron is each block's cheapest start


@pytest.mark.parametrize("scope", ["block", "global"])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7, 0.95])
def test_latency_budget_is_met_never_above_and_within_one_percent(supernet, scope, fraction):
    costs = LatencyCost(fake_model(), supernet)
    target = costs.lowest + fraction * (costs.highest - costs.lowest)
    structure, kept = select(random_scores(supernet), LatencyBudget(target, fake_model()).bind(supernet), scope=scope)
    got = by_hand(structure)
    assert 0.99 * target <= got <= target
    assert [[len(k) for k in b] for b in kept] == [list(r[:-1]) for r in structure.rows]


def test_a_branch_fixed_cost_is_paid_once_not_per_neuron():
    # one block per stage; the x7 neurons score best, so the budget goes to them first
    supernet = supernet_structure((1, 1, 1), stem="small", width=8, image_size=32)
    scores = [BlockScores(s.name, [[0.1] * c if i < 3 else [1.0] * c for i, c in enumerate(s.channels)],
                          supernet.neuron_macs(s)) for s in supernet.blocks()]
    model = fake_model()
    # room for each block's x7 branch (fixed cost once) and 5 of its neurons, nothing else
    target = OTHER + sum(c.base + c.fixed[3] + 5 * c.per_neuron[3] for c in COSTS) + 1e-9
    for scope in ("block", "global"):
        structure, _ = select(scores, LatencyBudget(target, model, tolerance=0.002).bind(supernet), scope=scope)
        assert all(r[:3] == (0, 0, 0) for r in structure.rows)
        # charging the fixed cost (4-6 ms) per neuron would have stopped at one neuron per block
        assert sum(r[3] for r in structure.rows) >= 12
        assert 0.998 * target <= by_hand(structure) <= target


def test_alpha_weighs_the_scores_by_milliseconds(supernet):
    flat = [BlockScores(s.name, [[1.0] * c for c in s.channels], supernet.neuron_macs(s)) for s in supernet.blocks()]
    model = fake_model()
    target = LatencyCost(model, supernet).lowest + 15.0  # room for the cheap branches' fixed costs
    runs = [SupernetRun(seed=0, scores=flat, structure=supernet)]
    fake = SupernetSettings(data="fake", image_size=32, num_classes=10, in_chans=3)
    plain = select_runs(runs, supernet, LatencyBudget(target, model), fake).structure
    cheap = select_runs(runs, supernet, LatencyBudget(target, model), fake,
                        Selection(alpha=1.0)).structure
    # equal scores: ties go to the finer scale; weighed by ms, the cheapest neuron per stage fills
    # its branch first (x4 in stage 1, x7 in stage 2, x4 in stage 3)
    assert all(r[0] == max(r[:-1]) for r in plain.rows)
    cheapest = [min(range(4), key=lambda i: (c.per_neuron[i], i)) for c in COSTS]
    assert cheapest == [2, 3, 2]
    for spec in cheap.blocks():
        assert spec.channels[cheapest[spec.stage]] == max(spec.channels) > 0
    assert sum(spec.channels[0] for spec in cheap.blocks()) <= 1  # x1 costs most in every stage
    for s in (plain, cheap):
        assert 0.99 * target <= by_hand(s) <= target


@pytest.mark.parametrize("multiple", [1, 4, 8])
@pytest.mark.parametrize("budget_kind", ["width", "macs", "latency"])
def test_rounding_to_multiples_keeps_the_budget(supernet, multiple, budget_kind):
    model = fake_model()
    costs = LatencyCost(model, supernet)
    budget = {"width": WidthBudget(1.3),
              "macs": MacsBudget(int(0.55 * supernet.macs(None, 10, 3))),
              "latency": LatencyBudget(costs.lowest + 0.5 * (costs.highest - costs.lowest), model)}[budget_kind]
    structure, _ = select(random_scores(supernet, 3), budget.bind(supernet, 10))
    rounded = round_channels(structure, supernet, multiple, budget.bind(supernet, 10))
    for row, pool in zip(rounded.rows, supernet.rows):
        assert all(c % multiple == 0 and 0 <= c <= p for c, p in zip(row[:-1], pool[:-1])) and sum(row[:-1]) > 0
    if budget_kind == "macs":
        assert rounded.macs(None, 10, 3) <= budget.macs * 1.01
        assert rounded.macs(None, 10, 3) >= budget.macs * (0.99 if multiple == 1 else 0.9)
    elif budget_kind == "latency":
        assert by_hand(rounded) <= budget.latency_ms
        assert by_hand(rounded) >= budget.latency_ms * (0.99 if multiple == 1 else 0.9)
    else:  # block sizes: the nearest multiple of the selected size
        for a, b in zip(rounded.rows, structure.rows):
            assert abs(sum(a[:-1]) - sum(b[:-1])) <= multiple / 2 + 1e-9 or sum(a[:-1]) == multiple
    if multiple == 1:
        assert rounded.rows == structure.rows


def test_rounding_refusals(supernet):
    structure, _ = select(random_scores(supernet), WidthBudget(1.0).bind(supernet))
    for bad in (0, -2):
        with pytest.raises(ValueError, match=f"multiple_of must be a whole number of neurons, 1 or more; got {bad}"):
            round_channels(structure, supernet, bad)
    with pytest.raises(ValueError, match="multiple_of 16 is larger than the supernet's neurons per scale"):
        round_channels(structure, supernet, 16)


def test_latency_refusals(supernet):
    model = fake_model()
    costs = LatencyCost(model, supernet)
    with pytest.raises(ValueError, match=r"impossible budget: latency_ms .* is below the minimum .* \(one neuron per "
                                         r"block, predicted for Test CPU, batch 4, 32 px\); raise it"):
        select(random_scores(supernet), LatencyBudget(costs.lowest - 0.1, model).bind(supernet))
    with pytest.raises(ValueError, match="above the supernet's"):
        select(random_scores(supernet), LatencyBudget(2 * costs.highest, model).bind(supernet))
    with pytest.raises(ValueError, match="latency_ms must be positive"):
        LatencyBudget(0.0, model)
    # every block's best neuron opens an x7 branch (fixed cost 4-6 ms): dearer than the supernet's lowest
    x7_first = [BlockScores(s.name, [[0.1] * c if i < 3 else [1.0] * c for i, c in enumerate(s.channels)],
                            supernet.neuron_macs(s)) for s in supernet.blocks()]
    for scope in ("block", "global"):
        with pytest.raises(ValueError, match=r"impossible budget: latency_ms .* is below .*, what each block's "
                                             r"best-scoring neuron costs; raise it"):
            select(x7_first, LatencyBudget(costs.lowest + 1.0, model).bind(supernet), scope=scope)
    other_layout = supernet_structure((2, 2), stem="small", width=16, image_size=32)
    with pytest.raises(ValueError, match="the latency model was measured for scales"):
        LatencyCost(model, other_layout)


# ---------------------------------------------------------------------------- the command line
@pytest.fixture
def sidecar(tmp_path, supernet):
    """An allocation's files as scalenet allocate writes them, from two fake supernet runs."""
    runs = [SupernetRun(seed=s, scores=random_scores(supernet, s), structure=supernet) for s in (0, 1)]
    settings = SupernetSettings(data="fake", image_size=32, num_classes=10, in_chans=3)
    result = select_runs(runs, supernet, WidthBudget(1.0), settings)
    result.save(tmp_path / "first.json")
    return tmp_path / "first.scores.json"


def here(**changes) -> LatencySettings:
    return dataclasses.replace(current_settings("cpu", 2, 4, 32), **changes)


def test_cli_selects_again_from_scores_under_a_latency_budget_with_rounding(tmp_path, sidecar, supernet, capsys):
    model = fake_model(here())
    model.save(tmp_path / "cpu.json")
    costs = LatencyCost(model, supernet)
    target = costs.lowest + 0.6 * (costs.highest - costs.lowest)
    out = tmp_path / "fast.json"
    assert main(["allocate", "--scores", str(sidecar), "--out", str(out), "--latency-ms", f"{target:.3f}",
                 "--latency-model", str(tmp_path / "cpu.json"), "--latency-threads", "2", "--latency-batch-size", "4",
                 "--multiple-of", "4"]) == 0
    printed = capsys.readouterr().out
    structure = Structure.load(out)
    assert all(c % 4 == 0 for r in structure.rows for c in r[:-1])
    assert by_hand(structure) <= round(target, 3)
    assert f"predicted {by_hand(structure):,.1f} ms" in printed
    side = json.loads((tmp_path / "fast.scores.json").read_text())
    assert side["settings"]["latency_ms"] == pytest.approx(target, abs=1e-3) and side["settings"]["multiple_of"] == 4
    assert side["settings"]["latency_settings"]["batch_size"] == 4
    # the scores read back are the ones written
    runs, seed_back, _ = load_runs(sidecar)
    assert seed_back.rows == supernet.rows and runs[1].scores[2].scores == random_scores(supernet, 1)[2].scores


def test_cli_uses_the_cached_model_for_the_settings(tmp_path, sidecar, supernet, monkeypatch):
    monkeypatch.setenv("SCALENET_CACHE", str(tmp_path / "cache"))
    model = fake_model(here())
    path = cache_path(model.settings, supernet)
    path.parent.mkdir(parents=True)
    model.save(path)
    target = LatencyCost(model, supernet).lowest + 20
    assert main(["allocate", "--scores", str(sidecar), "--out", str(tmp_path / "c.json"), "--latency-ms", str(target),
                 "--latency-threads", "2", "--latency-batch-size", "4"]) == 0
    assert by_hand(Structure.load(tmp_path / "c.json")) <= target


@pytest.mark.parametrize("case, message", [
    ("low", "impossible budget: --latency-ms 1.0 ms is below the minimum"),
    ("device", "was measured with other settings (device_name Another CPU vs"),
    ("batch", "was measured with other settings (batch_size 8 vs 4)"),
    ("multiple", "--multiple-of must be a whole number of neurons, 1 or more; got 0"),
    ("cuda", "--latency-device cuda: no CUDA GPU is present here; use --latency-device cpu"),
    ("nothing", "give --data DIR (train supernets), --scores X.scores.json or --from-runs"),
])
def test_cli_bad_latency_input_is_one_line_and_exit_2(tmp_path, sidecar, case, message):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    changes = {"device": {"device_name": "Another CPU"}, "batch": {"batch_size": 8}}.get(case, {})
    fake_model(here(**changes)).save(tmp_path / "m.json")
    args = ["--scores", str(sidecar), "--out", str(tmp_path / "s.json"), "--latency-ms", "1.0" if case == "low" else "45",
            "--latency-model", str(tmp_path / "m.json"), "--latency-threads", "2", "--latency-batch-size", "4"]
    if case == "multiple":
        args += ["--multiple-of", "0"]
    if case == "cuda":
        args += ["--latency-device", "cuda"]
    if case == "nothing":
        args = args[2:]
    result = subprocess.run([sys.executable, "-m", "scalenet", "allocate", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.glob("s.*")) == []


@pytest.mark.parametrize("budget_kind", ["macs", "latency"])
def test_rounding_moves_counts_back_into_the_budget(supernet, budget_kind):
    """Plain rounding to the nearest multiple can overshoot the budget, or fall short of it (a
    closed branch saves its fixed cost); the budgeted rounding moves counts back: down until the
    budget holds, or up while it still does."""
    model = fake_model()
    costs = LatencyCost(model, supernet)
    moved = 0
    for k in range(40):
        fraction = 0.3 + 0.0155 * k
        budget = (MacsBudget(int(fraction * supernet.macs(None, 10, 3))) if budget_kind == "macs" else
                  LatencyBudget(costs.lowest + fraction * (costs.highest - costs.lowest), model))
        total = (lambda s: s.macs(None, 10, 3)) if budget_kind == "macs" else by_hand
        try:
            structure, _ = select(random_scores(supernet, k), budget.bind(supernet, 10))
        except ValueError:  # per-block steps can miss a MACs target; not this test's subject
            continue
        plain = round_channels(structure, supernet, 4)  # no budget: nearest multiples only
        rounded = round_channels(structure, supernet, 4, budget.bind(supernet, 10))
        assert budget.fits(total(rounded))
        if not budget.fits(total(plain)):
            moved += 1
            assert total(rounded) < total(plain)
        elif not budget.reached(total(plain)):
            moved += 1
            assert total(rounded) > total(plain)
    assert moved >= 2  # the cases this test is about occurred

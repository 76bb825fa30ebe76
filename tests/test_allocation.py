import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scalenet
from scalenet import Structure
from scalenet.allocation import (
    BlockScores,
    BNScale,
    BNScaleL1,
    MacsBudget,
    WidthBudget,
    allocate,
    budget_from,
    combine_mean,
    combine_union,
    load_runs,
    minimum_macs,
    supernet_structure,
    select,
    select_runs,
    Selection,
)
from scalenet.cli import main
from scalenet.data import DataSpec, TensorData
from scalenet.training import TrainConfig, train

from helpers import make_image_folder


# ---------------------------------------------------------------------------- selection (no training)
def random_scores(supernet: Structure, generator_seed: int = 0) -> list[BlockScores]:
    g = torch.Generator().manual_seed(generator_seed)
    return [
        BlockScores(spec.name, [torch.rand(c, generator=g).tolist() for c in spec.channels], supernet.neuron_macs(spec))
        for spec in supernet.blocks()
    ]


@pytest.fixture
def supernet():
    return supernet_structure((2, 2, 2), stem="small", width=8, image_size=32)


def test_the_supernet_is_uniform_and_abundant(supernet):
    assert [r[:-1] for r in supernet.rows] == [(8, 8, 8, 8)] * 2 + [(16, 16, 16, 16)] * 2 + [(32, 32, 32, 32)] * 2
    assert supernet.stage_sides() == [32, 16, 8]
    smaller = supernet_structure((1, 1, 1), stem="small", width=8, image_size=16, supernet_width=5)
    assert [r[:-1] for r in smaller.rows] == [(5, 5, 5, 5), (5, 5, 5, 5), (5, 5, 5, 0)]  # 4 // 7 == 0: no x7


def test_costs_make_macs_linear_in_the_neurons(supernet):
    scores = random_scores(supernet)
    for mult in (0.25, 0.6, 1.0, 1.7):
        structure, kept = select(scores, WidthBudget(mult).bind(supernet, 10))
        assert [sum(r[:-1]) for r in structure.rows] == [max(1, round(mult * p)) for p in (8, 8, 16, 16, 32, 32)]
        assert [sum(map(len, k)) for k in kept] == [sum(r[:-1]) for r in structure.rows]


@pytest.mark.parametrize("scope", ["block", "global"])
@pytest.mark.parametrize("fraction", [0.2, 0.45, 0.7, 0.95])
def test_macs_target_is_met_within_one_percent(supernet, scope, fraction):
    scores = random_scores(supernet, 1)
    lowest, highest = minimum_macs(supernet, 10, 1), supernet.macs(None, 10, 1)
    target = int(lowest + fraction * (highest - lowest))
    structure, _ = select(scores, MacsBudget(target).bind(supernet, 10, 1), scope=scope)
    assert abs(structure.macs(None, 10, 1) - target) <= 0.01 * target
    assert all(sum(r[:-1]) >= 1 for r in structure.rows)


def test_kept_neurons_are_the_top_scores_of_each_block(supernet):
    scores = random_scores(supernet, 2)
    _, kept = select(scores, WidthBudget(0.5).bind(supernet, 10))
    for b, per_scale in zip(scores, kept):
        kept_scores = sorted((b.scores[i][j] for i, js in enumerate(per_scale) for j in js), reverse=True)
        all_scores = sorted((s for row in b.scores for s in row), reverse=True)
        assert kept_scores == all_scores[: len(kept_scores)]


def test_global_scope_moves_neurons_between_blocks(supernet):
    scores = random_scores(supernet, 3)
    # block 0: one strong neuron, the rest negligible -> global ranking keeps few of them
    scores[0].scores = [[1.0] + [1e-3] * 7, [1e-3] * 8, [1e-3] * 8, [1e-3] * 8]
    block, _ = select(scores, WidthBudget(1.0).bind(supernet, 10), scope="block")
    glob, _ = select(scores, WidthBudget(1.0).bind(supernet, 10), scope="global")
    assert sum(block.rows[0][:-1]) == 8
    assert sum(glob.rows[0][:-1]) < 8
    assert sum(sum(r[:-1]) for r in glob.rows) == sum(sum(r[:-1]) for r in block.rows)


def test_impossible_budgets(supernet):
    scores = random_scores(supernet)
    lowest = minimum_macs(supernet, 10, 1)
    with pytest.raises(ValueError, match="impossible budget: macs .* is below the minimum"):
        select(scores, MacsBudget(lowest - 1).bind(supernet, 10, 1))
    with pytest.raises(ValueError, match="above the supernet"):
        select(scores, MacsBudget(supernet.macs(None, 10, 1) * 2).bind(supernet, 10, 1))
    with pytest.raises(ValueError, match="exactly one budget"):
        budget_from()
    with pytest.raises(ValueError, match="exactly one budget"):
        budget_from(1.0, 10_000)
    with pytest.raises(ValueError, match="width_mult must be positive"):
        budget_from(width_mult=0.0)


def test_importance_is_swappable_and_alpha_prefers_cheap_neurons():
    supernet = supernet_structure((1,), stem="small", width=4, image_size=16)
    model = scalenet.create_model(supernet, num_classes=2)  # every BN gamma is 1 at init: a tie everywhere
    by_gamma = select(BNScale(0.0)(model, supernet, 16), WidthBudget(1.0).bind(supernet))[0]
    by_cost = select(BNScale(1.0)(model, supernet, 16), WidthBudget(1.0).bind(supernet))[0]
    assert by_gamma.rows[0][:-1] == (4, 0, 0, 0)  # ties go to the finer scale
    assert by_cost.rows[0][:-1] == (0, 0, 0, 4)  # x7 neurons cost least

    class PreferX2:
        def __call__(self, model, structure, image_size):
            return [BlockScores(s.name, [[float(i == 1)] * c for i, c in enumerate(s.channels)], structure.neuron_macs(s))
                    for s in structure.blocks()]

    assert select(PreferX2()(model, supernet, 16), WidthBudget(1.0).bind(supernet))[0].rows[0][:-1] == (0, 4, 0, 0)


def test_normalizer_is_an_option_of_the_importance(supernet):
    model = scalenet.create_model(supernet, num_classes=2)
    with torch.no_grad():
        for i, m in enumerate(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.num_features == 8):
            m.weight.uniform_(0.5, 2.0).mul_(10.0 ** i)
    raw = BNScale(normalizer=None)(model, supernet, 32)
    for name, figure in (("max", max), ("sum", sum), ("mean", lambda v: sum(v) / len(v))):
        scores = BNScale(normalizer=name)(model, supernet, 32)
        for r, n in zip(raw, scores):
            values = [v for row in r.scores for v in row]
            got = [v for row in n.scores for v in row]
            assert got == pytest.approx([v / figure(values) for v in values], rel=1e-12), name
    assert max(v for row in BNScale()(model, supernet, 32)[0].scores for v in row) == 1.0  # "max" is the default
    with pytest.raises(ValueError, match="normalizer 'median' is unknown"):
        BNScale(normalizer="median")


def test_sparsity_regulariser_is_l1_on_the_branch_bn_scales(supernet):
    model = scalenet.create_model(supernet, num_classes=2)
    gammas = [bn.weight for m in model.modules() if isinstance(m, scalenet.models.SABottleneck) for bn in m.bn2.values()]
    with torch.no_grad():
        for g in gammas:
            g.uniform_(-1, 1)
    penalty = BNScaleL1(0.01)(model)
    assert float(penalty.detach()) == pytest.approx(0.01 * sum(float(g.detach().abs().sum()) for g in gammas), rel=1e-6)
    penalty.backward()
    assert torch.allclose(gammas[0].grad, 0.01 * gammas[0].detach().sign())
    assert model.bn1.weight.grad is None  # only the SA branches' BNs
    with pytest.raises(ValueError, match="sparsity must be 0 or more"):
        BNScaleL1(-1.0)


def test_repeats_combine_runs_at_the_level_of_scales():
    # one block, two scales of 2 supernet neurons; run A prefers x1, run B x2 (scores normalised per block)
    supernet = Structure.from_channels([[2, 2]], (1,), scales=(1, 2), stem="small", width=2, image_size=8)
    costs = supernet.neuron_macs(next(supernet.blocks()))
    a = [BlockScores("layer1.0", [[1.0, 0.9], [0.5, 0.4]], costs)]
    b = [BlockScores("layer1.0", [[0.2, 0.1], [1.0, 0.95]], costs)]
    # union: pool each scale over the runs, the j-th combined neuron is the 2(j+1)-th best of the pool
    assert combine_union([a, b])[0].scores == [[0.9, 0.1], [0.95, 0.4]]
    # keeping k=2 of the combination = keeping the union's top 4 (x1: 1.0, 0.9; x2: 1.0, 0.95) halved
    assert select(combine_union([a, b]), WidthBudget(1.0).bind(supernet))[0].rows[0][:-1] == (1, 1)
    # a run alone is its own ranking
    assert combine_union([a])[0].scores == a[0].scores
    # mean: each run's own allocation (A: 2 x1, B: 2 x2), averaged and rounded per block
    alone = [select(r, WidthBudget(1.0).bind(supernet))[0] for r in (a, b)]
    assert [s.rows[0][:-1] for s in alone] == [(2, 0), (0, 2)]
    assert combine_mean(alone, supernet).rows[0][:-1] == (1, 1)
    three = alone + [select(a, WidthBudget(1.0).bind(supernet))[0]]  # 2,0 + 0,2 + 2,0 -> 4/3, 2/3 -> 1, 1
    assert combine_mean(three, supernet).rows[0][:-1] == (1, 1)


def test_bad_scales():
    with pytest.raises(ValueError, match="distinct positive integers"):
        supernet_structure((1,), scales=(1, 2, 2), stem="small", width=4, image_size=16)
    with pytest.raises(ValueError, match="scales 32 do not fit any feature map"):
        supernet_structure((1,), scales=(1, 32), stem="small", width=4, image_size=16)


# ---------------------------------------------------------------------------- responds to data
def textures(kind: str, n: int, size: int = 16, seed: int = 0) -> TensorData:
    """Two classes: horizontal vs vertical stripes. ``fine``: period 2, which pooling by 2 or
    more erases. ``coarse``: bands 4 px wide (period 8) under strong pixel-level noise, which
    pooling smooths. Random phase, so only the orientation tells the classes apart."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    period, noise = (2, 20) if kind == "fine" else (8, 70)
    phase = torch.randint(0, period, (n, 1), generator=g)
    bands = (((torch.arange(size).view(1, -1) + phase) % period) < period // 2).float()  # n, size
    horizontal = bands.view(n, size, 1).expand(n, size, size)
    stripes = torch.where(labels.view(n, 1, 1) == 0, horizontal, horizontal.transpose(1, 2))
    x = 90 + 70 * stripes + torch.randn(n, size, size, generator=g) * noise
    return TensorData(x.clamp(0, 255).to(torch.uint8).unsqueeze(1), labels)


def x1_kept(kind: str, repeats: int = 4) -> int:
    data = DataSpec(kind, 2, 1, 16, (0.5,), (0.25,), ["a", "b"], textures(kind, 512), textures(kind, 128, seed=1))
    result = allocate(data, WidthBudget(0.75), layers=(1, 1), width=8, repeats=repeats, train_config=TrainConfig(
        epochs=4, batch_size=32, lr=0.05, seed=0, progress=False, tensorboard=False))
    return sum(r[0] for r in result.structure.rows)  # of 18 neurons kept in all


def test_allocation_responds_to_the_scale_of_the_label():
    """The same supernet recipe on two data sets that differ only in the scale of the label keeps
    different scales: period-2 stripes, which pooling by 2 or more flattens, keep more x1
    neurons than coarse bands. Four supernets pooled (one alone is noise here: with
    seeds 0-3 single runs went either way). Measured with the pooled recipe on training seeds
    0-3, under AVX-512, AVX2 and the default kernels and at torch 2.6 and 2.14: 5-6 x1
    neurons of 18 kept (fine) against 2-3 (coarse), 2-4 apart; seed 0, used here, 5 against 2."""
    fine, coarse = x1_kept("fine"), x1_kept("coarse")
    assert fine >= coarse + 2, (fine, coarse)
    assert x1_kept("fine") == fine  # deterministic with a seed


# ---------------------------------------------------------------------------- command line
def test_cli_writes_structure_sidecar_and_chart_that_load_and_train(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "data", classes=3, per_class=20, size=32)
    out = tmp_path / "learned.json"
    assert main(["allocate", "--data", str(folder), "--out", str(out), "--epochs", "2", "--batch-size", "16",
                 "--layers", "1,1", "--width", "8", "--width-mult", "1.2", "--repeats", "2", "--jobs", "1", "--seed", "5",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "stage" in printed and "MACs" in printed and "agreement of 2 supernet(s)" in printed
    structure = Structure.load(out)
    assert structure.stem == "small" and structure.layers == (1, 1) and structure.image_size == 32
    assert [sum(r[:-1]) for r in structure.rows] == [round(1.2 * 8), round(1.2 * 16)]
    sidecar = json.loads((tmp_path / "learned.scores.json").read_text())
    assert len(sidecar["blocks"]) == 2 and sidecar["settings"]["scope"] == "block"
    assert len(sidecar["runs"][0]["scores"][0][0]) == 8  # supernet width = planes
    assert sidecar["blocks"][0]["channels"] == list(structure.rows[0][:-1]) and sidecar["blocks"][0]["scores"] is None
    assert [r["seed"] for r in sidecar["runs"]] == [5, 6] and sidecar["settings"]["repeats"] == 2
    assert len(sidecar["agreement"]["stages"]) == 2 and sidecar["agreement"]["stages"][0]["ratio"] is not None
    assert (tmp_path / "learned.png").read_bytes()[:4] == b"\x89PNG"
    # loads, counts and trains
    model = scalenet.create_model(out, num_classes=3)
    assert sum(p.numel() for p in model.parameters()) == structure.params(3)
    assert main(["info", str(out), "--json", "--num-classes", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == structure.macs(num_classes=3)
    from scalenet.data import build_data

    result = train(structure, build_data(folder), TrainConfig(epochs=1, batch_size=16, progress=False, tensorboard=False),
                   tmp_path / "trained")
    assert result.final["epoch"] == 1


def test_cli_macs_target_and_global_scope(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "data", classes=2, per_class=12, size=16)
    out = tmp_path / "s.json"
    supernet = supernet_structure((1, 1), stem="small", width=8, image_size=16)
    target = (minimum_macs(supernet, 2, 3) + supernet.macs(None, 2, 3)) // 2
    assert main(["allocate", "--data", str(folder), "--out", str(out), "--epochs", "1", "--batch-size", "8",
                 "--layers", "1,1", "--width", "8", "--macs", str(target), "--scope", "global", "--repeats", "1",
                 "--combine", "union", "--no-progress"]) == 0
    got = Structure.load(out).macs(num_classes=2)
    assert abs(got - target) <= 0.01 * target


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--macs", "1000"], "impossible budget"),
        (["--macs", "10000000000"], "above the supernet"),
        (["--scales", "1,2,2"], "distinct positive integers"),
        (["--scales", "1,x"], "expected comma-separated integers"),
        (["--scales", "1,64"], "do not fit any feature map"),
    ],
)
def test_cli_bad_input_writes_nothing(tmp_path, extra, message):
    folder = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=16)
    out = tmp_path / "s.json"
    result = subprocess.run([sys.executable, "-m", "scalenet", "allocate", "--data", str(folder), "--out", str(out),
                             "--epochs", "1", "--layers", "1,1", "--repeats", "1", *extra], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.glob("s*")) == []


@pytest.mark.parametrize("value", ["0", "-3"])
def test_cli_repeats_must_be_a_positive_count(tmp_path, capsys, value):
    folder = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=16)
    assert main(["allocate", "--data", str(folder), "--out", str(tmp_path / "s.json"), "--repeats", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--repeats must be a whole number of supernets, 1 or more; got {value}" in err[0]
    assert list(tmp_path.glob("s*")) == []


@pytest.mark.parametrize("setup, message", [
    ("missing", "data directory not found"),
    ("empty", "has no class folders"),
    ("single", "a single class"),
])
def test_cli_bad_data(tmp_path, capsys, setup, message):
    data = tmp_path / "data"
    if setup == "empty":
        data.mkdir()
    elif setup == "single":
        make_image_folder(data, classes=1, per_class=3)
    assert main(["allocate", "--data", str(data), "--out", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "s.json").exists()


def test_the_committed_allocations_are_selected_again_identically_from_their_sidecars():
    # alpha moved from scoring to selection (one meaning under every budget): the demo's and the
    # studies' allocations, selected again with their recorded settings, are unchanged
    from scalenet.latency import LatencyModel

    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    latency_model = LatencyModel.load(results / "latency-model-fashion-amd-epyc-2-threads-b256.json")
    cases = [(results / "demo-quick-cpu" / "scalenet.scores.json", results / "demo-quick-cpu" / "scalenet.json", None)]
    for study in ("width05", "width1", "latency"):
        d = results / f"study-fashion-mnist-{study}" / "structures"
        cases.append((d / "learned.scores.json", d / "learned.json", None))
    d = results / "study-fashion-mnist-latency" / "structures"
    cases.append((d / "learned.scores.json", d / "latency.json", latency_model))  # the latency arm: alpha 1
    # the study matched in measured latency (its cost model fitted on the AVX-512 machine)
    d = results / "study-fashion-mnist-latency-resnet" / "structures"
    cases.append((d / "learned.scores.json", d / "latency.json",
                  LatencyModel.load(results / "latency-model-fashion-amd-epyc-avx512-2-threads-b256.json")))
    for sidecar, structure, model in cases:
        committed = Structure.load(structure)
        recorded = committed.meta["allocation"]
        runs, supernet, settings = load_runs(sidecar)
        budget = budget_from(recorded.get("width_mult"), recorded.get("macs", recorded.get("macs_target")), recorded.get("latency_ms"), model)
        again = select_runs(runs, supernet, budget, settings, Selection.from_json(recorded))
        assert again.structure.rows == committed.rows, structure
    assert json.loads((d / "latency.json").read_text())["meta"]["allocation"]["alpha"] == 1.0


def test_a_budget_bound_once_answers_for_every_selector(supernet):
    width = WidthBudget(0.5).bind(supernet, 10)
    assert width.fixed == [max(1, round(0.5 * s.planes)) for s in supernet.blocks()] and width.unit == "MACs"
    assert width.fits(1e30) and width.reached(0)  # no target total: the neurons per block are the budget
    width.verify(0)  # nothing to miss
    lowest, highest = minimum_macs(supernet, 10), supernet.macs(None, 10)
    target = (lowest + highest) // 2
    macs = MacsBudget(target).bind(supernet, 10)
    assert macs.fixed is None and macs.fits(target * 1.01) and not macs.fits(target * 1.011)
    assert macs.reached(target * 0.99) and not macs.reached(target * 0.989)
    with pytest.raises(ValueError, match="could not meet macs"):
        macs.verify(target * 0.9)
    with pytest.raises(ValueError, match="impossible budget: macs"):
        MacsBudget(lowest - 1).bind(supernet, 10).check()
    with pytest.raises(ValueError, match="impossible budget: width_mult 9 keeps"):
        WidthBudget(9.0).bind(supernet, 10).check()
    # the costs the bound budget reports are the structure's own MACs
    structure, _ = select(random_scores(supernet), macs)
    assert macs.of_structure(structure) == structure.macs(None, 10)


def test_the_settings_records_round_trip_through_json_and_old_sidecars_load():
    from scalenet.allocation import SupernetSettings

    training = SupernetSettings(data="fashion-mnist", image_size=28, num_classes=10, in_chans=1, layers=(1, 1, 1),
                            scales=(1, 2, 4, 7), supernet_width=(4, 8, 16), sparsity=1e-4, supernet_epochs=2, seed=3, repeats=4)
    assert SupernetSettings.from_json(json.loads(json.dumps(training.to_json()))) == training
    selection = Selection(scope="global", alpha=0.5, combine="union", multiple_of=8)
    assert Selection.from_json(json.loads(json.dumps(selection.to_json()))) == selection
    for bad, message in [(dict(scope="row"), "scope 'row' is unknown"), (dict(combine="max"), "combine 'max' is unknown"),
                         (dict(alpha=-1.0), "alpha must be a finite number")]:
        with pytest.raises(ValueError, match=message):
            Selection(**bad)
    # a sidecar written before the records (its selection entries mixed in, no importance_alpha)
    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    old = json.loads((results / "demo-quick-cpu" / "scalenet.scores.json").read_text())["settings"]
    assert "importance_alpha" not in old and old["scope"] == "block"
    runs, supernet, back = load_runs(results / "demo-quick-cpu" / "scalenet.scores.json")
    assert back == SupernetSettings(data="fashion-mnist", image_size=28, num_classes=10, in_chans=1, layers=(1, 1, 1),
                                scales=(1, 2, 4, 7), supernet_width=None, importance="BNScale", normalizer="max",
                                importance_alpha=0.0, sparsity=0.0, supernet_epochs=1, seed=0, repeats=16)
    assert len(runs) == 16 and supernet.layers == (1, 1, 1)

"""Agreement between allocations, against chance, on constructed examples with known answers."""

import pytest

from scalenet import Structure
from scalenet.agreement import Chance, agreement_report, stage_counts, tv


def structure(rows, layers=(1,), width=4):
    return Structure.from_channels(rows, layers, scales=(1, 2), stem="small", width=width, image_size=8)


def test_tv_on_known_vectors():
    assert tv([0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0]) == 0.5
    assert tv([1, 0], [0, 1]) == 1.0
    assert tv([0.25] * 4, [0.25] * 4) == 0.0


def test_stage_counts_sum_the_blocks_of_each_stage():
    assert stage_counts([[1, 2], [3, 4], [5, 6]], (2, 1)) == [[4, 6], [5, 6]]


def test_chance_matches_the_exact_expectation():
    # one neuron per scale, one kept: two random allocations agree (TV 0) or not (TV 1), half the time each
    chance = Chance(structure([[1, 1]]), kept=[1], draws=20000, rng_seed=1)
    assert chance.stage_tv()[0] == pytest.approx(0.5, abs=0.02)
    # keeping the whole pool leaves nothing to chance
    assert Chance(structure([[3, 3]]), kept=[6], draws=100).stage_tv() == [0.0]
    # pool 2+2, keep 2: P(both same scale) = 1/3 -> TV between two draws: E = 1/3*... by enumeration
    # draws: (2,0) p=1/6, (1,1) p=4/6, (0,2) p=1/6; TV((2,0),(1,1)) = 0.5, ((2,0),(0,2)) = 1
    expected = 2 * (1 / 6) * (4 / 6) * 0.5 * 2 + 2 * (1 / 6) * (1 / 6) * 1.0
    assert Chance(structure([[2, 2]]), kept=[2], draws=40000, rng_seed=2).stage_tv()[0] == pytest.approx(expected, abs=0.01)


def test_report_of_identical_runs_with_a_shared_preference():
    supernet = structure([[4, 4]])
    runs = [structure([[3, 1]])] * 4
    report = agreement_report(runs, supernet, draws=4000)
    stage = report["stages"][0]
    assert stage["tv"] == 0.0 and stage["ratio"] == 0.0
    assert stage["mean_shares"] == [0.75, 0.25] and stage["uniform_shares"] == [0.5, 0.5]
    assert stage["distance_from_uniform"] == 0.25
    assert stage["z"] > 2  # four runs all at 3:1 from a 4:4 pool: rarely by chance
    assert report["blocks"][0]["shares"] == [[0.75, 0.25]] * 4


def test_report_of_runs_without_a_preference():
    supernet = structure([[4, 4]])
    report = agreement_report([structure([[2, 2]]), structure([[3, 1]]), structure([[1, 3]])], supernet, draws=4000)
    stage = report["stages"][0]
    assert stage["distance_from_uniform"] == 0.0 and stage["z"] < 0  # closer to uniform than random draws
    assert stage["tv"] == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    assert stage["ratio"] == pytest.approx(stage["tv"] / stage["chance_tv"])
    single = agreement_report([structure([[2, 2]])], supernet)
    assert single["stages"][0]["tv"] is None and single["stages"][0]["ratio"] is None

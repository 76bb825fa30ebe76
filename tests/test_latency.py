"""The latency cost model, with fake timings of known costs (no real timing in tests: the
measurement itself runs in benchmarks/latency_model.py)."""

import ast
import dataclasses
import json

import pytest

import scalenet.latency
from scalenet import Structure
from scalenet.cli import main
from scalenet.latency import LatencyModel, LatencySettings, StageCost, _fit, current_settings, measure_latency_model

SETTINGS = LatencySettings("cpu", "Test CPU", 2, 4, 32, False, "2.x")

# known costs per stage: base, fixed per branch (scales 1,2,4,7), per neuron
TRUE = [StageCost(3.0, [0.5, 0.8, 1.1, 1.4], [0.02, 0.015, 0.01, 0.012]),
        StageCost(2.0, [0.4, 0.6, 0.9, 0.0], [0.03, 0.02, 0.018, 0.011])]


def _structure(rows=((4, 2, 1, 1), (4, 2, 1, 1), (3, 2, 2, 0), (3, 2, 2, 1)), name="t"):
    return Structure.from_channels([list(r) for r in rows], layers=(2, 2), stem="small", width=8, image_size=32, name=name)


def _model(other=5.0):
    return LatencyModel(SETTINGS, (1, 2, 4, 7), (2, 2), 8, "small", [dataclasses.replace(c) for c in TRUE], other)


def test_the_fixed_branch_cost_is_charged_once_per_block_and_neurons_linearly():
    m = _model()
    one_branch_wide, one_branch_narrow = _structure([(8, 0, 0, 0)] * 4), _structure([(1, 0, 0, 0)] * 4)
    # blocks 1-2 are stage 1, 3-4 stage 2: base + fixed x1 + neurons * per-neuron x1
    assert m.predict(one_branch_narrow) == pytest.approx(5.0 + 2 * (3.0 + 0.5 + 0.02) + 2 * (2.0 + 0.4 + 0.03))
    assert m.predict(one_branch_wide) - m.predict(one_branch_narrow) == pytest.approx(7 * (2 * 0.02 + 2 * 0.03))
    split = _structure([(4, 4, 0, 0)] * 4)  # the same 8 neurons over two branches: one more fixed cost per block
    assert m.predict(split) - m.predict(one_branch_wide) == pytest.approx(
        2 * (0.8 + 4 * (0.015 - 0.02)) + 2 * (0.6 + 4 * (0.02 - 0.03)))
    assert [name for name, _ in m.per_block(split)] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    assert m.neuron_ms(1, 2, branch_exists=False) == pytest.approx(0.9 + 0.018)
    assert m.neuron_ms(1, 2, branch_exists=True) == pytest.approx(0.018)


def test_the_fit_recovers_known_costs_and_keeps_them_non_negative():
    splits = [(4, 4, 4, 4), (8, 8, 8, 8), (8, 0, 0, 0), (0, 8, 0, 0), (0, 0, 8, 0), (0, 0, 0, 8), (3, 12, 0, 5),
              (16, 1, 9, 0), (0, 5, 14, 2), (7, 0, 3, 11), (12, 6, 0, 1), (2, 2, 15, 9)]
    fitted, residuals = _fit(splits, [TRUE[0].block_ms(c) for c in splits])
    assert fitted.base == pytest.approx(3.0) and max(map(abs, residuals)) < 1e-9
    assert fitted.fixed == pytest.approx(TRUE[0].fixed) and fitted.per_neuron == pytest.approx(TRUE[0].per_neuron)
    fitted, _ = _fit(splits, [TRUE[1].block_ms(c) for c in splits])
    assert fitted.fixed == pytest.approx(TRUE[1].fixed, abs=1e-9)  # a true 0 stays 0
    # noise that would make a cost negative: the term is dropped (0), never negative
    noisy = [TRUE[1].block_ms(c) + (-0.3 if c[3] else 0.0) for c in splits]
    fitted, _ = _fit(splits, noisy)
    assert fitted.fixed[3] == 0.0 and min(fitted.fixed + fitted.per_neuron) >= 0.0


def _fake_timer(costs, whole_ms):
    """scalenet.timing.interleaved, answering from known costs: a block runner is named by its
    stage and channel split, a whole-network runner by its name."""

    def interleaved(runners, repeats, **kw):
        out = {}
        for name in runners:
            if ":" in name:  # "stage:(channels per scale)"
                stage, c = name.split(":", 1)
                out[name] = [costs[int(stage)].block_ms(ast.literal_eval(c)) / 1e3] * repeats
            else:
                out[name] = [whole_ms[name] / 1e3] * repeats
        return out

    return interleaved


def test_measuring_fits_every_stage_and_calibrates_the_rest_on_the_reference(monkeypatch):
    reference = _structure()
    expected_blocks = sum(TRUE[s.stage].block_ms(s.channels) for s in reference.blocks())
    monkeypatch.setattr(scalenet.latency, "interleaved", _fake_timer(TRUE, {"reference": expected_blocks + 7.5}))
    model = measure_latency_model(reference, SETTINGS, configs=12, repeats=2, progress=False)
    for got, true in zip(model.stages, TRUE):
        assert got.base == pytest.approx(true.base, abs=1e-6)
        assert got.fixed == pytest.approx(true.fixed, abs=1e-6) and got.per_neuron == pytest.approx(true.per_neuron)
    assert model.other == pytest.approx(7.5) and model.predict(reference) == pytest.approx(expected_blocks + 7.5)
    assert len(model.fit["points"]) == 2 and all(len(p["ms"]) == 12 for p in model.fit["points"])
    with pytest.raises(ValueError, match="configs must be at least 10"):
        measure_latency_model(reference, SETTINGS, configs=9, progress=False)


def test_a_structure_with_a_subset_of_the_scales_is_predicted_with_the_absent_branches_free():
    m = _model()
    # a plain bottleneck (the single scale x1) costs what the same counts on x1 of the full layout cost
    plain = Structure.from_channels([[c] for c in (8, 8, 5, 5)], layers=(2, 2), scales=(1,), stem="small", width=8,
                                    image_size=32)
    assert m.predict(plain) == pytest.approx(m.predict(_structure([(8, 0, 0, 0)] * 2 + [(5, 0, 0, 0)] * 2)))
    # scales x2 and x7 only: each count goes to its own scale's costs, not to the first ones
    two = Structure.from_channels([[3, 1]] * 4, layers=(2, 2), scales=(2, 7), stem="small", width=8, image_size=32)
    assert m.predict(two) == pytest.approx(m.predict(_structure([(0, 3, 0, 1)] * 4)))
    assert m.predict(two) != pytest.approx(m.predict(_structure([(3, 1, 0, 0)] * 4)))
    odd = Structure.from_channels([[3, 1]] * 4, layers=(2, 2), scales=(1, 3), stem="small", width=8, image_size=32)
    with pytest.raises(ValueError, match=r"measured for scales 1,2,4,7 \(or a subset\).* has scales 1,3"):
        m.predict(odd)


def test_a_model_for_other_settings_or_another_layout_is_refused(tmp_path):
    m = _model()
    m.check(SETTINGS)
    with pytest.raises(ValueError, match=r"other settings \(device cpu vs cuda; threads 2 vs None\)"):
        m.check(dataclasses.replace(SETTINGS, device="cuda", threads=None))
    with pytest.raises(ValueError, match=r"other settings \(batch_size 4 vs 16\)"):
        m.check(dataclasses.replace(SETTINGS, batch_size=16, torch="other"))  # the torch version is not compared
    with pytest.raises(ValueError, match=r"measured for scales 1,2,4,7 \(or a subset\), 2 stages, width 8, small stem"):
        m.predict(Structure.published("scalenet50"))
    path = m.save(tmp_path / "m.json")
    loaded = LatencyModel.load(path)
    assert loaded.predict(_structure()) == pytest.approx(m.predict(_structure())) and loaded.settings == SETTINGS
    (tmp_path / "bad.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a latency model"):
        LatencyModel.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="latency model not found"):
        LatencyModel.load(tmp_path / "none.json")


def test_info_prints_the_predicted_latency_per_block(tmp_path, capsys):
    path = _model().save(tmp_path / "m.json")
    structure = _structure().save(tmp_path / "s.json")
    assert main(["info", str(structure), "--latency", str(path)]) == 0
    out = capsys.readouterr().out
    assert "predicted latency" in out and "Test CPU, 2 threads, batch 4, 32 px" in out
    table = out[out.index("predicted latency"):]  # after the structure's own table
    rows = {line.split("|")[0].strip(): float(line.split("|")[1].split()[0]) for line in table.splitlines()
            if line.startswith(("layer", "other", "total"))}
    assert rows["layer1.0"] == pytest.approx(TRUE[0].block_ms((4, 2, 1, 1)), abs=0.05)
    assert rows["total"] == pytest.approx(_model().predict(_structure()), abs=0.05) and rows["other"] == 5.0
    assert main(["info", str(structure), "--latency", str(path), "--json"]) == 0
    latency = json.loads(capsys.readouterr().out)["latency"]
    assert latency["total_ms"] == pytest.approx(_model().predict(_structure())) and len(latency["blocks"]) == 4
    assert main(["info", str(structure), "--latency", str(path), "--image-size", "64"]) == 2
    assert "was measured at 32 px; --image-size 64 differs" in capsys.readouterr().err


def test_cuda_without_a_gpu_and_bad_settings_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU is present here"):
        current_settings("cuda")
    assert main(["latency-model", "--out", str(tmp_path / "m.json"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda: no CUDA GPU is present here" in err[0]
    assert not (tmp_path / "m.json").exists()
    assert current_settings("cpu", threads=3).threads == 3


def test_compiled_timing_lifts_dynamos_recompile_limit(monkeypatch):
    """Every channel split is another graph of the same block class: with dynamo's default limit
    (8) the ninth and later splits would silently run eagerly and the compiled model be wrong."""
    import torch
    import torch._dynamo

    from scalenet.compat import recompile_limit
    from scalenet.latency import _timer

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    monkeypatch.setattr(config, name, 8)
    assert recompile_limit() == 8
    prepare, _ = _timer(dataclasses.replace(SETTINGS, compile=True))
    prepare(torch.nn.Conv2d(3, 4, 1), (1, 3, 8, 8))  # torch.compile is lazy: nothing compiles here
    assert getattr(config, name) >= 64

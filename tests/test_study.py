"""The study: arms matched in MACs, the paired interval, resume after a kill, and bad input."""

import json
from pathlib import Path
import os
import signal
import subprocess
import sys
import time

import pytest

import scalenet.study as study
import scalenet.study.runner as runner
from scalenet import Structure
from scalenet.checkpoint import read_state_dict
from scalenet.allocation import current_keys, supernet_structure
from scalenet.report import stage_summary
from scalenet.cli import main
from scalenet.stats import paired_interval, t_quantile
from scalenet.study import ARMS, StudyConfig, arm_structure, run_study

from helpers import make_image_folder, torchrun


def test_t_quantiles_and_the_paired_interval_on_fixed_numbers():
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-5)
    assert t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-5)
    assert t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-4)
    # differences 0.01, 0.01, 0.02: mean 0.013333, sd 0.0057735, t(0.975, 2) = 4.302653
    c = paired_interval([0.90, 0.91, 0.92], [0.89, 0.90, 0.90])
    assert c["mean"] == pytest.approx(0.0133333, abs=1e-6)
    half = 4.302653 * 0.0057735 / 3 ** 0.5
    assert c["low"] == pytest.approx(0.0133333 - half, abs=1e-5) and c["high"] == pytest.approx(0.0133333 + half, abs=1e-5)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_interval([1.0], [0.5])


def test_every_arm_matches_the_learned_macs_within_one_percent():
    supernet = supernet_structure((1, 1, 1), stem="small", width=12, image_size=28)
    learned = Structure.from_channels([[4, 4, 1, 3], [2, 3, 12, 7], [4, 15, 15, 14]], (1, 1, 1), stem="small",
                                      width=12, image_size=28, name="learned")
    target = learned.macs(None, 10, 1)
    got = {arm: arm_structure(arm, supernet, target, 10, 1, random_seed=3) for arm in ARMS if arm != "learned"}
    for arm, s in got.items():
        assert abs(s.macs(None, 10, 1) - target) <= 0.01 * target, arm
    assert got["resnet"].scales == (1,)
    uniform_rows = [r[:-1] for r in got["uniform"].rows]
    assert all(max(r) - min(r) <= 1 for r in uniform_rows)  # as even as integers allow
    shares = [s["share"] for s in stage_summary(got["heuristic"])]
    assert shares[0][0] > shares[-1][0] + 0.2  # fine early, coarse late
    other = arm_structure("random", supernet, target, 10, 1, random_seed=4)
    assert other.rows != got["random"].rows  # a fresh draw per seed
    with pytest.raises(ValueError, match="the resnet arm cannot match 1,000 MACs within 1%"):
        arm_structure("resnet", supernet, 1000, 10, 1)


def _tiny(tmp_path, **kw):
    folder = make_image_folder(tmp_path / "data", classes=3, per_class=16, size=16)
    base = dict(data=str(folder), seeds=2, layers=(1, 1), width=8, epochs=1, batch_size=8, repeats=1, supernet_epochs=1,
                supernet_subset=None, val_subset=None, jobs=1, progress=False)
    return StudyConfig.from_settings({**base, **kw})


def test_study_resumes_after_a_kill_without_retraining_finished_runs(tmp_path, monkeypatch):
    cfg = _tiny(tmp_path)
    out = tmp_path / "study"
    args = ["study", "--data", cfg.data, "--out", str(out), "--seeds", "2", "--layers", "1,1", "--width", "8",
            "--epochs", "1", "--batch-size", "8", "--repeats", "1", "--supernet-epochs", "1", "--jobs", "1", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "scalenet", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(list((out / "results").glob("*.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the study finished before it could be killed"
    finished = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in (out / "results").glob("*.json")}
    assert 2 <= len(finished) < 10 and not (out / "study.json").exists()

    calls = []
    real = runner.train_run
    monkeypatch.setattr(runner, "train_run", lambda p: calls.append((p["arm"], p["seed"])) or real(p))
    assert main(args) == 0
    assert len(calls) == 10 - len(finished)
    assert not {f"{a}-seed{s}.json" for a, s in calls} & set(finished)
    for name, (mtime, text) in finished.items():
        p = out / "results" / name
        assert p.stat().st_mtime_ns == mtime and p.read_text() == text
    report = json.loads((out / "study.json").read_text())
    assert set(report["arms"]) == set(ARMS) and all(len(a["top1_by_seed"]) == 2 for a in report["arms"].values())
    assert set(report["comparisons"]) == {f"learned - {a}" for a in ARMS if a != "learned"}
    for a in report["arms"].values():
        assert abs(a["macs"] - report["target_macs"]) <= 0.01 * report["target_macs"]
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG" and "| learned |" in (out / "study.md").read_text()
    # a finished study reruns without training anything
    calls.clear()
    assert main(args) == 0 and calls == []


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "1"], "--seeds must be at least 2 for an interval"),
    (["--arms", "learned,fancy"], "unknown arm(s) fancy; choose from learned, uniform, random, resnet, heuristic"),
    (["--arms", "uniform,resnet", "--macs", "1000"], "cannot match 1,000 MACs within 1%"),
    (["--arms", "learned,uniform", "--macs", "1000"], "impossible budget: --macs 1,000 is below the minimum"),
    (["--arms", "learned,latency"], "the latency arm and --latency-ms need --latency-model"),
])
def test_bad_input_is_one_line_and_writes_no_result(tmp_path, capsys, extra, message):
    folder = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=16)
    out = tmp_path / "study"
    assert main(["study", "--data", str(folder), "--out", str(out), "--layers", "1,1", "--width", "8",
                 "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scalenet: error: ") and message in err[0], err
    assert not list(out.glob("results/*.json")) and not (out / "study.json").exists()


def test_resuming_with_other_settings_is_refused(tmp_path, capsys):
    cfg = _tiny(tmp_path, arms=("uniform", "resnet"))
    run_study(cfg, tmp_path / "s")
    with pytest.raises(ValueError, match=r"holds a study with other settings \(epochs\)"):
        run_study(_tiny(tmp_path, arms=("uniform", "resnet"), epochs=2), tmp_path / "s")


def _fake_latency(tmp_path, monkeypatch, error):
    """A cost model (the fit's numbers made up) and a stand-in timer: each arm measures its
    prediction times ``error(name, structure, round)``, so the cost model is wrong by arm."""
    import dataclasses

    import scalenet.study.latency
    from scalenet.latency import LatencyModel, StageCost, current_settings

    settings = dataclasses.replace(current_settings("cpu", 2, 4, 16))
    model = LatencyModel(settings, (1, 2, 4, 7), (1, 1), 8, "small",
                         [StageCost(1.0, [0.2, 0.4, 0.6, 2.0], [0.1, 0.01, 0.008, 0.006]),
                          StageCost(0.8, [0.2, 0.3, 0.5, 1.5], [0.1, 0.015, 0.01, 0.005])], 2.0)
    model.save(tmp_path / "cpu.json")
    timed = []

    def fake_timer(structures, st, repeats=5, progress=False):
        timed.append(dict(structures))
        return {k: error(k, s, len(timed)) * model.predict(s) for k, s in structures.items()}

    monkeypatch.setattr(scalenet.study.latency, "time_networks", fake_timer)
    return model, settings, timed


def test_arms_matched_in_measured_latency_the_plain_resnet_included(tmp_path, monkeypatch):
    """The cost model mispredicts by arm (the plain bottleneck by -10%): each arm's budget is
    calibrated until its *measurement* lands within the tolerance of the learned arm's."""
    import dataclasses

    factor = {"learned": 1.1, "latency": 1.1, "uniform": 1.05, "resnet": 0.9}
    model, settings, timed = _fake_latency(tmp_path, monkeypatch, lambda name, s, r: factor[name])
    cfg = _tiny(tmp_path, arms=("learned", "latency", "uniform", "resnet"), latency_model=str(tmp_path / "cpu.json"))
    report = run_study(cfg, tmp_path / "s")
    lat = report["latency"]
    assert lat["tolerance"] == study.LATENCY_TOLERANCE == 0.05
    assert lat["target_ms"] == pytest.approx(lat["measured_ms"]["learned"])
    assert report["arms"]["resnet"]["measured_ms"] == pytest.approx(lat["measured_ms"]["resnet"])
    structures = {arm: Structure.load(tmp_path / "s" / "structures" / f"{arm}.json") for arm in cfg.arms}
    assert structures["resnet"].scales == (1,)
    for arm in ("latency", "uniform", "resnet"):
        measured = lat["measured_ms"][arm]
        assert abs(measured / lat["target_ms"] - 1) <= 0.05, arm
        # the selection kept the calibrated predicted budget: at most it, within 1% below
        assert 0.99 * lat["budget"][arm]["latency_ms"] <= lat["predicted_ms"][arm] <= lat["budget"][arm]["latency_ms"], arm
        assert measured == pytest.approx(factor[arm] * lat["predicted_ms"][arm])
    first = lat["rounds"][0]  # under the predicted budget alone the plain ResNet measured 18% too fast
    assert first["measured_ms"]["resnet"] / first["target_ms"] < 0.85
    assert lat["budget"]["resnet"]["latency_ms"] > 1.15 * first["budget"]["resnet"]["latency_ms"] and lat["budget"]["learned"] is None
    assert len(lat["rounds"]) == len(timed) >= 2 and sorted(timed[0]) == sorted(cfg.arms)
    md = (tmp_path / "s" / "study.md").read_text()
    assert "measured latency (within 5%)" in md and "| budget (predicted ms, or MACs) | predicted ms | measured ms |" in md
    # resuming rebuilds the arms from the recorded budgets instead of timing again
    run_study(cfg, tmp_path / "s")
    assert len(timed) == len(lat["rounds"])
    assert all(Structure.load(tmp_path / "s" / "structures" / f"{a}.json").rows == structures[a].rows for a in cfg.arms)
    # a model for another image size or another device is refused before anything is built
    for change, message in (({"image_size": 32}, "image_size 32 vs 16"), ({"device_name": "Another CPU"},
                                                                           "device_name Another CPU vs")):
        dataclasses.replace(model, settings=dataclasses.replace(settings, **change)).save(tmp_path / "other.json")
        with pytest.raises(ValueError, match=r"--latency-model was measured with other settings \(" + message):
            run_study(_tiny(tmp_path, arms=("uniform", "resnet"), latency_model=str(tmp_path / "other.json"),
                            latency_ms=10.0), tmp_path / "s3")
        assert not list((tmp_path / "s3" / "structures").glob("*.json"))


def test_an_arm_whose_measurement_never_lands_is_refused_before_any_training(tmp_path, monkeypatch):
    # the plain ResNet measures 8% fast, then 8% slow, ... of its prediction: no budget lands
    _fake_latency(tmp_path, monkeypatch, lambda name, s, r: (0.92 if r % 2 else 1.08) if name == "resnet" else 1.0)
    cfg = _tiny(tmp_path, arms=("learned", "resnet"), latency_model=str(tmp_path / "cpu.json"))
    with pytest.raises(ValueError, match=r"the resnet arm measures .* ms after 4 calibration rounds, .*% from the "
                                         r"target .* ms; .* raise latency_tolerance \(now 0.05\)"):
        run_study(cfg, tmp_path / "s")
    assert not (tmp_path / "s" / "latency.json").exists() and not list((tmp_path / "s" / "results").iterdir())


def test_a_rule_arm_the_cost_model_cannot_bring_to_the_target_is_matched_in_measured_macs(tmp_path, monkeypatch):
    """A cost model fitted on SA blocks that rates x1 neurons as free: no selection of the plain
    ResNet's pool reaches the predicted budget, so its MACs are calibrated on the measurement
    instead (here the stand-in timer makes its latency proportional to its MACs)."""
    from scalenet.latency import LatencyModel

    def error(name, s, r):  # the resnet arm measures 1 ms per 100,000 MACs, the others as predicted
        return s.macs(None, 3, 3) / 1e5 / model.predict(s) if name == "resnet" else 1.0

    model, settings, timed = _fake_latency(tmp_path, monkeypatch, error)
    free_x1 = LatencyModel.load(tmp_path / "cpu.json")
    for stage in free_x1.stages:
        stage.per_neuron[0] = 0.0
    free_x1.save(tmp_path / "cpu.json")  # what the study predicts with (the timer keeps the first model)
    cfg = _tiny(tmp_path, arms=("learned", "uniform", "resnet"), latency_model=str(tmp_path / "cpu.json"))
    report = run_study(cfg, tmp_path / "s")
    lat = report["latency"]
    assert set(lat["budget"]["uniform"]) == {"latency_ms"} and set(lat["budget"]["resnet"]) == {"macs"}
    assert set(lat["rounds"][0]["budget"]["resnet"]) == {"macs"}  # the learned arm's MACs to start
    assert abs(lat["measured_ms"]["resnet"] / lat["target_ms"] - 1) <= 0.05
    resnet = Structure.load(tmp_path / "s" / "structures" / "resnet.json")
    assert abs(resnet.macs(None, 3, 3) - lat["budget"]["resnet"]["macs"]) <= 0.01 * lat["budget"]["resnet"]["macs"]
    assert "M MACs |" in (tmp_path / "s" / "study.md").read_text()
    run_study(cfg, tmp_path / "s")  # resumed: rebuilt from the recorded MACs, not timed again
    assert len(timed) == len(lat["rounds"]) and Structure.load(tmp_path / "s" / "structures" / "resnet.json").rows == resnet.rows


def test_latency_tolerance_outside_a_latency_study_or_out_of_range_is_refused(tmp_path, capsys):
    from helpers import refused

    folder = make_image_folder(tmp_path / "data", classes=3, per_class=4, size=16)
    refused(capsys, ["study", "--data", folder, "--out", tmp_path / "s", "--latency-tolerance", "0.05"],
            "--latency-tolerance applies to a study matched in latency; give --latency-model too")
    refused(capsys, ["study", "--data", folder, "--out", tmp_path / "s", "--latency-model", tmp_path / "m.json",
                     "--latency-tolerance", "0.7"], "--latency-tolerance is a fraction of the target latency")
    assert not (tmp_path / "s").exists()


@pytest.mark.numerics
def test_torchrun_trains_every_run_with_ddp_survives_a_lost_worker_and_rank_0_writes(tmp_path):
    folder = make_image_folder(tmp_path / "data", classes=3, per_class=16, size=16)
    args = ["study", "--data", str(folder), "--arms", "learned,uniform", "--seeds", "2", "--layers", "1,1", "--width", "8",
            "--epochs", "2", "--batch-size", "8", "--repeats", "2", "--supernet-epochs", "1", "--no-progress"]

    def run(out, restarts: int = 0, kill: bool = False) -> str:
        def second_run_checkpointed() -> bool:  # SIGKILL a worker during the second study run
            return bool(list((out / "results").glob("*.json"))) and len(list((out / "runs").glob("*/last.pt"))) >= 2

        return torchrun([*args, "--out", out], restarts=restarts, kill_when=second_run_checkpointed if kill else None)

    log = run(tmp_path / "straight")
    assert log.count("| learned |") == 1  # rank 0 reports, the other rank prints nothing
    straight = json.loads((tmp_path / "straight" / "study.json").read_text())
    ckpt = read_state_dict(tmp_path / "straight" / "runs" / "uniform-seed0" / "last.pt")
    assert ckpt["trained_on"]["world_size"] == 2  # every run trained with DDP across both ranks
    log = run(tmp_path / "killed", restarts=1, kill=True)
    assert "resuming" in log
    killed = json.loads((tmp_path / "killed" / "study.json").read_text())
    assert {a: r["top1_by_seed"] for a, r in killed["arms"].items()} == {
        a: r["top1_by_seed"] for a, r in straight["arms"].items()}
    learned = [Structure.load(tmp_path / d / "structures" / "learned.json").rows for d in ("straight", "killed")]
    assert learned[0] == learned[1]


@pytest.mark.parametrize("name", ["width1", "width05", "latency", "latency-resnet"])
def test_the_committed_study_folders_load_as_the_study_they_were(name, tmp_path):
    """A study folder's settings.json, read back, is the same study: a resume accepts the folder
    (folders written before the study package, its typed budgets and newer settings)."""
    import shutil

    from scalenet.study.config import prepare_directory

    folder = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / f"study-fashion-mnist-{name}"
    saved = json.loads((folder / "settings.json").read_text())
    assert "seed_epochs" in saved and "seed_subset" in saved  # written before format 2
    cfg = StudyConfig.from_settings(saved)
    now = current_keys(saved)  # format 2 names
    assert {k: v for k, v in cfg.settings().items() if k in now} == now  # newer entries are None there
    copy = shutil.copytree(folder, tmp_path / folder.name)
    if name == "latency":  # matched in predicted latency, before calibration existed: another study now
        with pytest.raises(ValueError, match="holds a study with other settings \\(latency_tolerance\\)"):
            prepare_directory(cfg, copy)
        return
    prepare_directory(cfg, copy)  # what a resume runs first: refuses other settings
    with pytest.raises(ValueError, match="holds a study with other settings \\(seeds\\)"):
        prepare_directory(StudyConfig.from_settings({**saved, "seeds": saved["seeds"] + 1}), copy)
    if (folder / "latency.json").is_file():  # the budgets recorded per arm read back as typed budgets
        from scalenet.allocation import LatencyBudget, MacsBudget
        from scalenet.study.arms import ArmContext
        from scalenet.study.latency import budget_from_record, budget_record

        record = json.loads((folder / "latency.json").read_text())["budget"]
        a = ArmContext(cfg, folder, None, LatencyBudget(1.0, None), None, 10, 1)
        for arm, recorded in record.items():
            budget = budget_from_record(a, recorded)
            assert budget is None or isinstance(budget, (LatencyBudget, MacsBudget))
            assert budget_record(budget) == (recorded if recorded is None or "ms" not in recorded
                                             else {"latency_ms": recorded["ms"]})  # format 1 wrote "ms"

"""The study: arms matched in MACs, the paired interval, resume after a kill, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import scalenet.study as study
from scalenet import Structure
from scalenet.allocation import seed_structure, stage_summary
from scalenet.cli import main
from scalenet.study import ARMS, StudyConfig, arm_structure, paired_interval, run_study, t_quantile

from helpers import make_image_folder


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
    seed = seed_structure((1, 1, 1), stem="small", width=12, image_size=28)
    learned = Structure.from_channels([[4, 4, 1, 3], [2, 3, 12, 7], [4, 15, 15, 14]], (1, 1, 1), stem="small",
                                      width=12, image_size=28, name="learned")
    target = learned.macs(None, 10, 1)
    got = {arm: arm_structure(arm, seed, target, 10, 1, random_seed=3) for arm in ARMS if arm != "learned"}
    for arm, s in got.items():
        assert abs(s.macs(None, 10, 1) - target) <= 0.01 * target, arm
    assert got["resnet"].scales == (1,)
    uniform_rows = [r[:-1] for r in got["uniform"].rows]
    assert all(max(r) - min(r) <= 1 for r in uniform_rows)  # as even as integers allow
    shares = [s["share"] for s in stage_summary(got["heuristic"])]
    assert shares[0][0] > shares[-1][0] + 0.2  # fine early, coarse late
    other = arm_structure("random", seed, target, 10, 1, random_seed=4)
    assert other.rows != got["random"].rows  # a fresh draw per seed
    with pytest.raises(ValueError, match="the resnet arm cannot match 1,000 MACs within 1%"):
        arm_structure("resnet", seed, 1000, 10, 1)


def _tiny(tmp_path, **kw):
    folder = make_image_folder(tmp_path / "data", classes=3, per_class=16, size=16)
    base = dict(data=str(folder), seeds=2, layers=(1, 1), width=8, epochs=1, batch_size=8, repeats=1, seed_epochs=1,
                seed_subset=None, val_subset=None, jobs=1, progress=False)
    return StudyConfig.from_settings({**base, **kw})


def test_study_resumes_after_a_kill_without_retraining_finished_runs(tmp_path, monkeypatch):
    cfg = _tiny(tmp_path)
    out = tmp_path / "study"
    args = ["study", "--data", cfg.data, "--out", str(out), "--seeds", "2", "--layers", "1,1", "--width", "8",
            "--epochs", "1", "--batch-size", "8", "--repeats", "1", "--seed-epochs", "1", "--jobs", "1", "--no-progress"]
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
    real = study.train_run
    monkeypatch.setattr(study, "train_run", lambda p: calls.append((p["arm"], p["seed"])) or real(p))
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


def test_arms_matched_in_latency_are_measured_and_reported(tmp_path, monkeypatch):
    """With a (fake) cost model the arms share the learned arm's predicted latency, and each
    arm's latency is measured (here: a stand-in timer) and reported."""
    import dataclasses

    import scalenet.latency
    from scalenet.latency import LatencyModel, StageCost, current_settings

    settings = dataclasses.replace(current_settings("cpu", 2, 4, 16))
    model = LatencyModel(settings, (1, 2, 4, 7), (1, 1), 8, "small",
                         [StageCost(1.0, [0.2, 0.4, 0.6, 2.0], [0.02, 0.01, 0.008, 0.006]),
                          StageCost(0.8, [0.2, 0.3, 0.5, 1.5], [0.03, 0.015, 0.01, 0.005])], 2.0)
    model.save(tmp_path / "cpu.json")
    timed = []

    def fake_timer(structures, st, repeats=5, progress=False):
        timed.append(sorted(structures))
        return {k: 1.1 * model.predict(s) for k, s in structures.items()}

    monkeypatch.setattr(scalenet.latency, "time_networks", fake_timer)
    cfg = _tiny(tmp_path, arms=("learned", "latency", "uniform"), latency_model=str(tmp_path / "cpu.json"))
    report = run_study(cfg, tmp_path / "s")
    lat = report["latency"]
    assert lat["target_ms"] == pytest.approx(lat["predicted_ms"]["learned"])
    for arm in ("latency", "uniform"):
        assert 0.99 * lat["target_ms"] <= lat["predicted_ms"][arm] <= lat["target_ms"]
        assert report["arms"][arm]["measured_ms"] == pytest.approx(1.1 * lat["predicted_ms"][arm])
    assert timed == [["latency", "learned", "uniform"]]
    md = (tmp_path / "s" / "study.md").read_text()
    assert "predicted latency (within 1% below)" in md and "| predicted ms | measured ms |" in md
    # resuming reads the measurement back instead of timing again
    run_study(cfg, tmp_path / "s")
    assert len(timed) == 1
    # a model for another image size or another device is refused before anything is built
    for change, message in (({"image_size": 32}, "image_size 32 vs 16"), ({"device_name": "Another CPU"},
                                                                           "device_name Another CPU vs")):
        dataclasses.replace(model, settings=dataclasses.replace(settings, **change)).save(tmp_path / "other.json")
        with pytest.raises(ValueError, match=r"--latency-model was measured with other settings \(" + message):
            run_study(_tiny(tmp_path, arms=("uniform", "resnet"), latency_model=str(tmp_path / "other.json"),
                            latency_ms=10.0), tmp_path / "s3")
        assert not list((tmp_path / "s3" / "structures").glob("*.json"))

import json

import pytest

from scalenet import Structure
from scalenet.demo import DemoProfile, baselines, run_demo
from scalenet.study import StudyConfig
from scalenet.training import TrainConfig
from scalenet.data import load_fashion_mnist

try:
    load_fashion_mnist()
    HAVE_FASHION_MNIST = True
except FileNotFoundError:
    HAVE_FASHION_MNIST = False


def test_baselines_match_the_macs_within_1_percent():
    learned = Structure.from_channels([[20, 3, 1, 0], [30, 20, 10, 4], [10, 40, 20, 0]], layers=(1, 1, 1),
                                      stem="small", width=16, image_size=28, name="learned")
    target = learned.macs(None, 10, 1)
    out = baselines(learned, 10, 1)
    assert set(out) == {"resnet", "uniform"}
    for s in out.values():
        assert abs(s.macs(None, 10, 1) - target) <= 0.01 * target
        assert (s.layers, s.stem, s.width, s.image_size) == (learned.layers, learned.stem, learned.width, learned.image_size)
    assert out["resnet"].scales == (1,)  # one 3x3 conv: the plain bottleneck
    uniform_rows = out["uniform"].rows
    assert all(max(r[:-1]) - min(r[:-1]) <= 1 for r in uniform_rows)  # as equal per scale as integers allow


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="Fashion-MNIST is not installed (make test installs it)")
def test_demo_end_to_end_on_a_tiny_profile(tmp_path):
    tiny = DemoProfile(
        name="tiny", note="tiny test profile", test_subset=500, supernet_jobs=1,
        study=StudyConfig(layers=(1, 1), width=8, width_mult=1.0, supernet_epochs=1, supernet_subset=256, train_subset=512,
                          seeds=2, val_subset=256, repeats=2, jobs=1,
                          train=TrainConfig(epochs=1, batch_size=64, lr=0.05, wd=5e-4, warmup=0, augment=False,
                                            channels_last=True)),
    )
    report = run_demo(tmp_path / "demo", profile=tiny, progress=False)
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert saved["models"].keys() == {"scalenet", "resnet", "uniform"}
    for name, r in saved["models"].items():
        assert 0 <= r["top1"] <= 1 and r["macs"] > 0 and r["params"] > 0 and r["latency_ms_batch1"] > 0
        assert len(r["top1_runs"]) == 2
        assert Structure.load(tmp_path / "demo" / r["structure"]).macs(num_classes=10, in_chans=1) == r["macs"]
    macs = [r["macs"] for r in saved["models"].values()]
    assert max(macs) <= 1.01 * min(macs) / 0.99
    md = (tmp_path / "demo" / "report.md").read_text()
    assert "![allocation](allocation.png)" in md and "| scalenet |" in md and "±" in md
    assert "| ratio to chance |" in md and "Is the allocation worth it?" in md
    assert saved["agreement_runs"] == 2 and len(saved["agreement"]) == 2
    for png in ("allocation.png", "curves.png"):
        assert (tmp_path / "demo" / png).read_bytes()[:4] == b"\x89PNG"
    assert report["test_images"] == 500


def test_study_findings_state_the_learned_minus_uniform_interval(tmp_path):
    from scalenet.demo import study_findings

    assert "No study results here" in study_findings(tmp_path)
    d = tmp_path / "study-fashion-mnist-x"
    d.mkdir()
    (d / "study.json").write_text(json.dumps({
        "target_macs": 5_000_000, "settings": {"seeds": 5},
        "comparisons": {"learned - uniform": {"mean": -0.001, "low": -0.004, "high": 0.002}},
    }))
    text = study_findings(tmp_path)
    assert "5.00 M MACs" in text and "is not distinguishable from the uniform split" in text
    assert "-0.10 points, 95% interval [-0.40, +0.20]" in text
    d = tmp_path / "study-fashion-mnist-y"  # matched in measured latency, with the plain ResNet
    d.mkdir()
    (d / "study.json").write_text(json.dumps({
        "target_macs": None, "settings": {"seeds": 5}, "latency": {"target_ms": 71.25, "rounds": [{}]},
        "comparisons": {"learned - uniform": {"mean": -0.001, "low": -0.004, "high": 0.002},
                        "learned - resnet": {"mean": -0.0146, "low": -0.0182, "high": -0.0111}},
    }))
    text = study_findings(tmp_path)
    assert ("at equal measured latency (71.2 ms) (study-fashion-mnist-y, 5 seeds) the learned allocation is not "
            "distinguishable from the uniform split: -0.10 points") in text
    assert "and loses to the plain ResNet: -1.46 points, 95% interval [-1.82, -1.11]" in text

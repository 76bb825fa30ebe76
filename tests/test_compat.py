"""The compatibility layer: version floors refused in one line, missing extras named, and each
shim giving what the newer API gives, on the installed releases and on the older path."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import scalenet
from scalenet import compat


def test_version_tuple():
    assert compat.version_tuple("2.6.0+cu124") == (2, 6, 0)
    assert compat.version_tuple("1.0.15.dev0") == (1, 0, 15)
    assert compat.version_tuple("0.21") < compat.version_tuple("0.21.0") < compat.version_tuple("0.29.1")


def test_the_installed_releases_are_at_or_above_the_floors():
    assert compat.unsupported() is None
    for name, floor in compat.FLOORS.items():
        assert compat.version_tuple(compat.installed_version(name)) >= compat.version_tuple(floor)


def test_floors_agree_with_pyproject_and_the_floor_constraints():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pyproject, pins = (root / "pyproject.toml").read_text(), (root / ".ci" / "floor-constraints.txt").read_text()
    for name, floor in compat.FLOORS.items():
        assert f'"{name}>={floor}"' in pyproject
        pinned = next(line.split("==")[1] for line in pins.splitlines() if line.startswith(f"{name}=="))
        assert compat.version_tuple(pinned)[:len(compat.version_tuple(floor))] == compat.version_tuple(floor)


def _with_old_torch(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter in which torch's metadata says 2.5.1 (as after an install
    with ``--no-deps`` over an older torch)."""
    fake = ("import importlib.metadata as m; real = m.version; "
            "m.version = lambda n: '2.5.1' if n == 'torch' else real(n); ")
    return subprocess.run([sys.executable, "-c", fake + code], capture_output=True, text=True, timeout=120)


def test_import_below_the_torch_floor_says_which_version_it_needs():
    got = _with_old_torch("import scalenet")
    assert got.returncode == 1
    assert got.stderr.strip().splitlines()[-1] == (
        "ImportError: scalenet needs torch>=2.6 (found 2.5.1); upgrade with: pip install 'torch>=2.6'")


def test_the_command_below_the_torch_floor_prints_one_line_and_exits_2():
    got = _with_old_torch("import sys; sys.argv = ['scalenet', 'info', 'scalenet50']; "
                          "from scalenet.cli import main; sys.exit(main())")
    assert got.returncode == 2, got.stderr
    assert got.stderr.strip().splitlines() == [
        "scalenet: error: scalenet needs torch>=2.6 (found 2.5.1); upgrade with: pip install 'torch>=2.6'"]


def test_a_missing_extra_is_named_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(compat.MissingExtra) as e:
        compat.require("onnxruntime", "checking an ONNX export")
    assert str(e.value) == ("checking an ONNX export needs onnxruntime, which is not installed; "
                            "install it with: pip install 'scalenet[export]'")


def test_an_extra_that_does_not_load_is_named_too(monkeypatch, tmp_path):
    (tmp_path / "brokenext.py").write_text("raise OSError('libbroken.so: undefined symbol _ZN3c10')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(compat.MissingExtra, match=r"^a test needs brokenext, which is installed but does not load "
                                                  r"here \(libbroken.so: undefined symbol _ZN3c10\); install the "
                                                  r"release that matches torch .+ with: pip install brokenext$"):
        compat.require("brokenext", "a test")


def test_the_cli_names_the_export_extra(monkeypatch, tmp_path, capsys):
    from scalenet.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "scalenet50_light", "--onnx", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["scalenet: error: checking an ONNX export needs onnxruntime, which is not installed; "
                   "install it with: pip install 'scalenet[export]'"]
    assert not out.exists()  # refused before the export


@pytest.fixture(params=["installed", "timm 1.0.15"])
def timm_path(request, monkeypatch):
    """Each timm shim on the installed timm's API and on the older path it stands in for."""
    if request.param != "installed":
        monkeypatch.setattr(compat, "_timm_version", lambda: (1, 0, 15))
    return request.param


def test_create_classifier_builds_on_the_device_and_dtype_asked(timm_path):
    pool, fc = compat.create_classifier(8, 5, "avg", device="meta", dtype=torch.float64)
    assert fc.weight.device.type == "meta" and fc.weight.dtype == torch.float64 and fc.weight.shape == (5, 8)
    model = scalenet.create_model("scalenet50_light", device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())


def test_param_groups_decay_one_d_tensors_only_when_asked(timm_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    model[1].weight.requires_grad_(False)  # frozen: in no group
    ids = lambda groups, wd: {id(p) for g in groups if g["weight_decay"] == wd for p in g["params"]}  # noqa: E731
    matrices = {id(model[0].weight), id(model[2].weight)}
    one_d = {id(model[0].bias), id(model[1].bias), id(model[2].bias)}
    groups = compat.param_groups_weight_decay(model, 1e-4, exclude_1d=True)
    assert ids(groups, 1e-4) == matrices and ids(groups, 0.0) == one_d
    groups = compat.param_groups_weight_decay(model, 1e-4, exclude_1d=False)
    assert ids(groups, 1e-4) == matrices | one_d and not ids(groups, 0.0)

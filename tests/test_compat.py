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
    (tmp_path / "needsother.py").write_text("import not_a_module_anywhere\n")  # installed; its own import fails
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(compat.MissingExtra) as e:
        compat.require("brokenext", "a test")
    assert str(e.value) == ("a test needs brokenext, which is installed but does not load here "
                            "(libbroken.so: undefined symbol _ZN3c10); reinstall it")
    with pytest.raises(compat.MissingExtra, match="^a test needs needsother, which is installed but does not load "
                                                  "here \\(No module named 'not_a_module_anywhere'\\); reinstall it$"):
        compat.require("needsother", "a test")


def test_a_torchcodec_without_image_decoders_is_refused_in_one_line(monkeypatch, tmp_path):
    from types import ModuleType

    from scalenet.data import check_decoder

    old = ModuleType("torchcodec.decoders")  # TorchCodec before 0.16: video and audio only
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", old)
    monkeypatch.setattr("scalenet.data.installed_version", lambda name: "0.3.0")
    with pytest.raises(compat.MissingExtra, match=r"^--decode torchcodec needs torchcodec>=0.16, which decodes images "
                                                  r"\(found 0.3.0, for torch .+\); .+: use --decode pil here$"):
        check_decoder("torchcodec")


def test_the_cli_names_the_export_extra(monkeypatch, tmp_path, capsys):
    from scalenet.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "scalenet50_light", "--onnx", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["scalenet: error: checking an ONNX export needs onnxruntime, which is not installed; "
                   "install it with: pip install 'scalenet[export]'"]
    assert not out.exists()  # refused before the export


@pytest.fixture(params=["installed", "timm 1.0.20", "timm 1.0.15"])
def timm_path(request, monkeypatch):
    """Each timm shim on the installed timm's API and on the older paths it stands in for."""
    if request.param != "installed":
        old = compat.version_tuple(request.param.split()[1])
        if compat._timm_version() < old:
            pytest.skip(f"the installed timm is older than {request.param}")
        monkeypatch.setattr(compat, "_timm_version", lambda: old)
    return request.param


def test_save_for_hf_records_the_preprocessing_on_every_path(timm_path, tmp_path):
    import json

    model = scalenet.create_model("scalenet50_light", num_classes=3)
    data = {"input_size": (3, 96, 96), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.2, 0.2), "crop_pct": 1.0,
            "interpolation": "bilinear", "crop_mode": "center"}
    own = dict(model.pretrained_cfg)
    compat.save_for_hf(model, str(tmp_path / "hub"), model_config={"label_names": ["a", "b", "c"]},
                       model_args={"structure": model.structure.to_json()}, data_config=data)
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    assert [cfg[k] for k in ("input_size", "mean", "std", "crop_pct")] == [[3, 96, 96], [0.5, 0.4, 0.3], [0.2] * 3, 1.0]
    assert config["label_names"] == ["a", "b", "c"] and config["model_args"]["structure"]["rows"]
    assert (tmp_path / "hub" / "model.safetensors").is_file()
    assert model.pretrained_cfg == own  # the model's own cfg is left as it was


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


def test_the_package_version_is_the_installed_distributions():
    import importlib.metadata

    import scalenet

    assert scalenet.__version__ == importlib.metadata.version("scalenet")

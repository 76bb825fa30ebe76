import json

import pytest

from scalenet.bench import format_bench_table, run_bench, save_results
from scalenet.cli import main


def test_bench_rows_ratios_and_files(tmp_path):
    result = run_bench(batch_size=1, repeats=2, warmup=1, onnx=False, progress=False,
                       models=["scalenet50 (fused)"])
    rows = result["models"]
    assert set(rows) == {"resnet50", "scalenet50 (fused)"}
    assert rows["resnet50"]["ratio_to_resnet50"] == 1.0
    assert rows["scalenet50 (fused)"]["macs"] == 3_818_372_352  # the fused model counts the same MACs
    assert rows["resnet50"]["macs"] == 4_089_184_256  # torchvision's 4.09 G
    s = rows["scalenet50 (fused)"]
    assert s["ratio_to_resnet50"] == pytest.approx(s["median_ms"] / rows["resnet50"]["median_ms"])
    assert s["min_ms"] <= s["median_ms"]
    js, md = save_results(result, tmp_path)
    assert json.loads(js.read_text())["models"].keys() == rows.keys()
    assert "| scalenet50 (fused) |" in md.read_text() and "batch 1" in format_bench_table(result)


def test_bench_bad_input(capsys):
    assert main(["bench", "--models", "vgg16", "--no-onnx"]) == 2
    assert "unknown bench model(s) vgg16" in capsys.readouterr().err


def test_cpu_training_rows_have_throughput_and_peak_memory():
    result = run_bench(batch_size=2, image_size=224, repeats=1, warmup=1, train=True, progress=False,
                       models=["scalenet50_light"])
    rows = result["models"]
    assert set(rows) == {"resnet50", "scalenet50_light"}
    for r in rows.values():
        assert r["images_per_s"] == pytest.approx(2 / (r["median_ms"] / 1e3))
        assert r["peak_memory_mb"] > 0  # measured in a fresh process per model
    # the step's peak holds at least the gradients and momentum (two copies of the parameters)
    assert rows["resnet50"]["peak_memory_mb"] > 2 * rows["resnet50"]["params"] * 4 / 2**20
    assert "| n/a |" not in format_bench_table(result)


def test_cuda_graphs_need_cuda(capsys):
    assert main(["bench", "--cuda-graphs", "--no-onnx"]) == 2
    assert "--cuda-graphs needs --device cuda" in capsys.readouterr().err


@pytest.mark.parametrize("train", [False, True])
def test_compile_freezes_inference_only(monkeypatch, train):
    """Inference compiles every model with inductor's freezing (the deployment setting); a
    training step cannot freeze its weights, so it compiles plainly."""
    import torch

    calls = []

    def fake_compile(model, **kwargs):  # records the request, runs the model eagerly
        calls.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    result = run_bench(batch_size=1, image_size=224, repeats=1, warmup=1, compile=True, train=train, onnx=False,
                       progress=False, models=["scalenet50_light" if train else "scalenet50_light (fused)"])
    assert len(calls) == 2  # ResNet-50 and the ScaleNet, alike
    assert all(c == ({} if train else {"options": {"freezing": True}}) for c in calls)
    assert result["freezing"] is (not train)
    assert ("torch.compile (freezing)" in format_bench_table(result)) is (not train)


def test_result_files_are_named_after_the_device(tmp_path):
    from scalenet.devices import device_slug

    assert device_slug("AMD EPYC (2 threads)") == "amd-epyc-2-threads"
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    result = {"device": "AMD EPYC (2 threads)", "mode": "inference", "batch_size": 16, "image_size": 224,
              "repeats": 1, "compile": True, "freezing": True, "cuda_graphs": False, "channels_last": True,
              "precision": "fp32", "models": {}}
    js, md = save_results(result, tmp_path)
    assert js.name == "bench-amd-epyc-2-threads-inference-b16-compile.json" and md.suffix == ".md"


def test_precision_autocasts_and_names_its_files(tmp_path, capsys, monkeypatch):
    """bf16 runs under autocast (recorded, and in the file names so that it does not overwrite
    the default precision's results); fp16 is refused on CPU in one line."""
    import torch

    dtypes = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        dtypes.append((dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    result = run_bench(batch_size=1, image_size=64, repeats=1, warmup=1, onnx=True, progress=False,
                       models=["scalenet50_light (fused)"], precision="bf16")
    assert result["precision"] == "bf16 autocast" and (torch.bfloat16, True) in dtypes
    assert set(result["models"]) == {"resnet50", "scalenet50_light (fused)"}  # no fp32 onnxruntime rows
    js, _ = save_results(result, tmp_path)
    assert js.name.endswith("-inference-b1-bf16.json")
    assert main(["bench", "--precision", "fp16", "--no-onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision fp16 is not offered on cpu; use fp32 or bf16" in err[0]

import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")

import scalenet
from scalenet.checkpoint import save_weights
from scalenet.export import check_onnx, export_onnx
from scalenet.fuse import fuse

from test_models import _init_randomly

#: .ci/run runs these a second time under another CPU kernel set
pytestmark = pytest.mark.numerics


@pytest.mark.parametrize("fused", [False, True])
def test_onnx_round_trip_with_dynamic_batch(tmp_path, tiny, fused):
    model = _init_randomly(scalenet.create_model(tiny, num_classes=5)).eval()
    model = fuse(model) if fused else model
    path = export_onnx(model, tmp_path / "m.onnx", 14)
    for batch in (1, 3, 8):
        assert check_onnx(model, path, 14, batch=batch) < 1e-4


def test_export_cli_with_checkpoint(tmp_path, tiny):
    structure = tiny.save(tmp_path / "tiny.json")
    weights = tmp_path / "w.safetensors"
    save_weights(_init_randomly(scalenet.create_model(tiny, num_classes=10)), weights)
    out = tmp_path / "m.onnx"
    result = subprocess.run([sys.executable, "-m", "scalenet", "export", "--model", str(structure), "--checkpoint",
                             str(weights), "--num-classes", "10", "--onnx", str(out), "--fused"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "max relative difference" in result.stdout and out.stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "scalenet", "export", "--model", str(structure), "--onnx",
                          str(tmp_path / "nodir" / "m.onnx")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"scalenet: error: output directory does not exist: {tmp_path / 'nodir'}"]

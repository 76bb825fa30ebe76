"""The private oneDNN ops behind FusedConv2d: present in this torch, used when on, skipped when off."""

import pytest
import torch

from scalenet import onednn
from scalenet.fuse import FusedConv2d

#: .ci/run runs these a second time under another CPU kernel set
pytestmark = pytest.mark.numerics


def test_this_torch_still_has_the_private_ops():
    # Fails loudly where a torch upgrade renamed or dropped them: FusedConv2d would still give
    # right answers through plain ops, but the eager speed in benchmarks/results/ would be gone.
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    mkldnn = getattr(torch.ops, "mkldnn", None)
    missing = [op for op in onednn.OPS if not hasattr(mkldnn, op)]
    assert not missing, (
        f"torch {torch.__version__} has no torch.ops.mkldnn.{', '.join(missing)}: fused convs fall back to plain ops "
        "(slower); port scalenet/onednn.py to what replaced them, or pin torch"
    )
    assert onednn.available()


@pytest.mark.skipif(not onednn.available(), reason="no oneDNN ops in this torch build")
def test_fused_conv_calls_the_primitive_only_when_switched_on(monkeypatch):
    calls = []
    real = onednn.conv
    monkeypatch.setattr(onednn, "conv", lambda *a, **k: calls.append(1) or real(*a, **k))
    conv = FusedConv2d(4, 6, 3, padding=1, act=True).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        on = conv(x)
        assert len(calls) == 1
        onednn.set_enabled(False)
        try:
            off = conv(x)
        finally:
            onednn.set_enabled(True)
        assert len(calls) == 1
        with torch.enable_grad():  # gradients need plain ops
            conv(x.requires_grad_())
        assert len(calls) == 1
    assert torch.allclose(on, off, rtol=1e-5, atol=1e-6)

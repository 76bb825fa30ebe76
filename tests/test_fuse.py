import pytest
import torch

import scalenet
from scalenet.fuse import fold_bn, fuse
from scalenet.models import upsample_to

from conftest import PUBLISHED
from test_models import _init_randomly


def close(a, b, rel=1e-4):
    return (a - b).abs().max().item() <= rel * b.abs().max().item()


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_fused_published_models_equal_the_eval_model(name):
    model = _init_randomly(scalenet.create_model(name)).eval()
    fused = fuse(model)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert close(fused(x), model(x))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


@pytest.mark.parametrize("size, pooled", [((14, 14), (3, 3)), ((14, 14), (2, 2)), ((7, 7), (3, 3))])
def test_bn_commutes_with_nearest_and_bilinear_upsampling(size, pooled):
    conv = torch.nn.Conv2d(4, 5, 3, padding=1, bias=False)
    bn = _init_randomly(torch.nn.Sequential(torch.nn.BatchNorm2d(5)))[0].eval()
    x = torch.randn(2, 4, *pooled)
    with torch.no_grad():
        reference = bn(upsample_to(conv(x), size))  # the release's order: upsample, then BN
        folded = upsample_to(fold_bn(conv, bn)(x), size)
    assert close(folded, reference, 1e-5)


def test_fused_model_is_inference_only(tiny):
    fused = fuse(scalenet.create_model(tiny))
    fused.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        fused(torch.randn(1, 3, 14, 14))

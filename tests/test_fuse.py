import copy
import warnings

import pytest
import torch

import scalenet
from scalenet.fuse import FusedConv2d, fold_bn, fuse
from scalenet.models import upsample_to

from conftest import PUBLISHED
from test_models import _init_randomly

#: .ci/run runs these a second time under another CPU kernel set
pytestmark = pytest.mark.numerics


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


def _plain(conv, x, residual=None, act=False):
    y = torch.nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    y = y + residual if residual is not None else y
    return torch.relu(y) if act else y


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel, stride", [(1, 1), (3, 1), (7, 2)])
def test_fused_conv_applies_bias_residual_and_relu(channels_last, kernel, stride):
    """The fused conv (oneDNN on this CPU) computes relu?(conv(x) + b + residual?), for every
    batch and image size after its weights were packed for the first one."""
    conv = FusedConv2d(6, 10, kernel, stride, kernel // 2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        for shape in [(2, 6, 16, 16), (5, 6, 9, 13), (1, 6, 16, 16)]:
            x = torch.randn(shape).contiguous(memory_format=fmt)
            residual = torch.randn_like(_plain(conv, x)).contiguous(memory_format=fmt)
            assert close(conv(x), _plain(conv, x), 1e-5)
            assert close(conv(x, act=True), _plain(conv, x, act=True), 1e-5)
            assert close(conv(x, residual, act=True), _plain(conv, x, residual, act=True), 1e-5)
            assert close(conv(x, residual), _plain(conv, x, residual), 1e-5)


def test_fused_conv_repacks_after_its_weights_change():
    conv = FusedConv2d(4, 8, 3, padding=1, act=True)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        conv(x)  # packs the current weights
        conv.load_state_dict({"weight": torch.randn(8, 4, 3, 3), "bias": torch.randn(8)})
        assert close(conv(x), _plain(conv, x, act=True), 1e-5)
        conv.weight.mul_(2)
        assert close(conv(x), _plain(conv, x, act=True), 1e-5)
        assert close(conv.double()(x.double()), _plain(conv, x.double(), act=True), 1e-12)


def test_used_fused_model_copies_pickles_and_exports_plain_ops(tiny, tmp_path):
    model = _init_randomly(scalenet.create_model(tiny)).eval()
    fused = fuse(model)
    x = torch.randn(2, 3, 14, 14)
    with torch.no_grad():
        expected = fused(x)  # packs every conv
        assert close(copy.deepcopy(fused)(x), expected, 1e-6)
        torch.save(fused, tmp_path / "fused.pt")
        assert close(torch.load(tmp_path / "fused.pt", weights_only=False)(x), expected, 1e-6)
        # tracing (as the ONNX exporter does) records plain convs, adds and ReLUs
        with warnings.catch_warnings():  # spatial sizes become constants: expected, as in export
            warnings.simplefilter("ignore")
            graph = str(torch.jit.trace(fused, x).inlined_graph)
    assert "aten::_convolution" in graph and "mkldnn" not in graph


@pytest.mark.parametrize("affine", [True, False])
def test_fold_bn_handles_affine_and_non_affine_bn(affine):
    conv = torch.nn.Conv2d(4, 5, 3, padding=1, bias=False)
    bn = torch.nn.BatchNorm2d(5, affine=affine)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    if affine:
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
        torch.nn.init.uniform_(bn.bias, -0.2, 0.2)
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        assert close(fold_bn(conv, bn.eval())(x), bn(conv(x)), 1e-5)

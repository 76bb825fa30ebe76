"""Each exact rewrite behind the SA block's forward, proved before it is relied on, and whole
networks against the paper's formulation (tests/reference.py; train and eval: outputs,
gradients, BN statistics)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scalenet import Structure, create_model, fuse
from scalenet.models.scalenet import BILINEAR, FULL, NEAREST, branch_input, replicated_bn

from reference import reference_forward, reference_train_step

#: .ci/run runs these a second time under another CPU kernel set
pytestmark = pytest.mark.numerics


# ---------------------------------------------------------------------------- the algebra
@pytest.mark.parametrize("side", [7, 13, 14, 27, 28, 56])
def test_pooling_by_4_is_pooling_by_2_twice(side):
    x = torch.randn(2, 3, side, side + 1)
    assert torch.equal(F.max_pool2d(F.max_pool2d(x, 2, 2), 2, 2), F.max_pool2d(x, 4, 4))


def test_pooling_by_7_cannot_be_built_from_2_and_4():
    # why the x7 branch always pools the block input: 7 is not a multiple of 2 or 4
    torch.manual_seed(0)
    x = torch.randn(1, 1, 28, 28)
    direct = F.max_pool2d(x, 7, 7)
    from_2 = F.max_pool2d(F.max_pool2d(x, 2, 2), 3, 3)  # the same 4x4 shape, but 6-px windows
    assert from_2.shape == direct.shape and not torch.equal(from_2, direct)


def test_relu_commutes_with_nearest_but_not_with_bilinear():
    y = torch.randn(2, 4, 3, 3)
    assert torch.equal(F.relu(F.interpolate(y, size=(6, 6), mode="nearest")), F.interpolate(F.relu(y), size=(6, 6), mode="nearest"))
    a = F.relu(F.interpolate(y, size=(7, 7), mode="bilinear", align_corners=False))
    b = F.interpolate(F.relu(y), size=(7, 7), mode="bilinear", align_corners=False)
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize("momentum", [0.1, None])
def test_train_bn_on_the_low_res_map_equals_bn_on_the_replicated_map(momentum):
    torch.manual_seed(0)
    full_bn = nn.BatchNorm2d(5, momentum=momentum).double()
    with torch.no_grad():
        full_bn.weight.uniform_(0.5, 1.5)
        full_bn.bias.uniform_(-0.5, 0.5)
    low_bn = copy.deepcopy(full_bn)
    for _ in range(3):  # several updates of the running statistics
        y = torch.randn(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
        expected = full_bn(F.interpolate(y, scale_factor=4, mode="nearest"))
        got = F.interpolate(replicated_bn(low_bn, y, 16), scale_factor=4, mode="nearest")
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
        g = torch.randn_like(expected)
        grads_full = torch.autograd.grad(expected, [y, full_bn.weight, full_bn.bias], g)
        grads_low = torch.autograd.grad(got, [y, low_bn.weight, low_bn.bias], g)
        for a, b in zip(grads_low, grads_full):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert torch.allclose(low_bn.running_mean, full_bn.running_mean, rtol=1e-12)
    assert torch.allclose(low_bn.running_var, full_bn.running_var, rtol=1e-12)
    assert int(low_bn.num_batches_tracked) == int(full_bn.num_batches_tracked) == 3


def test_without_the_n_over_n_minus_1_correction_the_running_variance_drifts():
    # the trap the correction avoids: plain BN on the low-res map updates running_var with n_low
    torch.manual_seed(0)
    full_bn, plain = nn.BatchNorm2d(3).double(), nn.BatchNorm2d(3).double()
    y = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    full_bn(F.interpolate(y, scale_factor=7, mode="nearest"))
    plain(y)
    assert not torch.allclose(plain.running_var, full_bn.running_var, rtol=1e-3)
    assert torch.allclose(plain.running_mean, full_bn.running_mean, rtol=1e-12)


# ---------------------------------------------------------------------------- the branch iterator
def test_branch_input_pools_from_the_coarsest_divisor_and_names_the_upsampling():
    x = torch.randn(2, 3, 14, 14)
    pooled = {1: x}
    inputs = [branch_input(x, pooled, s) for s in (1, 2, 4, 7)]
    assert [mode for _, mode in inputs] == [FULL, NEAREST, BILINEAR, NEAREST]  # 14/7 -> 7, 3, 2
    assert inputs[0][0] is x and sorted(pooled) == [1, 2, 4, 7]
    for (p, _), s in zip(inputs, [1, 2, 4, 7]):
        assert torch.equal(p, F.max_pool2d(x, s, s))
    # without an x2 map the x4 map pools the input directly, with the same result
    assert torch.equal(branch_input(x, {1: x}, 4)[0], inputs[2][0])


# ---------------------------------------------------------------------------- whole networks
def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))  # an all-zero gradient is 0 up to rounding


def _check_train_step(model, structure, x, out_tol, grad_tol, buf_tol):
    """The block's forward against the paper's form, as the independent functional forward in
    tests/reference.py computes it (pool, conv, upsample, BN, concatenate, ReLU)."""
    out, ref, grads, stats = reference_train_step(model, structure, x)
    assert _rel(out, ref) < out_tol
    for name, (g, g_ref) in grads.items():
        assert _rel(g, g_ref) < grad_tol, name
    for name, (b, b_ref) in stats.items():
        assert _rel(b.double(), b_ref.double()) < buf_tol, name


def test_published_model_train_step_matches_the_paper_form_in_float64():
    # ScaleNet-50-light at 224 px covers every case: nearest factors 2, 4, 7 (stages 1-2),
    # bilinear x4 at 14 px and x2 at 7 px, 1x1 maps, and the x4-from-x2 reuse. In float64
    # the only differences are rounding, so any algebraic slip would show.
    torch.manual_seed(0)
    model = create_model("scalenet50_light", num_classes=10).double()
    x = torch.randn(3, 3, 224, 224, dtype=torch.float64)
    _check_train_step(model, Structure.published("scalenet50_light"), x, out_tol=1e-9, grad_tol=1e-8, buf_tol=1e-9)


def test_small_model_train_step_matches_in_float32():
    torch.manual_seed(0)
    structure = Structure.from_channels([[4, 3, 2, 1], [6, 4, 3, 2], [8, 4, 4, 0]], layers=(1, 1, 1), stem="small",
                                        width=8, image_size=28, name="t")
    model = create_model(structure, num_classes=5)
    x = torch.randn(8, 3, 28, 28)
    _check_train_step(model, structure, x, out_tol=1e-4, grad_tol=1e-3, buf_tol=1e-5)


def test_one_value_per_channel_in_train_mode_is_handled_like_the_replicated_map():
    # batch 1 with a branch pooled to 1x1: F.batch_norm refuses the low-res map, the paper's
    # form normalises the replicated one (variance 0): the fast path must give the same
    torch.manual_seed(0)
    structure = Structure.from_channels([[4, 3, 2, 1], [6, 4, 3, 2]], layers=(1, 1), stem="small", width=8,
                                        image_size=14, name="t")
    model = create_model(structure, num_classes=5).double()
    x = torch.randn(1, 3, 14, 14, dtype=torch.float64)
    _check_train_step(model, structure, x, out_tol=1e-9, grad_tol=1e-8, buf_tol=1e-9)


@pytest.mark.parametrize("name", ["scalenet50", "scalenet101"])
def test_eval_and_fused_outputs_match_the_paper_form(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    for m in model.modules():  # realistic statistics, so activations stay in range
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.uniform_(-0.1, 0.1)
            m.weight.data.uniform_(0.1, 0.3)
    structure = Structure.published(name)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        reference = reference_forward(dict(model.state_dict()), structure.rows, structure.layers, x)
        assert _rel(model(x), reference) < 1e-4
        assert _rel(fuse(model)(x), reference) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_fast_path_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = create_model("scalenet50_light", num_classes=10).double()
    structure = Structure.published("scalenet50_light")
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    _check_train_step(model.cuda(), structure, x.cuda(), out_tol=1e-9, grad_tol=1e-8, buf_tol=1e-9)
    model = model.cpu().float().eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        a = fuse(model).cuda()(x.float().cuda()).float().cpu()
    with torch.no_grad():
        b = reference_forward(dict(model.state_dict()), structure.rows, structure.layers, x.float())
    assert _rel(a, b) < 5e-2  # fp16

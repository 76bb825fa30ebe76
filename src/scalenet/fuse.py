"""Inference-only equivalents: exact algebraic rewrites of a trained ScaleNet.

``fuse(model)`` folds every BatchNorm into the conv before it, using eval-mode statistics.
For the SA branches the BN sits after the upsampling; a per-channel affine map commutes with
both nearest and bilinear upsampling (each output is a convex combination of inputs, weights
summing to 1), so it folds into the branch conv just the same. Each block becomes a
:class:`FusedSABottleneck`, whose convs (:class:`FusedConv2d`) also take over the ReLU that
follows them and, for the last conv, the residual add: on CPU one oneDNN primitive with
prepacked weights runs conv + bias (+ add) (+ ReLU), as inductor's freezing does for compiled
models; elsewhere, and whenever the graph is traced, compiled, exported or counted, plain ops
run the same arithmetic. The result equals the eval-mode model within float rounding (tested
on all four published models).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .models.scalenet import SABottleneck, pool_pyramid, replicates, upsample_to

__all__ = ["fuse", "fold_bn", "FusedConv2d", "FusedSABottleneck"]

_MKLDNN = getattr(torch.ops, "mkldnn", None)
_HAS_ONEDNN_OPS = all(
    hasattr(_MKLDNN, op) for op in ("_convolution_pointwise", "_reorder_convolution_weight")
) and torch.backends.mkldnn.is_available()


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias computing ``bn(conv(x))`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, bias=True, padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


class FusedConv2d(nn.Conv2d):
    """An inference conv (BN already folded) that also applies the residual add and ReLU after
    it: ``relu?(conv(x) + residual?)``.

    On CPU in float32 it calls oneDNN's fused conv primitive with weights reordered once into
    oneDNN's blocked layout (the reorder is cached, not saved; moving the module or writing its
    weight, as ``load_state_dict`` does, makes it reorder again). It
    falls back to ``F.conv2d`` + add + ReLU where that primitive does not apply or must not be
    used: other devices and dtypes, autocast, gradients, TorchScript tracing and ONNX export,
    torch.compile (inductor then makes the same fusion itself) and Python dispatch modes such as
    ``FlopCounterMode``. Both paths compute the same sums; they differ by float rounding only.
    """

    def __init__(self, *args: Any, act: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.act = act  # the ReLU after it, unless a call says otherwise
        self._packed: torch.Tensor | None = None
        self._packed_version = -1

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, act: bool = False) -> FusedConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode, act=act,
                  device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        return new

    def _onednn(self, x: torch.Tensor) -> bool:
        return (
            _HAS_ONEDNN_OPS
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
            and not torch.compiler.is_compiling()
            and not torch.onnx.is_in_onnx_export()
            and _get_current_dispatch_mode() is None
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, act: bool | None = None) -> torch.Tensor:
        act = self.act if act is None else act
        if not self._onednn(x):
            y = self._conv_forward(x, self.weight, self.bias)
            if residual is not None:
                y += residual  # in place on the fresh conv output (its backward does not need it)
            return F.relu(y, inplace=True) if act else y
        args = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        if self._packed is None or self._packed_version != self.weight._version:  # e.g. load_state_dict
            self._packed = _MKLDNN._reorder_convolution_weight(self.weight.detach(), *args, list(x.shape))
            self._packed_version = self.weight._version
        if residual is None:
            return _MKLDNN._convolution_pointwise(x, self._packed, self.bias, *args, "relu" if act else "none", [], "")
        return _MKLDNN._convolution_pointwise.binary(
            x, residual, self._packed, self.bias, *args, "add", 1.0, "relu" if act else None, [], ""
        )

    def _apply(self, fn, recurse: bool = True):
        self._packed = None  # device, dtype or values may change: reorder again on the next call
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        return {**state, "_packed": None}  # oneDNN tensors neither pickle nor deep-copy


class FusedSABottleneck(nn.Module):
    """The inference form of :class:`SABottleneck`: BNs folded, each ReLU and the residual add
    run by the conv before them, and the fast path's exact rewrites (pooled-map reuse; ReLU
    before nearest upsampling, after bilinear). Parameter names are the block's, less the BNs."""

    def __init__(self, block: SABottleneck):
        super().__init__()
        self.scales = block.scales
        self.pool = block.pool
        self.conv1 = FusedConv2d.from_conv(fold_bn(block.conv1, block.bn1), act=True)
        self.conv2 = nn.ModuleDict(
            {key: FusedConv2d.from_conv(fold_bn(conv, block.bn2[key])) for key, conv in block.conv2.items()}
        )
        self.conv3 = FusedConv2d.from_conv(fold_bn(block.conv3, block.bn3), act=True)
        self.downsample = None
        if block.downsample is not None:
            self.downsample = nn.Sequential(FusedConv2d.from_conv(fold_bn(block.downsample[0], block.downsample[1])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        shortcut = x if self.downsample is None else self.downsample(x)
        a = self.conv1(x)
        h, w = a.shape[-2:]
        pooled = {1: a}
        branches = []
        for key, conv in self.conv2.items():
            scale = self.scales[int(key)]
            if scale == 1:
                branches.append(conv(a, act=True))
                continue
            p = pool_pyramid(pooled, scale)
            if replicates(p.shape[-2:], (h, w)):  # nearest: ReLU first, on s^2 fewer pixels
                branches.append(F.interpolate(conv(p, act=True), size=(h, w), mode="nearest"))
            else:  # bilinear: ReLU does not commute with it
                branches.append(F.relu(upsample_to(conv(p), (h, w))))
        out = torch.cat(branches, dim=1) if len(branches) > 1 else branches[0]
        return self.conv3(out, residual=shortcut)


def _eval_only(module: nn.Module, args) -> None:
    if module.training:
        raise RuntimeError("a fused ScaleNet is inference-only (its BNs are folded); call .eval() on it")


@torch.no_grad()
def fuse(model: nn.Module) -> nn.Module:
    """An eval-only copy of ``model`` with every BN folded into its conv. ``model`` is unchanged."""
    if getattr(model, "is_fused", False):
        return model
    fused = copy.deepcopy(model).eval()
    if isinstance(getattr(fused, "conv1", None), nn.Conv2d) and isinstance(getattr(fused, "bn1", None), nn.BatchNorm2d):
        relu = isinstance(getattr(fused, "act1", None), nn.ReLU)
        fused.conv1 = FusedConv2d.from_conv(fold_bn(fused.conv1, fused.bn1), act=relu)
        fused.bn1 = nn.Identity()
        if relu:
            fused.act1 = nn.Identity()  # run by conv1
    for parent in list(fused.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SABottleneck):
                setattr(parent, name, FusedSABottleneck(child))
    for p in fused.parameters():
        p.requires_grad_(False)
    fused.is_fused = True
    fused.register_forward_pre_hook(_eval_only)
    return fused

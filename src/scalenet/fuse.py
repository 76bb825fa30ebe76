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
from torch.nn.utils.fusion import fuse_conv_bn_weights

from . import onednn
from .models.scalenet import BILINEAR, FULL, SABottleneck, branch_input, upsample_to

__all__ = ["fuse", "fold_bn", "FusedConv2d", "FusedSABottleneck"]


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias computing ``bn(conv(x))`` in eval mode (affine or not)."""
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    return fused


class FusedConv2d(nn.Conv2d):
    """An inference conv (BN already folded) that also applies the residual add and ReLU after
    it: ``relu?(conv(x) + residual?)``.

    On CPU in float32 it calls oneDNN's fused conv primitive (:mod:`scalenet.onednn`) with
    weights reordered once into oneDNN's blocked layout (the reorder is cached, not saved;
    moving the module or writing its weight, as ``load_state_dict`` does, makes it reorder
    again). Elsewhere, and whenever the graph is traced, scripted, compiled, exported or
    counted (:func:`scalenet.onednn.applies`), it runs ``F.conv2d`` + add + ReLU. Both paths
    compute the same sums; they differ by float rounding only.
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

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, act: bool | None = None) -> torch.Tensor:
        act = self.act if act is None else act
        if not onednn.applies(x, self.weight, self.padding_mode, self.padding):
            y = self._conv_forward(x, self.weight, self.bias)
            if residual is not None:
                y += residual  # in place on the fresh conv output (its backward does not need it)
            return F.relu(y, inplace=True) if act else y
        if self._packed is None or self._packed_version != self.weight._version:  # e.g. load_state_dict
            self._packed = onednn.reorder_weight(self.weight, self.padding, self.stride, self.dilation, self.groups,
                                                 x.shape)
            self._packed_version = self.weight._version
        return onednn.conv(x, self._packed, self.bias, self.padding, self.stride, self.dilation, self.groups,
                           residual=residual, relu=act)

    def _apply(self, fn, recurse: bool = True):
        self._packed = None  # device, dtype or values may change: reorder again on the next call
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        return {**state, "_packed": None}  # oneDNN tensors neither pickle nor deep-copy


class FusedSABottleneck(nn.Module):
    """The inference form of :class:`SABottleneck`: BNs folded, each ReLU and the residual add
    run by the conv before them. Parameter names are the block's, less the BNs."""

    def __init__(self, block: SABottleneck):
        super().__init__()
        self.scales = block.scales
        self.branch_scales = list(block.branch_scales)
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
        for scale, conv in zip(self.branch_scales, self.conv2.values()):
            p, mode = branch_input(a, pooled, scale)
            if mode == BILINEAR:  # ReLU does not commute with it
                branches.append(F.relu(upsample_to(conv(p), [h, w])))
            else:  # full resolution, or nearest: ReLU first, on s^2 fewer pixels
                y = conv(p, act=True)
                branches.append(y if mode == FULL else F.interpolate(y, size=(h, w), mode="nearest"))
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

"""Inference-only equivalents: exact algebraic rewrites of a trained ScaleNet.

``fuse(model)`` folds every BatchNorm into the conv before it, using eval-mode statistics.
For the SA branches the BN sits after the upsampling; a per-channel affine map commutes with
both nearest and bilinear upsampling (each output is a convex combination of inputs, weights
summing to 1), so it folds into the branch conv just the same. The result equals the
eval-mode model within float rounding (tested on all four published models).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .models.scalenet import SABottleneck

__all__ = ["fuse", "fold_bn"]


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


def _eval_only(module: nn.Module, args) -> None:
    if module.training:
        raise RuntimeError("a fused ScaleNet is inference-only (its BNs are folded); call .eval() on it")


@torch.no_grad()
def fuse(model: nn.Module) -> nn.Module:
    """An eval-only copy of ``model`` with every BN folded into its conv. ``model`` is unchanged."""
    if getattr(model, "is_fused", False):
        return model
    fused = copy.deepcopy(model).eval()
    fused.conv1 = fold_bn(fused.conv1, fused.bn1)
    fused.bn1 = nn.Identity()
    for block in fused.modules():
        if not isinstance(block, SABottleneck):
            continue
        block.conv1, block.bn1 = fold_bn(block.conv1, block.bn1), nn.Identity()
        for key in list(block.conv2.keys()):
            block.conv2[key] = fold_bn(block.conv2[key], block.bn2[key])
            block.bn2[key] = nn.Identity()
        block.conv3, block.bn3 = fold_bn(block.conv3, block.bn3), nn.Identity()
        if block.downsample is not None:
            block.downsample = nn.Sequential(fold_bn(block.downsample[0], block.downsample[1]), nn.Identity())
    for p in fused.parameters():
        p.requires_grad_(False)
    fused.is_fused = True
    fused.register_forward_pre_hook(_eval_only)
    return fused

"""oneDNN's fused convolution primitive, behind one switch.

:class:`~scalenet.fuse.FusedConv2d` runs conv + bias (+ residual add) (+ ReLU) as one oneDNN
primitive with weights reordered once into oneDNN's blocked layout, which is what inductor's
freezing does for compiled models. PyTorch reaches that primitive only through two private
ops, ``torch.ops.mkldnn._convolution_pointwise`` and ``_reorder_convolution_weight``. They are
kept here, and nowhere else, so that a torch release that renames or drops them costs one
small module (and ``tests/test_onednn.py`` fails loudly instead of the speed vanishing).

``set_enabled(False)`` (or ``SCALENET_ONEDNN=0`` in the environment) makes every fused conv
take plain ops: same arithmetic, slower on CPU.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["OPS", "available", "enabled", "set_enabled", "applies", "reorder_weight", "conv"]

#: The private ops this module needs.
OPS = ("_convolution_pointwise", "_reorder_convolution_weight")

_ops = getattr(torch.ops, "mkldnn", None)
_AVAILABLE = all(hasattr(_ops, op) for op in OPS) and torch.backends.mkldnn.is_available()
_enabled = os.environ.get("SCALENET_ONEDNN", "1") != "0"


def available() -> bool:
    """Whether this torch build has the ops (and oneDNN)."""
    return _AVAILABLE


def enabled() -> bool:
    """Whether fused convs use the ops: available and not switched off."""
    return _AVAILABLE and _enabled


def set_enabled(flag: bool) -> None:
    """Switches the oneDNN path on or off for every fused conv (plain ops when off)."""
    global _enabled
    _enabled = bool(flag)


def applies(x: torch.Tensor, weight: torch.Tensor, padding_mode: str, padding) -> bool:
    """Whether a call may use the primitive: CPU fp32 inference, eagerly run. Tracing, scripting,
    compiling, ONNX export, autocast, gradients and dispatch modes (e.g. ``FlopCounterMode``)
    all need plain ops, which they can see and count."""
    return (
        enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and padding_mode == "zeros"
        and not isinstance(padding, str)
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
        and not torch.onnx.is_in_onnx_export()
        and _get_current_dispatch_mode() is None
    )


def reorder_weight(weight: torch.Tensor, padding: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                   groups: int, input_size: Sequence[int]) -> torch.Tensor:
    """``weight`` in oneDNN's blocked layout for inputs of ``input_size`` (computed once, reused)."""
    return _ops._reorder_convolution_weight(weight.detach(), list(padding), list(stride), list(dilation), groups,
                                            list(input_size))


def conv(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, padding: Sequence[int],
         stride: Sequence[int], dilation: Sequence[int], groups: int, *, residual: torch.Tensor | None = None,
         relu: bool = False) -> torch.Tensor:
    """``relu?(conv(x) + bias + residual?)`` as one primitive, with a weight from :func:`reorder_weight`."""
    args = (list(padding), list(stride), list(dilation), groups)
    if residual is None:
        return _ops._convolution_pointwise(x, packed, bias, *args, "relu" if relu else "none", [], "")
    return _ops._convolution_pointwise.binary(x, residual, packed, bias, *args, "add", 1.0, "relu" if relu else None,
                                              [], "")

"""ONNX export with a numerical check against PyTorch in onnxruntime."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .compat import require
from .factory import create_model, resolve_structure
from .fileio import atomic_write, check_output_dir
from .hub import card_for_published, card_from_checkpoint, save_hub
from .structure import Structure
from .training import model_from_checkpoint

__all__ = ["export_onnx", "check_onnx", "export_checked", "export_hub"]

OPSET = 17


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: int, in_chans: int = 3,
                opset: int = OPSET) -> Path:
    """Writes ``model`` (eval mode) as ONNX with a dynamic batch axis, atomically."""
    model = model.eval()
    x = torch.randn(2, in_chans, image_size, image_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter warns that it is deprecated and that spatial sizes become
        # constants; both are expected here: only the batch axis is dynamic
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), buf, dynamo=False, opset_version=opset, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def check_onnx(model: nn.Module, path: str | os.PathLike, image_size: int, in_chans: int = 3, batch: int = 3) -> float:
    """Runs the file in onnxruntime and PyTorch on the same input (a batch size other than the
    export's, to exercise the dynamic axis); returns the max difference relative to the output scale."""
    ort = require("onnxruntime", "checking an ONNX export")

    x = torch.randn(batch, in_chans, image_size, image_size)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def export_checked(model: nn.Module, path: str | os.PathLike, image_size: int, in_chans: int = 3,
                   limit: float = 1e-3) -> float:
    """:func:`export_onnx` then :func:`check_onnx`; a file whose outputs differ from PyTorch's by
    more than ``limit`` (relative) is removed with one clear error. Returns the difference."""
    require("onnxruntime", "checking an ONNX export")  # before the export, not after it
    path = export_onnx(model, path, image_size, in_chans)
    diff = check_onnx(model, path, image_size, in_chans)
    if diff > limit:
        path.unlink()
        raise ValueError(f"onnxruntime output differs from PyTorch by {diff:.2e} relative (limit {limit:g}); {path} removed")
    return diff


def export_hub(directory: str | os.PathLike, checkpoint: str | os.PathLike | None = None, *,
               model: str | os.PathLike | Structure | None = None, image_size: int | None = None,
               num_classes: int = 1000, in_chans: int = 3, layers: Sequence[int] | None = None,
               license: str | None = None, force: bool = False) -> Path:
    """``scalenet export --hub``: a ``scalenet train`` checkpoint (``model`` None: the checkpoint
    holds the structure, classes, preprocessing and metrics), or a published name or structure
    (``model``) with its weight file (``checkpoint``, or random init), as a Hub-layout folder."""
    out = check_output_dir(directory, "--hub", force)
    if model is None:
        if checkpoint is None:
            raise ValueError("give a scalenet train checkpoint, or a model name or structure with its weights")
        net, ckpt = model_from_checkpoint(checkpoint)
        card = card_from_checkpoint(ckpt, str(checkpoint))
        classes, mean, std, size = ckpt.get("classes"), ckpt["mean"], ckpt["std"], ckpt["image_size"]
    else:
        structure = resolve_structure(model, layers=layers)
        net = create_model(structure, num_classes=num_classes, in_chans=in_chans, checkpoint=checkpoint)
        card = card_for_published(structure, str(checkpoint) if checkpoint is not None else None)
        classes, mean, std, size = None, net.pretrained_cfg["mean"], net.pretrained_cfg["std"], structure.image_size
    size = image_size or size
    net.structure.check_input(size)
    if license:
        card.license = license
    return save_hub(net, out, classes=classes, mean=mean, std=std, image_size=size, card=card, force=force)

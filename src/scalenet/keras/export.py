"""``scalenet export --keras`` and ``--saved-model``: a PyTorch ScaleNet as a ``.keras`` file or a
TensorFlow SavedModel for serving, each checked against PyTorch before it is kept (as the ONNX
export is checked in onnxruntime)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import torch
from torch import nn

from ..compat import require
from ..fileio import check_writable_dir, replace_directory
from . import from_torch

__all__ = ["export_keras", "export_saved_model", "LIMIT"]

#: Largest difference from PyTorch's eval output, relative to the output's scale, that an export
#: may show (the ONNX export's limit; float32 rounding is about 1e-6 of it).
LIMIT = 1e-3


def _check(model: nn.Module, run, image_size: int, in_chans: int, path: Path) -> float:
    x = torch.randn(3, in_chans, image_size, image_size)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = np.asarray(run(x.permute(0, 2, 3, 1).numpy()))
    diff = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))
    if not diff <= LIMIT:
        raise ValueError(f"{path}: the export's outputs differ from PyTorch by {diff:.2e} relative (limit {LIMIT:g}); "
                         "nothing written")
    return diff


def export_keras(model: nn.Module, path: str | os.PathLike, image_size: int, in_chans: int = 3) -> float:
    """Writes ``model`` as a ``.keras`` file (atomically), after checking the Keras model and the
    file reloaded from disk against PyTorch. Returns the relative difference."""
    path = Path(path)
    keras_model = from_torch(model, image_size=image_size)
    check_writable_dir(path.parent)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        keras_model.save(staged)
        reloaded = keras.models.load_model(staged)
        diff = _check(model, lambda x: reloaded.predict(x, verbose=0), image_size, in_chans, path)
        os.replace(staged, path)
    return diff


def export_saved_model(model: nn.Module, directory: str | os.PathLike, image_size: int, in_chans: int = 3) -> float:
    """Writes ``model`` as a TensorFlow SavedModel (``serve`` endpoint, NHWC float32, any batch
    size) for TensorFlow Serving, after loading it back with TensorFlow and checking it against
    PyTorch. Returns the relative difference."""
    tf = require("tensorflow", "--saved-model")
    out = Path(directory)
    keras_model = from_torch(model, image_size=image_size)
    check_writable_dir(out.parent)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        keras_model.export(str(staged / "model"), format="tf_saved_model", verbose=False)
        served = tf.saved_model.load(str(staged / "model"))
        diff = _check(model, lambda x: served.serve(tf.constant(x)), image_size, in_chans, out)
        replace_directory(staged / "model", out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return diff

"""ScaleNet for Keras 3 users, on the TensorFlow or the JAX backend.

    import scalenet.keras
    model = scalenet.keras.create_model("scalenet50", checkpoint="scalenet50.pth")   # a keras.Model, NHWC
    logits = model(images)                                  # images: (N, 224, 224, 3), normalised
    maps = scalenet.keras.create_model("scalenet50", features=True)  # the five feature levels
    model = scalenet.keras.from_torch(torch_model)          # any built PyTorch ScaleNet, weights and BN statistics

The Keras model computes what the PyTorch model computes in eval mode (the same weights, BN
statistics and branch logic; tested to float32 rounding on both backends), and trains in Keras
with BN in training mode. It is built for one input size (``image_size``, default the
structure's): the branches' pooling windows and upsampling follow from it, as PyTorch decides
them per call. Install with ``pip install 'scalenet[tensorflow]'`` or ``'scalenet[jax]'``; the
backend is Keras's (``KERAS_BACKEND``).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from ..compat import require

require("keras", "scalenet.keras")  # one line naming the extra when Keras is absent

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

from ..factory import create_model as create_torch_model  # noqa: E402
from ..models.scalenet import ScaleNet  # noqa: E402
from .model import Built, build  # noqa: E402

__all__ = ["create_model", "from_torch", "copy_weights"]


def create_model(name_or_structure: str | os.PathLike | Any, *, num_classes: int = 1000, in_chans: int = 3,
                 checkpoint: str | os.PathLike | None = None, image_size: int | Sequence[int] | None = None,
                 features: bool = False) -> Any:
    """A ScaleNet as a functional ``keras.Model`` on NHWC input: any name, structure (file,
    :class:`~scalenet.Structure`, ``local-dir:``) and ``checkpoint`` that
    :func:`scalenet.create_model` takes, refused with the same message where it refuses them.
    ``image_size``: the input's side (or (height, width)), default the structure's; ``features``:
    the five feature maps of ``features_only`` instead of the logits."""
    torch_model = create_torch_model(name_or_structure, num_classes=num_classes, in_chans=in_chans,
                                     checkpoint=checkpoint)
    return from_torch(torch_model, image_size=image_size, features=features)


def from_torch(model: nn.Module, *, image_size: int | Sequence[int] | None = None, features: bool = False) -> Any:
    """The Keras model of a built PyTorch ScaleNet, with its weights and BN statistics."""
    structure = _scalenet(model).structure
    size = _size(image_size, structure.image_size)
    for side in size:
        structure.check_input(side)
    built = build(structure, num_classes=model.num_classes, in_chans=model.in_chans, image_size=size,
                  features=features, name=structure.name.replace("-", "_") if structure.name else None)
    copy_weights(model, built)
    return built.model


def copy_weights(model: nn.Module, built: Built) -> None:
    """Copies the PyTorch ``model``'s tensors into ``built``'s layers: conv kernels OIHW -> HWIO,
    BN as (gamma, beta, running mean, running var), the classifier transposed."""
    state = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
    for name, layer in built.layers.items():
        kind = type(layer).__name__
        if kind == "Conv2D":
            layer.set_weights([state[f"{name}.weight"].transpose(2, 3, 1, 0)])
        elif kind == "BatchNormalization":
            layer.set_weights([state[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")])
        elif kind == "Dense":
            layer.set_weights([state[f"{name}.weight"].T, state[f"{name}.bias"]])
        else:  # pragma: no cover - build() keeps only these
            raise TypeError(f"no weight copy for {kind} {name}")


def _scalenet(model: Any) -> ScaleNet:
    if getattr(model, "is_fused", False):
        raise ValueError("from_torch takes an unfused ScaleNet (its BNs are folded into the convs here); convert "
                         "the model before scalenet.fuse")
    if not isinstance(model, ScaleNet):
        what = type(model).__name__
        hint = " (a features_only model: convert the ScaleNet and pass features=True)" if hasattr(model, "feature_info") \
            else ""
        raise ValueError(f"from_torch takes a PyTorch ScaleNet, got {what}{hint}")
    pool = getattr(model.global_pool, "pool_type", "avg")
    if pool != "avg" and not (pool == "" and model.num_classes == 0):
        raise ValueError(f"from_torch supports average pooling only; this model pools with {pool!r}")
    return model


def _size(image_size: int | Sequence[int] | None, default: int) -> tuple[int, int]:
    if image_size is None:
        return default, default
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    if not isinstance(image_size, Sequence) or len(image_size) != 2:
        raise ValueError(f"image_size must be a side or (height, width), got {image_size!r}")
    return int(image_size[0]), int(image_size[1])

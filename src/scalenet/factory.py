"""``create_model`` and ``list_models``: one entry point for names, structure files and objects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from .checkpoint import load_weights
from .hub import WEIGHTS, hub_folder, is_hub, read_hub_config
from .models.scalenet import _create_scalenet, checkpoint_filter_fn
from .structure import Structure, published_names

__all__ = ["create_model", "list_models", "resolve_structure", "load_hub"]


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` (and by ``timm.create_model`` after ``import scalenet``)."""
    return list(published_names())


def resolve_structure(
    name_or_structure: str | os.PathLike | Structure, layers: Sequence[int] | None = None
) -> Structure:
    """A published name, a path to a structure JSON, or a :class:`Structure`, as a Structure."""
    if isinstance(name_or_structure, Structure):
        return name_or_structure
    if isinstance(name_or_structure, str) and name_or_structure in published_names():
        return Structure.published(name_or_structure)
    if not isinstance(name_or_structure, (str, os.PathLike)):
        raise ValueError(f"expected a model name, a structure path or a Structure, got {type(name_or_structure).__name__}")
    path = Path(name_or_structure)
    if path.suffix != ".json" and not path.exists():
        raise ValueError(
            f"unknown model {str(name_or_structure)!r}; choose one of {', '.join(published_names())} "
            "or give a path to a structure JSON"
        )
    return Structure.load(path, layers=layers)


def create_model(
    name_or_structure: str | os.PathLike | Structure,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    checkpoint: str | os.PathLike | None = None,
    layers: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Builds a ScaleNet.

    Args:
        name_or_structure: a name from :func:`list_models`, a path to a structure JSON (the
            release's bare-list format or our object format), a :class:`Structure`, or a
            Hub-layout folder (``local-dir:DIR``, ``hf-hub:USER/REPO``; :mod:`scalenet.hub`).
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input channels.
        checkpoint: optional weights (.pth/.pt read with ``weights_only=True``, or
            .safetensors), loaded strictly; the release's files load unchanged.
        layers: stage depths for a bare-list structure whose row count fits no known depth.
        **kwargs: passed to :class:`~scalenet.models.ScaleNet` (``drop_rate``,
            ``global_pool``) or timm's builder (``features_only``, ``out_indices``).
    """
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    if is_hub(name_or_structure):  # a Hub-layout folder: its structure, classes and weights
        given = {k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans).items() if v not in (1000, 3)}
        if checkpoint is not None or layers is not None or given:
            raise ValueError(f"{name_or_structure} holds its own weights, classes and channels; drop checkpoint=, "
                             "layers=, num_classes= and in_chans=")
        model = load_hub(name_or_structure, **kwargs)[0]
    else:
        structure = resolve_structure(name_or_structure, layers)
        variant = structure.name if structure.name in published_names() else "scalenet_structure"
        model = _create_scalenet(variant, structure=structure, num_classes=num_classes, in_chans=in_chans, **kwargs)
        if checkpoint is not None:
            load_weights(model, checkpoint, filter_fn=checkpoint_filter_fn)
    if features_only:
        # wrap after loading, so that a full checkpoint (classifier included) loads strictly
        from timm.models import FeatureListNet

        cfg = model.pretrained_cfg
        indices = tuple(range(len(model.structure.layers) + 1)) if out_indices is None else out_indices
        model = FeatureListNet(model, out_indices=indices)
        model.pretrained_cfg = model.default_cfg = cfg
    return model


def load_hub(spec: str, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a Hub-layout folder with its weights, and what a training checkpoint would
    say about it (``num_classes``, ``in_chans``, ``image_size``, ``classes``, ``mean``, ``std``,
    ``crop_pct``, ``interpolation``). ``kwargs`` go to :func:`scalenet.create_model`
    (``drop_rate``, ``global_pool``); ``scalenet.create_model("local-dir:DIR", features_only=True)``
    wraps the loaded model as it wraps any other."""
    folder = hub_folder(spec)
    config, structure = read_hub_config(folder, spec)
    args, cfg = config["model_args"], dict(config.get("pretrained_cfg") or {})
    num_classes, in_chans = int(config.get("num_classes", args.get("num_classes", 1000))), int(args.get("in_chans", 3))
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{spec}: no {WEIGHTS} in {folder}")
    model = create_model(structure, num_classes=num_classes, in_chans=in_chans, **kwargs)
    load_weights(model, folder / WEIGHTS, filter_fn=checkpoint_filter_fn)
    model.pretrained_cfg = {**model.pretrained_cfg, **cfg, "source": "local-dir", "file": str(folder)}
    labels = config.get("label_names")
    info = {
        "num_classes": num_classes, "in_chans": in_chans,
        "image_size": int((cfg.get("input_size") or (in_chans, structure.image_size, structure.image_size))[-1]),
        "classes": list(labels) if isinstance(labels, (list, tuple)) else None,
        "mean": list(cfg.get("mean", (0.485, 0.456, 0.406))), "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
        "crop_pct": cfg.get("crop_pct"), "interpolation": cfg.get("interpolation"), "structure": structure.to_json(),
        "config": config,
    }
    return model, info

"""Faster R-CNN + FPN with a ScaleNet backbone (the paper's COCO experiment, Sec. 5.3).

The backbone is a plain :class:`~scalenet.models.ScaleNet` (published or learned structure)
whose stages 1-4 feed torchvision's :class:`BackboneWithFPN`; channel counts and strides come
from the model's ``feature_info``. BN is frozen by default, the usual choice for detection
with a few images per GPU.
"""

from __future__ import annotations

import os
from typing import Any

from timm.layers import freeze_batch_norm_2d
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..checkpoint import load_weights
from ..factory import create_model, resolve_structure
from ..models.scalenet import checkpoint_filter_fn
from ..structure import Structure

__all__ = ["fasterrcnn_scalenet_fpn", "scalenet_fpn_backbone", "NORMS"]

NORMS = ("frozen", "bn")


def scalenet_fpn_backbone(
    backbone: str | os.PathLike | Structure = "scalenet50",
    *,
    backbone_checkpoint: str | os.PathLike | None = None,
    trainable_layers: int = 3,
    norm: str = "frozen",
    fpn_channels: int = 256,
) -> BackboneWithFPN:
    """ScaleNet stages 1-4 (strides 4-32 for the ImageNet stem) under a feature pyramid.

    Args:
        backbone: a published name, a structure JSON or a :class:`Structure`.
        backbone_checkpoint: ImageNet weights: our checkpoints or the release's .pth files.
        trainable_layers: how many stages, counted from the top (and then the stem), are
            trained: 0-5, as in torchvision.
        norm: ``"frozen"`` (FrozenBatchNorm2d, the default) or ``"bn"`` (trainable BatchNorm2d).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be between 0 and 5, got {trainable_layers}")
    structure = resolve_structure(backbone)
    body = create_model(structure, num_classes=0)
    if backbone_checkpoint is not None:
        load_weights(body, backbone_checkpoint, filter_fn=lambda raw, _m: _backbone_state_from(raw))
    if norm == "frozen":  # BatchNorm2d and SyncBatchNorm, also those inside the SA blocks' ModuleDicts
        body = freeze_batch_norm_2d(body)

    stages = [info for info in body.feature_info if info["module"].startswith("layer")]
    # trained from the top, as in torchvision: trainable_layers=3 trains layer4, layer3, layer2
    n_trainable = min(trainable_layers, len(stages) + 1)
    order = [info["module"] for info in reversed(stages)] + ["conv1"]
    trainable = set(order[:n_trainable])
    if trainable_layers == 5:
        trainable.add("bn1")
    for name, p in body.named_parameters():
        if not any(name == t or name.startswith(t + ".") for t in trainable):
            p.requires_grad_(False)

    return_layers = {info["module"]: str(i) for i, info in enumerate(stages)}
    in_channels = [info["num_chs"] for info in stages]
    fpn = BackboneWithFPN(body, return_layers, in_channels, fpn_channels, extra_blocks=LastLevelMaxPool())
    fpn.structure = structure
    fpn.strides = [info["reduction"] for info in stages]
    return fpn


def _backbone_state_from(raw: dict[str, Any]) -> dict[str, Any]:
    """Backbone weights from a classification checkpoint (a ``scalenet train`` checkpoint, plain
    weights or the release's file): wrappers undone, the classifier dropped."""
    state = checkpoint_filter_fn(raw)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def fasterrcnn_scalenet_fpn(
    backbone: str | os.PathLike | Structure = "scalenet50",
    num_classes: int = 91,
    *,
    backbone_checkpoint: str | os.PathLike | None = None,
    trainable_layers: int = 3,
    norm: str = "frozen",
    fpn_channels: int = 256,
    **faster_rcnn_kwargs: Any,
) -> FasterRCNN:
    """torchvision's Faster R-CNN on a ScaleNet + FPN backbone.

    ``num_classes`` counts the background (91 for COCO's category ids 1-90). Any other keyword
    goes to :class:`torchvision.models.detection.FasterRCNN` (``min_size``, ``max_size``,
    ``box_detections_per_img``...). The paper's COCO setting is ``min_size=600, max_size=1000``.

    The smallest input side (``min_size``) is checked against the structure: every stage needs a
    pixel (a branch pooling by more than its map's side pools the whole map).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and at least one class, got {num_classes}")
    fpn = scalenet_fpn_backbone(
        backbone, backbone_checkpoint=backbone_checkpoint, trainable_layers=trainable_layers, norm=norm,
        fpn_channels=fpn_channels,
    )
    min_size = faster_rcnn_kwargs.get("min_size", 800)
    for side in (min_size if isinstance(min_size, (list, tuple)) else (min_size,)):
        fpn.structure.check_input(int(side))
    levels = len(fpn.strides) + 1  # the stages plus the FPN's extra max-pooled level
    names = [str(i) for i in range(len(fpn.strides))]
    if "rpn_anchor_generator" not in faster_rcnn_kwargs:
        sizes = tuple((32 * 2**i,) for i in range(levels))
        faster_rcnn_kwargs["rpn_anchor_generator"] = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * levels)
    if "box_roi_pool" not in faster_rcnn_kwargs:
        faster_rcnn_kwargs["box_roi_pool"] = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
    model = FasterRCNN(fpn, num_classes=num_classes, **faster_rcnn_kwargs)
    model.structure = fpn.structure
    return model

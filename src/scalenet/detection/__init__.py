"""ScaleNet as a Faster R-CNN + FPN backbone, with COCO-format data and pycocotools evaluation.

    from scalenet.detection import fasterrcnn_scalenet_fpn
    model = fasterrcnn_scalenet_fpn("scalenet50", num_classes=91, backbone_checkpoint="scalenet50.pth",
                                    min_size=600, max_size=1000)
"""

from .data import CocoDetection, detection_collate, detection_loader, read_coco_json, validation_set
from .engine import DetectConfig, detector_from_checkpoint, evaluate_detector_checkpoint, evaluate_detector, \
    train_detector
from .evaluate import STAT_NAMES, coco_evaluate, format_coco_table
from .model import fasterrcnn_scalenet_fpn, scalenet_fpn_backbone

__all__ = [
    "fasterrcnn_scalenet_fpn",
    "scalenet_fpn_backbone",
    "CocoDetection",
    "detection_collate",
    "detection_loader",
    "read_coco_json",
    "validation_set",
    "DetectConfig",
    "train_detector",
    "evaluate_detector",
    "evaluate_detector_checkpoint",
    "detector_from_checkpoint",
    "coco_evaluate",
    "format_coco_table",
    "STAT_NAMES",
]

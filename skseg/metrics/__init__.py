"""Evaluation of unsupervised segmentation: matched mIoU and friends."""

from ._iou import (
    confusion_matrix,
    mean_iou,
    per_class_iou,
    per_image_mean_iou,
    pixel_accuracy,
    segmentation_report,
)
from ._scorer import make_miou_scorer, miou_scorer

__all__ = [
    "confusion_matrix",
    "make_miou_scorer",
    "mean_iou",
    "miou_scorer",
    "per_class_iou",
    "per_image_mean_iou",
    "pixel_accuracy",
    "segmentation_report",
]

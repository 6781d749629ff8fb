"""Deprecated home of the COCO metric: use `detr_hf.evaluation` (this re-export goes in the next release)."""

from detr_hf.moved_names import moved_names

__getattr__ = moved_names(
    __name__,
    "detr_hf.evaluation",
    ("COCO_METRIC_NAMES", "CocoMeanAveragePrecision", "compute_coco_map", "normalize_prediction", "normalize_reference"),
)

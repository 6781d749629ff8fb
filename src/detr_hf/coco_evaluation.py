"""Deprecated home of the COCO metric: use `detr_hf.evaluation` (this re-export goes in the next release)."""

from detr_hf.deprecation import moved_names

__getattr__ = moved_names(__name__, {name: "detr_hf.evaluation." + name for name in ("COCO_METRIC_NAMES", "CocoMeanAveragePrecision", "compute_coco_map", "normalize_prediction", "normalize_reference")})

"""Deprecated home of the evaluation loop: use `detr_hf.evaluation` (this re-export goes in the next release)."""

from detr_hf.deprecation import moved_names

__getattr__ = moved_names(__name__, {name: "detr_hf.evaluation." + name for name in ("evaluate_coco", "predictions_to_original")})

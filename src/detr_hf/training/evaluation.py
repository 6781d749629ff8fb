"""Deprecated home of the evaluation loop: use `detr_hf.evaluation` (this re-export goes in the next release)."""

from detr_hf.moved_names import moved_names

__getattr__ = moved_names(__name__, "detr_hf.evaluation", ("evaluate_coco", "predictions_to_original"))

"""Deprecated home of the collator: use `detr_hf.data.DetectionCollator` (this re-export goes in the next release)."""

from detr_hf.deprecation import moved_names

__getattr__ = moved_names(__name__, {name: "detr_hf.data." + name for name in ("DetectionCollator",)})

"""Deprecated home of the training data pieces: use `detr_hf.data` (this re-export goes in the next release)."""

from detr_hf.deprecation import moved_names

__getattr__ = moved_names(__name__, {name: "detr_hf.data." + name for name in ("DetectionDataset", "EpochSampler", "check_categories", "class_names_of", "load_detection_splits")})

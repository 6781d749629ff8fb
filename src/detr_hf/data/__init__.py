"""Detection data for detr_hf: synthetic shapes, COCO folders, DETR augmentation (cppe-5 schema)."""

from detr_hf.data.schema import detection_features
from detr_hf.data.synthetic import SHAPE_NAMES, load_synthetic_splits, make_synthetic_dataset

__all__ = [
    "SHAPE_NAMES",
    "detection_features",
    "load_synthetic_splits",
    "make_synthetic_dataset",
]

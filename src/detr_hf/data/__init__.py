"""Detection data for detr_hf: synthetic shapes, COCO folders, DETR augmentation (cppe-5 schema)."""

from detr_hf.data.coco_folder import coco_category_ids, load_coco_folder
from detr_hf.data.schema import detection_features
from detr_hf.data.synthetic import SHAPE_NAMES, load_synthetic_splits, make_synthetic_dataset
from detr_hf.data.transforms import (
    COCO_TRAIN_SCALES,
    RandomSizeCrop,
    build_eval_transform,
    build_train_transform,
    make_transform_fn,
    transform_example,
)

__all__ = [
    "COCO_TRAIN_SCALES",
    "SHAPE_NAMES",
    "RandomSizeCrop",
    "build_eval_transform",
    "build_train_transform",
    "coco_category_ids",
    "detection_features",
    "load_coco_folder",
    "load_synthetic_splits",
    "make_synthetic_dataset",
    "make_transform_fn",
    "transform_example",
]

"""Detection data for detr_hf (cppe-5 schema): sources (synthetic shapes, COCO folders, `datasets`), label
spaces, DETR augmentation, training samples, the seeded sampler and the collator."""

from detr_hf.data.coco_folder import CocoFolder, coco_category_ids, load_coco_folder
from detr_hf.data.collate import DetectionCollator
from detr_hf.data.dataset_sources import load_dataset_splits, open_dataset
from detr_hf.data.label_space import category_ids_of, check_categories, class_names_of, with_class_labels
from detr_hf.data.pixels import image_tensor
from detr_hf.data.sampler import EpochSampler
from detr_hf.data.samples import DetectionDataset
from detr_hf.data.schema import detection_features
from detr_hf.data.splits import load_detection_splits
from detr_hf.data.synthetic import SHAPE_NAMES, load_synthetic_splits, make_synthetic_dataset
from detr_hf.data.transforms import (
    COCO_TRAIN_SCALES,
    RandomSizeCrop,
    box_cleanup,
    build_eval_transform,
    build_train_transform,
    make_transform_fn,
    transform_boxes,
    transform_example,
)

__all__ = [
    "COCO_TRAIN_SCALES",
    "SHAPE_NAMES",
    "CocoFolder",
    "DetectionCollator",
    "DetectionDataset",
    "EpochSampler",
    "RandomSizeCrop",
    "box_cleanup",
    "build_eval_transform",
    "build_train_transform",
    "category_ids_of",
    "check_categories",
    "class_names_of",
    "coco_category_ids",
    "detection_features",
    "image_tensor",
    "load_coco_folder",
    "load_dataset_splits",
    "load_detection_splits",
    "load_synthetic_splits",
    "make_synthetic_dataset",
    "make_transform_fn",
    "open_dataset",
    "transform_boxes",
    "transform_example",
    "with_class_labels",
]

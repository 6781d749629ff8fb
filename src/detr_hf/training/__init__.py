"""Shared training pieces of the detr_hf example scripts (data, collator, optimiser, evaluation, checkpoints)."""

from detr_hf.training.checkpointing import (
    COMPLETE_MARKER,
    TrainState,
    find_latest_checkpoint,
    is_complete_checkpoint,
    save_checkpoint_atomically,
)
from detr_hf.training.collate import DetectionCollator
from detr_hf.training.data import DetectionDataset, EpochSampler, load_detection_splits
from detr_hf.training.evaluation import evaluate_coco, predictions_to_original
from detr_hf.training.optim import build_lr_lambda, build_param_groups

__all__ = [
    "COMPLETE_MARKER",
    "DetectionCollator",
    "DetectionDataset",
    "EpochSampler",
    "TrainState",
    "build_lr_lambda",
    "build_param_groups",
    "evaluate_coco",
    "find_latest_checkpoint",
    "is_complete_checkpoint",
    "load_detection_splits",
    "predictions_to_original",
    "save_checkpoint_atomically",
]

"""Shared training pieces of the detr_hf example scripts (optimiser, atomic checkpoints, CLI).

Data (collator, dataset, sampler) live in `detr_hf.data`, evaluation in `detr_hf.evaluation`; their old names
here still work for one release, with a DeprecationWarning.
"""

from detr_hf.deprecation import moved_names
from detr_hf.training.checkpointing import (
    COMPLETE_MARKER,
    TrainState,
    find_latest_checkpoint,
    is_complete_checkpoint,
    save_checkpoint_atomically,
)
from detr_hf.training.optim import build_lr_lambda, build_param_groups

_DATA = moved_names(__name__, {name: "detr_hf.data." + name for name in ("DetectionCollator", "DetectionDataset", "EpochSampler", "load_detection_splits")})
_EVALUATION = moved_names(__name__, {name: "detr_hf.evaluation." + name for name in ("evaluate_coco", "predictions_to_original")})


def __getattr__(name: str):
    if name in ("evaluate_coco", "predictions_to_original"):
        return _EVALUATION(name)
    return _DATA(name)


__all__ = [
    "COMPLETE_MARKER",
    "TrainState",
    "build_lr_lambda",
    "build_param_groups",
    "find_latest_checkpoint",
    "is_complete_checkpoint",
    "save_checkpoint_atomically",
]

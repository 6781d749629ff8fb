"""Import DETR segmentation checkpoints (original panoptic `.pth`, transformers DetrForSegmentation folders).

`python -m detr_hf.convert` dispatches here when the source holds a segmentation model (keys under `detr.` or a
mask head); the detector part is read exactly as `detr_hf.convert` reads detection checkpoints.
A 251-row class head is the original COCO panoptic one: label id == raw COCO panoptic category id (0..249).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from . import (
    convert,
    segmentation_layouts,  # noqa: F401  (registers the segmentation layouts)
)
from .checkpoint_config import config_from_weights, is_placeholder
from .checkpoint_layouts import to_detr_hf
from .coco_panoptic_labels import COCO_PANOPTIC_NUM_LABELS, coco_panoptic_id2label
from .configuration_detr_hf import DetrHfConfig
from .modeling_detr_hf_segmentation import DetrHfForSegmentation
from .transformers_checkpoint import config_from_transformers

logger = logging.getLogger(__name__)

# transformers DetrConfig mask loss weights, the same in DetrHfConfig.
_MASK_FIELDS = ("mask_loss_coefficient", "dice_loss_coefficient")


def convert_original_panoptic(
    state_dict: Mapping[str, torch.Tensor],
    checkpoint_path: str | os.PathLike,
    dest_dir: str | os.PathLike | None,
    dilation: bool,
    num_attention_heads: int,
) -> DetrHfForSegmentation:
    """Convert the state dict of a facebookresearch/detr panoptic checkpoint (`detr.*`, `bbox_attention.*`,
    `mask_head.*`) into a `DetrHfForSegmentation`, saved to `dest_dir`; `convert.convert_original_checkpoint`
    resolves `dilation` and `num_attention_heads` and calls this."""
    converted = to_detr_hf(state_dict, "original_panoptic")
    config = config_from_weights(
        converted, dilation=dilation, num_attention_heads=num_attention_heads, id2label=_panoptic_labels(converted)
    )
    logger.info(
        "original DETR panoptic checkpoint %s: backbone=%s, dilation=%s, heads=%d, %d labels",
        checkpoint_path, config.backbone, dilation, num_attention_heads, config.num_labels,
    )  # fmt: skip
    source = f"facebookresearch/detr panoptic checkpoint {Path(checkpoint_path).name}"
    return convert.finish_conversion(config, converted, dest_dir, source, model_class=DetrHfForSegmentation)


def convert_transformers_segmentation(
    source_dir: str | os.PathLike,
    source_config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    dest_dir: str | os.PathLike | None = None,
) -> DetrHfForSegmentation:
    """Convert the config and weights of a transformers `DetrForSegmentation` folder into a
    `DetrHfForSegmentation`, saved to `dest_dir`. transformers is not run."""
    converted = to_detr_hf(state_dict, "transformers_segmentation")
    config = config_from_transformers(source_config, converted)
    if is_placeholder(config.id2label) and config.num_labels == COCO_PANOPTIC_NUM_LABELS:
        config.id2label = coco_panoptic_id2label()
    for name in _MASK_FIELDS:
        if name in source_config:
            setattr(config, name, source_config[name])
    config.validate_fields()
    source = f"transformers DetrForSegmentation folder {Path(source_dir).name}"
    return convert.finish_conversion(config, converted, dest_dir, source, model_class=DetrHfForSegmentation)


def _panoptic_labels(converted: Mapping[str, torch.Tensor]) -> dict[int, str] | None:
    rows = converted["class_labels_classifier.weight"].shape[0]
    return coco_panoptic_id2label() if rows == COCO_PANOPTIC_NUM_LABELS + 1 else None


def _is_placeholder_labels(config: DetrHfConfig) -> bool:
    return all(name == f"LABEL_{key}" for key, name in config.id2label.items())

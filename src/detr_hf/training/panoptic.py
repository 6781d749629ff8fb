"""`--task panoptic` for both training scripts: its flags, data, the frozen-detector stage and PQ evaluation."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from torch import nn

from detr_hf.data.panoptic_folder import load_panoptic_splits
from detr_hf.data.panoptic_samples import PanopticDataset
from detr_hf.evaluation.panoptic_loop import PANOPTIC_THRESHOLD
from detr_hf.modeling_detr_hf_segmentation import MASK_HEAD_PREFIXES

__all__ = ["TASKS", "add_panoptic_args", "build_panoptic_datasets", "freeze_detector", "is_panoptic"]

logger = logging.getLogger(__name__)

TASKS = ("detection", "panoptic")


def add_panoptic_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("panoptic segmentation (--task panoptic)")
    group.add_argument(
        "--task", choices=TASKS, default="detection",
        help="panoptic: DetrHfForSegmentation on COCO panoptic data (--coco_dir) or the built-in synthetic panoptic shapes",
    )  # fmt: skip
    group.add_argument(
        "--train_detector", action="store_true",
        help="with --model_name_or_path: train detector and mask head jointly (default: the paper's second stage, "
        "detector frozen, only bbox_attention + mask_head trained); a fresh model always trains jointly",
    )  # fmt: skip
    group.add_argument("--train_masks", default=None, help="train PNG folder, relative to --coco_dir")
    group.add_argument("--val_masks", default=None, help="validation PNG folder, relative to --coco_dir")
    group.add_argument(
        "--panoptic_threshold", type=float, default=PANOPTIC_THRESHOLD,
        help="evaluation: keep queries whose best class has probability above this (DETR: 0.85)",
    )  # fmt: skip


def is_panoptic(args: argparse.Namespace) -> bool:
    return getattr(args, "task", "detection") == "panoptic"


def build_panoptic_datasets(
    args: argparse.Namespace, seed: int, train_transform: Any, eval_transform: Any
) -> tuple[PanopticDataset, PanopticDataset, list[str]]:
    """(train, validation, class names) from --coco_dir (COCO panoptic layout) or the synthetic panoptic shapes
    (written once under OUTPUT_DIR/synthetic_panoptic/)."""
    if args.dataset_name is not None:
        raise ValueError(
            "--task panoptic reads COCO panoptic folders (--coco_dir) or the built-in synthetic data; "
            "--dataset_name is not supported for panoptic training yet"
        )
    train_folder, val_folder = load_panoptic_splits(
        args.coco_dir,
        train_annotations=args.train_annotations,
        val_annotations=args.val_annotations,
        train_masks=args.train_masks,
        val_masks=args.val_masks,
        synthetic_dir=Path(args.output_dir) / "synthetic_panoptic",
        num_train=args.synthetic_train_size,
        num_validation=args.synthetic_val_size,
        image_size=args.synthetic_image_size,
        seed=seed,
    )
    train = PanopticDataset(train_folder, train_transform, seed=seed, split="train")
    val = PanopticDataset(val_folder, eval_transform, seed=seed, split="validation")
    return train, val, list(train_folder.class_names)


def freeze_detector(model: nn.Module, args: argparse.Namespace) -> None:
    """The paper's second stage: a segmentation model from a checkpoint trains only `bbox_attention` and
    `mask_head` unless --train_detector (a fresh model trains everything). The detector's parameters and
    batch-norm statistics stay bit-identical."""
    if not args.model_name_or_path or args.train_detector:
        logger.info("panoptic: detector and mask head trained jointly")
        return
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(MASK_HEAD_PREFIXES))
    # Frozen means frozen statistics too: trainable batch norms of the detector normalise with their running
    # statistics and never update them (set back to eval mode before every forward, after model.train()).
    norms = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not name.startswith(MASK_HEAD_PREFIXES)
    ]

    def keep_statistics(module: nn.Module, inputs: Any) -> None:
        for norm in norms:
            norm.eval()

    if norms:
        model.register_forward_pre_hook(keep_statistics)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "panoptic: detector frozen (the two-stage recipe); training bbox_attention + mask_head only (%d parameters); "
        "--train_detector trains jointly", trainable,
    )  # fmt: skip

"""Training recipes (detr-r50, finetune, demo; panoptic-finetune, panoptic-demo): preset values for every flag
the user did not give."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ARCHITECTURE_FLAGS",
    "CHECKPOINT_RECIPES",
    "RECIPES",
    "choose_recipe",
    "lr_drop_step_for",
    "resolve_recipe",
    "scaled_detr_augmentation",
]

logger = logging.getLogger(__name__)

# The DETR paper's multi-scale training sizes at evaluation size 800 (and their crop recipe).
_DETR_EVAL_SIZE = 800
_DETR_SCALES = tuple(range(480, 801, 32))
_DETR_CROP = (384, 600)
_DETR_CROP_RESIZE = (400, 500, 600)
# The step schedule drops the lr at this fraction of the run unless --lr_drop_step names the step.
LR_DROP_FRACTION = 2 / 3


def _csv(values: tuple[int, ...] | list[int]) -> str:
    return ",".join(str(v) for v in values)


def scaled_detr_augmentation(eval_size: int, max_size: int) -> dict[str, Any]:
    """DETR's augmentation (flip, multi-scale 480–800, resize-crop-resize) scaled to an evaluation size:
    the published sizes at 800, proportionally smaller or larger otherwise."""
    factor = eval_size / _DETR_EVAL_SIZE

    def scale(values: tuple[int, ...]) -> list[int]:
        return sorted({max(1, round(v * factor)) for v in values})

    return {
        "augmentation": "detr",
        "eval_size": int(eval_size),
        "max_size": int(max_size),
        "train_scales": _csv(scale(_DETR_SCALES)),
        "crop_size_range": _csv(scale(_DETR_CROP)),
        "crop_resize_scales": _csv(scale(_DETR_CROP_RESIZE)),
    }


_REAL_OPTIMISATION = {
    "learning_rate": 1e-4,
    "backbone_learning_rate": 1e-5,
    "weight_decay": 1e-4,
    "max_grad_norm": 0.1,
    "lr_scheduler": "step",
    "warmup_steps": 0,
    "lr_drop_factor": 0.1,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
}
# Training-only aids (training_queries.py, ema.py) the real recipes leave off.
_NO_AIDS = {"num_query_groups": 1, "num_denoising_groups": 0}

RECIPES: dict[str, dict[str, Any]] = {
    # The DETR paper's R50 recipe (mmdetection's 150-epoch schedule, lr ×0.1 at 2/3 of the run).
    "detr-r50": {
        "backbone": "resnet50.tv_in1k",  # torchvision's ImageNet weights, as DETR; timm's plain resnet50 is a1_in1k
        "pretrained_backbone": True,
        "d_model": 256,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "num_heads": 8,
        "ffn_dim": 2048,
        "num_queries": 100,
        "dropout": 0.1,
        **scaled_detr_augmentation(800, 1333),
        **_REAL_OPTIMISATION,
        **_NO_AIDS,
        "num_train_epochs": 150,
    },
    # Architecture, processor and labels from --model_name_or_path; sizes filled in from its processor.
    "finetune": {
        **_REAL_OPTIMISATION,
        **_NO_AIDS,
        "num_train_epochs": 50,
    },
    # The tiny synthetic-shapes demo: a fixed, seeded number of steps (not wall-clock time).
    "demo": {
        "backbone": "resnet10t",
        "backbone_out_indices": "2",  # stride 8: the 64 px shapes keep an 8×8 feature map
        "pretrained_backbone": False,
        "d_model": 128,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "num_heads": 4,
        "ffn_dim": 512,
        "num_queries": 10,
        "dropout": 0.0,
        "augmentation": "flip",
        "eval_size": 64,
        "max_size": 96,
        "train_scales": "56,60,64,68,72",
        "crop_size_range": "40,64",
        "crop_resize_scales": "48,56,64",
        "learning_rate": 4e-4,
        "backbone_learning_rate": 4e-4,
        "weight_decay": 1e-4,
        "max_grad_norm": 0.1,
        "lr_scheduler": "cosine",
        "warmup_steps": 200,
        "lr_drop_factor": 0.1,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "num_train_epochs": 10,
        "max_train_steps": 5000,
        # Training-only aids (inference unchanged), chosen by AP at equal steps (benchmarks/bench_convergence_steps.py):
        # 3 denoising groups, the weight EMA for evaluation and saving, and lr 4e-4 (2e-4 before).
        "num_query_groups": 1,
        "num_denoising_groups": 3,
        "ema_decay": 0.9998,
    },
}
# The paper's second stage (--task panoptic from a detection checkpoint): 25 epochs on the mask head.
RECIPES["panoptic-finetune"] = {**RECIPES["finetune"], "num_train_epochs": 25}
# The synthetic panoptic demo (sky / wall / ground bands + shapes, 96 px): detector and mask head trained jointly;
# cut at stride 16 (the mask head refines with the stride 16 / 8 / 4 levels), a 6×6 map and 24×24 masks.
RECIPES["panoptic-demo"] = {
    **RECIPES["demo"],
    "backbone_out_indices": "3",
    "num_queries": 10,
    "eval_size": 96,
    "max_size": 144,
    "train_scales": "84,90,96,102,108",
    "crop_size_range": "60,96",
    "crop_resize_scales": "72,84,96",
    "synthetic_image_size": 96,
    "synthetic_train_size": 2000,
    "synthetic_val_size": 100,
    "per_device_eval_batch_size": 25,
    "max_train_steps": 2000,
    # The detection demo's aids stay off: the segmentation model has no extra queries, and a 2,000-step cosine
    # run ends where the EMA no longer helps; lr 2e-4 (the rate this recipe was measured with).
    "learning_rate": 2e-4,
    "backbone_learning_rate": 2e-4,
    **_NO_AIDS,
    "ema_decay": 0.0,
}
# Recipes that start from --model_name_or_path (architecture, processor and labels from the checkpoint).
CHECKPOINT_RECIPES = ("finetune", "panoptic-finetune")

# Sizes of the built-in synthetic data unless the recipe or the flags name them.
SYNTHETIC_DATA_DEFAULTS = {"synthetic_train_size": 4000, "synthetic_val_size": 250, "synthetic_image_size": 64}

# Flags that define the network: with --model_name_or_path they come from the checkpoint, so giving one is an error.
ARCHITECTURE_FLAGS = (
    "backbone", "backbone_out_indices", "pretrained_backbone", "backbone_weights", "d_model",
    "encoder_layers", "decoder_layers", "num_heads", "ffn_dim", "num_queries",
)  # fmt: skip


def _flag(name: str) -> str:
    return "--" + name


def choose_recipe(args: argparse.Namespace) -> str:
    """The recipe name: --recipe, else the deprecated --coco_recipe, else by what the user named
    (a checkpoint → finetune; real data without a checkpoint → detr-r50; nothing → demo; with --task panoptic
    a checkpoint → panoptic-finetune and nothing → panoptic-demo)."""
    if getattr(args, "coco_recipe", False):
        if args.recipe not in (None, "detr-r50"):
            raise ValueError(f"--coco_recipe (= --recipe detr-r50) contradicts --recipe {args.recipe}")
        logger.warning("--coco_recipe is deprecated and will be removed: use --recipe detr-r50")
        return "detr-r50"
    if args.recipe is not None:
        if args.recipe not in RECIPES:
            raise ValueError(f"unknown --recipe {args.recipe!r}; known recipes: {', '.join(RECIPES)}")
        return args.recipe
    panoptic = getattr(args, "task", "detection") == "panoptic"
    if panoptic and args.model_name_or_path:
        return "panoptic-finetune"
    if panoptic and not (args.dataset_name or args.coco_dir):
        return "panoptic-demo"
    if args.model_name_or_path:
        return "finetune"
    if args.dataset_name or args.coco_dir:
        return "detr-r50"
    return "demo"


def _check_against_checkpoint(args: argparse.Namespace, name: str) -> None:
    if name not in CHECKPOINT_RECIPES:
        raise ValueError(
            f"--recipe {name} builds a fresh model, but --model_name_or_path {args.model_name_or_path} was given; "
            f"fine-tuning a checkpoint uses --recipe {' or '.join(CHECKPOINT_RECIPES)} (the default with "
            "--model_name_or_path)"
        )
    given = [_flag(f) for f in ARCHITECTURE_FLAGS if getattr(args, f, None) not in (None, False)]
    if given:
        raise ValueError(
            f"{', '.join(given)} contradict{'s' if len(given) == 1 else ''} --model_name_or_path "
            f"{args.model_name_or_path}: the architecture comes from the checkpoint. Drop the flag(s), or train "
            "a fresh model without --model_name_or_path"
        )


def resolve_recipe(args: argparse.Namespace, processor_size: Mapping[str, int] | None = None) -> str:
    """Fill every flag left at None from the chosen recipe (explicit flags win); returns the recipe name.

    `processor_size`: the `size` of the checkpoint's processor (finetune), whose sizes become the
    evaluation size and the scale of the DETR augmentation unless --eval_size / --max_size are given.
    """
    name = choose_recipe(args)
    if args.model_name_or_path:
        _check_against_checkpoint(args, name)
    elif name in CHECKPOINT_RECIPES:
        raise ValueError(f"--recipe {name} needs --model_name_or_path (the checkpoint to start from)")
    values = dict(RECIPES[name])
    args.explicit_sizes = args.eval_size is not None or args.max_size is not None
    if getattr(args, "backbone_weights", None) and args.pretrained_backbone is None:
        args.pretrained_backbone = False  # the local file is the source of the backbone's weights
    if args.num_train_epochs is not None:
        values.pop("max_train_steps", None)  # an explicit epoch count is not overridden by the recipe's steps
    if args.backbone is not None:
        values.pop("backbone_out_indices", None)  # the recipe's cut belongs to the recipe's backbone
    if name in CHECKPOINT_RECIPES:
        if processor_size is None:
            processor_size = {"shortest_edge": 800, "longest_edge": 1333}
        if "shortest_edge" not in processor_size:
            raise ValueError(
                f"the processor of {args.model_name_or_path} resizes by {dict(processor_size)}, not by "
                "shortest/longest edge; give --eval_size and --max_size"
            )
        eval_size = args.eval_size or int(processor_size["shortest_edge"])
        max_size = args.max_size or int(processor_size.get("longest_edge") or round(eval_size * 1333 / 800))
        values.update(scaled_detr_augmentation(eval_size, max_size))
    for key, value in values.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key, value in SYNTHETIC_DATA_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.backbone_learning_rate is None:
        args.backbone_learning_rate = args.learning_rate
    args.recipe = name
    return name


def lr_drop_step_for(args: argparse.Namespace, max_steps: int) -> int | None:
    """The optimiser step of the lr drop of the step schedule: --lr_drop_step, else 2/3 of the run."""
    if args.lr_scheduler != "step":
        return args.lr_drop_step
    if args.lr_drop_step is not None:
        return args.lr_drop_step
    return max(1, round(LR_DROP_FRACTION * max_steps))

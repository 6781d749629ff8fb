"""Command-line options and builders shared by the training scripts (data, transforms, processor, model)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import datasets

from detr_hf.configuration_detr_hf import DetrHfConfig
from detr_hf.data import DetectionDataset, check_categories, class_names_of, load_detection_splits
from detr_hf.data.transforms import build_eval_transform, build_train_transform
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor
from detr_hf.modeling_detr_hf import DetrHfForObjectDetection

__all__ = [
    "DEMO_BACKBONE",
    "add_data_args",
    "add_model_args",
    "build_datasets",
    "build_model",
    "build_processor",
]

logger = logging.getLogger(__name__)

DEMO_BACKBONE = "resnet10t"
# The published COCO recipe, switched on by --coco_recipe.
_COCO_RECIPE = dict(
    eval_size=800,
    max_size=1333,
    train_scales="480,512,544,576,608,640,672,704,736,768,800",
    crop_size_range="384,600",
    crop_resize_scales="400,500,600",
    augmentation="detr",
)


def _ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data (default: the built-in synthetic shapes)")
    group.add_argument(
        "--dataset_name", default=None,
        help="cppe-5 schema: a Hub id, a save_to_disk folder (DatasetDict or one split) or an imagefolder with metadata.jsonl",
    )  # fmt: skip
    group.add_argument("--dataset_config", default=None, help="dataset configuration name")
    group.add_argument("--coco_dir", default=None, help="COCO folder (images + annotations/instances_*.json)")
    group.add_argument("--train_annotations", default=None, help="train json, relative to --coco_dir")
    group.add_argument("--val_annotations", default=None, help="validation json, relative to --coco_dir")
    group.add_argument("--label_field", default="category", help="objects.<field> holding class ids or names")
    group.add_argument(
        "--label_names", default=None,
        help="comma-separated class names (label i = name i) when the dataset has no ClassLabel feature",
    )  # fmt: skip
    group.add_argument(
        "--train_val_split", type=float, default=0.15,
        help="fraction of train held out for validation when --dataset_name has no validation split",
    )  # fmt: skip
    group.add_argument("--synthetic_train_size", type=int, default=4000)
    group.add_argument("--synthetic_val_size", type=int, default=250)
    group.add_argument("--synthetic_image_size", type=int, default=64)
    group.add_argument(
        "--augmentation", choices=("detr", "flip", "none"), default="flip",
        help="detr: flip + multi-scale resize / resize-crop-resize; flip: flip + eval resize; none: eval resize",
    )  # fmt: skip
    group.add_argument("--eval_size", type=int, default=64, help="shortest side at evaluation (and inference)")
    group.add_argument("--max_size", type=int, default=96, help="longest side cap")
    group.add_argument("--train_scales", default="56,60,64,68,72", help="shortest sides for --augmentation detr")
    group.add_argument("--crop_size_range", default="40,64", help="min,max crop side for --augmentation detr")
    group.add_argument("--crop_resize_scales", default="48,56,64", help="pre-crop shortest sides (detr)")
    group.add_argument(
        "--coco_recipe", action="store_true",
        help=f"use the published COCO sizes and augmentation: {_COCO_RECIPE}",
    )  # fmt: skip


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (default: the demo-sized DETR)")
    group.add_argument("--model_name_or_path", default=None, help="detr_hf folder or Hub id to start from")
    group.add_argument("--backbone", default=DEMO_BACKBONE, help="any timm model name (fresh model)")
    group.add_argument(
        "--backbone_out_indices", default=None,
        help="timm out_indices, e.g. '2' (stride 8 on ResNets); default: 2 for resnet10t, the last stage otherwise",
    )  # fmt: skip
    group.add_argument("--pretrained_backbone", action="store_true", help="timm's pretrained weights (its source)")
    group.add_argument("--backbone_weights", default=None, help="local timm weights file for the backbone")
    group.add_argument("--d_model", type=int, default=128)
    group.add_argument("--encoder_layers", type=int, default=2)
    group.add_argument("--decoder_layers", type=int, default=2)
    group.add_argument("--num_heads", type=int, default=4)
    group.add_argument("--ffn_dim", type=int, default=512)
    group.add_argument("--num_queries", type=int, default=10)
    group.add_argument("--dropout", type=float, default=0.0)
    group.add_argument("--no_aux_loss", action="store_true", help="turn off the auxiliary decoder losses")
    extra = parser.add_argument_group("training-only queries (inference stays plain DETR; see training_queries.py)")
    extra.add_argument("--num_query_groups", type=int, default=1, help="Group DETR query groups (1 = off)")
    extra.add_argument("--num_denoising_groups", type=int, default=0, help="DN-DETR denoising groups (0 = off)")
    extra.add_argument("--denoising_box_noise_scale", type=float, default=0.4)
    extra.add_argument("--denoising_label_noise_ratio", type=float, default=0.2)


def training_query_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields of the training-only queries (--num_query_groups, --num_denoising_groups, noise)."""
    names = ("num_query_groups", "num_denoising_groups", "denoising_box_noise_scale", "denoising_label_noise_ratio")
    return {name: getattr(args, name) for name in names}


def apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    if getattr(args, "coco_recipe", False):
        for key, value in _COCO_RECIPE.items():
            setattr(args, key, value)
    return args


def build_processor(args: argparse.Namespace) -> DetrHfImageProcessor:
    """The model's processor (from --model_name_or_path when it has one), resizing like the eval transform."""
    processor = None
    if args.model_name_or_path:
        try:
            processor = DetrHfImageProcessor.from_pretrained(args.model_name_or_path)
        except OSError:
            logger.info("%s has no image processor; using a new one", args.model_name_or_path)
    if processor is None:
        processor = DetrHfImageProcessor()
    processor.size = {"shortest_edge": int(args.eval_size), "longest_edge": int(args.max_size)}
    return processor


def build_datasets(args: argparse.Namespace, seed: int) -> tuple[DetectionDataset, DetectionDataset, list[str]]:
    """(train, validation, class names); categories are checked before any training step."""
    apply_recipe(args)
    train_raw, val_raw = load_detection_splits(
        dataset_name=args.dataset_name,
        dataset_config=args.dataset_config,
        coco_dir=args.coco_dir,
        train_annotations=args.train_annotations,
        val_annotations=args.val_annotations,
        num_train=args.synthetic_train_size,
        num_validation=args.synthetic_val_size,
        image_size=args.synthetic_image_size,
        seed=seed,
        train_val_split=args.train_val_split,
        label_field=args.label_field,
        label_names=[n.strip() for n in args.label_names.split(",")] if args.label_names else None,
    )
    return wrap_splits(train_raw, val_raw, args, seed)


def wrap_splits(
    train_raw: datasets.Dataset, val_raw: datasets.Dataset, args: argparse.Namespace, seed: int
) -> tuple[DetectionDataset, DetectionDataset, list[str]]:
    names = class_names_of(train_raw, args.label_field)
    check_categories(train_raw, len(names), "train", args.label_field)
    check_categories(val_raw, len(names), "validation", args.label_field)
    eval_transform = build_eval_transform(args.eval_size, args.max_size)
    if args.augmentation == "detr":
        train_transform: Any = build_train_transform(
            scales=_ints(args.train_scales),
            max_size=args.max_size,
            crop_size_range=tuple(_ints(args.crop_size_range)),
            crop_resize_scales=_ints(args.crop_resize_scales),
        )
    elif args.augmentation == "flip":
        from torchvision.transforms import v2

        train_transform = v2.Compose([v2.RandomHorizontalFlip(0.5), eval_transform])
    else:
        train_transform = eval_transform
    train = DetectionDataset(train_raw, train_transform, seed=seed, label_field=args.label_field, split="train")
    val = DetectionDataset(val_raw, eval_transform, seed=seed, label_field=args.label_field, split="validation")
    return train, val, names


def build_model(args: argparse.Namespace, class_names: list[str]) -> DetrHfForObjectDetection:
    """A detr_hf model for `class_names`: from --model_name_or_path (new heads if the label set differs)
    or a fresh model from the size options."""
    id2label = dict(enumerate(class_names))
    label2id = {name: i for i, name in id2label.items()}
    if args.model_name_or_path:
        return DetrHfForObjectDetection.from_pretrained(
            args.model_name_or_path,
            num_labels=len(class_names),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,
            **training_query_options(args),
        )
    out_indices = args.backbone_out_indices
    if out_indices is None and args.backbone == DEMO_BACKBONE:
        out_indices = "2"
    backbone_kwargs = {"out_indices": _ints(out_indices)} if out_indices is not None else {}
    config = DetrHfConfig(
        backbone=args.backbone,
        backbone_kwargs=backbone_kwargs,
        use_pretrained_backbone=bool(args.pretrained_backbone),
        backbone_weights_path=args.backbone_weights,
        d_model=args.d_model,
        encoder_layers=args.encoder_layers,
        decoder_layers=args.decoder_layers,
        encoder_attention_heads=args.num_heads,
        decoder_attention_heads=args.num_heads,
        encoder_ffn_dim=args.ffn_dim,
        decoder_ffn_dim=args.ffn_dim,
        num_queries=args.num_queries,
        dropout=args.dropout,
        attention_dropout=args.dropout,
        activation_dropout=args.dropout,
        auxiliary_loss=not args.no_aux_loss,
        **training_query_options(args),
        id2label=id2label,
        label2id=label2id,
    )
    return DetrHfForObjectDetection(config)

"""Command-line options and builders shared by the training scripts (data, transforms, processor, model)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import datasets

from detr_hf.configuration_detr_hf import DetrHfConfig
from detr_hf.data import DetectionDataset, check_categories, class_names_of, load_detection_splits
from detr_hf.data.coco_folder import coco_category_ids
from detr_hf.data.transforms import build_eval_transform, build_train_transform
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor
from detr_hf.modeling_detr_hf import DetrHfForObjectDetection
from detr_hf.modeling_detr_hf_segmentation import DetrHfForSegmentation
from detr_hf.training.class_head import plan_head_transfer, transfer_class_head
from detr_hf.training.ema import add_ema_args
from detr_hf.training.optim import SCHEDULES
from detr_hf.training.panoptic import add_panoptic_args, build_panoptic_datasets, freeze_detector, is_panoptic
from detr_hf.training.precision import add_precision_args
from detr_hf.training.recipes import RECIPES, resolve_recipe

__all__ = [
    "DEMO_BACKBONE",
    "add_data_args",
    "add_model_args",
    "add_training_args",
    "make_parser",
    "parse_and_resolve",
    "build_datasets",
    "build_model",
    "build_processor",
]

logger = logging.getLogger(__name__)

DEMO_BACKBONE = "resnet10t"


def _ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def make_parser(description: str | None, *, output_dir: str, report_to: str) -> argparse.ArgumentParser:
    """The parser both training scripts start from (data, model, recipe, optimisation and run flags);
    abbreviated flags are refused."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    add_data_args(parser)
    add_model_args(parser)
    add_training_args(parser, output_dir=output_dir, report_to=report_to)
    add_precision_args(parser)
    add_panoptic_args(parser)
    add_ema_args(parser)
    return parser


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
    group.add_argument("--synthetic_train_size", type=int, default=None, help="default: the recipe's, else 4000")
    group.add_argument("--synthetic_val_size", type=int, default=None, help="default: the recipe's, else 250")
    group.add_argument("--synthetic_image_size", type=int, default=None, help="default: the recipe's, else 64")
    sizes = parser.add_argument_group("image sizes and augmentation (default: the recipe's)")
    sizes.add_argument(
        "--augmentation", choices=("detr", "flip", "none"), default=None,
        help="detr: flip + multi-scale resize / resize-crop-resize; flip: flip + eval resize; none: eval resize",
    )  # fmt: skip
    sizes.add_argument("--eval_size", type=int, default=None, help="shortest side at evaluation (and inference)")
    sizes.add_argument("--max_size", type=int, default=None, help="longest side cap")
    sizes.add_argument("--train_scales", default=None, help="shortest sides for --augmentation detr, e.g. 480,512")
    sizes.add_argument("--crop_size_range", default=None, help="min,max crop side for --augmentation detr")
    sizes.add_argument("--crop_resize_scales", default=None, help="pre-crop shortest sides (detr)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (default: the recipe's; with --model_name_or_path: the checkpoint's)")
    group.add_argument(
        "--model_name_or_path", default=None,
        help="detr_hf (or transformers DETR) folder or Hub id to fine-tune; its architecture, processor and labels are kept",
    )  # fmt: skip
    group.add_argument("--backbone", default=None, help="any timm model name (fresh model)")
    group.add_argument(
        "--backbone_out_indices", default=None,
        help="timm out_indices, e.g. '2' (stride 8 on ResNets); default: the last stage (demo: 2)",
    )  # fmt: skip
    group.add_argument(
        "--pretrained_backbone", action="store_true", default=None, help="timm's pretrained weights (its source)"
    )  # fmt: skip
    group.add_argument(
        "--no_pretrained_backbone", action="store_false", dest="pretrained_backbone",
        help="a randomly initialised backbone (no download)",
    )  # fmt: skip
    group.add_argument("--backbone_weights", default=None, help="local timm weights file for the backbone")
    group.add_argument("--d_model", type=int, default=None)
    group.add_argument("--encoder_layers", type=int, default=None)
    group.add_argument("--decoder_layers", type=int, default=None)
    group.add_argument("--num_heads", type=int, default=None)
    group.add_argument("--ffn_dim", type=int, default=None)
    group.add_argument("--num_queries", type=int, default=None)
    group.add_argument("--dropout", type=float, default=None, help="also allowed when fine-tuning")
    group.add_argument("--no_aux_loss", action="store_true", help="turn off the auxiliary decoder losses")
    extra = parser.add_argument_group("training-only queries (inference stays plain DETR; see training_queries.py)")
    extra.add_argument(
        "--num_query_groups", type=int, default=None, help="Group DETR query groups (1 = off; default: the recipe's, 1)"
    )  # fmt: skip
    extra.add_argument(
        "--num_denoising_groups", type=int, default=None,
        help="DN-DETR denoising groups (0 = off; default: the recipe's: 3 for demo, 0 otherwise)",
    )  # fmt: skip
    extra.add_argument("--denoising_box_noise_scale", type=float, default=0.4)
    extra.add_argument("--denoising_label_noise_ratio", type=float, default=0.2)


def add_training_args(parser: argparse.ArgumentParser, output_dir: str, report_to: str) -> None:
    """Recipe, optimisation and run flags shared (same names, same meaning) by both training scripts."""
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument(
        "--recipe", default=None,
        help=f"preset for every flag not given: {', '.join(RECIPES)} (default: finetune with --model_name_or_path, "
        "detr-r50 with --dataset_name/--coco_dir, demo otherwise)",
    )  # fmt: skip
    recipe.add_argument("--coco_recipe", action="store_true", help="deprecated alias of --recipe detr-r50")
    recipe.add_argument(
        "--print_config_only", action="store_true",
        help="resolve the settings, print them, write training_config.json and the processor, and stop",
    )  # fmt: skip
    opt = parser.add_argument_group("optimisation (default: the recipe's)")
    opt.add_argument("--learning_rate", type=float, default=None)
    opt.add_argument("--backbone_learning_rate", type=float, default=None)
    opt.add_argument("--weight_decay", type=float, default=None)
    opt.add_argument("--max_grad_norm", type=float, default=None, help="gradient clipping (L2); 0 = off")
    opt.add_argument("--lr_scheduler", "--lr_scheduler_type", choices=SCHEDULES, default=None)
    opt.add_argument("--warmup_steps", type=int, default=None)
    opt.add_argument(
        "--lr_drop_step", type=int, default=None, help="step schedule: optimiser step of the drop (default: 2/3 of the run)"
    )  # fmt: skip
    opt.add_argument("--lr_drop_factor", type=float, default=None)
    opt.add_argument("--per_device_train_batch_size", type=int, default=None)
    opt.add_argument("--per_device_eval_batch_size", type=int, default=None)
    opt.add_argument("--gradient_accumulation_steps", type=int, default=1)
    opt.add_argument("--num_train_epochs", type=int, default=None)
    opt.add_argument(
        "--max_train_steps", "--max_steps", type=int, default=None, help="optimiser steps; overrides --num_train_epochs"
    )  # fmt: skip
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default=output_dir)
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--dataloader_num_workers", type=int, default=0)
    run.add_argument("--logging_steps", type=int, default=20)
    run.add_argument("--report_to", default=report_to, help="tracker name (e.g. tensorboard), or 'none'")
    run.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    run.add_argument("--push_to_hub", action="store_true", help="push model, processor and model card at the end")
    run.add_argument("--hub_model_id", default=None, help="repo id (default: the output folder's name)")
    run.add_argument("--hub_token", default=None, help="default: the token huggingface_hub finds (HF_TOKEN, login)")
    run.add_argument("--hub_private_repo", action="store_true")


def training_query_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields of the training-only queries (--num_query_groups, --num_denoising_groups, noise)."""
    names = ("num_query_groups", "num_denoising_groups", "denoising_box_noise_scale", "denoising_label_noise_ratio")
    return {name: getattr(args, name) for name in names}


def _checkpoint_processor(path: str) -> DetrHfImageProcessor | None:
    """The checkpoint's processor; None (logged) when it has none or one detr_hf cannot read."""
    try:
        return DetrHfImageProcessor.from_pretrained(path)
    except OSError:
        return None
    except (ValueError, TypeError, KeyError) as error:
        return _foreign_processor(path, error)


def _foreign_processor(path: str, error: Exception) -> DetrHfImageProcessor | None:
    """A detr_hf processor with the resize and normalisation of another DETR processor config (transformers'
    DetrImageProcessor: `size` 800 + `max_size` 1333, or a size dict)."""
    found, _ = DetrHfImageProcessor.get_image_processor_dict(path)
    size = found.get("size")
    if isinstance(size, int):
        size = {"shortest_edge": size, "longest_edge": int(found.get("max_size") or round(size * 1333 / 800))}
    if not isinstance(size, dict) or "shortest_edge" not in size:
        logger.warning("the image processor of %s is not readable by detr_hf (%s); using a new one", path, error)
        return None
    kwargs = {key: found[key] for key in ("image_mean", "image_std", "do_normalize") if key in found}
    logger.info("%s: %s taken over as a detr_hf processor (size %s)", path, found.get("image_processor_type"), size)
    return DetrHfImageProcessor(size=dict(size), **kwargs)


def parse_and_resolve(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, then fill unset flags from the recipe; a bad combination is a usage error before anything runs."""
    args = parser.parse_args(argv)
    try:
        processor = _checkpoint_processor(args.model_name_or_path) if args.model_name_or_path else None
        resolve_recipe(args, processor.size if processor is not None else None)
    except ValueError as error:
        parser.error(str(error))
    return args


def build_processor(args: argparse.Namespace) -> DetrHfImageProcessor:
    """The checkpoint's processor (sizes and normalisation kept unless --eval_size/--max_size say otherwise),
    or a new one resizing like the evaluation transform."""
    processor = _checkpoint_processor(args.model_name_or_path) if args.model_name_or_path else None
    size = {"shortest_edge": int(args.eval_size), "longest_edge": int(args.max_size)}
    if processor is None:
        if args.model_name_or_path:
            logger.info("%s has no image processor; using a new one at %s", args.model_name_or_path, size)
        return DetrHfImageProcessor(size=size)
    if args.explicit_sizes and dict(processor.size) != size:
        logger.info("processor size %s -> %s (--eval_size/--max_size)", dict(processor.size), size)
        processor.size = size
    return processor


def build_datasets(args: argparse.Namespace, seed: int) -> tuple[DetectionDataset, DetectionDataset, list[str]]:
    """(train, validation, class names); categories are checked before any training step. With --task panoptic,
    `PanopticDataset`s (see detr_hf.training.panoptic)."""
    if is_panoptic(args):
        return build_panoptic_datasets(args, seed, *_transforms(args))
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
    train_transform, eval_transform = _transforms(args)
    train = DetectionDataset(train_raw, train_transform, seed=seed, label_field=args.label_field, split="train")
    val = DetectionDataset(val_raw, eval_transform, seed=seed, label_field=args.label_field, split="validation")
    return train, val, names


def _transforms(args: argparse.Namespace) -> tuple[Any, Any]:
    """(train, evaluation) transforms of the resolved --augmentation and sizes."""
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
    return train_transform, eval_transform


def _coco_ids_of(dataset: Any) -> list[int] | None:
    """The COCO category id of each label when the training data is a COCO folder, else None."""
    try:
        return coco_category_ids(getattr(dataset, "dataset", dataset))
    except (ValueError, AttributeError, TypeError):
        return None


def _fine_tuned_model(
    args: argparse.Namespace, class_names: list[str], category_ids: list[int] | None
) -> DetrHfForObjectDetection:
    """The checkpoint with a class head for `class_names`: rows of known classes and the no-object row kept."""
    # Training-only settings follow detr_hf's recipe (transformers' configs carry auxiliary_loss=False).
    overrides: dict[str, Any] = {"auxiliary_loss": not args.no_aux_loss, **training_query_options(args)}
    if args.dropout is not None:
        overrides.update(dropout=args.dropout, attention_dropout=args.dropout, activation_dropout=args.dropout)
    model_class = DetrHfForSegmentation if is_panoptic(args) else DetrHfForObjectDetection
    source = DetrHfForObjectDetection.from_pretrained(args.model_name_or_path)
    old_id2label = dict(source.config.id2label)
    plan = plan_head_transfer(old_id2label, class_names, category_ids)
    if plan.identical and len(old_id2label) == len(class_names):
        logger.info("class head: the checkpoint's %d classes are the dataset's; kept unchanged", len(class_names))
        del source
        return model_class.from_pretrained(args.model_name_or_path, **overrides)
    old_weight = source.class_labels_classifier.weight.detach().clone()
    old_bias = source.class_labels_classifier.bias.detach().clone()
    del source
    id2label = dict(enumerate(class_names))
    model = model_class.from_pretrained(
        args.model_name_or_path,
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        ignore_mismatched_sizes=True,
        **overrides,
    )
    model.class_labels_classifier.reset_parameters()  # fresh rows even when the row count did not change
    transfer_class_head(model.class_labels_classifier, old_weight, old_bias, plan)
    logger.info(plan.describe(len(old_id2label)))
    return model


def build_model(
    args: argparse.Namespace, class_names: list[str], train_set: Any = None
) -> DetrHfForObjectDetection:
    """A detr_hf model for `class_names`: --model_name_or_path with its class head mapped onto the new labels
    (`train_set` gives a COCO folder's category ids for a COCO-indexed head), or a fresh model from the
    resolved size options. With --task panoptic, a `DetrHfForSegmentation` (a detection checkpoint gets a fresh
    mask head) whose detector is frozen unless --train_detector (see `freeze_detector`)."""
    model = _build_model(args, class_names, train_set)
    if is_panoptic(args):
        freeze_detector(model, args)
    return model


def _build_model(args: argparse.Namespace, class_names: list[str], train_set: Any) -> DetrHfForObjectDetection:
    if args.model_name_or_path:
        return _fine_tuned_model(args, class_names, _coco_ids_of(train_set) if train_set is not None else None)
    id2label = dict(enumerate(class_names))
    label2id = {name: i for i, name in id2label.items()}
    out_indices = args.backbone_out_indices
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
    return (DetrHfForSegmentation if is_panoptic(args) else DetrHfForObjectDetection)(config)

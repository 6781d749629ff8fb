"""The resolved settings of a training run: step plan, a printed summary and OUTPUT_DIR/training_config.json."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["TRAINING_CONFIG_NAME", "format_settings", "plan_steps", "run_settings", "write_settings"]

TRAINING_CONFIG_NAME = "training_config.json"


def plan_steps(
    batches_per_epoch: int, gradient_accumulation_steps: int, num_train_epochs: int, max_train_steps: int | None
) -> tuple[int, int, int]:
    """(optimiser steps per epoch, total steps, epochs): --max_train_steps wins over --num_train_epochs.

    The last micro-batches of an epoch always make a step, so an epoch has ceil(batches / accumulation) steps.
    """
    steps_per_epoch = math.ceil(batches_per_epoch / gradient_accumulation_steps)
    max_steps = max_train_steps or num_train_epochs * steps_per_epoch
    return steps_per_epoch, max_steps, math.ceil(max_steps / steps_per_epoch)


def _data_source(args: argparse.Namespace) -> str:
    if args.coco_dir:
        return f"COCO folder {args.coco_dir}"
    if args.dataset_name:
        return f"dataset {args.dataset_name}" + (f" ({args.dataset_config})" if args.dataset_config else "")
    kind = "panoptic shapes" if getattr(args, "task", "detection") == "panoptic" else "shapes"
    return f"built-in synthetic {kind} ({args.synthetic_image_size} px)"


def _model_settings(model: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    config = model.config
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "class": type(model).__name__,
        "from": args.model_name_or_path or "a fresh model",
        "backbone": config.backbone,
        "backbone_kwargs": dict(config.backbone_kwargs),
        "pretrained_backbone": bool(config.use_pretrained_backbone or config.backbone_weights_path),
        "frozen_backbone_batch_norm": config.freeze_backbone_batch_norm,
        "backbone_frozen_stages": config.backbone_frozen_stages,
        "d_model": config.d_model,
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers,
        "num_heads": config.encoder_attention_heads,
        "ffn_dim": config.encoder_ffn_dim,
        "num_queries": config.num_queries,
        "dropout": config.dropout,
        "auxiliary_loss": config.auxiliary_loss,
        "num_labels": config.num_labels,
        "num_query_groups": config.num_query_groups,
        "num_denoising_groups": config.num_denoising_groups,
        "parameters": parameters,
        "trainable_parameters": trainable,
    }


def run_settings(
    *,
    args: argparse.Namespace,
    model: nn.Module,
    processor: Any,
    class_names: list[str],
    num_train_images: int,
    num_val_images: int,
    steps_per_epoch: int,
    max_steps: int,
    num_epochs: int,
    lr_drop_step: int | None,
    num_processes: int,
) -> dict[str, Any]:
    """Everything a run resolved (recipe, data, model, image sizes, optimisation, batch, steps) as plain data."""
    time_budget = getattr(args, "time_budget_minutes", None)
    per_device = args.per_device_train_batch_size
    return {
        "recipe": args.recipe,
        "task": getattr(args, "task", "detection"),
        "data": {
            "source": _data_source(args),
            "num_train_images": num_train_images,
            "num_val_images": num_val_images,
            "labels": list(class_names),
        },
        "model": _model_settings(model, args),
        "images": {
            "processor_size": dict(processor.size),
            "image_mean": list(processor.image_mean),
            "image_std": list(processor.image_std),
            "eval_size": args.eval_size,
            "max_size": args.max_size,
            "augmentation": args.augmentation,
            "train_scales": args.train_scales,
            "crop_size_range": args.crop_size_range,
            "crop_resize_scales": args.crop_resize_scales,
        },
        "optimisation": {
            "optimizer": "AdamW",
            "learning_rate": args.learning_rate,
            "backbone_learning_rate": args.backbone_learning_rate,
            "weight_decay": args.weight_decay,
            "max_grad_norm": args.max_grad_norm,
            "lr_scheduler": args.lr_scheduler,
            "warmup_steps": args.warmup_steps,
            "lr_drop_step": lr_drop_step,
            "lr_drop_factor": args.lr_drop_factor,
            "ema_decay": getattr(args, "ema_decay", None) or None,
            "ema_warmup_power": getattr(args, "ema_warmup_power", None),
        },
        "batch": {
            "per_device_train_batch_size": per_device,
            "per_device_eval_batch_size": args.per_device_eval_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_processes": num_processes,
            "global_batch_size": per_device * num_processes * args.gradient_accumulation_steps,
        },
        "steps": {
            "max_train_steps": max_steps,
            "steps_per_epoch": steps_per_epoch,
            "num_epochs": num_epochs,
            "time_budget_minutes": time_budget,
            "stops_at": f"{max_steps} steps" + (f" or {time_budget:g} minutes, whichever first" if time_budget else ""),
        },
        "seed": args.seed,
    }


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f} M"


def format_settings(settings: dict[str, Any]) -> str:
    """A few human-readable lines of `run_settings` (printed once at start)."""
    m, im, opt, b, st = (settings[k] for k in ("model", "images", "optimisation", "batch", "steps"))
    schedule = opt["lr_scheduler"]
    if schedule == "step":
        schedule += f" (×{opt['lr_drop_factor']:g} at step {opt['lr_drop_step']})"
    backbone = m["backbone"] + (" pretrained" if m["pretrained_backbone"] else " random init")
    backbone += ", frozen BN" if m["frozen_backbone_batch_norm"] else ", trainable BN"
    backbone += f", {m['backbone_frozen_stages']} frozen stage(s)"
    augmentation = im["augmentation"]
    if augmentation == "detr":
        augmentation += f" (scales {im['train_scales']}, crop {im['crop_size_range']} after {im['crop_resize_scales']})"
    return "\n".join(
        [
            f"recipe {settings['recipe']}; data: {settings['data']['source']} "
            f"({settings['data']['num_train_images']} train / {settings['data']['num_val_images']} validation images, "
            f"{len(settings['data']['labels'])} labels)",
            f"model ({m['from']}): {backbone}; d_model {m['d_model']}, {m['encoder_layers']}+{m['decoder_layers']} "
            f"layers, {m['num_heads']} heads, FFN {m['ffn_dim']}, {m['num_queries']} queries, dropout {m['dropout']:g}, "
            f"aux loss {'on' if m['auxiliary_loss'] else 'off'}; {_millions(m['parameters'])} parameters "
            f"({_millions(m['trainable_parameters'])} trainable)",
            f"images: evaluation {im['eval_size']}/{im['max_size']} (processor size {im['processor_size']}); "
            f"training augmentation {augmentation}",
            f"optimisation: AdamW lr {opt['learning_rate']:g}, backbone lr {opt['backbone_learning_rate']:g}, "
            f"weight decay {opt['weight_decay']:g}, clip {opt['max_grad_norm']:g}; schedule {schedule}, "
            f"warm-up {opt['warmup_steps']} steps; weight EMA "
            + (f"{opt['ema_decay']:g} (warm-up power {opt['ema_warmup_power']:g})" if opt.get("ema_decay") else "off"),
            f"batch: {b['per_device_train_batch_size']} per device × {b['num_processes']} process(es) × "
            f"{b['gradient_accumulation_steps']} accumulation = {b['global_batch_size']} (eval {b['per_device_eval_batch_size']})",
            f"steps: {st['max_train_steps']} ({st['num_epochs']} epoch(s) of {st['steps_per_epoch']}); stops at "
            f"{st['stops_at']}; seed {settings['seed']}",
        ]
    )


def write_settings(settings: dict[str, Any], output_dir: str | os.PathLike) -> Path:
    path = Path(output_dir) / TRAINING_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2))
    return path

"""AdamW parameter groups (separate backbone lr) and warm-up + constant/step/cosine lr schedules."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

__all__ = ["SCHEDULES", "build_param_groups", "build_lr_lambda"]

SCHEDULES = ("constant", "step", "cosine")


def build_param_groups(
    model: nn.Module, lr: float, backbone_lr: float, weight_decay: float
) -> list[dict]:
    """Two AdamW groups: trainable backbone parameters at `backbone_lr`, everything else at `lr`.

    Weight decay applies to every parameter, as in the original DETR recipe. Frozen parameters
    (requires_grad=False) are left out. The backbone is recognised by the `.backbone.` module path.
    """
    backbone, rest = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (backbone if ".backbone." in f".{name}" else rest).append(param)
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "transformer_and_heads"}]
    if backbone:
        groups.append({"params": backbone, "lr": backbone_lr, "weight_decay": weight_decay, "name": "backbone"})
    return groups


def build_lr_lambda(
    schedule: str,
    warmup_steps: int,
    total_steps: int | None,
    lr_drop_step: int | None = None,
    lr_drop_factor: float = 0.1,
    min_lr_ratio: float = 0.0,
) -> Callable[[int], float]:
    """Multiplier of the base lr at optimiser step `step` (for `torch.optim.lr_scheduler.LambdaLR`).

    Linear warm-up from 0 over `warmup_steps`, then: "constant"; "step" (× `lr_drop_factor` from
    `lr_drop_step` on); "cosine" (down to `min_lr_ratio` at `total_steps`).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if schedule == "cosine" and not total_steps:
        raise ValueError("the cosine schedule needs the total number of optimiser steps")
    if schedule == "step" and lr_drop_step is None:
        raise ValueError("the step schedule needs lr_drop_step")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "step":
            return lr_drop_factor if step >= lr_drop_step else 1.0
        if schedule == "cosine":
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return multiplier

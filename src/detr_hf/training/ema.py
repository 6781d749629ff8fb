"""Exponential moving average of the weights (timm's ModelEmaV3 with decay warm-up) for evaluation and saving.

The average is a training-time copy of the model: it is evaluated and saved instead of the raw weights, and
checkpointed (an accelerate custom object / a file in a Trainer checkpoint) so a resumed run continues it
exactly. The saved model is the plain detr_hf model holding the averaged values, nothing else.

Decay at optimiser step t (1-based): 0 at t = 1 (a copy), then min(`decay`, 1 - (1 + t) ** -`warmup_power`),
so early averages are not dominated by the random initial weights; power 3/4 reaches 0.99 at ~460 steps and
0.998 at ~3,900.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from transformers import TrainerCallback

__all__ = [
    "EMA_STATE_FILE",
    "EmaCallback",
    "WeightEma",
    "add_ema_args",
    "build_ema",
]

logger = logging.getLogger(__name__)

# The EMA weights inside a Trainer checkpoint folder (checkpoint-N/).
EMA_STATE_FILE = "ema_state.pt"


class WeightEma:
    """The moving average of `model`'s state (parameters and floating buffers; integer buffers copied).

    `update(model, step)` after every optimiser step (`step` = optimiser steps done, 1-based); `module` is the
    averaged model (same class as `model`, in eval mode); `state_dict` / `load_state_dict` for checkpoints.
    """

    def __init__(self, model: nn.Module, *, decay: float, warmup_power: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema_decay must be in (0, 1), got {decay}")
        if warmup_power <= 0:
            raise ValueError(f"--ema_warmup_power must be > 0, got {warmup_power}")
        self.decay = decay
        self.warmup_power = warmup_power
        self._ema = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=warmup_power)
        self._ema.module.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self._ema.module

    def decay_at(self, step: int) -> float:
        return self._ema.get_decay(step)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend the current weights of `model` (unwrapped, not DDP) in after optimiser step `step`.

        Under DDP the parameters agree on every process but trainable BN statistics are each process's own
        (DDP broadcasts process 0's before each forward): the averaged buffers are then taken from process 0,
        so every process evaluates the model that process 0 saves.
        """
        self._ema.update(model, step=step)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            floating = [b for b in self.module.buffers() if b.is_floating_point()]
            for dtype in sorted({b.dtype for b in floating}, key=str):  # one broadcast per dtype
                buffers = [b for b in floating if b.dtype == dtype]
                flat = _flatten_dense_tensors(buffers)
                dist.broadcast(flat, src=0)
                for buffer, synced in zip(buffers, _unflatten_dense_tensors(flat, buffers)):
                    buffer.copy_(synced)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup_power": self.warmup_power, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["decay"], state["warmup_power"]) != (self.decay, self.warmup_power):
            logger.warning(
                "the checkpoint's EMA used decay %s / warm-up power %s; continuing with %s / %s",
                state["decay"], state["warmup_power"], self.decay, self.warmup_power,
            )  # fmt: skip
        self.module.load_state_dict(state["weights"])


def add_ema_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("weight EMA (training-only; the saved model is plain detr_hf)")
    group.add_argument(
        "--ema_decay", type=float, default=None,
        help="evaluate and save an exponential moving average of the weights with this decay, e.g. 0.9998 "
        "(default: off, or the recipe's)",
    )  # fmt: skip
    group.add_argument(
        "--ema_warmup_power", type=float, default=0.75,
        help="decay warm-up: decay_t = min(ema_decay, 1 - (1 + t)^-power) at optimiser step t",
    )  # fmt: skip


def build_ema(args: argparse.Namespace, model: nn.Module) -> WeightEma | None:
    """The EMA of `model` (unwrapped, before DDP) when --ema_decay is set (> 0), else None."""
    if not getattr(args, "ema_decay", None):
        return None
    return WeightEma(model, decay=args.ema_decay, warmup_power=args.ema_warmup_power)


class EmaCallback(TrainerCallback):
    """The Trainer side: update after each optimiser step, save/restore the EMA with the Trainer's checkpoints,
    and copy the averaged weights into the model when training ends (the final evaluation and save_model use
    them; evaluations during training see the raw weights)."""

    def __init__(self, ema: WeightEma, *, resume_from: str | os.PathLike | None) -> None:
        self.ema = ema
        self.resume_from = resume_from

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resume_from is None:
            return
        path = Path(self.resume_from) / EMA_STATE_FILE
        if not path.is_file():
            raise ValueError(f"--ema_decay is set but the checkpoint {self.resume_from} has no {EMA_STATE_FILE}")
        self.ema.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(model, step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            torch.save(self.ema.state_dict(), folder / EMA_STATE_FILE)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.load_state_dict(self.ema.module.state_dict())

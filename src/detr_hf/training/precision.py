"""--mixed_precision and --torch_compile of both training scripts: flags, checks, Accelerator / TrainingArguments options."""

from __future__ import annotations

import argparse
import logging

import torch

from detr_hf.precision import cpu_has_fast_bf16

__all__ = ["accelerator_options", "add_precision_args", "check_precision", "trainer_options"]

logger = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "fp16", "bf16")


def add_precision_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("precision and compilation")
    group.add_argument(
        "--mixed_precision", choices=MIXED_PRECISION, default=None,
        help="autocast the model's forward (weights, optimiser and loss stay float32); bf16 on CPUs with bf16 "
        "instructions and recent GPUs, fp16 on GPUs only (with loss scaling). Default: accelerate's config",
    )  # fmt: skip
    group.add_argument(
        "--torch_compile", action="store_true",
        help="torch.compile (inductor) the model: slow first steps while it compiles, then faster steps",
    )  # fmt: skip


def check_precision(mode: str | None, device: torch.device | str) -> None:
    """Refuse what would silently train in float32 (fp16 on the CPU: accelerate and the Trainer autocast only
    bf16 there); warn when bf16 on this CPU is emulated (it works, more slowly than float32)."""
    device_type = torch.device(device).type
    if mode == "fp16" and device_type == "cpu":
        raise ValueError(
            "--mixed_precision fp16 needs a GPU: on the CPU accelerate does not autocast to fp16, so the run "
            "would train in float32 without saying so. Use --mixed_precision bf16 on the CPU."
        )
    if mode == "bf16" and device_type == "cpu" and not cpu_has_fast_bf16():
        logger.warning(
            "--mixed_precision bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX); training works "
            "but is slower than float32 here"
        )


def accelerator_options(args: argparse.Namespace) -> dict:
    """Accelerator keyword arguments of the flags (None = accelerate's own config, e.g. `accelerate launch
    --mixed_precision bf16`); check the result with `check_precision` once the device is known."""
    options: dict = {"mixed_precision": args.mixed_precision}
    if args.torch_compile:
        options["dynamo_backend"] = "inductor"
    return options


def trainer_options(args: argparse.Namespace) -> dict:
    """TrainingArguments keyword arguments of the flags: bf16 / fp16 / torch_compile, and use_cpu for bf16
    on a machine without a GPU (the Trainer otherwise refuses bf16 there)."""
    mode = args.mixed_precision or "no"
    no_gpu = not torch.cuda.is_available()
    return {
        "bf16": mode == "bf16",
        "fp16": mode == "fp16",
        "use_cpu": bool(args.use_cpu or (mode != "no" and no_gpu)),
        "torch_compile": bool(args.torch_compile),
    }

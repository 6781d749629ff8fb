"""Reduced precision (bf16 / fp16): losses and matching in float32, and whether this machine runs bf16 fast."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from transformers.utils import logging

from .tracing import is_tracing

__all__ = ["cpu_has_fast_bf16", "float32_loss", "upcast", "warn_if_slow_bf16"]

logger = logging.get_logger(__name__)

F = TypeVar("F", bound=Callable)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def upcast(value):
    """A bf16/fp16 tensor as float32; anything else (float32/64 tensors, ints, label dicts) unchanged."""
    if isinstance(value, torch.Tensor) and value.dtype in _LOW_PRECISION:
        return value.float()
    return value


def float32_loss(fn: F) -> F:
    """Decorate a loss or matching entry point: its bf16/fp16 tensor arguments arrive as float32 and it runs
    with autocast off on their device, so every cost, GIoU, softmax and reduction inside is float32 whatever
    precision the model ran in (fp16 sums over a batch overflow; a bf16 cost matrix changes the matching).
    Gradients flow back through the cast in the model's own dtype."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = tuple(upcast(a) for a in args)
        kwargs = {key: upcast(value) for key, value in kwargs.items()}
        device = next(
            (a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), "cpu"
        )
        if not torch.is_autocast_enabled(device):
            return fn(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); without them bf16 runs emulated, slower than fp32."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    return bool(avx512_bf16() or amx())


def warn_if_slow_bf16(device: torch.device | str, model_dtype: torch.dtype) -> None:
    """Log once when a forward on the CPU runs in bf16 (bf16 weights or bf16 autocast) on a CPU without bf16
    instructions: it works, but more slowly than float32."""
    if torch.device(device).type != "cpu" or is_tracing():
        return
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if (autocast_bf16 or model_dtype == torch.bfloat16) and not cpu_has_fast_bf16():
        logger.warning_once(
            "detr_hf: this CPU has no bf16 instructions (AVX512-BF16 or AMX); bf16 runs emulated and is slower "
            "than float32 here. The results are still right; use float32 for speed on this machine."
        )

"""Whether the model is being traced, compiled or exported (data-dependent checks and caches step aside)."""

from __future__ import annotations

import torch


def is_tracing() -> bool:
    """True under torch.jit tracing, torch.compile and ONNX export."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()

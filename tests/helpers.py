"""Shared test helpers that are not fixtures: non-trivial normalisation statistics for parity tests."""

from __future__ import annotations

import torch


def randomize_feature_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm (frozen or not) statistics and affines, and GroupNorm affines, in place.

    A mis-mapped normalisation layer then changes the outputs, so a parity test can see it.
    """
    gen = torch.Generator().manual_seed(seed)

    def fill(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=gen))

    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "running_var") and module.running_var is not None:
                fill(module.running_var, 0.6, 1.4)
                fill(module.running_mean, -0.2, 0.2)
                fill(module.weight, 0.5, 1.0)
                fill(module.bias, -0.2, 0.2)
            elif isinstance(module, torch.nn.GroupNorm):
                fill(module.weight, 0.5, 1.5)
                fill(module.bias, -0.3, 0.3)

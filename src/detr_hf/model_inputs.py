"""What the models accept as input: pixel_values / pixel_mask checks and the forward keywords allowed."""

from __future__ import annotations

import torch

from .tracing import is_tracing

__all__ = ["IGNORED_FORWARD_KWARGS", "check_model_inputs", "reject_unknown_kwargs"]

# Keywords transformers' Trainer may pass to any model's forward; everything else unknown is a caller's typo.
IGNORED_FORWARD_KWARGS = frozenset({"num_items_in_batch"})


def reject_unknown_kwargs(kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - IGNORED_FORWARD_KWARGS)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown} (inputs are pixel_values, pixel_mask, labels)")


def check_model_inputs(
    pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, *, num_channels: int
) -> torch.Tensor:
    """Validate shapes and dtypes; return the mask as bool [B, H, W] (True = pixel)."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values must have shape [batch, {num_channels}, height, width], "
            f"got {tuple(pixel_values.shape)}"
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values must be a float tensor (normalised by the image processor), got {pixel_values.dtype}"
        )
    # One reduction instead of a full boolean copy: any NaN/inf makes the sum non-finite (a finite
    # overflow only sends us to the exact per-image check, which then finds nothing).
    if not is_tracing() and not torch.isfinite(pixel_values.sum()):
        bad = (~torch.isfinite(pixel_values)).flatten(1).any(1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"pixel_values contain NaN or inf in image(s) {bad}")
    batch, _, height, width = pixel_values.shape
    if pixel_mask is None:
        return torch.ones((batch, height, width), dtype=torch.bool, device=pixel_values.device)
    if not isinstance(pixel_mask, torch.Tensor):
        raise TypeError(f"pixel_mask must be a torch.Tensor or None, got {type(pixel_mask).__name__}")
    if pixel_mask.shape != (batch, height, width):
        raise ValueError(
            f"pixel_mask must have shape {(batch, height, width)} to match pixel_values, got {tuple(pixel_mask.shape)}"
        )
    if pixel_mask.is_complex():
        raise TypeError(f"pixel_mask must be a real tensor (1 = pixel, 0 = padding), got {pixel_mask.dtype}")
    if pixel_mask.dtype == torch.bool:
        mask = pixel_mask
    else:
        # int and float masks are accepted as transformers' DETR takes them, but only holding 0 and 1.
        mask = pixel_mask != 0
        invalid = mask & (pixel_mask != 1)  # NaN is != 0 and != 1: invalid too
        if not is_tracing() and invalid.any():
            images = invalid.flatten(1).any(1).nonzero().flatten().tolist()
            example = pixel_mask[invalid][0].item()
            raise ValueError(
                f"pixel_mask must hold only 1 (pixel) and 0 (padding); image(s) {images} hold other values "
                f"(e.g. {example})"
            )
    if not is_tracing() and not mask.flatten(1).any(1).all():
        empty = (~mask.flatten(1).any(1)).nonzero().flatten().tolist()
        raise ValueError(f"pixel_mask has no valid pixel in image(s) {empty}")
    return mask

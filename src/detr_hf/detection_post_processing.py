"""Detection model outputs (`logits`, `pred_boxes`) → scored, absolute boxes per image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .box_ops import denormalize_boxes

__all__ = ["output_field", "post_process_object_detection"]


def output_field(outputs: Any, name: str) -> torch.Tensor:
    """The tensor `name` of a model output (dataclass or dict), or a ValueError saying it is missing."""
    value = outputs.get(name) if isinstance(outputs, Mapping) else getattr(outputs, name, None)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"outputs must carry a '{name}' tensor (a detr_hf model output or a dict)")
    return value


def post_process_object_detection(
    outputs: Any,
    *,
    threshold: float = 0.5,
    target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
    top_k: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Model outputs (`logits` [B, Q, C+1], last = no object; `pred_boxes` [B, Q, 4] normalised cxcywh) →
    one dict per image: `scores` [K], `labels` [K] (int64), `boxes` [K, 4] absolute (x0, y0, x1, y1).

    Score = the best non-"no object" class probability; kept when > `threshold`, sorted best first, at most
    `top_k`. Boxes are scaled to `target_sizes` [(h, w), ...] (usually each image's original size) and
    clipped to the image; without `target_sizes` they stay relative, clipped to [0, 1].
    """
    logits, pred_boxes = output_field(outputs, "logits"), output_field(outputs, "pred_boxes")
    if logits.ndim != 3 or pred_boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(
            f"expected logits [B, Q, C+1] and pred_boxes [B, Q, 4], got {tuple(logits.shape)} and "
            f"{tuple(pred_boxes.shape)}"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    batch = logits.shape[0]
    if target_sizes is None:
        sizes = torch.ones(batch, 2, dtype=torch.float32, device=logits.device)
    else:
        sizes = torch.as_tensor(target_sizes, dtype=torch.float32).to(logits.device).reshape(-1, 2)
        if sizes.shape[0] != batch:
            raise ValueError(
                f"target_sizes has {sizes.shape[0]} entries for a batch of {batch} predictions"
            )

    scores, labels = logits.float().softmax(-1)[..., :-1].max(-1)
    boxes = denormalize_boxes(pred_boxes.float(), sizes)  # [B, Q, 4] absolute xyxy
    upper = sizes.flip(-1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4] = (w, h, w, h)
    boxes = torch.minimum(boxes.clamp(min=0), upper)

    results = []
    for image_scores, image_labels, image_boxes in zip(scores, labels, boxes):
        keep = torch.nonzero(image_scores > threshold).squeeze(1)
        order = image_scores[keep].argsort(descending=True, stable=True)
        keep = keep[order[:top_k] if top_k is not None else order]
        results.append(
            {"scores": image_scores[keep], "labels": image_labels[keep], "boxes": image_boxes[keep]}
        )
    return results

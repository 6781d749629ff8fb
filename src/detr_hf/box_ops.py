"""Box helpers: the one place boxes change format or get (de)normalised."""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["box_convert", "generalized_box_iou", "normalize_boxes", "denormalize_boxes"]


def normalize_boxes(boxes_xyxy: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """Absolute (x0, y0, x1, y1) in an image of `height`×`width` → normalised (cx, cy, w, h).

    The size is the image's own (resized, unpadded) size: a box's value never depends on padding.
    """
    scale = boxes_xyxy.new_tensor([width, height, width, height])
    return box_convert(boxes_xyxy, "xyxy", "cxcywh") / scale


def denormalize_boxes(boxes_cxcywh: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Normalised (cx, cy, w, h) [..., N, 4] → absolute (x0, y0, x1, y1) for `sizes` [..., 2] = (h, w)."""
    h, w = sizes.unbind(-1)
    scale = torch.stack([w, h, w, h], dim=-1).to(boxes_cxcywh.dtype).unsqueeze(-2)
    return box_convert(boxes_cxcywh, "cxcywh", "xyxy") * scale

"""Hungarian matcher: a one-to-one assignment of predicted queries to each image's target boxes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .box_ops import box_convert, generalized_box_iou
from .deprecation import moved_names
from .precision import float32_loss

# Private aliases: the public names below resolve through the deprecation shim, with a warning.
from .targets import check_prediction_shapes as _check_prediction_shapes
from .targets import check_predictions_finite as _check_predictions_finite
from .targets import pack_targets as _pack_targets

if TYPE_CHECKING:
    from .targets import PackedTargets

__all__ = ["HungarianMatcher"]

# The loss-input contract moved to targets.py; its names stay importable from here for one release.
__getattr__ = moved_names(
    __name__,
    {
        "NonFinitePredictionError": "targets.NonFinitePredictionError",
        "PackedTargets": "targets.PackedTargets",
        "check_prediction_shapes": "targets.check_prediction_shapes",
        "check_predictions_finite": "targets.check_predictions_finite",
        "pack_targets": "targets.pack_targets",
    },
)


class HungarianMatcher(nn.Module):
    """Optimal one-to-one matching between queries and targets, solved per image with scipy.

    Cost of assigning query q to target t: class_cost · (−p_q[class_t]) + bbox_cost · L1(box_q, box_t)
    + giou_cost · (−GIoU(box_q, box_t)), with p the softmax over all logits and boxes in normalised
    (cx, cy, w, h) (GIoU on corners). Costs are built per image (work linear in the batch size) and
    carry no gradient. An image without targets matches nothing.
    """

    def __init__(self, class_cost: float = 1.0, bbox_cost: float = 1.0, giou_cost: float = 1.0) -> None:
        super().__init__()
        if min(class_cost, bbox_cost, giou_cost) < 0:
            raise ValueError(f"matcher costs must be >= 0, got {class_cost=}, {bbox_cost=}, {giou_cost=}")
        if class_cost == 0 and bbox_cost == 0 and giou_cost == 0:
            raise ValueError("at least one of class_cost, bbox_cost, giou_cost must be > 0")
        self.class_cost = class_cost
        self.bbox_cost = bbox_cost
        self.giou_cost = giou_cost

    @float32_loss
    @torch.no_grad()
    def forward(
        self, logits: torch.Tensor, pred_boxes: torch.Tensor, labels: Sequence[Mapping[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match one decoder layer's predictions to the labels.

        logits [B, Q, C+1], pred_boxes [B, Q, 4] (cx, cy, w, h); labels: B dicts with `class_labels` [N_i]
        and `boxes` [N_i, 4]. Returns B pairs (query_idx, target_idx), int64 CPU tensors of length
        min(Q, N_i), query indices ascending.
        """
        _check_prediction_shapes(logits, pred_boxes, "the predictions")
        work_dtype = torch.promote_types(pred_boxes.dtype, torch.float32)
        targets = _pack_targets(labels, logits.shape[0], logits.shape[-1] - 1, logits.device, work_dtype)
        _check_predictions_finite(logits[None], pred_boxes[None], ["the predictions"])
        query_idx, target_idx = self.match_layers(logits[None], pred_boxes[None], targets)
        sizes = [min(logits.shape[1], n) for n in targets.counts]
        queries = torch.from_numpy(query_idx[0]).split(sizes)
        return list(zip(queries, torch.from_numpy(target_idx[0]).split(sizes)))

    @float32_loss
    @torch.no_grad()
    def cost_blocks(
        self,
        logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        targets: PackedTargets,
        log_normalizer: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Matching costs of every layer and image: [L, B, Q, N] from logits [L, B, Q, C+1] and pred_boxes
        [L, B, Q, 4]; column t of image b is meaningful for t < counts[b] only. `log_normalizer` [L, B, Q],
        logits.logsumexp(-1), may be passed when the caller has it already."""
        dtype = targets.boxes.dtype
        layers, batch, queries = logits.shape[:3]
        logits = logits.to(dtype)
        if log_normalizer is None:
            log_normalizer = logits.logsumexp(-1)
        ids = targets.padded_labels[None, :, None, :].expand(layers, batch, queries, -1)
        # Softmax probability of each target's class, without materialising the full softmax.
        class_cost = -(logits.gather(-1, ids) - log_normalizer.to(dtype)[..., None]).exp()
        boxes = pred_boxes.to(dtype)
        bbox_cost = torch.cdist(boxes, targets.padded_boxes[None].expand(layers, -1, -1, -1), p=1)
        giou = generalized_box_iou(
            box_convert(boxes, "cxcywh", "xyxy"), box_convert(targets.padded_boxes, "cxcywh", "xyxy")[None]
        )
        return self.bbox_cost * bbox_cost + self.class_cost * class_cost - self.giou_cost * giou

    @torch.no_grad()
    def match_layers(
        self,
        logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        targets: PackedTargets,
        log_normalizer: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Match every stacked layer (logits [L, B, Q, C+1], pred_boxes [L, B, Q, 4]) to validated targets.

        Returns (query_idx, target_idx), int64 arrays [L, M] with M = sum_i min(Q, counts[i]): image 0's
        pairs first, then image 1's, ...; target_idx is the index within its own image.
        """
        layers, _, queries = logits.shape[:3]
        sizes = [min(queries, n) for n in targets.counts]
        query_idx = np.empty((layers, sum(sizes)), dtype=np.int64)
        target_idx = np.empty_like(query_idx)
        if not query_idx.size:
            return query_idx, target_idx
        # One device→host copy for all blocks; scipy wants float64.
        cost = (
            self.cost_blocks(logits, pred_boxes, targets, log_normalizer)
            .to(device="cpu", dtype=torch.float64)
            .numpy()
        )
        for layer in range(layers):
            start = 0
            for image, n in enumerate(targets.counts):
                if n == 0:
                    continue
                rows, cols = linear_sum_assignment(cost[layer, image, :, :n])
                query_idx[layer, start : start + len(rows)] = rows
                target_idx[layer, start : start + len(rows)] = cols
                start += len(rows)
        return query_idx, target_idx

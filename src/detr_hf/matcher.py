"""Hungarian matcher: a one-to-one assignment of predicted queries to each image's target boxes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .box_ops import box_convert, generalized_box_iou

__all__ = [
    "HungarianMatcher",
    "NonFinitePredictionError",
    "PackedTargets",
    "check_predictions_finite",
    "pack_targets",
]


@dataclass
class PackedTargets:
    """Validated targets of one batch.

    class_labels [T] int64 and boxes [T, 4] hold every image's targets concatenated (T = sum of counts);
    padded_labels [B, N] and padded_boxes [B, N, 4] hold the same right-padded to N = max(counts).
    """

    class_labels: torch.Tensor
    boxes: torch.Tensor
    counts: list[int]
    padded_labels: torch.Tensor
    padded_boxes: torch.Tensor


def _check_structure(labels: Sequence[Mapping[str, torch.Tensor]], batch_size: int) -> None:
    if isinstance(labels, Mapping) or not isinstance(labels, Sequence):
        raise TypeError(f"labels must be a list of dicts (one per image), got {type(labels).__name__}")
    if len(labels) != batch_size:
        raise ValueError(f"labels has {len(labels)} dicts but the predictions have batch size {batch_size}")
    for i, target in enumerate(labels):
        if not isinstance(target, Mapping):
            raise TypeError(
                f"labels[{i}] must be a dict with 'class_labels' and 'boxes', got {type(target).__name__}"
            )
        for key in ("class_labels", "boxes"):
            if key not in target:
                raise ValueError(f"labels[{i}] is missing the key {key!r} (it has {sorted(target)})")
            if not isinstance(target[key], torch.Tensor):
                raise TypeError(
                    f"labels[{i}][{key!r}] must be a torch.Tensor, got {type(target[key]).__name__}"
                )
        class_labels, boxes = target["class_labels"], target["boxes"]
        if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool:
            raise TypeError(
                f"labels[{i}]['class_labels'] must be an integer tensor (int64), got {class_labels.dtype}"
            )
        if not boxes.is_floating_point():
            raise TypeError(f"labels[{i}]['boxes'] must be a floating point tensor, got {boxes.dtype}")
        if class_labels.ndim != 1:
            raise ValueError(
                f"labels[{i}]['class_labels'] must have shape [N], got {list(class_labels.shape)}"
            )
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != class_labels.shape[0]:
            raise ValueError(
                f"labels[{i}]['boxes'] must have shape [N, 4] with N = len(class_labels) = {class_labels.shape[0]}, "
                f"got {list(boxes.shape)}"
            )


def _locate(flat_index: int, counts: list[int]) -> tuple[int, int]:
    """Flat index into the concatenated targets → (image index, box index within that image)."""
    ends = np.cumsum(counts)
    image = int(np.searchsorted(ends, flat_index, side="right"))
    return image, flat_index - int(ends[image] - counts[image])


def pack_targets(
    labels: Sequence[Mapping[str, torch.Tensor]],
    batch_size: int,
    num_labels: int,
    device: torch.device,
    dtype: torch.dtype,
) -> PackedTargets:
    """Validate the label dicts (one host sync for all images) and concatenate/pad them on `device`.

    Raises TypeError/ValueError naming the image (and box) index for: wrong container, length, keys,
    dtypes or shapes; class ids outside 0..num_labels-1; boxes that are not normalised (cx, cy, w, h).
    """
    _check_structure(labels, batch_size)
    counts = [int(t["class_labels"].shape[0]) for t in labels]
    class_labels = torch.cat([t["class_labels"].to(device=device, dtype=torch.int64) for t in labels])
    boxes = torch.cat([t["boxes"].to(device=device, dtype=dtype) for t in labels])

    bad_class = (class_labels < 0) | (class_labels >= num_labels)
    bad_box = (
        ~torch.isfinite(boxes).all(-1)
        | (boxes < 0).any(-1)
        | (boxes > 1).any(-1)
        | (boxes[:, 2:] <= 0).any(-1)
    )
    bad = bad_class | bad_box
    if class_labels.numel() and bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        image, box = _locate(first, counts)
        if bool(bad_class[first]):
            raise ValueError(
                f"labels[{image}]['class_labels'][{box}] = {int(class_labels[first])} is outside 0..{num_labels - 1} "
                f"(num_labels = {num_labels}; the extra 'no object' logit is not a valid target class)"
            )
        raise ValueError(
            f"labels[{image}]['boxes'][{box}] = {boxes[first].tolist()} is not a normalised (cx, cy, w, h) box: "
            "values must be finite and in [0, 1] with w > 0 and h > 0, relative to the image's own unpadded size "
            "(absolute pixels or (x0, y0, x1, y1) boxes are a common cause)"
        )

    padded_labels = nn.utils.rnn.pad_sequence(list(class_labels.split(counts)), batch_first=True)
    # Padding columns are never read by the assignment; a valid box keeps their costs finite.
    padded_boxes = nn.utils.rnn.pad_sequence(list(boxes.split(counts)), batch_first=True, padding_value=0.5)
    return PackedTargets(class_labels, boxes, counts, padded_labels, padded_boxes)


class NonFinitePredictionError(ValueError):
    """Predictions contain NaN or inf: training has diverged (training loops may skip the step)."""


def check_predictions_finite(
    logits: torch.Tensor, pred_boxes: torch.Tensor, layer_names: Sequence[str]
) -> None:
    """Raise ValueError naming the tensor, decoder layer and image if a prediction is NaN or infinite.

    logits [L, B, Q, C+1] and pred_boxes [L, B, Q, 4] stack the decoder layers named by `layer_names`.
    """
    # A NaN or inf anywhere makes the sum non-finite: one cheap reduction, the full scan only on failure.
    if bool(torch.isfinite(logits.sum() + pred_boxes.sum())):
        return
    bad = torch.stack([~torch.isfinite(t).flatten(2).all(-1) for t in (logits, pred_boxes)])  # [2, L, B]
    if not bool(bad.any()):
        return  # finite values whose sum overflowed
    which, layer, image = (int(v) for v in bad.nonzero()[0])
    tensor = ("logits", "pred_boxes")[which]
    raise NonFinitePredictionError(
        f"{tensor} of {layer_names[layer]} contain NaN or infinite values (image {image}): training has diverged "
        "(lower the learning rate, clip gradients, or check the inputs for NaN)"
    )


def check_prediction_shapes(logits: torch.Tensor, pred_boxes: torch.Tensor, name: str) -> None:
    """Raise TypeError/ValueError unless logits is [B, Q, C+1] and pred_boxes [B, Q, 4], both floating point."""
    for tensor_name, tensor in (("logits", logits), ("pred_boxes", pred_boxes)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise TypeError(f"{tensor_name} of {name} must be a floating point tensor, got {kind}")
    if logits.ndim != 3 or logits.shape[-1] < 2:
        raise ValueError(
            f"logits of {name} must have shape [batch, queries, num_labels + 1], got {list(logits.shape)}"
        )
    if pred_boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(
            f"pred_boxes of {name} must have shape [batch, queries, 4] = {[*logits.shape[:2], 4]}, "
            f"got {list(pred_boxes.shape)}"
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

    @torch.no_grad()
    def forward(
        self, logits: torch.Tensor, pred_boxes: torch.Tensor, labels: Sequence[Mapping[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match one decoder layer's predictions to the labels.

        logits [B, Q, C+1], pred_boxes [B, Q, 4] (cx, cy, w, h); labels: B dicts with `class_labels` [N_i]
        and `boxes` [N_i, 4]. Returns B pairs (query_idx, target_idx), int64 CPU tensors of length
        min(Q, N_i), query indices ascending.
        """
        check_prediction_shapes(logits, pred_boxes, "the predictions")
        work_dtype = torch.promote_types(pred_boxes.dtype, torch.float32)
        targets = pack_targets(labels, logits.shape[0], logits.shape[-1] - 1, logits.device, work_dtype)
        check_predictions_finite(logits[None], pred_boxes[None], ["the predictions"])
        query_idx, target_idx = self.match_layers(logits[None], pred_boxes[None], targets)
        sizes = [min(logits.shape[1], n) for n in targets.counts]
        queries = torch.from_numpy(query_idx[0]).split(sizes)
        return list(zip(queries, torch.from_numpy(target_idx[0]).split(sizes)))

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

"""Segmentation model outputs (`logits`, `pred_masks`) → panoptic, semantic and instance predictions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .detection_post_processing import output_field

__all__ = [
    "binary_mask_to_rle",
    "post_process_instance_segmentation",
    "post_process_panoptic_segmentation",
    "post_process_semantic_segmentation",
    "segmentation_to_rle",
]


def _logits_and_masks(outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    logits, masks = output_field(outputs, "logits"), output_field(outputs, "pred_masks")
    if logits.ndim != 3 or masks.ndim != 4 or masks.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, Q, C+1] and pred_masks [B, Q, h, w], got {tuple(logits.shape)} and "
            f"{tuple(masks.shape)}"
        )
    return logits.float(), masks.float()


def _sizes(target_sizes: Any, batch: int) -> list[tuple[int, int] | None]:
    if target_sizes is None:
        return [None] * batch
    if isinstance(target_sizes, torch.Tensor):
        target_sizes = target_sizes.tolist()
    sizes = [tuple(int(v) for v in size) for size in target_sizes]
    if len(sizes) != batch:
        raise ValueError(f"target_sizes has {len(sizes)} entries for a batch of {batch} predictions")
    for i, size in enumerate(sizes):
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"target_sizes[{i}] must be a positive (height, width), got {target_sizes[i]!r}")
    return sizes


def _check_fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _segments(
    mask_probs: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    label_ids_to_fuse: set[int],
    target_size: tuple[int, int] | None,
) -> tuple[torch.Tensor, list[dict]]:
    """Kept queries' mask probabilities [K, h, w] → id map [H, W] (0 = no segment) and segments_info.

    Each pixel goes to the query with the highest score-weighted mask probability; a query becomes a segment
    when the pixels it wins are more than `overlap_mask_area_threshold` of its own area (its weighted
    probability ≥ `mask_threshold`). Queries of a fused label share one segment id.
    """
    if target_size is not None:
        mask_probs = F.interpolate(mask_probs[None], size=target_size, mode="bilinear", align_corners=False)
        mask_probs = mask_probs[0]
    # `mask_probs` is this function's own copy (boolean indexing or interpolation made it): weigh in place.
    weighted = mask_probs.mul_(scores[:, None, None])  # [K, H, W]
    owner = weighted.max(0).indices  # [H, W] the winning query (the first one on ties, as argmax)
    won_area = torch.bincount(owner.flatten(), minlength=len(scores))  # [K]
    # One reduction per query: measured ~5x faster on CPU than one batched bool sum over [K, H*W].
    own_area = torch.stack([(weighted[k] >= mask_threshold).sum() for k in range(len(scores))])  # [K]
    # The won / own ratio in float32, as transformers computes it: with threshold 0.8, 4 of 5 pixels passes.
    ratio = won_area.float() / own_area.float().clamp(min=1)

    segment_of_query = torch.zeros(len(scores), dtype=torch.int32)  # 0 = the query is no segment
    segments_info: list[dict] = []
    fused_ids: dict[int, int] = {}
    next_id = 0
    for k, (label, score, won, own, share) in enumerate(
        zip(labels.tolist(), scores.tolist(), won_area.tolist(), own_area.tolist(), ratio.tolist())
    ):
        if won == 0 or own == 0 or not share > overlap_mask_area_threshold:
            continue
        fuse = label in label_ids_to_fuse
        if label in fused_ids:
            segment_id = fused_ids[label]
        else:
            next_id += 1
            segment_id = next_id
        if fuse:
            fused_ids[label] = segment_id
        segment_of_query[k] = segment_id
        segments_info.append(
            {"id": segment_id, "label_id": label, "was_fused": fuse, "score": round(score, 6)}
        )
    segmentation = segment_of_query.to(owner.device)[owner]  # [H, W]
    return segmentation, segments_info


def _panoptic_like(
    outputs: Any,
    *,
    threshold: float,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    label_ids_to_fuse: Iterable[int] | None,
    target_sizes: Any,
) -> list[tuple[torch.Tensor, list[dict]]]:
    logits, masks = _logits_and_masks(outputs)
    threshold = _check_fraction(threshold, "threshold")
    mask_threshold = _check_fraction(mask_threshold, "mask_threshold")
    overlap = _check_fraction(overlap_mask_area_threshold, "overlap_mask_area_threshold")
    fuse = {int(label) for label in (label_ids_to_fuse or ())}
    sizes = _sizes(target_sizes, logits.shape[0])
    no_object = logits.shape[-1] - 1
    # The best class over all classes, "no object" included: a query whose best class is "no object" is dropped.
    scores, labels = logits.softmax(-1).max(-1)  # [B, Q]
    mask_probs = masks.sigmoid()  # [B, Q, h, w]
    results = []
    for i, size in enumerate(sizes):
        keep = (labels[i] != no_object) & (scores[i] > threshold)
        if not keep.any():
            height, width = size if size is not None else masks.shape[-2:]
            results.append((torch.full((height, width), -1, dtype=torch.int32, device=masks.device), []))
            continue
        results.append(
            _segments(
                mask_probs[i][keep],
                scores[i][keep],
                labels[i][keep],
                mask_threshold=mask_threshold,
                overlap_mask_area_threshold=overlap,
                label_ids_to_fuse=fuse,
                target_size=size,
            )
        )
    return results


def post_process_panoptic_segmentation(
    outputs: Any,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse: Iterable[int] | None = None,
    target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Outputs with `logits` [B, Q, C+1] (last = no object) and `pred_masks` [B, Q, h, w] (mask logits) → one
    dict per image: `segmentation` int32 [H, W] segment ids (0 = no segment; all -1 when no query passes
    `threshold`) and `segments_info` [{"id", "label_id", "was_fused", "score"}].

    A query is kept when its best class (of all, "no object" included) is a real class with probability >
    `threshold`. Masks are resized (bilinear) to `target_sizes[i]` (h, w) when given. Every query of a label in
    `label_ids_to_fuse` (e.g. a "stuff" class such as sky) joins one segment; `segments_info` has one entry per
    kept query, so a fused segment's id appears once per query that joined it.

    Same results as transformers' `DetrImageProcessor.post_process_panoptic_segmentation`, except that ids
    are numbered 1, 2, ... in order of appearance without collisions: transformers continues counting from a
    fused segment's id, so a later segment can receive an id that another label already holds.
    """
    results = _panoptic_like(
        outputs,
        threshold=threshold,
        mask_threshold=mask_threshold,
        overlap_mask_area_threshold=overlap_mask_area_threshold,
        label_ids_to_fuse=label_ids_to_fuse,
        target_sizes=target_sizes,
    )
    return [{"segmentation": seg, "segments_info": info} for seg, info in results]


def post_process_instance_segmentation(
    outputs: Any,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
    return_coco_annotation: bool = False,
    *,
    return_binary_maps: bool = False,
) -> list[dict[str, Any]]:
    """Like `post_process_panoptic_segmentation` without fusing: one segment per kept query; `segments_info`
    entries are {"id", "label_id", "was_fused" (False), "score"}.

    `segmentation` is the [H, W] id map (0 = background), or with `return_coco_annotation` one run-length
    encoding per distinct value of that map (background included), as transformers returns it. With
    `return_binary_maps` (detr_hf extension) it is a bool [N, H, W] tensor, mask n for `segments_info[n]`.
    """
    if return_coco_annotation and return_binary_maps:
        raise ValueError("return_coco_annotation and return_binary_maps are exclusive; choose one")
    results = []
    for segmentation, info in _panoptic_like(
        outputs,
        threshold=threshold,
        mask_threshold=mask_threshold,
        overlap_mask_area_threshold=overlap_mask_area_threshold,
        label_ids_to_fuse=None,
        target_sizes=target_sizes,
    ):
        if return_binary_maps:
            ids = torch.tensor([s["id"] for s in info], dtype=segmentation.dtype, device=segmentation.device)
            segmentation = segmentation[None] == ids[:, None, None]  # [N, H, W]
        elif return_coco_annotation:
            segmentation = segmentation_to_rle(segmentation)
        results.append({"segmentation": segmentation, "segments_info": info})
    return results


def post_process_semantic_segmentation(
    outputs: Any,
    target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
    return_segmentation_scores: bool = False,
) -> list[Any]:
    """Per-pixel class maps: class score map [C, h, w] = Σ_q softmax(logits)[q, :C] · sigmoid(mask_q), resized
    (bilinear) to `target_sizes[i]` when given, argmax over classes → int64 [H, W] per image.

    With `return_segmentation_scores` each item is {"segmentation", "segmentation_scores" [C, H, W]}.
    """
    logits, masks = _logits_and_masks(outputs)
    sizes = _sizes(target_sizes, logits.shape[0])
    class_probs = logits.softmax(-1)[..., :-1]  # [B, Q, C]
    class_maps = torch.einsum("bqc,bqhw->bchw", class_probs, masks.sigmoid())  # [B, C, h, w]
    results: list[Any] = []
    for i, size in enumerate(sizes):
        scores = class_maps[i]
        if size is not None:
            scores = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
        segmentation = scores.argmax(0)
        results.append(
            {"segmentation": segmentation, "segmentation_scores": scores}
            if return_segmentation_scores
            else segmentation
        )
    return results


def binary_mask_to_rle(mask: torch.Tensor | np.ndarray) -> list[int]:
    """Bool [H, W] mask → uncompressed run lengths in row-major order as [start, length, start, length, ...]
    (1-based starts of the True runs), the encoding transformers' post-processing returns."""
    flat = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool).ravel()
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flat, [False]]).astype(np.int8))) + 1
    edges[1::2] -= edges[::2]
    return edges.tolist()


def segmentation_to_rle(segmentation: torch.Tensor) -> list[list[int]]:
    """Id map [H, W] → one `binary_mask_to_rle` per distinct id, in increasing id order."""
    return [binary_mask_to_rle(segmentation == value) for value in torch.unique(segmentation)]

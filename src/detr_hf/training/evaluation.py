"""COCO mAP evaluation loop: predictions in ORIGINAL image pixels, gathered across processes before the metric."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from detr_hf.coco_evaluation import compute_coco_map

__all__ = ["evaluate_coco", "predictions_to_original"]


def predictions_to_original(
    processor: Any, outputs: Any, orig_size: torch.Tensor, threshold: float = 0.0, top_k: int | None = None
) -> list[dict[str, list]]:
    """Model outputs → per-image {"boxes" absolute xyxy, "scores", "labels"} (plain lists) in original pixels.

    `orig_size` [B, 2] = each image's original (h, w). Normalised boxes are relative to the image's own
    (unpadded) size, so scaling by the original size undoes any resize. The recipe keeps every query
    (threshold 0).
    """
    results = processor.post_process_object_detection(
        outputs, threshold=threshold, target_sizes=orig_size, top_k=top_k
    )
    return [{key: value.tolist() for key, value in result.items()} for result in results]


@torch.no_grad()
def evaluate_coco(
    model: nn.Module,
    dataloader: Iterable[dict],
    processor: Any,
    accelerator: Any | None = None,
    show_progress: bool = False,
    predictions_out: list | None = None,
) -> dict[str, float]:
    """COCO box AP/AR (+ mean `eval_loss`) of `model` on a dataloader of `DetectionCollator` batches.

    With an `accelerator`, every process evaluates its shard, the per-image records are gathered with
    `gather_object`, duplicated rows (even-batch padding) are dropped by dataset index, and every process
    returns the same metrics. The model is left in eval mode; callers switch back to train().
    `predictions_out`, if given, receives (dataset index, prediction) pairs in index order.
    """
    model.eval()
    records: list[tuple[int, dict, dict]] = []
    loss_sum, loss_batches = 0.0, 0
    if show_progress:
        from tqdm.auto import tqdm

        dataloader = tqdm(dataloader, desc="eval", leave=False)
    for batch in dataloader:
        outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"])
        if outputs.loss is not None and math.isfinite(float(outputs.loss)):
            loss_sum += float(outputs.loss)
            loss_batches += 1
        preds = predictions_to_original(processor, outputs, batch["orig_size"])
        records.extend(zip(batch["index"], preds, batch["orig_target"]))
    totals = torch.tensor([loss_sum, loss_batches], dtype=torch.float64)
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        records = gather_object(records)
        totals = accelerator.reduce(totals.to(accelerator.device), "sum").cpu()
    unique = {index: (pred, ref) for index, pred, ref in records}
    ordered = [unique[i] for i in sorted(unique)]
    if predictions_out is not None:
        predictions_out.extend((i, unique[i][0]) for i in sorted(unique))
    metrics = compute_coco_map([p for p, _ in ordered], [r for _, r in ordered])
    metrics["num_images"] = float(len(ordered))
    if totals[1] > 0:
        metrics["eval_loss"] = float(totals[0] / totals[1])
    return metrics

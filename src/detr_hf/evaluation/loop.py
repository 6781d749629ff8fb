"""COCO evaluation loop: detections in ORIGINAL image pixels, gathered across processes, scored on the split's
COCO ground truth by the official protocol."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from detr_hf.evaluation.coco_protocol import detections_to_results, evaluate_results
from detr_hf.evaluation.ground_truth import ground_truth_of

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
    *,
    ground_truth: dict | None = None,
    category_ids: list[int] | None = None,
) -> dict[str, float]:
    """COCO box AP/AR (+ mean `eval_loss`, `num_images`) of `model` on a dataloader of `DetectionCollator`
    batches over a `DetectionDataset`.

    The score is COCOeval's on `ground_truth` (default: the split's own, see `ground_truth_of`: for a COCO
    folder the annotation file itself, crowd regions included) and the detections in the COCO results
    format, category ids as the dataset names them (`category_ids[label]`, default the dataset's). With an
    `accelerator`, every process evaluates its shard, the per-image records are gathered with
    `gather_object`, duplicated rows (even-batch padding) are dropped by dataset index, and every process
    returns the same metrics. The model is left in eval mode; callers switch back to train().
    `predictions_out`, if given, receives the COCO results entries (what `eval_predictions.json` holds).
    """
    dataset = getattr(dataloader, "dataset", None)
    if ground_truth is None:
        ground_truth = ground_truth_of(dataset)
    if category_ids is None:
        category_ids = list(dataset.category_ids)
    model.eval()
    records: list[tuple[int, int, dict]] = []
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
        records.extend(zip(batch["index"], batch["image_id"], preds))
    totals = torch.tensor([loss_sum, loss_batches], dtype=torch.float64)
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        records = gather_object(records)
        totals = accelerator.reduce(totals.to(accelerator.device), "sum").cpu()
    unique = {index: (image_id, pred) for index, image_id, pred in records}
    results = [
        entry for i in sorted(unique) for entry in detections_to_results(unique[i][0], unique[i][1], category_ids)
    ]
    if predictions_out is not None:
        predictions_out.extend(results)
    metrics = evaluate_results(ground_truth, results)
    metrics["num_images"] = float(len({image_id for image_id, _ in unique.values()}))
    if totals[1] > 0:
        metrics["eval_loss"] = float(totals[0] / totals[1])
    return metrics

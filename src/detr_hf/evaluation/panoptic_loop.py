"""Panoptic evaluation loop: PQ / SQ / RQ (all, things, stuff) of a segmentation model on a `PanopticDataset`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from detr_hf.panoptic_quality import add_statistics, panoptic_statistics, summarize_panoptic_statistics
from detr_hf.segmentation_post_processing import post_process_panoptic_segmentation

__all__ = ["PANOPTIC_THRESHOLD", "evaluate_panoptic", "panoptic_predictions"]

# DETR's panoptic post-processing keeps queries whose best real class has probability > 0.85.
PANOPTIC_THRESHOLD = 0.85


def panoptic_predictions(
    outputs: Any, labels: list[dict], *, stuff_labels: list[int], category_ids: list[int], threshold: float
) -> list[dict[str, Any]]:
    """Model outputs of a padded batch → per-image {"segmentation" [h, w] at the ORIGINAL size, "segments_info"
    [{"id", "category_id"}]}. Each image's masks [Q, h_4, w_4] are first cut to its unpadded region
    (`labels[i]["size"]` of the padded `pixel_values`), then post-processed (stuff classes fused)."""
    masks = outputs["pred_masks"] if isinstance(outputs, dict) else outputs.pred_masks
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    padded = max(int(label["size"][0]) for label in labels), max(int(label["size"][1]) for label in labels)
    predictions = []
    for i, label in enumerate(labels):
        height, width = (int(v) for v in label["size"])
        rows = max(1, round(height * masks.shape[-2] / padded[0]))
        cols = max(1, round(width * masks.shape[-1] / padded[1]))
        result = post_process_panoptic_segmentation(
            {"logits": logits[i : i + 1], "pred_masks": masks[i : i + 1, :, :rows, :cols]},
            threshold=threshold,
            label_ids_to_fuse=stuff_labels,
            target_sizes=[label["orig_size"].tolist()],
        )[0]
        info = [{"id": s["id"], "category_id": category_ids[s["label_id"]]} for s in result["segments_info"]]
        predictions.append({"segmentation": result["segmentation"].cpu(), "segments_info": info})
    return predictions


@torch.no_grad()
def evaluate_panoptic(
    model: nn.Module,
    dataloader: Iterable[dict],
    dataset: Any,
    accelerator: Any | None = None,
    *,
    threshold: float = PANOPTIC_THRESHOLD,
) -> dict[str, float]:
    """PQ, SQ, RQ and their things (`_th`) / stuff (`_st`) parts in [0, 1] (+ mean `eval_loss`, `num_images`)
    of `model` on `DetectionCollator` batches of the `PanopticDataset` `dataset`, scored on its PNG ground
    truth at the original size (crowd segments included, as panopticapi scores).

    With an `accelerator`, each process scores its shard, the per-image counts are gathered (`gather_object`)
    and deduplicated by image id, and every process returns the same metrics. The model is left in eval mode.
    """
    folder = dataset.dataset
    model.eval()
    records: list[tuple[int, dict]] = []
    loss_sum, loss_batches = 0.0, 0
    for batch in dataloader:
        outputs = model(
            pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"]
        )
        if outputs.loss is not None and math.isfinite(float(outputs.loss)):
            loss_sum += float(outputs.loss)
            loss_batches += 1
        predictions = panoptic_predictions(
            outputs, batch["labels"], stuff_labels=folder.stuff_labels, category_ids=folder.category_ids,
            threshold=threshold,
        )  # fmt: skip
        for label, prediction in zip(batch["labels"], predictions):
            image_id = int(label["image_id"].reshape(-1)[0])
            records.append((image_id, panoptic_statistics(prediction, folder.reference(image_id), image_id)))
    totals = torch.tensor([loss_sum, loss_batches], dtype=torch.float64)
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        records = gather_object(records)
        totals = accelerator.reduce(totals.to(accelerator.device), "sum").cpu()
    summed: dict[int, list[float]] = {}
    for stats in dict(records).values():
        add_statistics(summed, stats)
    metrics = {
        key: float(value) for key, value in summarize_panoptic_statistics(summed, folder.categories).items()
    }
    metrics["num_images"] = float(len(dict(records)))
    if totals[1] > 0:
        metrics["eval_loss"] = float(totals[0] / totals[1])
    return metrics

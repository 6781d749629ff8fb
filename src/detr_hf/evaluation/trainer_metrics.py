"""`compute_metrics` for the transformers Trainer: the same COCO protocol as `evaluate_coco`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from detr_hf.evaluation.coco_metric import compute_coco_map
from detr_hf.evaluation.coco_protocol import detections_to_results, evaluate_results
from detr_hf.evaluation.ground_truth import ground_truth_of
from detr_hf.evaluation.loop import predictions_to_original

__all__ = ["CocoTrainerMetrics"]


class CocoTrainerMetrics:
    """Per-batch (logits, pred_boxes) and label dicts (`image_id`, `orig_size` = original (h, w)) → COCO AP/AR.

    With `dataset` (the evaluated `DetectionDataset`) the detections are scored on its COCO ground truth
    (crowd regions and annotation areas kept, category ids as the dataset names them) and kept in
    `last_results` (COCO results format). Without, the label dicts themselves are the references.
    Needs `eval_do_concat_batches=False`. Accelerate cuts every tensor of the last, partial batch to the
    remainder (`gather_for_metrics`), label dicts included: a cut `orig_size` is taken from the ground truth.
    """

    def __init__(self, processor: Any, dataset: Any | None = None) -> None:
        self.processor = processor
        self.dataset = dataset
        self.last_results: list[dict] = []

    def _orig_size(self, label: dict, sizes: dict) -> torch.Tensor:
        if label["orig_size"].shape == (2,):
            return label["orig_size"]
        image_id = int(label["image_id"].reshape(-1)[0])
        if image_id not in sizes:
            raise ValueError(f"image_id {image_id}: original size unknown (its label dict was cut, no width/height)")
        return torch.tensor(sizes[image_id])

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        ground_truth = ground_truth_of(self.dataset) if self.dataset is not None else {"images": []}
        sizes = {img["id"]: (img["height"], img["width"]) for img in ground_truth["images"] if "height" in img and "width" in img}
        detections, labels_seen = {}, []
        for batch_preds, batch_labels in zip(eval_pred.predictions, eval_pred.label_ids):
            logits, pred_boxes = (torch.as_tensor(np.asarray(v)) for v in batch_preds[:2])
            labels = [{k: torch.as_tensor(np.asarray(v)) for k, v in label.items()} for label in batch_labels]
            orig_size = torch.stack([self._orig_size(label, sizes) for label in labels])
            outputs = {"logits": logits, "pred_boxes": pred_boxes}
            for label, pred in zip(labels, predictions_to_original(self.processor, outputs, orig_size)):
                labels_seen.append((label, pred))
                if "image_id" in label:
                    detections[int(label["image_id"].reshape(-1)[0])] = pred
        if self.dataset is None:
            references = [
                {"boxes": lb["boxes"], "class_labels": lb["class_labels"], "orig_size": lb["orig_size"]}
                for lb, _ in labels_seen
            ]
            return compute_coco_map([pred for _, pred in labels_seen], references)
        category_ids = list(self.dataset.category_ids)
        self.last_results = [
            entry for image_id, pred in detections.items() for entry in detections_to_results(image_id, pred, category_ids)
        ]
        metrics = evaluate_results(ground_truth, self.last_results)
        metrics["num_images"] = float(len(detections))
        return metrics

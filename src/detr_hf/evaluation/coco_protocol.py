"""The official COCO box protocol: detections in the COCO results format, scored by COCOeval on a ground truth."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from faster_coco_eval import COCO, COCOeval_faster

__all__ = ["COCO_METRIC_NAMES", "detections_to_results", "evaluate_results"]

logger = logging.getLogger(__name__)

# Order of COCOeval.stats for iouType "bbox" with the default maxDets (1, 10, 100).
COCO_METRIC_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


def detections_to_results(image_id: int, detection: Mapping[str, Sequence], category_ids: Sequence[int]) -> list[dict]:
    """One image's detections {"boxes" absolute xyxy, "scores", "labels" (model label ids)} → COCO results
    entries {"image_id", "category_id" (the dataset's own id of each label), "bbox" [x, y, w, h], "score"}."""
    results = []
    for box, score, label in zip(detection["boxes"], detection["scores"], detection["labels"]):
        label = int(label)
        if not 0 <= label < len(category_ids):
            raise ValueError(f"image_id {image_id}: label {label} has no category id (known labels 0..{len(category_ids) - 1})")
        x0, y0, x1, y1 = (float(v) for v in box)
        results.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_ids[label]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(score),
            }
        )
    return results


def _check_results(results: Sequence[Mapping[str, Any]], image_ids: set) -> None:
    for k, res in enumerate(results):
        if res["image_id"] not in image_ids:
            raise ValueError(f"results[{k}]: image_id {res['image_id']!r} is not an image of the ground truth")
        if len(res["bbox"]) != 4 or not all(math.isfinite(v) for v in res["bbox"]):
            raise ValueError(f"results[{k}] (image_id {res['image_id']}): bbox {res['bbox']!r} is not 4 finite numbers")


def _detections_dataset(ground_truth: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> dict:
    """The results as a COCO dataset, built as pycocotools' `loadRes` builds it for boxes (ids from 1,
    area = w·h, iscrowd 0), so scores equal a pycocotools run on the same json files."""
    annotations = []
    for k, res in enumerate(results):
        x, y, w, h = (float(v) for v in res["bbox"])
        annotations.append(
            {
                "id": k + 1,
                "image_id": res["image_id"],
                "category_id": int(res["category_id"]),
                "bbox": [x, y, w, h],
                "score": float(res["score"]),
                "area": w * h,
                "iscrowd": 0,
            }
        )
    return {"images": list(ground_truth["images"]), "categories": list(ground_truth["categories"]), "annotations": annotations}


def evaluate_results(ground_truth: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """COCO box AP/AR (`COCO_METRIC_NAMES`) of `results` (COCO results format) on `ground_truth` (a COCO
    annotation dict, crowd regions and areas as given): COCOeval with its default parameters, every image
    and category of the ground truth. A value is -1.0 where COCO leaves it undefined."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(ground_truth.get(key), list):
            raise ValueError(f"ground truth: missing or invalid top-level list {key!r}")
    if not ground_truth["images"] or not ground_truth["categories"]:
        return dict.fromkeys(COCO_METRIC_NAMES, -1.0)
    _check_results(results, {img["id"] for img in ground_truth["images"]})
    quiet = logger.debug
    coco_gt = COCO(dict(ground_truth), print_function=quiet)
    coco_dt = COCO(_detections_dataset(ground_truth, results), print_function=quiet)
    evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=quiet)
    evaluator.run()
    return {name: float(v) for name, v in zip(COCO_METRIC_NAMES, evaluator.stats)}

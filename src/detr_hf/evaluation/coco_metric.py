"""COCO box mAP of position-paired predictions and references, as a function and as an offline `evaluate.Metric`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
import torch

from detr_hf.box_ops import box_convert, denormalize_boxes
from detr_hf.evaluation.coco_protocol import COCO_METRIC_NAMES, evaluate_results

__all__ = [
    "COCO_METRIC_NAMES",
    "CocoMeanAveragePrecision",
    "compute_coco_map",
    "normalize_prediction",
    "normalize_reference",
]

def _plain(value: Any) -> list:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    return list(value)


def _check_boxes(boxes: list, where: str) -> list[list[float]]:
    for k, box in enumerate(boxes):
        if len(box) != 4:
            raise ValueError(f"{where}: box {k} has {len(box)} values, expected 4 (x0, y0, x1, y1)")
        if not all(math.isfinite(v) for v in box):
            raise ValueError(f"{where}: box {k} is not finite: {box}")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"{where}: box {k} = {box} has x1 < x0 or y1 < y0 (expected absolute xyxy)")
    return [[float(v) for v in box] for box in boxes]


def _check_lengths(where: str, **columns: list) -> None:
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{where}: per-box fields differ in length: {lengths}")


def normalize_prediction(prediction: dict, index: int = 0) -> dict[str, list]:
    """One image's detections → {"boxes" absolute xyxy, "scores", "labels"} as plain lists.

    Accepts `post_process_object_detection`'s dicts (tensors) or the same keys as lists.
    """
    where = f"prediction {index}"
    if not isinstance(prediction, dict) or not {"boxes", "scores", "labels"} <= prediction.keys():
        raise ValueError(f"{where}: expected a dict with 'boxes' (xyxy), 'scores', 'labels'")
    boxes = _check_boxes(_plain(prediction["boxes"]), where)
    scores = [float(s) for s in _plain(prediction["scores"])]
    labels = [int(c) for c in _plain(prediction["labels"])]
    _check_lengths(where, boxes=boxes, scores=scores, labels=labels)
    return {"boxes": boxes, "scores": scores, "labels": labels}


def _convert(boxes: list[list[float]], in_fmt: str, out_fmt: str) -> list[list[float]]:
    """Box lists through the package's one conversion helper (float64, so COCO numbers stay exact)."""
    return box_convert(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), in_fmt, out_fmt).tolist()


def _box_areas(boxes: list[list[float]]) -> list[float]:
    return [w * h for _, _, w, h in _convert(boxes, "xyxy", "xywh")]


def normalize_reference(reference: dict, index: int = 0) -> dict[str, list]:
    """One image's ground truth, in ORIGINAL image pixels → {"boxes" xyxy, "labels", "area", "iscrowd"}.

    Accepted forms (chosen by keys):
      - COCO: {"annotations": [{"bbox" xywh, "category_id", "area"?, "iscrowd"?}, ...], ...};
      - absolute: {"boxes" xyxy, "labels", "area"?, "iscrowd"?};
      - label dicts: {"boxes" normalised cxcywh, "class_labels", "orig_size" (h, w)}: scaled to orig_size.
    A missing area is the box area. The image's own id is not used: images are paired by position.
    """
    where = f"reference {index}"
    if not isinstance(reference, dict):
        raise ValueError(f"{where}: expected a dict, got {type(reference).__name__}")
    if "annotations" in reference:
        anns = reference["annotations"]
        for k, ann in enumerate(anns):
            if "bbox" not in ann or "category_id" not in ann:
                raise ValueError(f"{where}: annotation {k} lacks 'bbox' or 'category_id'")
            if len(ann["bbox"]) != 4:
                raise ValueError(
                    f"{where}: annotation {k} bbox has {len(ann['bbox'])} values, expected 4 (x, y, w, h)"
                )
        boxes = _check_boxes(_convert([a["bbox"] for a in anns], "xywh", "xyxy"), where)
        labels = [int(a["category_id"]) for a in anns]
        area = [float(a["area"]) if a.get("area") is not None else None for a in anns]
        area = [a if a is not None else b for a, b in zip(area, _box_areas(boxes))]
        return {
            "boxes": boxes,
            "labels": labels,
            "area": area,
            "iscrowd": [int(a.get("iscrowd", 0)) for a in anns],
        }
    if "boxes" in reference and "class_labels" in reference:
        if "orig_size" not in reference:
            raise ValueError(f"{where}: label dict (normalised boxes) needs 'orig_size' to scale to pixels")
        cxcywh = torch.as_tensor(reference["boxes"], dtype=torch.float64).reshape(-1, 4)
        size = torch.as_tensor(reference["orig_size"], dtype=torch.float64)
        boxes = _check_boxes(denormalize_boxes(cxcywh, size).tolist(), where)
        labels = [int(c) for c in _plain(reference["class_labels"])]
        _check_lengths(where, boxes=boxes, class_labels=labels)
        return {"boxes": boxes, "labels": labels, "area": _box_areas(boxes), "iscrowd": [0] * len(boxes)}
    if "boxes" in reference and "labels" in reference:
        boxes = _check_boxes(_plain(reference["boxes"]), where)
        labels = [int(c) for c in _plain(reference["labels"])]
        area = (
            [float(a) for a in _plain(reference["area"])]
            if reference.get("area") is not None
            else _box_areas(boxes)
        )
        iscrowd = [int(c) for c in _plain(reference.get("iscrowd", [0] * len(boxes)))]
        _check_lengths(where, boxes=boxes, labels=labels, area=area, iscrowd=iscrowd)
        return {"boxes": boxes, "labels": labels, "area": area, "iscrowd": iscrowd}
    raise ValueError(
        f"{where}: unknown format (keys {sorted(reference)}); expected 'annotations', "
        "'boxes'+'labels', or 'boxes'+'class_labels'+'orig_size'"
    )


def _coco_ground_truth(references: list[dict]) -> dict:
    """References as a COCO ground truth; image i is reference i (annotation ids from 1: COCOeval
    treats an annotation id of 0 as "unmatched")."""
    images = [{"id": i} for i in range(len(references))]
    categories = [{"id": c, "name": str(c)} for c in sorted({c for r in references for c in r["labels"]})]
    annotations = []
    for i, ref in enumerate(references):
        xywh_boxes = _convert(ref["boxes"], "xyxy", "xywh")
        for box, label, area, crowd in zip(xywh_boxes, ref["labels"], ref["area"], ref["iscrowd"]):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": label, "bbox": box, "area": area,
                 "iscrowd": crowd}
            )  # fmt: skip
    return {"images": images, "categories": categories, "annotations": annotations}


def _results(predictions: list[dict]) -> list[dict]:
    return [
        {"image_id": i, "category_id": label, "bbox": xywh, "score": score}
        for i, pred in enumerate(predictions)
        for xywh, score, label in zip(_convert(pred["boxes"], "xyxy", "xywh"), pred["scores"], pred["labels"])
    ]


def compute_coco_map(predictions: Sequence[dict], references: Sequence[dict]) -> dict[str, float]:
    """COCO box AP/AR (`COCO_METRIC_NAMES`) of per-image predictions against per-image references.

    predictions[i] and references[i] describe the same image, both in ORIGINAL image pixels; see
    `normalize_prediction` / `normalize_reference` for the accepted forms. Crowd references are ignored as
    COCOeval does. Images without ground truth or without detections are fine. As in COCO, a value is -1.0
    when undefined (e.g. no ground truth in that area range). Category ids are used as given.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references (one of each per image)"
        )
    preds = [normalize_prediction(p, i) for i, p in enumerate(predictions)]
    refs = [normalize_reference(r, i) for i, r in enumerate(references)]
    ground_truth = _coco_ground_truth(refs)
    known = {c["id"] for c in ground_truth["categories"]}
    # Detections of categories without any ground truth are never scored by COCOeval: left out.
    return evaluate_results(ground_truth, [r for r in _results(preds) if r["category_id"] in known])

_FLOATS = datasets.List(datasets.Value("float64"))
_INTS = datasets.List(datasets.Value("int64"))
_BOXES = datasets.List(datasets.List(datasets.Value("float64"), length=4))


class CocoMeanAveragePrecision(evaluate.Metric):
    """COCO box mAP as an `evaluate` metric; no Hub access needed: `CocoMeanAveragePrecision()`.

    `add_batch(predictions=[...], references=[...])` / `compute(...)` take the forms accepted by
    `compute_coco_map` (tensors allowed); inputs are stored in one canonical form.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="COCO box mean average precision and recall (faster-coco-eval).",
            citation="Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014.",
            inputs_description=(
                "predictions: per image {'boxes' xyxy, 'scores', 'labels'} in original pixels; "
                "references: per image COCO annotations, {'boxes' xyxy, 'labels'}, or label dicts with orig_size."
            ),
            features=datasets.Features(
                {
                    "predictions": {"boxes": _BOXES, "scores": _FLOATS, "labels": _INTS},
                    "references": {"boxes": _BOXES, "labels": _INTS, "area": _FLOATS, "iscrowd": _INTS},
                }
            ),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Store a batch of per-image predictions and references (validated, then made canonical).\n"""
        if predictions is not None:
            predictions = [normalize_prediction(p, i) for i, p in enumerate(predictions)]
        if references is not None:
            references = [normalize_reference(r, i) for i, r in enumerate(references)]
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Store one image's prediction and reference (validated, then made canonical).\n"""
        if prediction is not None:
            prediction = normalize_prediction(prediction)
        if reference is not None:
            reference = normalize_reference(reference)
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions: list[dict], references: list[dict]) -> dict[str, float]:
        return compute_coco_map(predictions, references)

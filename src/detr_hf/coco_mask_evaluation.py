"""COCO mask AP (iouType "segm") through the same faster-coco-eval evaluator as boxes, and as an `evaluate.Metric`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.core import mask as mask_utils

from detr_hf.coco_evaluation import COCO_METRIC_NAMES

__all__ = [
    "CocoMaskMeanAveragePrecision",
    "compute_coco_mask_map",
    "normalize_mask_prediction",
    "normalize_mask_reference",
]

logger = logging.getLogger(__name__)


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _encode(masks: Any, where: str) -> tuple[list[str], list[int]]:
    """Bool masks [N, H, W] → (compressed RLE counts as str, [H, W])."""
    masks = _numpy(masks)
    if masks.ndim != 3:
        raise ValueError(f"{where}: masks must be [N, H, W], got shape {masks.shape}")
    size = [int(masks.shape[1]), int(masks.shape[2])]
    if masks.shape[0] == 0:
        return [], size
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [rle["counts"].decode() for rle in rles], size


def normalize_mask_prediction(prediction: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """One image's instance predictions, in ORIGINAL image pixels → {"counts" (RLEs), "size", "scores", "labels"}.

    Accepted: {"masks" bool [N, H, W], "scores", "labels"}, or `post_process_instance_segmentation` output
    ({"segmentation": [H, W] id map or bool [N, H, W] (`return_binary_maps`), "segments_info": [{"id",
    "label_id", "score"}]}).
    """
    where = f"prediction {index}"
    if not isinstance(prediction, Mapping):
        raise ValueError(f"{where}: expected a dict, got {type(prediction).__name__}")
    if "counts" in prediction:  # already normalised (what the metric stores)
        return _checked(dict(prediction), ("counts", "scores", "labels"), where)
    if "masks" in prediction:
        masks, scores, labels = prediction["masks"], prediction.get("scores"), prediction.get("labels")
        if scores is None or labels is None:
            raise ValueError(f"{where}: 'masks' need 'scores' and 'labels'")
        scores, labels = _numpy(scores).astype(float).tolist(), _numpy(labels).astype(int).tolist()
    elif "segmentation" in prediction and "segments_info" in prediction:
        info, segmentation = prediction["segments_info"], _numpy(prediction["segmentation"])
        if segmentation.ndim == 2:  # an id map: one mask per listed segment
            ids = np.array([s["id"] for s in info], dtype=np.int64).reshape(-1, 1, 1)
            segmentation = segmentation[None] == ids
        masks = segmentation
        scores, labels = [float(s["score"]) for s in info], [int(s["label_id"]) for s in info]
    else:
        raise ValueError(f"{where}: expected 'masks'+'scores'+'labels' or 'segmentation'+'segments_info'")
    counts, size = _encode(masks, where)
    return _checked(
        {"counts": counts, "size": size, "scores": scores, "labels": labels},
        ("counts", "scores", "labels"),
        where,
    )


def _checked(item: dict[str, Any], columns: tuple[str, ...], where: str) -> dict[str, Any]:
    lengths = {name: len(item[name]) for name in columns}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{where}: per-mask fields differ in length: {lengths}")
    return item


def _decode_reference_segmentation(segmentation: Any, height: int, width: int, where: str) -> str:
    if isinstance(segmentation, Mapping):
        if [int(v) for v in segmentation.get("size", [])] != [height, width]:
            raise ValueError(
                f"{where}: RLE size {segmentation.get('size')} is not the image size [{height}, {width}]"
            )
        rle = segmentation if not isinstance(segmentation["counts"], list) else None
        if rle is None:
            rle = mask_utils.frPyObjects(dict(segmentation), height, width)
    elif isinstance(segmentation, Sequence) and segmentation:
        rle = mask_utils.merge(
            mask_utils.frPyObjects([list(map(float, p)) for p in segmentation], height, width)
        )
    else:
        raise ValueError(f"{where}: 'segmentation' must be polygons or an RLE dict, got {segmentation!r}")
    counts = rle["counts"]
    return counts.decode() if isinstance(counts, bytes) else counts


def normalize_mask_reference(reference: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """One image's ground truth, in ORIGINAL image pixels → {"counts", "size", "labels", "area", "iscrowd"}.

    Accepted: {"masks" bool [N, H, W], "labels", "iscrowd"?, "area"?} or a COCO record {"height", "width",
    "annotations": [{"segmentation" (polygons / RLE), "category_id", "iscrowd"?, "area"?}]}. A missing area is
    the mask's pixel count.
    """
    where = f"reference {index}"
    if not isinstance(reference, Mapping):
        raise ValueError(f"{where}: expected a dict, got {type(reference).__name__}")
    if "counts" in reference:  # already normalised (what the metric stores)
        return _checked(dict(reference), ("counts", "labels", "area", "iscrowd"), where)
    if "masks" in reference:
        counts, size = _encode(reference["masks"], where)
        labels = _numpy(reference.get("labels", reference.get("class_labels", []))).astype(int).tolist()
        iscrowd = _numpy(reference.get("iscrowd", [0] * len(counts))).astype(int).tolist()
        area = reference.get("area")
    elif "annotations" in reference:
        if "height" not in reference or "width" not in reference:
            raise ValueError(
                f"{where}: a COCO record needs the image's 'height' and 'width' to rasterise polygons"
            )
        size = [int(reference["height"]), int(reference["width"])]
        counts, labels, iscrowd, areas = [], [], [], []
        for k, ann in enumerate(reference["annotations"]):
            if "segmentation" not in ann or "category_id" not in ann:
                raise ValueError(f"{where}: annotation {k} lacks 'segmentation' or 'category_id'")
            counts.append(
                _decode_reference_segmentation(ann["segmentation"], *size, f"{where}, annotation {k}")
            )
            labels.append(int(ann["category_id"]))
            iscrowd.append(int(ann.get("iscrowd", 0)))
            areas.append(ann.get("area"))
        area = None if any(a is None for a in areas) else areas
    else:
        raise ValueError(f"{where}: expected 'masks'+'labels' or a COCO record with 'annotations'")
    if area is None:
        area = [float(a) for a in mask_utils.area([{"size": size, "counts": c.encode()} for c in counts])]
    item = {"counts": counts, "size": size, "labels": labels, "area": _numpy(area).astype(float).tolist(),
            "iscrowd": iscrowd}  # fmt: skip
    return _checked(item, ("counts", "labels", "area", "iscrowd"), where)


def compute_coco_mask_map(predictions: Sequence[Mapping], references: Sequence[Mapping]) -> dict[str, float]:
    """COCO mask AP/AR (`COCO_METRIC_NAMES`, iouType "segm") of per-image predictions against references; forms
    as in `normalize_mask_prediction` / `normalize_mask_reference`. Undefined values are -1.0, as in COCO."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references (one of each per image)"
        )
    preds = [normalize_mask_prediction(p, i) for i, p in enumerate(predictions)]
    refs = [normalize_mask_reference(r, i) for i, r in enumerate(references)]
    for i, (pred, ref) in enumerate(zip(preds, refs)):
        if pred["counts"] and pred["size"] != ref["size"]:
            raise ValueError(
                f"image {i}: prediction masks are {pred['size']} but the reference is {ref['size']}"
            )
    images = [{"id": i, "height": r["size"][0], "width": r["size"][1]} for i, r in enumerate(refs)]
    category_ids = sorted({c for r in refs for c in r["labels"]} | {c for p in preds for c in p["labels"]})
    if not images or not category_ids:
        return dict.fromkeys(COCO_METRIC_NAMES, -1.0)
    categories = [{"id": c, "name": str(c)} for c in category_ids]
    gt_anns, dt_anns = [], []
    for i, ref in enumerate(refs):
        for counts, label, area, crowd in zip(ref["counts"], ref["labels"], ref["area"], ref["iscrowd"]):
            rle = {"size": ref["size"], "counts": counts}
            box = mask_utils.toBbox(rle).tolist()
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i, "category_id": label, "segmentation": rle,
                            "bbox": box, "area": area, "iscrowd": crowd})  # fmt: skip
    for i, pred in enumerate(preds):
        for counts, score, label in zip(pred["counts"], pred["scores"], pred["labels"]):
            rle = {"size": pred["size"], "counts": counts}
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": i, "category_id": label, "segmentation": rle,
                            "score": score, "bbox": mask_utils.toBbox(rle).tolist(),
                            "area": float(mask_utils.area(rle)), "iscrowd": 0})  # fmt: skip
    quiet = logger.debug
    coco_gt = COCO({"images": images, "categories": categories, "annotations": gt_anns}, print_function=quiet)
    coco_dt = COCO({"images": images, "categories": categories, "annotations": dt_anns}, print_function=quiet)
    evaluator = COCOeval_faster(coco_gt, coco_dt, "segm", print_function=quiet)
    evaluator.run()
    return {name: float(v) for name, v in zip(COCO_METRIC_NAMES, evaluator.stats)}


_STRINGS = datasets.List(datasets.Value("string"))
_SIZE = datasets.List(datasets.Value("int64"), length=2)
_INTS = datasets.List(datasets.Value("int64"))
_FLOATS = datasets.List(datasets.Value("float64"))


class CocoMaskMeanAveragePrecision(evaluate.Metric):
    """COCO mask mAP as an `evaluate` metric; no Hub access needed: `CocoMaskMeanAveragePrecision()`.

    Inputs are the forms of `compute_coco_mask_map`; masks are stored as compressed RLE strings."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="COCO mask mean average precision and recall (faster-coco-eval, iouType segm).",
            citation="Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014.",
            inputs_description="predictions: per image masks + scores + labels; references: masks or COCO records.",
            features=datasets.Features(
                {
                    "predictions": {"counts": _STRINGS, "size": _SIZE, "scores": _FLOATS, "labels": _INTS},
                    "references": {
                        "counts": _STRINGS,
                        "size": _SIZE,
                        "labels": _INTS,
                        "area": _FLOATS,
                        "iscrowd": _INTS,
                    },
                }
            ),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Store a batch of per-image predictions and references (validated, masks RLE-encoded)."""
        if predictions is not None:
            predictions = [normalize_mask_prediction(p, i) for i, p in enumerate(predictions)]
        if references is not None:
            references = [normalize_mask_reference(r, i) for i, r in enumerate(references)]
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Store one image's prediction and reference (validated, masks RLE-encoded)."""
        self.add_batch(predictions=[prediction], references=[reference], **kwargs)

    def _compute(self, predictions: list[dict], references: list[dict]) -> dict[str, float]:
        return compute_coco_mask_map(predictions, references)

"""Panoptic quality (PQ, SQ, RQ; all / things / stuff) as panopticapi defines it, as an offline `evaluate.Metric`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
import torch

from detr_hf.panoptic_annotations import read_panoptic_png

__all__ = [
    "PanopticQuality",
    "add_statistics",
    "compute_panoptic_quality",
    "panoptic_statistics",
    "reference_from_coco_panoptic",
    "summarize_panoptic_statistics",
]

# Per category: [true positives, false positives, false negatives, sum of the true positives' IoUs].
Statistics = dict[int, list[float]]


def _id_map(segmentation: Any, where: str) -> np.ndarray:
    if isinstance(segmentation, torch.Tensor):
        segmentation = segmentation.detach().cpu().numpy()
    ids = np.asarray(segmentation)
    if ids.ndim != 2 or ids.dtype.kind not in "iuf":
        raise ValueError(
            f"{where}: 'segmentation' must be an [H, W] map of segment ids, got {ids.dtype} {ids.shape}"
        )
    if ids.dtype.kind == "f" and not np.array_equal(ids, np.round(ids)):
        raise ValueError(f"{where}: 'segmentation' holds non-integer segment ids")
    return ids.astype(np.int64)


def _segments(item: Any, where: str, *, reference: bool) -> tuple[np.ndarray, dict[int, tuple[int, bool]]]:
    """{"segmentation", "segments_info"} → (id map, {segment id: (category, is crowd)}). Predictions name the
    category "label_id" (post-processing output) or "category_id"; a fused segment may be listed repeatedly."""
    if not isinstance(item, Mapping) or "segmentation" not in item or "segments_info" not in item:
        raise ValueError(
            f"{where}: expected a dict with 'segmentation' (an [H, W] id map) and 'segments_info'"
        )
    ids = _id_map(item["segmentation"], where)
    segments: dict[int, tuple[int, bool]] = {}
    for j, info in enumerate(item["segments_info"]):
        category = info.get("category_id", None if reference else info.get("label_id"))
        if "id" not in info or category is None:
            name = "'category_id'" if reference else "'label_id' or 'category_id'"
            raise ValueError(f"{where}: segments_info[{j}] needs 'id' and {name}, got {info!r}")
        entry = (int(category), bool(info.get("iscrowd", 0)) and reference)
        segment_id = int(info["id"])
        if segment_id <= 0:
            raise ValueError(f"{where}: segments_info[{j}] has id {segment_id}; ids <= 0 mean void")
        if segments.setdefault(segment_id, entry) != entry:
            raise ValueError(
                f"{where}: segment id {segment_id} is listed with different categories / crowd flags"
            )
    return ids, segments


def panoptic_statistics(
    prediction: Mapping[str, Any], reference: Mapping[str, Any], index: int = 0
) -> Statistics:
    """One image's per-category PQ counts, as panopticapi's `pq_compute` counts them.

    Both are {"segmentation": [H, W] ids, "segments_info": [...]}; reference ids 0 and prediction ids <= 0 are
    void (unlabelled). A predicted and a reference segment of one category match when their IoU > 0.5, void
    pixels left out of the union; reference crowd segments never match and are not false negatives; an
    unmatched prediction is no false positive when more than half of it lies in void or in the crowd region
    of its category.
    """
    where = f"image {index}"
    gt_ids, gt_segments = _segments(reference, f"reference of {where}", reference=True)
    pred_ids, pred_segments = _segments(prediction, f"prediction of {where}", reference=False)
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(
            f"{where}: prediction is {pred_ids.shape} but the reference is {gt_ids.shape} (h, w)"
        )
    pred_ids = np.where(pred_ids < 0, 0, pred_ids)
    for name, ids, segments in (("reference", gt_ids, gt_segments), ("prediction", pred_ids, pred_segments)):
        unlisted = sorted(set(np.unique(ids).tolist()) - set(segments) - {0})
        if unlisted:
            raise ValueError(
                f"{where}: {name} segment ids {unlisted[:10]} are in the map but not in segments_info"
            )

    # Pixel counts of every (reference id, predicted id) pair, through compact indices.
    gt_values, gt_index = np.unique(gt_ids, return_inverse=True)
    pred_values, pred_index = np.unique(pred_ids, return_inverse=True)
    pair_counts = np.bincount(gt_index.ravel() * len(pred_values) + pred_index.ravel())
    pairs = {}
    for k in np.flatnonzero(pair_counts):
        gt_id, pred_id = divmod(int(k), len(pred_values))
        pairs[int(gt_values[gt_id]), int(pred_values[pred_id])] = int(pair_counts[k])
    gt_area = dict(zip(gt_values.tolist(), np.bincount(gt_index.ravel()).tolist()))
    pred_area = dict(zip(pred_values.tolist(), np.bincount(pred_index.ravel()).tolist()))
    missing = sorted(set(pred_segments) - set(pred_area))
    if missing:
        raise ValueError(f"{where}: predicted segments {missing[:10]} are in segments_info but have no pixel")

    stats: Statistics = {}
    gt_matched, pred_matched = set(), set()
    for (gt_id, pred_id), intersection in pairs.items():
        if gt_id not in gt_segments or pred_id not in pred_segments:
            continue
        gt_category, gt_crowd = gt_segments[gt_id]
        if gt_crowd or gt_category != pred_segments[pred_id][0]:
            continue
        union = pred_area[pred_id] + gt_area[gt_id] - intersection - pairs.get((0, pred_id), 0)
        iou = intersection / union
        if iou > 0.5:
            counts = stats.setdefault(gt_category, [0, 0, 0, 0.0])
            counts[0] += 1
            counts[3] += iou
            gt_matched.add(gt_id)
            pred_matched.add(pred_id)

    crowd_of_category = {}
    for gt_id, (category, crowd) in gt_segments.items():
        if gt_id in gt_matched:
            continue
        if crowd:
            crowd_of_category[category] = gt_id  # one crowd region per category, as panopticapi keeps it
            continue
        stats.setdefault(category, [0, 0, 0, 0.0])[2] += 1
    for pred_id, (category, _) in pred_segments.items():
        if pred_id in pred_matched:
            continue
        ignored = pairs.get((0, pred_id), 0)
        if category in crowd_of_category:
            ignored += pairs.get((crowd_of_category[category], pred_id), 0)
        if ignored / pred_area[pred_id] > 0.5:
            continue
        stats.setdefault(category, [0, 0, 0, 0.0])[1] += 1
    return stats


def _category_table(categories: Any) -> dict[int, bool] | None:
    """`categories` as [{"id", "isthing"}, ...] (COCO panoptic) or {id: isthing} → {id: isthing}."""
    if categories is None:
        return None
    if isinstance(categories, Mapping):
        return {int(k): bool(v) for k, v in categories.items()}
    table = {}
    for k, category in enumerate(categories):
        if not isinstance(category, Mapping) or "id" not in category or "isthing" not in category:
            raise ValueError(f"categories[{k}] must be a dict with 'id' and 'isthing', got {category!r}")
        table[int(category["id"])] = bool(category["isthing"])
    return table


def _average(rows: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    if not rows:
        return -1.0, -1.0, -1.0
    return tuple(float(sum(row[k] for row in rows) / len(rows)) for k in range(3))  # type: ignore[return-value]


def summarize_panoptic_statistics(
    stats: Statistics, categories: Any = None, *, per_class: bool = False
) -> dict[str, Any]:
    """Summed per-category counts → PQ / SQ / RQ (fractions in [0, 1]) averaged over the categories with any
    segment (panopticapi's `pq_average`), for all categories and, with `categories` ({id: isthing} or COCO
    category dicts), for things (`_th`) and stuff (`_st`); `N*` count the categories averaged. An average over
    no category is -1.0. With `per_class`, "per_class": {category id: {"PQ", "SQ", "RQ", "TP", "FP", "FN"}}."""
    table = _category_table(categories)
    if table is not None:
        unknown = sorted(set(stats) - set(table))
        if unknown:
            raise ValueError(f"segments of categories {unknown[:10]} are not in `categories`")
    known = table if table is not None else dict.fromkeys(stats, None)
    per_category = {}
    for category in sorted(known):
        tp, fp, fn, iou = stats.get(category, [0, 0, 0, 0.0])
        if tp + fp + fn == 0:
            per_category[category] = None
            continue
        denominator = tp + 0.5 * fp + 0.5 * fn
        per_category[category] = (iou / denominator, iou / tp if tp else 0.0, tp / denominator, tp, fp, fn)
    groups = {"": list(known)}
    if table is not None:
        groups["_th"] = [c for c, isthing in table.items() if isthing]
        groups["_st"] = [c for c, isthing in table.items() if not isthing]
    result: dict[str, Any] = {}
    for suffix, members in groups.items():
        rows = [per_category[c][:3] for c in members if per_category[c] is not None]
        result[f"PQ{suffix}"], result[f"SQ{suffix}"], result[f"RQ{suffix}"] = _average(rows)
        result[f"N{suffix}"] = len(rows)
    if per_class:
        result["per_class"] = {
            c: dict(zip(("PQ", "SQ", "RQ", "TP", "FP", "FN"), values or (0.0, 0.0, 0.0, 0, 0, 0)))
            for c, values in per_category.items()
        }
    return result


def add_statistics(total: Statistics, stats: Statistics) -> None:
    """Add one image's per-category counts `stats` into `total` (in place)."""
    for category, counts in stats.items():
        into = total.setdefault(category, [0, 0, 0, 0.0])
        for k in range(4):
            into[k] += counts[k]


def compute_panoptic_quality(
    predictions: Sequence[Mapping[str, Any]],
    references: Sequence[Mapping[str, Any]],
    *,
    categories: Any = None,
    per_class: bool = False,
) -> dict[str, Any]:
    """PQ of per-image predictions (e.g. `post_process_panoptic_segmentation` results with `target_sizes` =
    the original sizes, label ids mapped to the references' category ids) against per-image references."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references (one of each per image)"
        )
    total: Statistics = {}
    for i, (prediction, reference) in enumerate(zip(predictions, references)):
        add_statistics(total, panoptic_statistics(prediction, reference, i))
    return summarize_panoptic_statistics(total, categories, per_class=per_class)


def reference_from_coco_panoptic(record: Mapping[str, Any], masks_path: str | os.PathLike) -> dict[str, Any]:
    """A COCO panoptic record (`file_name`, `segments_info`) → a reference {"segmentation", "segments_info"}."""
    where = f"image_id={record.get('image_id')!r}"
    return {
        "segmentation": read_panoptic_png(os.path.join(masks_path, record["file_name"]), where),
        "segments_info": list(record["segments_info"]),
    }


_INTS = datasets.List(datasets.Value("int64"))


class PanopticQuality(evaluate.Metric):
    """Panoptic quality as an `evaluate` metric; no Hub access needed: `PanopticQuality(categories=...)`.

    `add_batch(predictions=[...], references=[...])` takes the per-image forms of `panoptic_statistics`; since PQ
    is a sum over images, each pair is reduced at once to its per-category counts (stored as the prediction
    row; the reference row keeps the number of reference segments), so no id map is kept in memory.
    `compute(categories=..., per_class=...)` overrides the constructor's choices.
    """

    def __init__(self, categories: Any = None, per_class: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.categories = _category_table(categories)
        self.per_class = per_class

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Panoptic quality PQ = SQ x RQ (panopticapi definition), all / things / stuff.",
            citation="Kirillov et al., Panoptic Segmentation, CVPR 2019.",
            inputs_description=(
                "predictions: per image {'segmentation' [H, W] ids, 'segments_info' [{'id', 'label_id'}]}; "
                "references: per image {'segmentation', 'segments_info' [{'id', 'category_id', 'iscrowd'}]}."
            ),
            features=datasets.Features(
                {
                    "predictions": {
                        "category_id": _INTS,
                        "tp": _INTS,
                        "fp": _INTS,
                        "fn": _INTS,
                        "iou": datasets.List(datasets.Value("float64")),
                    },
                    "references": {"num_segments": datasets.Value("int64")},
                }
            ),
        )

    @staticmethod
    def _rows(predictions: Sequence, references: Sequence, offset: int = 0) -> tuple[list[dict], list[dict]]:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references in one batch")
        rows = []
        for i, (prediction, reference) in enumerate(zip(predictions, references)):
            stats = panoptic_statistics(prediction, reference, offset + i)
            keys = sorted(stats)
            rows.append(
                {
                    "category_id": keys,
                    **{name: [int(stats[c][k]) for c in keys] for k, name in enumerate(("tp", "fp", "fn"))},
                    "iou": [float(stats[c][3]) for c in keys],
                }
            )
        return rows, [{"num_segments": len(r["segments_info"])} for r in references]

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Reduce a batch of per-image (prediction, reference) pairs to PQ counts and store them."""
        predictions, references = self._rows(predictions or [], references or [])
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Reduce one image's (prediction, reference) pair to PQ counts and store it."""
        self.add_batch(predictions=[prediction], references=[reference], **kwargs)

    def _compute(
        self, predictions: list[dict], references: list[dict], categories=None, per_class=None
    ) -> dict:
        total: Statistics = {}
        for row in predictions:
            columns = zip(row["category_id"], row["tp"], row["fp"], row["fn"], row["iou"])
            add_statistics(total, {category: [tp, fp, fn, iou] for category, tp, fp, fn, iou in columns})
        categories = self.categories if categories is None else categories
        per_class = self.per_class if per_class is None else per_class
        return summarize_panoptic_statistics(total, categories, per_class=per_class)

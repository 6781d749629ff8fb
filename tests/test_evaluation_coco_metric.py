"""COCO mAP (detr_hf.evaluation.coco_metric) against pycocotools and hand-computable fixtures."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from detr_hf.evaluation import COCO_METRIC_NAMES, CocoMeanAveragePrecision, compute_coco_map


def _random_fixture(seed: int, num_images: int = 40, num_classes: int = 3, size: float = 300.0):
    """Per-image xyxy GT (some crowd, some images empty) and noisy detections with false positives."""
    rng = np.random.default_rng(seed)
    predictions, references = [], []
    for i in range(num_images):
        n_gt = int(rng.integers(0, 7)) if i % 7 else 0
        wh = rng.uniform(4, 150, size=(n_gt, 2))
        xy = rng.uniform(0, size - 150, size=(n_gt, 2))
        gt = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(0, num_classes, size=n_gt)
        iscrowd = (rng.uniform(size=n_gt) < 0.1).astype(int)
        # Segmentation-like areas, smaller than the box area, so the area ranges are exercised.
        area = wh[:, 0] * wh[:, 1] * rng.uniform(0.5, 1.0, size=n_gt)
        references.append(
            {
                "boxes": gt.tolist(),
                "labels": labels.tolist(),
                "area": area.tolist(),
                "iscrowd": iscrowd.tolist(),
            }
        )

        keep = rng.uniform(size=n_gt) < 0.8
        jitter = rng.normal(0, 6, size=(n_gt, 4))
        det = (gt + jitter)[keep]
        det_labels = np.where(rng.uniform(size=n_gt) < 0.9, labels, rng.integers(0, num_classes, size=n_gt))[
            keep
        ]
        n_fp = int(rng.integers(0, 4)) if i % 5 else 0
        fp_xy = rng.uniform(0, size - 100, size=(n_fp, 2))
        fp = np.concatenate([fp_xy, fp_xy + rng.uniform(5, 100, size=(n_fp, 2))], axis=1)
        boxes = np.concatenate([det, fp]).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)  # keep x1 > x0 after jitter
        if i % 11 == 3:
            boxes = boxes[:0]
        n_det = len(boxes)
        predictions.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float64),
                "scores": torch.tensor(rng.uniform(0.05, 1.0, size=n_det)),
                "labels": torch.tensor(
                    np.concatenate([det_labels, rng.integers(0, num_classes, size=n_fp)])[:n_det]
                ),
            }
        )
    return predictions, references


def _pycocotools_stats(predictions, references, num_classes: int) -> np.ndarray:
    """The reference: pycocotools' own COCO/loadRes/COCOeval on the same data."""
    gt = PyCOCO()
    anns = []
    for i, ref in enumerate(references):
        for box, label, area, crowd in zip(ref["boxes"], ref["labels"], ref["area"], ref["iscrowd"]):
            x0, y0, x1, y1 = box
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": label,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": area,
                    "iscrowd": crowd,
                }
            )
    gt.dataset = {
        "images": [{"id": i} for i in range(len(references))],
        "categories": [{"id": c} for c in range(num_classes)],
        "annotations": anns,
    }
    results = []
    for i, pred in enumerate(predictions):
        for (x0, y0, x1, y1), score, label in zip(
            pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist()
        ):
            results.append(
                {"image_id": i, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluator = PyCOCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocotools_on_random_fixture(seed):
    predictions, references = _random_fixture(seed)
    ours = compute_coco_map(predictions, references)
    expected = _pycocotools_stats(predictions, references, num_classes=3)
    assert list(ours) == list(COCO_METRIC_NAMES)
    for name, value in zip(COCO_METRIC_NAMES, expected):
        assert ours[name] == pytest.approx(value, abs=1e-9), name
    # Non-trivial fixture: AP is neither perfect nor zero.
    assert 0.05 < ours["AP"] < 0.95


def test_perfect_detections_score_one():
    _, references = _random_fixture(3)
    references = [{**r, "iscrowd": [0] * len(r["labels"])} for r in references]
    predictions = [
        {"boxes": r["boxes"], "scores": [0.9] * len(r["labels"]), "labels": r["labels"]} for r in references
    ]
    result = compute_coco_map(predictions, references)
    for name in COCO_METRIC_NAMES:
        if name != "AR1":
            assert result[name] == pytest.approx(1.0, abs=1e-12), name
    # With one detection per image, a class's recall is (images holding it) / (its boxes).
    recalls = []
    for c in range(3):
        per_image = [r["labels"].count(c) for r in references]
        recalls.append(sum(n > 0 for n in per_image) / sum(per_image))
    assert result["AR1"] == pytest.approx(np.mean(recalls), abs=1e-12)


def test_known_iou_gives_known_ap():
    # IoU 0.62 passes the thresholds 0.50, 0.55, 0.60 out of ten: AP = AR = 0.3, AP50 = 1, AP75 = 0.
    references = [{"boxes": [[0, 0, 10, 10]], "labels": [1]}]
    predictions = [{"boxes": [[0, 0, 10, 6.2]], "scores": [0.5], "labels": [1]}]
    result = compute_coco_map(predictions, references)
    assert result["AP"] == pytest.approx(0.3, abs=1e-12)
    assert result["AP50"] == 1.0
    assert result["AP75"] == 0.0
    assert result["AR100"] == pytest.approx(0.3, abs=1e-12)
    assert result["AP_medium"] == -1.0  # no medium ground truth: undefined, as in COCO


def test_images_without_ground_truth_or_predictions():
    references = [
        {"boxes": [[0, 0, 10, 10]], "labels": [0]},
        {"boxes": [], "labels": []},
        {"boxes": [], "labels": []},
    ]
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    hit = {"boxes": [[0, 0, 10, 10]], "scores": [0.5], "labels": [0]}
    # A false positive on an image without ground truth, scored above the hit, halves precision at recall 1.
    false_positive = {"boxes": [[5, 5, 20, 20]], "scores": [0.9], "labels": [0]}
    assert compute_coco_map([hit, empty, empty], references)["AP"] == pytest.approx(1.0)
    assert compute_coco_map([hit, false_positive, empty], references)["AP50"] == pytest.approx(0.5)
    assert compute_coco_map([empty, empty, empty], references)["AP"] == 0.0
    # Nothing to detect anywhere: undefined everywhere (COCO's -1), not a crash.
    no_gt = compute_coco_map([false_positive], [{"boxes": [], "labels": []}])
    assert set(no_gt.values()) == {-1.0}


def test_reference_forms_agree():
    predictions, references = _random_fixture(4, num_images=12)
    references = [{**r, "iscrowd": [0] * len(r["labels"]), "area": None} for r in references]
    absolute = compute_coco_map(predictions, references)
    coco_form = [
        {
            "image_id": 100 + i,
            "annotations": [
                {"bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": c, "iscrowd": 0}
                for (x0, y0, x1, y1), c in zip(r["boxes"], r["labels"])
            ],
        }
        for i, r in enumerate(references)
    ]
    label_form = []
    for r in references:
        b = torch.tensor(r["boxes"], dtype=torch.float64).reshape(-1, 4)
        h, w = 300.0, 320.0
        cxcywh = torch.stack(
            [
                (b[:, 0] + b[:, 2]) / 2 / w,
                (b[:, 1] + b[:, 3]) / 2 / h,
                (b[:, 2] - b[:, 0]) / w,
                (b[:, 3] - b[:, 1]) / h,
            ],
            1,
        )
        label_form.append(
            {
                "boxes": cxcywh,
                "class_labels": torch.tensor(r["labels"]),
                "orig_size": torch.tensor([300, 320]),
            }
        )
    for other in (compute_coco_map(predictions, coco_form), compute_coco_map(predictions, label_form)):
        for name in COCO_METRIC_NAMES:
            assert other[name] == pytest.approx(absolute[name], abs=1e-9), name


def test_evaluate_metric_matches_function_over_batches():
    predictions, references = _random_fixture(5, num_images=20)
    metric = CocoMeanAveragePrecision(keep_in_memory=True)
    for start in range(0, 20, 6):
        metric.add_batch(predictions=predictions[start : start + 6], references=references[start : start + 6])
    batched = metric.compute()
    direct = compute_coco_map(predictions, references)
    assert batched == pytest.approx(direct, abs=1e-12)
    one_shot = CocoMeanAveragePrecision(keep_in_memory=True).compute(
        predictions=predictions, references=references
    )
    assert one_shot == pytest.approx(direct, abs=1e-12)


@pytest.mark.parametrize(
    ("prediction", "reference", "message"),
    [
        (
            {"boxes": [[5, 0, 1, 4]], "scores": [0.5], "labels": [0]},
            {"boxes": [], "labels": []},
            "prediction 0: box 0",
        ),
        (
            {"boxes": [[0, 0, 1, 1]], "scores": [0.5, 0.4], "labels": [0]},
            {"boxes": [], "labels": []},
            "prediction 0",
        ),
        (
            {"boxes": [], "scores": [], "labels": []},
            {"boxes": [[0, 0, 1]], "labels": [0]},
            "reference 0: box 0",
        ),
        ({"boxes": [], "scores": [], "labels": []}, {"bbox": [[0, 0, 1, 1]]}, "reference 0: unknown format"),
        (
            {"boxes": [], "scores": [], "labels": []},
            {"boxes": [[0.5, 0.5, 1, 1]], "class_labels": [0]},
            "orig_size",
        ),
    ],
)
def test_bad_input_names_the_problem(prediction, reference, message):
    with pytest.raises(ValueError, match=message):
        compute_coco_map([prediction], [reference])


def test_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        compute_coco_map([{"boxes": [], "scores": [], "labels": []}], [{"boxes": [], "labels": []}] * 2)

"""The official COCO protocol: our scores equal pycocotools' COCOeval on the same json files, crowd included."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detr_hf.evaluation import COCO_METRIC_NAMES, detections_to_results, evaluate_results
from helpers import make_coco_folder, pycocotools_stats


def _detections(coco: dict, seed: int) -> list[dict]:
    """Jittered true boxes (some with the wrong class, some missed), false positives, and detections on the
    crowd regions, in the COCO results format."""
    rng = np.random.default_rng(seed)
    sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
    category_ids = [c["id"] for c in coco["categories"]]
    results = []
    for ann in coco["annotations"]:
        if rng.uniform() < 0.15 and not ann["iscrowd"]:
            continue  # missed
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.08, size=4) * [w, h, w, h]
        category = ann["category_id"] if rng.uniform() < 0.85 else int(rng.choice(category_ids))
        results.append(
            {"image_id": ann["image_id"], "category_id": category, "score": float(rng.uniform(0.05, 1.0)),
             "bbox": [float(x + jitter[0]), float(y + jitter[1]), float(max(w + jitter[2], 1)), float(max(h + jitter[3], 1))]}
        )  # fmt: skip
    for image_id, (width, height) in sizes.items():
        for _ in range(5):
            w, h = rng.uniform(5, width / 2), rng.uniform(5, height / 2)
            results.append(
                {"image_id": image_id, "category_id": int(rng.choice(category_ids)), "score": float(rng.uniform(0, 0.6)),
                 "bbox": [float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h)), float(w), float(h)]}
            )  # fmt: skip
    return results


@pytest.mark.parametrize("seed", [0, 1])
def test_scores_equal_pycocotools_on_the_original_json(tmp_path, seed):
    fixture = make_coco_folder(tmp_path / "coco", num_train=1, num_val=9, seed=seed)
    coco = fixture.coco["val"]
    assert any(a["iscrowd"] for a in coco["annotations"])
    results = _detections(coco, seed)
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    ours = evaluate_results(json.loads(fixture.annotation_files["val"].read_text()), json.loads(results_file.read_text()))
    theirs = pycocotools_stats(fixture.annotation_files["val"], results_file)
    assert list(ours) == list(COCO_METRIC_NAMES)
    np.testing.assert_allclose(list(ours.values()), theirs, rtol=0, atol=1e-9)
    assert 0.2 < ours["AP"] < 0.95 and 0.5 < ours["AP50"] < 1.0


def test_crowd_regions_are_ignored_not_dropped():
    """One object and one crowd region, a perfect detection of each: AP 1 (a crowd hit is no false positive)."""
    gt = {
        "images": [{"id": 5, "width": 400, "height": 300}],
        "categories": [{"id": 18, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 18, "bbox": [10, 10, 50, 40], "area": 1500.0, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 18, "bbox": [100, 50, 250, 200], "area": 50000.0, "iscrowd": 1},
        ],
    }
    results = [
        {"image_id": 5, "category_id": 18, "bbox": [100, 50, 250, 200], "score": 0.9},
        {"image_id": 5, "category_id": 18, "bbox": [10, 10, 50, 40], "score": 0.8},
    ]
    assert evaluate_results(gt, results)["AP"] == pytest.approx(1.0)
    without_crowd = {**gt, "annotations": gt["annotations"][:1]}
    assert evaluate_results(without_crowd, results)["AP"] < 0.6  # the crowd hit would be a false positive


def test_areas_come_from_the_annotations():
    """A 100×100 box whose polygon covers 900 px² is a *small* object for COCO."""
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 3, "name": "car"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 100], "area": 900.0, "iscrowd": 0}],
    }
    stats = evaluate_results(gt, [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 100], "score": 0.5}])
    assert stats["AP_small"] == pytest.approx(1.0) and stats["AP_medium"] == -1.0


def test_detections_to_results_uses_the_dataset_category_ids():
    detection = {"boxes": [[10.0, 20.0, 50.0, 80.0]], "scores": [0.25], "labels": [2]}
    assert detections_to_results(42, detection, [1, 3, 7, 18]) == [
        {"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.25}
    ]
    with pytest.raises(ValueError, match="image_id 42: label 4 has no category id"):
        detections_to_results(42, {"boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [4]}, [1, 3, 7, 18])


def test_results_naming_unknown_images_are_refused():
    gt = {"images": [{"id": 1}], "categories": [{"id": 3, "name": "car"}], "annotations": []}
    with pytest.raises(ValueError, match="image_id 9 is not an image of the ground truth"):
        evaluate_results(gt, [{"image_id": 9, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}])

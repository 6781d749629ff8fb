"""COCO mask AP through faster-coco-eval equals pycocotools' COCOeval (iouType "segm")."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval

from detr_hf.coco_evaluation import COCO_METRIC_NAMES
from detr_hf.coco_mask_evaluation import CocoMaskMeanAveragePrecision, compute_coco_mask_map

CATEGORIES = (2, 5, 11)


def ellipse(height, width, rng, small=False):
    ys, xs = np.ogrid[:height, :width]
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = rng.uniform(3, 12 if small else 90, size=2)
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1


def make_image(seed, height, width):
    """~15 objects (polygons, some small) with one crowd RLE; predictions: shifted masks, misses, extras."""
    rng = np.random.default_rng(seed)
    annotations, pred_masks, scores, labels = [], [], [], []
    for j in range(15):
        mask = ellipse(height, width, rng, small=j % 4 == 0)
        if not mask.any():
            continue
        category = int(rng.choice(CATEGORIES))
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
        if j % 3 == 0:  # a polygon: the ellipse's bounding diamond, rasterised by COCO
            ys, xs = np.nonzero(mask)
            cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
            segmentation = [[float(cx), float(ys.min()), float(xs.max() + 1), float(cy), float(cx),
                             float(ys.max() + 1), float(xs.min()), float(cy)]]  # fmt: skip
        annotations.append(
            {
                "segmentation": segmentation,
                "category_id": category,
                "iscrowd": int(j == 6),
                "area": float(mask.sum()),
            }
        )
        if rng.random() < 0.8:
            shift = int(rng.integers(0, 15))
            pred_masks.append(np.roll(mask, shift, axis=1))
            scores.append(float(rng.uniform(0.3, 1)))
            labels.append(category if rng.random() < 0.85 else int(rng.choice(CATEGORIES)))
    for _ in range(4):
        pred_masks.append(ellipse(height, width, rng))
        scores.append(float(rng.uniform(0, 0.6)))
        labels.append(int(rng.choice(CATEGORIES)))
    reference = {"height": height, "width": width, "annotations": annotations}
    prediction = {
        "masks": torch.from_numpy(np.stack(pred_masks)),
        "scores": torch.tensor(scores),
        "labels": labels,
    }
    return prediction, reference


def pycocotools_segm(predictions, references):
    gt = {"images": [], "annotations": [], "categories": [{"id": c} for c in CATEGORIES]}
    results = []
    for i, (prediction, reference) in enumerate(zip(predictions, references)):
        gt["images"].append({"id": i, "height": reference["height"], "width": reference["width"]})
        for ann in reference["annotations"]:
            segmentation = ann["segmentation"]
            if isinstance(segmentation, list):
                rle = coco_mask.merge(
                    coco_mask.frPyObjects(segmentation, reference["height"], reference["width"])
                )
            else:
                rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
            box = coco_mask.toBbox(rle).tolist()
            gt["annotations"].append({**ann, "segmentation": rle, "bbox": box, "id": len(gt["annotations"]) + 1,
                                      "image_id": i})  # fmt: skip
        for mask, score, label in zip(
            prediction["masks"].numpy(), prediction["scores"].tolist(), prediction["labels"]
        ):
            rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            results.append({"image_id": i, "category_id": label, "segmentation": rle, "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(COCO_METRIC_NAMES, evaluator.stats.tolist()))


def test_mask_ap_equals_pycocotools():
    pairs = [
        make_image(seed, *size) for seed, size in enumerate([(480, 640), (427, 640), (640, 512), (333, 500)])
    ]
    predictions, references = zip(*pairs)
    expected = pycocotools_segm(predictions, references)
    result = compute_coco_mask_map(predictions, references)
    for name in COCO_METRIC_NAMES:
        assert math.isclose(result[name], expected[name], abs_tol=1e-9), name
    assert 0.1 < result["AP"] < 0.9 and result["AP_small"] != -1.0

    metric = CocoMaskMeanAveragePrecision()
    metric.add_batch(predictions=predictions[:2], references=references[:2])
    metric.add(prediction=predictions[2], reference=references[2])
    via_metric = metric.compute(predictions=predictions[3:], references=references[3:])
    assert via_metric == result


def test_post_processing_forms_and_mask_references():
    prediction, reference = make_image(9, 400, 600)
    masks = prediction["masks"]
    id_map = torch.zeros(masks.shape[1:], dtype=torch.int32)
    info = []
    for k in range(masks.shape[0]):  # later masks over earlier ones, as an id map would hold them
        id_map[masks[k]] = k + 1
    for k in range(masks.shape[0]):
        if (id_map == k + 1).any():
            info.append(
                {"id": k + 1, "label_id": prediction["labels"][k], "score": float(prediction["scores"][k])}
            )
    binary = torch.stack([id_map == s["id"] for s in info])
    as_masks = {
        "masks": binary,
        "scores": [s["score"] for s in info],
        "labels": [s["label_id"] for s in info],
    }
    expected = compute_coco_mask_map([as_masks], [reference])
    assert compute_coco_mask_map([{"segmentation": id_map, "segments_info": info}], [reference]) == expected
    assert compute_coco_mask_map([{"segmentation": binary, "segments_info": info}], [reference]) == expected

    decoded = []
    for a in reference["annotations"]:
        seg = a["segmentation"]
        rle = coco_mask.merge(coco_mask.frPyObjects(seg, 400, 600)) if isinstance(seg, list) else seg
        decoded.append(coco_mask.decode(rle).astype(bool))
    mask_reference = {
        "masks": np.stack(decoded),
        "area": [a["area"] for a in reference["annotations"]],
        "labels": [a["category_id"] for a in reference["annotations"]],
        "iscrowd": [a["iscrowd"] for a in reference["annotations"]],
    }
    assert compute_coco_mask_map([as_masks], [mask_reference]) == expected


def test_empty_and_bad_inputs():
    prediction, reference = make_image(1, 300, 300)
    empty = {"masks": torch.zeros(0, 300, 300, dtype=torch.bool), "scores": [], "labels": []}
    assert compute_coco_mask_map([empty], [reference])["AP"] == 0.0
    with pytest.raises(ValueError, match=r"image 0: prediction masks are \[200, 300\]"):
        compute_coco_mask_map([{**prediction, "masks": prediction["masks"][:, :200]}], [reference])
    with pytest.raises(ValueError, match="prediction 0: per-mask fields differ in length"):
        compute_coco_mask_map([{**prediction, "labels": prediction["labels"][:-1]}], [reference])
    with pytest.raises(ValueError, match="needs the image's 'height' and 'width'"):
        compute_coco_mask_map([prediction], [{"annotations": reference["annotations"]}])
    bad = {
        **reference,
        "annotations": [{**reference["annotations"][0], "segmentation": {"size": [3, 3], "counts": "0"}}],
    }
    with pytest.raises(ValueError, match=r"reference 0, annotation 0: RLE size \[3, 3\]"):
        compute_coco_mask_map([prediction], [bad])

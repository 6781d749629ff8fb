"""PQ / SQ / RQ against an independent brute-force panopticapi `pq_compute` and torchmetrics."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from torchmetrics.detection import PanopticQuality as TorchmetricsPQ

from detr_hf.panoptic_annotations import id_to_rgb
from detr_hf.panoptic_quality import (
    PanopticQuality,
    compute_panoptic_quality,
    panoptic_statistics,
    reference_from_coco_panoptic,
)

THINGS = (1, 4, 9, 17)
STUFF = (120, 133, 150)
CATEGORIES = [{"id": c, "isthing": 1} for c in THINGS] + [{"id": c, "isthing": 0} for c in STUFF]


def _draw(ids, rng, segments, category, segment_id, iscrowd=0):
    height, width = ids.shape
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    ry, rx = rng.integers(10, 70, size=2)
    ys, xs = np.ogrid[:height, :width]
    ids[((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1] = segment_id
    segments.append({"id": segment_id, "category_id": category, "iscrowd": iscrowd})


def make_pair(seed: int, height: int = 360, width: int = 540, *, crowd: bool = True, void: bool = True):
    """A reference (stuff bands, ~25 things, crowd regions, void) and a prediction that keeps, shifts, relabels,
    drops and invents segments, with predictions inside void and crowd regions."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((height, width), dtype=np.int64)
    gt_segments: list[dict] = []
    bands = np.linspace(0, height, len(STUFF) + 1).astype(int)
    for k, category in enumerate(STUFF):
        gt[bands[k] : bands[k + 1]] = 1000 + k
        gt_segments.append({"id": 1000 + k, "category_id": category, "iscrowd": 0})
    for j in range(25):
        _draw(gt, rng, gt_segments, int(rng.choice(THINGS)), 2000 + j, iscrowd=int(crowd and j in (3, 11)))
    if void:
        gt[: height // 10, : width // 4] = 0
        gt[rng.random((height, width)) < 0.02] = 0  # scattered unlabelled pixels
    present = set(np.unique(gt).tolist())
    gt_segments = [s for s in gt_segments if s["id"] in present]

    pred = np.zeros_like(gt)
    pred_segments: list[dict] = []
    next_id = 1
    for segment in gt_segments:
        fate = rng.random()
        if fate < 0.15:
            continue  # missed: false negative
        mask = gt == segment["id"]
        shift = int(rng.integers(0, 25)) if fate < 0.8 else 0
        mask = np.roll(mask, shift, axis=int(rng.integers(0, 2)))
        category = segment["category_id"] if fate < 0.9 else int(rng.choice(THINGS))
        pred[mask] = next_id
        pred_segments.append({"id": next_id, "label_id": category, "was_fused": False, "score": 0.9})
        next_id += 1
    crowd_ids = [s["id"] for s in gt_segments if s["iscrowd"]]
    for crowd_id in crowd_ids:  # a prediction inside a crowd region of the same category: ignored
        ys, xs = np.nonzero(gt == crowd_id)
        box = (slice(ys.min(), ys.min() + 6), slice(xs.min(), xs.min() + 6))
        pred[box] = next_id
        category = next(s["category_id"] for s in gt_segments if s["id"] == crowd_id)
        pred_segments.append({"id": next_id, "label_id": category, "was_fused": False, "score": 0.7})
        next_id += 1
    for _ in range(6):  # invented segments: false positives (or ignored when mostly in void)
        segments: list[dict] = []
        _draw(pred, rng, segments, int(rng.choice(THINGS + STUFF)), next_id)
        pred_segments.append(
            {"id": next_id, "label_id": segments[0]["category_id"], "was_fused": False, "score": 0.6}
        )
        next_id += 1
    pred[: height // 12, : width // 5] = next_id  # mostly inside the void corner
    pred_segments.append({"id": next_id, "label_id": THINGS[0], "was_fused": False, "score": 0.6})
    present = set(np.unique(pred).tolist())
    pred_segments = [s for s in pred_segments if s["id"] in present]
    return (
        {"segmentation": torch.from_numpy(pred).int(), "segments_info": pred_segments},
        {"segmentation": gt, "segments_info": gt_segments},
    )


def brute_force_pq(pairs, categories):
    """panopticapi's pq_compute / pq_average spelled out with one boolean mask per segment pair."""
    stats = defaultdict(lambda: [0, 0, 0, 0.0])
    for prediction, reference in pairs:
        gt_map, pred_map = np.asarray(reference["segmentation"]), np.asarray(prediction["segmentation"])
        gt = {s["id"]: s for s in reference["segments_info"]}
        pred = {s["id"]: s for s in prediction["segments_info"]}
        gt_masks = {i: gt_map == i for i in gt}
        pred_masks = {i: pred_map == i for i in pred}
        gt_area = {i: int(m.sum()) for i, m in gt_masks.items()}
        pred_area = {i: int(m.sum()) for i, m in pred_masks.items()}
        void_overlap = {i: int((m & (gt_map == 0)).sum()) for i, m in pred_masks.items()}
        gt_matched, pred_matched = set(), set()
        for gi, g in gt.items():
            for pi, p in pred.items():
                intersection = int((gt_masks[gi] & pred_masks[pi]).sum())
                if intersection == 0 or g["iscrowd"] or g["category_id"] != p["label_id"]:
                    continue
                iou = intersection / (pred_area[pi] + gt_area[gi] - intersection - void_overlap[pi])
                if iou > 0.5:
                    stats[g["category_id"]][0] += 1
                    stats[g["category_id"]][3] += iou
                    gt_matched.add(gi)
                    pred_matched.add(pi)
        crowd = {}
        for gi, g in gt.items():
            if gi in gt_matched:
                continue
            if g["iscrowd"]:
                crowd[g["category_id"]] = gi
                continue
            stats[g["category_id"]][2] += 1
        for pi, p in pred.items():
            if pi in pred_matched:
                continue
            ignored = void_overlap[pi]
            if p["label_id"] in crowd:
                ignored += int((gt_masks[crowd[p["label_id"]]] & pred_masks[pi]).sum())
            if ignored / pred_area[pi] > 0.5:
                continue
            stats[p["label_id"]][1] += 1
    result = {}
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        rows = []
        for category in categories:
            if isthing is not None and bool(category["isthing"]) != isthing:
                continue
            tp, fp, fn, iou = stats[category["id"]]
            if tp + fp + fn == 0:
                continue
            rows.append(
                (iou / (tp + 0.5 * fp + 0.5 * fn), iou / tp if tp else 0, tp / (tp + 0.5 * fp + 0.5 * fn))
            )
        for k, name in enumerate(("PQ", "SQ", "RQ")):
            result[name + suffix] = sum(r[k] for r in rows) / len(rows)
    return result, stats


def test_pq_equals_brute_force_panopticapi_definition():
    pairs = [
        make_pair(seed, *size) for seed, size in enumerate([(360, 540), (480, 640), (512, 384), (300, 700)])
    ]
    predictions, references = zip(*pairs)
    expected, stats = brute_force_pq(pairs, CATEGORIES)
    assert sum(s[0] for s in stats.values()) >= 40 and sum(s[1] for s in stats.values()) >= 10
    assert sum(s[2] for s in stats.values()) >= 10
    result = compute_panoptic_quality(predictions, references, categories=CATEGORIES, per_class=True)
    for key, value in expected.items():
        assert math.isclose(result[key], value, rel_tol=0, abs_tol=1e-9), key
    assert 0.2 < result["PQ"] < 0.9 and result["N"] == len(CATEGORIES)
    for category, (tp, fp, fn, _) in stats.items():
        assert (result["per_class"][category]["TP"], result["per_class"][category]["FP"]) == (tp, fp)
        assert result["per_class"][category]["FN"] == fn

    metric = PanopticQuality(categories=CATEGORIES)
    metric.add_batch(predictions=predictions[:2], references=references[:2])
    metric.add(prediction=predictions[2], reference=references[2])
    via_metric = metric.compute(predictions=predictions[3:], references=references[3:])
    for key, value in expected.items():
        assert math.isclose(via_metric[key], value, rel_tol=0, abs_tol=1e-9), key


def test_crowd_void_and_duplicates_by_hand():
    """One 400x500 image: a person crowd region, a matched person, predictions in the crowd and in void."""
    gt = np.zeros((400, 500), dtype=np.int64)
    gt[:, 250:] = 7  # crowd of category 1
    gt[50:150, 20:120] = 8  # person, category 1
    gt[300:, :100] = 9  # road, category 120
    pred = np.zeros((400, 500), dtype=np.int64)
    pred[50:150, 20:110] = 1  # matches 8 (IoU 0.9)
    pred[0:100, 300:400] = 2  # category 1 inside the crowd: ignored
    pred[200:300, 300:400] = 3  # category 4 inside the crowd: a false positive
    pred[200:260, 130:200] = 4  # in void: ignored
    pred[300:, :100] = 5  # road, predicted as two fused queries listed twice
    reference = {
        "segmentation": gt,
        "segments_info": [
            {"id": 7, "category_id": 1, "iscrowd": 1},
            {"id": 8, "category_id": 1, "iscrowd": 0},
            {"id": 9, "category_id": 120, "iscrowd": 0},
        ],
    }
    infos = [(1, 1), (2, 1), (3, 4), (4, 1), (5, 120), (5, 120)]
    prediction = {"segmentation": pred, "segments_info": [{"id": i, "label_id": c} for i, c in infos]}
    stats = panoptic_statistics(prediction, reference)
    assert stats[1][:3] == [1, 0, 0] and math.isclose(stats[1][3], 0.9)
    assert stats[4][:3] == [0, 1, 0]
    assert stats[120] == [1, 0, 0, 1.0]
    bad = {**prediction, "segments_info": [*prediction["segments_info"], {"id": 5, "label_id": 4}]}
    with pytest.raises(ValueError, match="segment id 5 is listed with different categories"):
        panoptic_statistics(bad, reference)


def test_pq_equals_torchmetrics_without_crowd():
    """torchmetrics has no crowd and also ignores references mostly covered by predicted void, so compare on
    crowd-free references with predictions that label every pixel. torchmetrics computes RQ in float32
    (int TP / float32 denominator), hence 1e-6 here; the 1e-9 reference is the brute-force one above."""
    pairs = []
    for seed in range(2):
        prediction, reference = make_pair(10 + seed, 300, 420, crowd=False)
        pred = prediction["segmentation"].clone()
        leftover = len(prediction["segments_info"]) + 1000
        pred[pred == 0] = leftover
        info = [*prediction["segments_info"], {"id": leftover, "label_id": STUFF[0]}]
        # One segment per stuff category, as torchmetrics merges stuff instances.
        stuff_ids = {}
        for s in info:
            if s["label_id"] in STUFF:
                keep = stuff_ids.setdefault(s["label_id"], s["id"])
                pred[pred == s["id"]] = keep
        info = [s for s in info if s["label_id"] not in STUFF or stuff_ids[s["label_id"]] == s["id"]]
        pairs.append(({"segmentation": pred, "segments_info": info}, reference))

    def colours(item, key):
        ids = torch.as_tensor(np.asarray(item["segmentation"]))
        out = torch.full((*ids.shape, 2), -1, dtype=torch.long)  # category -1 = void
        for s in item["segments_info"]:
            out[ids == s["id"]] = torch.tensor([s[key], s["id"]])
        return out

    torchmetrics_pq = TorchmetricsPQ(
        things=set(THINGS), stuffs=set(STUFF), return_sq_and_rq=True, allow_unknown_preds_category=True
    )
    for prediction, reference in pairs:
        torchmetrics_pq.update(colours(prediction, "label_id")[None], colours(reference, "category_id")[None])
    pq, sq, rq = torchmetrics_pq.compute().tolist()
    result = compute_panoptic_quality(*zip(*pairs), categories=CATEGORIES)
    assert math.isclose(result["PQ"], pq, abs_tol=1e-6)
    assert math.isclose(result["SQ"], sq, abs_tol=1e-6)
    assert math.isclose(result["RQ"], rq, abs_tol=1e-6)


def test_perfect_prediction_and_empty_groups(tmp_path):
    _, reference = make_pair(3, crowd=False)
    prediction = {
        "segmentation": reference["segmentation"],
        "segments_info": [{"id": s["id"], "label_id": s["category_id"]} for s in reference["segments_info"]],
    }
    result = compute_panoptic_quality([prediction], [reference], categories=CATEGORIES, per_class=True)
    assert result["PQ"] == result["SQ"] == result["RQ"] == 1.0
    only_things = compute_panoptic_quality(
        [prediction], [reference], categories={c: 1 for c in THINGS + STUFF}
    )
    assert only_things["PQ_st"] == -1.0 and only_things["N_st"] == 0

    # A reference read back from a COCO panoptic PNG gives the same numbers.
    import PIL.Image

    PIL.Image.fromarray(id_to_rgb(reference["segmentation"])).save(tmp_path / "a.png")
    record = {"image_id": 1, "file_name": "a.png", "segments_info": reference["segments_info"]}
    from_png = reference_from_coco_panoptic(record, tmp_path)
    assert compute_panoptic_quality([prediction], [from_png], categories=CATEGORIES)["PQ"] == 1.0


def test_bad_inputs_are_named():
    prediction, reference = make_pair(4)
    with pytest.raises(ValueError, match=r"image 0: prediction is \(100, 100\)"):
        panoptic_statistics(
            {**prediction, "segmentation": torch.zeros(100, 100, dtype=torch.int32)}, reference
        )
    with pytest.raises(ValueError, match="prediction segment ids .* not in segments_info"):
        panoptic_statistics({**prediction, "segments_info": prediction["segments_info"][1:]}, reference)
    with pytest.raises(ValueError, match="in segments_info but have no pixel"):
        extra = [*prediction["segments_info"], {"id": 99999, "label_id": 1}]
        panoptic_statistics({**prediction, "segments_info": extra}, reference)
    with pytest.raises(ValueError, match=r"categories \[77\] are not in `categories`"):
        relabelled = [{**s, "label_id": 77} for s in prediction["segments_info"]]
        compute_panoptic_quality(
            [{**prediction, "segments_info": relabelled}], [reference], categories=CATEGORIES
        )
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_panoptic_quality([prediction, prediction], [reference])

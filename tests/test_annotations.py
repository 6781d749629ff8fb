"""annotations: COCO detection records → label dicts on realistic records (many boxes, sparse ids, crowds)."""

from __future__ import annotations

import pytest
import torch

from detr_hf.annotations import coco_to_labels, normalize_category_mapping
from helpers import CATEGORY_IDS, realistic_detection_batch

IMAGES, ANNOTATIONS = realistic_detection_batch(num_images=3, seed=11)


def _expected_kept(annotation: dict, height: int, width: int, keep_crowd: bool) -> list[dict]:
    """The objects that survive, computed independently: crowd rule, then clip to the image, then non-empty."""
    kept = []
    for obj in annotation["annotations"]:
        if obj["iscrowd"] and not keep_crowd:
            continue
        x, y, w, h = obj["bbox"]
        x0, y0 = min(max(x, 0), width), min(max(y, 0), height)
        x1, y1 = min(max(x + w, 0), width), min(max(y + h, 0), height)
        if x1 > x0 and y1 > y0:
            kept.append({**obj, "xyxy": (x0, y0, x1, y1)})
    return kept


@pytest.mark.parametrize("keep_crowd", [False, True])
def test_realistic_records_with_crowds_and_sparse_ids(keep_crowd):
    mapping = {cid: i for i, cid in enumerate(CATEGORY_IDS)}
    for index, (image, annotation) in enumerate(zip(IMAGES, ANNOTATIONS)):
        width, height = image.size
        new_size = (height // 2, width // 3)  # an anisotropic resize
        labels = coco_to_labels(
            annotation, index, (height, width), new_size, category_id_to_label=mapping, keep_crowd=keep_crowd
        )
        kept = _expected_kept(annotation, height, width, keep_crowd)
        assert labels["class_labels"].tolist() == [mapping[o["category_id"]] for o in kept]
        assert labels["iscrowd"].tolist() == [o["iscrowd"] for o in kept]
        sx, sy = new_size[1] / width, new_size[0] / height
        expected_xyxy = torch.tensor([o["xyxy"] for o in kept], dtype=torch.float32).reshape(-1, 4)
        expected_xyxy *= torch.tensor([sx, sy, sx, sy])
        new_h, new_w = new_size
        cxcywh = torch.stack(
            [
                (expected_xyxy[:, 0] + expected_xyxy[:, 2]) / 2 / new_w,
                (expected_xyxy[:, 1] + expected_xyxy[:, 3]) / 2 / new_h,
                (expected_xyxy[:, 2] - expected_xyxy[:, 0]) / new_w,
                (expected_xyxy[:, 3] - expected_xyxy[:, 1]) / new_h,
            ],
            dim=-1,
        )
        torch.testing.assert_close(labels["boxes"], cxcywh, atol=1e-6, rtol=0)
        assert bool((labels["boxes"] >= 0).all() and (labels["boxes"] <= 1 + 1e-6).all())
        # The annotation's (segment) area, not the box area, rescaled to the new size.
        expected_area = torch.tensor([o["area"] * sx * sy for o in kept], dtype=torch.float32)
        torch.testing.assert_close(labels["area"], expected_area, rtol=1e-5, atol=0)
        assert labels["orig_size"].tolist() == [height, width] and labels["size"].tolist() == list(new_size)
        assert labels["image_id"].tolist() == [annotation["image_id"]]
        absolute = coco_to_labels(
            annotation, index, (height, width), new_size, normalize=False, keep_crowd=keep_crowd
        )
        torch.testing.assert_close(absolute["boxes"], expected_xyxy, atol=1e-4, rtol=0)
        assert absolute["class_labels"].tolist() == [o["category_id"] for o in kept]  # ids kept as they are
    crowds = sum(o["iscrowd"] for a in ANNOTATIONS for o in a["annotations"])
    assert crowds >= 3  # the fixture really has crowd regions


def test_image_without_objects():
    labels = coco_to_labels({"image_id": 5, "annotations": []}, 0, (480, 640), (800, 1066))
    assert labels["boxes"].shape == (0, 4) and labels["class_labels"].shape == (0,)
    assert labels["area"].shape == (0,) and labels["iscrowd"].dtype == torch.int64


def test_missing_area_falls_back_to_the_box_area():
    record = {"image_id": 1, "annotations": [{"bbox": [10, 10, 20, 30], "category_id": 3}]}
    labels = coco_to_labels(record, 0, (100, 100), (200, 200))
    assert labels["area"].tolist() == [20 * 30 * 4]


def test_category_mapping_from_json_keys():
    assert normalize_category_mapping({"1": 0, "90": "1"}, "m") == {1: 0, 90: 1}
    assert normalize_category_mapping(None, "m") is None
    with pytest.raises(TypeError, match=r"m must be a dict \{category_id: label_id\}, got list"):
        normalize_category_mapping([1, 2], "m")
    with pytest.raises(ValueError, match="m must map integer ids to integer labels, got 'cat': 0"):
        normalize_category_mapping({"cat": 0}, "m")
    with pytest.raises(ValueError, match=r"m\['3'\] = -1: label ids must be >= 0"):
        normalize_category_mapping({"3": -1}, "m")


def test_errors_name_the_record_and_the_object():
    record = {"image_id": 42, "annotations": [{"bbox": [0, 0, 5, 5], "category_id": 7}] * 3}
    with pytest.raises(
        ValueError, match=r"annotations\[2\] \(image_id=42\), object 0: category_id 7 is not in"
    ):
        coco_to_labels(record, 2, (10, 10), (10, 10), category_id_to_label={1: 0})
    record["annotations"] = [{"bbox": [0, 0, 5, 5], "category_id": 1.5}]
    with pytest.raises(ValueError, match="object 0: category_id must be an integer, got 1.5"):
        coco_to_labels(record, 0, (10, 10), (10, 10))
    with pytest.raises(ValueError, match="'image_id' must be an integer, got 'a.jpg'"):
        coco_to_labels({"image_id": "a.jpg", "annotations": []}, 0, (10, 10), (10, 10))
    with pytest.raises(TypeError, match=r"annotations\[0\] must be a dict with 'image_id'"):
        coco_to_labels([1], 0, (10, 10), (10, 10))
    with pytest.raises(TypeError, match="object 1 must be a dict with 'bbox' and 'category_id', got int"):
        coco_to_labels(
            {"image_id": 1, "annotations": [{"bbox": [0, 0, 1, 1], "category_id": 1}, 3]}, 0, (9, 9), (9, 9)
        )

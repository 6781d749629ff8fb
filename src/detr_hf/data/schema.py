"""The cppe-5 object-detection schema shared by every detr_hf dataset loader."""

from __future__ import annotations

import datasets

__all__ = ["detection_features"]


def detection_features(class_names: list[str], with_crowd: bool = False) -> datasets.Features:
    """Features `image, image_id, width, height, objects{id, area, bbox (COCO xywh), category}`, plus
    `objects.iscrowd` (COCO's crowd flag, 0/1) when `with_crowd`."""
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": {
                "id": datasets.List(datasets.Value("int64")),
                "area": datasets.List(datasets.Value("float32")),
                "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                "category": datasets.List(datasets.ClassLabel(names=list(class_names))),
            },
        }
    )
    if with_crowd:
        features["objects"]["iscrowd"] = datasets.List(datasets.Value("int8"))
    return features

"""COCO detection annotations → detr_hf label dicts (class ids, normalised boxes, areas)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .box_ops import box_convert, normalize_boxes

__all__ = ["coco_to_labels", "normalize_category_mapping"]


def normalize_category_mapping(mapping: Mapping[Any, Any] | None, name: str) -> dict[int, int] | None:
    """Validate a category-id → label-id mapping; JSON turns int keys into strings, so convert them back."""
    if mapping is None:
        return None
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name} must be a dict {{category_id: label_id}}, got {type(mapping).__name__}")
    result = {}
    for key, value in mapping.items():
        try:
            result[int(key)] = int(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must map integer ids to integer labels, got {key!r}: {value!r}"
            ) from None
        if result[int(key)] < 0:
            raise ValueError(f"{name}[{key!r}] = {value!r}: label ids must be >= 0")
    return result


def _where(index: int, image_id: Any, obj_index: int | None = None) -> str:
    place = f"annotations[{index}] (image_id={image_id!r})"
    return place if obj_index is None else f"{place}, object {obj_index}"


def _class_label(
    category: Any,
    where: str,
    category_id_to_label: Mapping[int, int] | None,
    label2id: Mapping[str, int] | None,
) -> int:
    if isinstance(category, str):
        if not label2id or category not in label2id:
            raise ValueError(f"{where}: category_id {category!r} is a name that is not in label2id")
        return int(label2id[category])
    if isinstance(category, bool) or not isinstance(category, int | float) or int(category) != category:
        raise ValueError(f"{where}: category_id must be an integer, got {category!r}")
    category = int(category)
    if category_id_to_label is not None:
        if category not in category_id_to_label:
            known = sorted(category_id_to_label)
            raise ValueError(
                f"{where}: category_id {category} is not in category_id_to_label (known ids: {known[:20]}"
                f"{' ...' if len(known) > 20 else ''})"
            )
        return category_id_to_label[category]
    if category < 0:
        raise ValueError(f"{where}: category_id {category} is negative")
    return category


def coco_to_labels(
    annotation: Mapping[str, Any],
    index: int,
    orig_size: tuple[int, int],
    new_size: tuple[int, int],
    *,
    category_id_to_label: Mapping[int, int] | None = None,
    label2id: Mapping[str, int] | None = None,
    keep_crowd: bool = False,
    normalize: bool = True,
) -> dict[str, torch.Tensor]:
    """One COCO detection record (`{"image_id", "annotations": [{"bbox": [x, y, w, h], "category_id", ...}]}`)
    for an image of `orig_size` (h, w) that becomes `new_size` (h, w) → a label dict.

    Boxes are clipped to the image and degenerate ones dropped; crowd objects are dropped unless `keep_crowd`.
    With `normalize`, `boxes` are (cx, cy, w, h) relative to `new_size` (the image's own unpadded size);
    otherwise absolute (x0, y0, x1, y1) in `new_size` pixels. `area` is rescaled to `new_size`.
    `index` only names the record in error messages.
    """
    if not isinstance(annotation, Mapping):
        raise TypeError(
            f"annotations[{index}] must be a dict with 'image_id' and 'annotations', got {type(annotation).__name__}"
        )
    if "image_id" not in annotation:
        raise ValueError(f"annotations[{index}] has no 'image_id' (COCO detection format)")
    image_id = annotation["image_id"]
    objects = annotation.get("annotations")
    if not isinstance(objects, Sequence) or isinstance(objects, str):
        raise ValueError(
            f"{_where(index, image_id)}: 'annotations' must be a list of objects, got {type(objects).__name__}"
        )

    xywh, labels, areas, crowd = [], [], [], []
    for j, obj in enumerate(objects):
        where = _where(index, image_id, j)
        if not isinstance(obj, Mapping):
            raise TypeError(f"{where} must be a dict with 'bbox' and 'category_id', got {type(obj).__name__}")
        if "bbox" not in obj or "category_id" not in obj:
            raise ValueError(f"{where} needs 'bbox' and 'category_id' (has {sorted(obj)})")
        box = obj["bbox"]
        try:
            box = [float(v) for v in box]
        except (TypeError, ValueError):
            raise ValueError(f"{where}: 'bbox' must be 4 numbers [x, y, w, h], got {box!r}") from None
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {obj['bbox']!r}")
        is_crowd = bool(obj.get("iscrowd", 0))
        if is_crowd and not keep_crowd:
            continue
        labels.append(_class_label(obj["category_id"], where, category_id_to_label, label2id))
        xywh.append(box)
        # Without an 'area' (COCO stores the segment's area) the box area stands in.
        areas.append(float(obj["area"]) if obj.get("area") is not None else box[2] * box[3])
        crowd.append(int(is_crowd))

    orig_h, orig_w = orig_size
    new_h, new_w = new_size
    boxes = box_convert(torch.tensor(xywh, dtype=torch.float32).reshape(-1, 4), "xywh", "xyxy")
    boxes[:, 0::2].clamp_(0, orig_w)
    boxes[:, 1::2].clamp_(0, orig_h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])

    scale_w, scale_h = new_w / orig_w, new_h / orig_h
    boxes = boxes[keep] * torch.tensor([scale_w, scale_h, scale_w, scale_h], dtype=torch.float32)
    if normalize:
        boxes = normalize_boxes(boxes, new_h, new_w)
    return {
        "image_id": torch.tensor([_as_int_id(image_id, index)], dtype=torch.int64),
        "class_labels": torch.tensor(labels, dtype=torch.int64)[keep],
        "boxes": boxes,
        "area": torch.tensor(areas, dtype=torch.float32)[keep] * (scale_w * scale_h),
        "iscrowd": torch.tensor(crowd, dtype=torch.int64)[keep],
        "orig_size": torch.tensor([orig_h, orig_w], dtype=torch.int64),
        "size": torch.tensor([new_h, new_w], dtype=torch.int64),
    }


def _as_int_id(image_id: Any, index: int) -> int:
    if isinstance(image_id, torch.Tensor) and image_id.numel() == 1:
        image_id = image_id.item()
    try:
        if int(image_id) == image_id and not isinstance(image_id, bool):
            return int(image_id)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"annotations[{index}]: 'image_id' must be an integer, got {image_id!r}")

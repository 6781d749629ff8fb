"""Load a COCO folder (images + instances_*.json) into the cppe-5 schema, skipping what cannot be read."""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path

import datasets
from PIL import Image

from detr_hf.data.schema import detection_features

__all__ = ["load_coco_folder", "coco_category_ids"]

logger = logging.getLogger(__name__)

_MAPPING_KEY = "coco_category_ids"


def _readable_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a fully decodable image, None if missing, corrupt or truncated."""
    try:
        with Image.open(path) as image:
            image.load()  # a full decode: `verify()` misses truncated pixel data
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _category_table(categories: list[dict], annotation_file: str) -> tuple[dict[int, int], list[str]]:
    """COCO ids (any order, gaps allowed) → contiguous labels 0..N-1 in ascending id order, and the names."""
    by_id: dict[int, str] = {}
    for k, cat in enumerate(categories):
        if "id" not in cat or "name" not in cat:
            raise ValueError(f"{annotation_file}: categories[{k}] lacks 'id' or 'name'")
        if int(cat["id"]) in by_id:
            raise ValueError(f"{annotation_file}: category id {cat['id']} appears twice")
        by_id[int(cat["id"])] = str(cat["name"])
    names = [by_id[i] for i in sorted(by_id)]
    if len(set(names)) != len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{annotation_file}: category names must be unique, repeated: {duplicated}")
    return {coco_id: label for label, coco_id in enumerate(sorted(by_id))}, names


def clip_xywh_box(bbox: list, width: int, height: int) -> tuple[list[float], bool] | None:
    """COCO [x, y, w, h] clipped to a `width`×`height` image as (box, was_clipped); None when nothing of it
    is left or a value is not finite."""
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        return None
    clipped = [x0, y0, x1 - x0, y1 - y0]
    return clipped, clipped != [x, y, w, h]


def load_coco_folder(
    image_dir: str | os.PathLike,
    annotation_file: str | os.PathLike,
    verify_images: bool = True,
) -> datasets.Dataset:
    """A COCO detection folder as a `datasets.Dataset` in the cppe-5 schema (images decoded lazily).

    - Category ids (any, non-contiguous) map to ClassLabel indices in ascending id order; the COCO id of
      label i is `coco_category_ids(dataset)[i]`.
    - Images that are missing, corrupt, truncated, or whose size disagrees with the json are skipped
      (one counted warning) when `verify_images` (a full decode of every image, once, at load time).
    - Images without annotations are kept (empty `objects`); crowd annotations are left out.
    - Boxes reaching outside the image are clipped; boxes with nothing left are dropped (one counted warning).
    - An annotation naming an unknown category or image, or a malformed bbox → ValueError naming its id.
    """
    image_dir, annotation_file = Path(image_dir), Path(annotation_file)
    with open(annotation_file) as f:
        coco = json.load(f)
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{annotation_file}: missing or invalid top-level list {key!r}")
    label_of, names = _category_table(coco["categories"], str(annotation_file))
    images = {int(img["id"]): img for img in coco["images"]}

    per_image: dict[int, list[dict]] = defaultdict(list)
    for k, ann in enumerate(coco["annotations"]):
        ann_id = ann.get("id", f"#{k}")
        if ann.get("category_id") not in label_of:
            raise ValueError(
                f"{annotation_file}: annotation id {ann_id} has category_id {ann.get('category_id')!r}, "
                f"not among the categories {sorted(label_of)}"
            )
        if ann.get("image_id") not in images:
            raise ValueError(
                f"{annotation_file}: annotation id {ann_id} names unknown image_id {ann.get('image_id')!r}"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise ValueError(
                f"{annotation_file}: annotation id {ann_id} has bbox {bbox!r}, expected [x, y, w, h]"
            )
        per_image[int(ann["image_id"])].append(ann)

    rows: dict[str, list] = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
    unreadable: list[str] = []
    dropped_boxes, clipped_boxes, crowd = 0, 0, 0
    for image_id, img in images.items():
        path = image_dir / img["file_name"]
        width, height = img.get("width"), img.get("height")
        if verify_images:
            size = _readable_size(path)
            if size is None or (width is not None and height is not None and size != (width, height)):
                unreadable.append(img["file_name"])
                continue
            width, height = size
        elif width is None or height is None:
            raise ValueError(
                f"{annotation_file}: image id {image_id} lacks width/height (needed without verify_images)"
            )
        objects: dict[str, list] = {"id": [], "area": [], "bbox": [], "category": []}
        for ann in per_image.get(image_id, []):
            if ann.get("iscrowd", 0):
                crowd += 1
                continue
            clipped = clip_xywh_box(ann["bbox"], width, height)
            if clipped is None:
                dropped_boxes += 1
                continue
            box, was_clipped = clipped
            clipped_boxes += was_clipped
            area = ann.get("area")
            objects["id"].append(int(ann.get("id", -1)))
            objects["area"].append(box[2] * box[3] if was_clipped or area is None else float(area))
            objects["bbox"].append(box)
            objects["category"].append(label_of[ann["category_id"]])
        rows["image"].append(str(path))
        rows["image_id"].append(image_id)
        rows["width"].append(width)
        rows["height"].append(height)
        rows["objects"].append(objects)

    if images and len(unreadable) == len(images):
        # An empty dataset would only fail later, far from the cause.
        raise ValueError(
            f"{annotation_file}: no readable image among {len(images)} in {image_dir} "
            f"(missing, corrupt, truncated or of another size than the json says; first: {', '.join(unreadable[:5])})"
        )
    if unreadable:
        logger.warning(
            "%s: skipped %d of %d images that are missing, corrupt, truncated or of another size than "
            "the json says (first: %s)",
            annotation_file,
            len(unreadable),
            len(images),
            ", ".join(unreadable[:5]),
        )
    if dropped_boxes or clipped_boxes:
        logger.warning(
            "%s: dropped %d boxes with no area inside their image; clipped %d boxes to the image",
            annotation_file,
            dropped_boxes,
            clipped_boxes,
        )
    if crowd:
        logger.info("%s: left out %d crowd annotations", annotation_file, crowd)

    features = detection_features(names)
    info = datasets.DatasetInfo(description=json.dumps({_MAPPING_KEY: sorted(label_of)}), features=features)
    return datasets.Dataset.from_dict(rows, features=features, info=info)


def coco_category_ids(dataset: datasets.Dataset) -> list[int]:
    """COCO category id of each ClassLabel index of a dataset made by `load_coco_folder`."""
    try:
        return list(json.loads(dataset.info.description)[_MAPPING_KEY])
    except (TypeError, ValueError, KeyError):
        raise ValueError("dataset carries no COCO category mapping (not made by load_coco_folder)") from None

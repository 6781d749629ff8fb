"""A split's COCO ground truth (crowd regions and annotation areas kept) for the official COCO protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["coco_ground_truth", "ground_truth_of"]


def coco_ground_truth(
    rows: Any, *, class_names: Sequence[str], category_ids: Sequence[int], label_field: str = "category"
) -> dict:
    """A COCO annotation dict of cppe-5 rows (`image_id`, `width`, `height`, `objects{bbox xywh, category,
    area?, iscrowd?}`; only these columns are read, images are not decoded): category ids as the dataset
    names them (`category_ids[label]`), boxes and areas as stored (a missing area is the box area), annotation
    ids 1..N (COCOeval reads an id of 0 as "unmatched"). A row without `image_id` gets its row index."""
    columns = [c for c in ("image_id", "width", "height", "objects") if c in rows.column_names]
    images, annotations = [], []
    for start in range(0, len(rows), 1000):
        batch = rows.select_columns(columns)[start : start + 1000]
        for k, objects in enumerate(batch["objects"]):
            image_id = int(batch["image_id"][k]) if "image_id" in batch else start + k
            image = {"id": image_id}
            for key in ("width", "height"):
                if key in batch and batch[key][k] is not None:
                    image[key] = int(batch[key][k])
            images.append(image)
            areas = objects.get("area") or [None] * len(objects["bbox"])
            crowd = objects.get("iscrowd") or [0] * len(objects["bbox"])
            for box, label, area, is_crowd in zip(objects["bbox"], objects[label_field], areas, crowd):
                x, y, w, h = (float(v) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(category_ids[int(label)]),
                        "bbox": [x, y, w, h],
                        "area": float(area) if area is not None else w * h,
                        "iscrowd": int(is_crowd),
                    }
                )
    if len({img["id"] for img in images}) != len(images):
        raise ValueError("the split has repeated image_id values: COCO evaluation needs one id per image")
    categories = [{"id": int(c), "name": str(n)} for c, n in zip(category_ids, class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def ground_truth_of(dataset: Any) -> dict:
    """The COCO ground truth of a `DetectionDataset`: the annotation file's own content for a COCO folder,
    else built from the rows by `coco_ground_truth`."""
    source = dataset.dataset
    if hasattr(source, "coco"):
        return source.coco
    return coco_ground_truth(
        source, class_names=dataset.class_names, category_ids=dataset.category_ids, label_field=dataset.label_field
    )

"""A COCO folder (images + instances_*.json) read lazily in the cppe-5 schema: the json is parsed and checked
at start-up, each image only when its row is read."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets

from detr_hf.data.coco_json import CocoIndex, read_coco_json
from detr_hf.data.schema import detection_features
from detr_hf.image_inputs import open_image

__all__ = ["CocoFolder", "coco_category_ids", "load_coco_folder"]

logger = logging.getLogger(__name__)

_MAPPING_KEY = "coco_category_ids"


class CocoFolder:
    """A COCO detection folder as rows `{image, image_id, width, height, objects{id, area, bbox, category,
    iscrowd}}` (the cppe-5 schema plus COCO's crowd flag); `len`, indexing and iteration like a dataset.

    - Start-up parses and checks the json only (no image is opened): an annotation naming an unknown
      category or image, or a malformed bbox → ValueError naming its id.
    - Category ids (any, non-contiguous) map to labels 0..N-1 in ascending id order: label i is COCO id
      `category_ids[i]`, named `class_names[i]`.
    - `folder[i]` opens image i upright (EXIF orientation applied: COCO boxes refer to the image as a viewer
      shows it); a missing, corrupt or truncated file, or one whose upright size is not the json's
      width × height, raises OSError/ValueError naming the file (the training dataset skips and counts it).
    - Boxes, areas and crowd regions are the json's own (clipping happens in the training transforms);
      `coco` is the parsed json, the ground truth COCO evaluation uses.
    """

    def __init__(self, image_dir: str | os.PathLike, annotation_file: str | os.PathLike) -> None:
        self.image_dir, self.annotation_file = Path(image_dir), Path(annotation_file)
        self.coco = read_coco_json(self.annotation_file)
        self._index = CocoIndex(self.coco, self.annotation_file)
        self.category_ids, self.class_names = self._index.category_ids, self._index.class_names
        self._label_of = self._index.label_of
        self._images = self.coco["images"]
        self.column_names = ["image", "image_id", "width", "height", "objects"]
        self.features = detection_features(self.class_names, with_crowd=True)

    def __len__(self) -> int:
        return len(self._images)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def path(self, index: int) -> Path:
        return self.image_dir / self._images[index]["file_name"]

    def objects(self, index: int) -> dict[str, list]:
        """Row `index`'s objects (no image opened)."""
        anns = self._index.annotations_of(index)
        return {
            "id": [int(a.get("id", -1)) for a in anns],
            "area": [float(a["area"]) if a.get("area") is not None else a["bbox"][2] * a["bbox"][3] for a in anns],
            "bbox": [[float(v) for v in a["bbox"]] for a in anns],
            "category": [self._label_of[a["category_id"]] for a in anns],
            "iscrowd": [int(bool(a.get("iscrowd", 0))) for a in anns],
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        img = self._images[index]
        path = self.path(index)
        image = open_image(path)
        width, height = img.get("width"), img.get("height")
        if width is not None and height is not None and image.size != (width, height):
            raise ValueError(
                f"{path}: the json says {width}x{height} but the upright image is {image.size[0]}x{image.size[1]}"
            )
        return {
            "image": image,
            "image_id": img["id"],
            "width": image.size[0],
            "height": image.size[1],
            "objects": self.objects(index),
        }

    def to_dataset(self, verify_images: bool = True) -> datasets.Dataset:
        """The folder as an in-memory `datasets.Dataset` (images decoded by `datasets` when read). With
        `verify_images`, every image is decoded once now and unreadable ones are left out (one counted
        warning; ValueError if none is readable): meant for small folders, training reads the folder lazily."""
        rows: dict[str, list] = {name: [] for name in self.column_names}
        unreadable = []
        for index, img in enumerate(self._images):
            if verify_images:
                try:
                    self[index]
                except (OSError, ValueError, SyntaxError):
                    unreadable.append(img["file_name"])
                    continue
            rows["image"].append(str(self.path(index)))
            rows["image_id"].append(img["id"])
            rows["width"].append(img.get("width"))
            rows["height"].append(img.get("height"))
            rows["objects"].append(self.objects(index))
        if self._images and len(unreadable) == len(self._images):
            raise ValueError(
                f"{self.annotation_file}: no readable image among {len(self._images)} in {self.image_dir} "
                f"(missing, corrupt, truncated or of another size than the json says; first: {', '.join(unreadable[:5])})"
            )
        if unreadable:
            logger.warning(
                "%s: skipped %d of %d images that are missing, corrupt, truncated or of another size than "
                "the json says (first: %s)",
                self.annotation_file, len(unreadable), len(self._images), ", ".join(unreadable[:5]),
            )  # fmt: skip
        info = datasets.DatasetInfo(description=json.dumps({_MAPPING_KEY: self.category_ids}), features=self.features)
        return datasets.Dataset.from_dict(rows, features=self.features, info=info)


def load_coco_folder(
    image_dir: str | os.PathLike, annotation_file: str | os.PathLike, verify_images: bool = True
) -> datasets.Dataset:
    """A COCO folder as an in-memory `datasets.Dataset` (`CocoFolder(...).to_dataset(verify_images)`); the
    training scripts use the lazy `CocoFolder` instead, which starts without opening any image."""
    return CocoFolder(image_dir, annotation_file).to_dataset(verify_images)


def coco_category_ids(dataset: Any) -> list[int]:
    """COCO category id of each label of a `CocoFolder` or of a dataset made by `load_coco_folder`."""
    if isinstance(dataset, CocoFolder):
        return list(dataset.category_ids)
    try:
        return list(json.loads(dataset.info.description)[_MAPPING_KEY])
    except (AttributeError, TypeError, ValueError, KeyError):
        raise ValueError("dataset carries no COCO category mapping (not made by load_coco_folder)") from None

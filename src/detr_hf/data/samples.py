"""Training and evaluation samples: a dataset's rows → (image tensor, label dict) pairs, robust to bad rows."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

import PIL.Image
import torch
from torch.utils.data import Dataset

from detr_hf.box_ops import normalize_boxes
from detr_hf.data.label_space import category_ids_of, class_names_of
from detr_hf.data.pixels import image_tensor
from detr_hf.data.transforms import transform_boxes

__all__ = ["DetectionDataset"]

logger = logging.getLogger(__name__)

# How many following rows to try when an image cannot be read, before giving up with an error.
_MAX_SUBSTITUTIONS = 16
_WARN_FIRST = 10
_UNREADABLE = (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError)


def _boxes_needing_repair(boxes: torch.Tensor, height: int, width: int) -> int:
    """How many [x, y, w, h] boxes reach outside a height×width image, are empty or not finite."""
    inside = (
        torch.isfinite(boxes).all(-1)
        & (boxes[:, 0] >= 0)
        & (boxes[:, 1] >= 0)
        & (boxes[:, 2] > 0)
        & (boxes[:, 3] > 0)
        & (boxes[:, 0] + boxes[:, 2] <= width)
        & (boxes[:, 1] + boxes[:, 3] <= height)
    )
    return int((~inside).sum())


class DetectionDataset(Dataset):
    """Rows of a cppe-5 dataset (a `datasets.Dataset` or a `CocoFolder`) served as transformed samples.

    `dataset[i]` or `dataset[(epoch, i)]` → {"image": [3, H, W] (uint8, or float in [0, 1] for 16-bit and float
    images), "labels": the model's label dict ("class_labels" int64 [N], "boxes" float [N, 4] (cx, cy, w, h)
    normalised by the transformed image's size, "image_id", "area", "iscrowd", "orig_size" = original (h, w),
    "size"), "image_id", "orig_size", "index"}: what `DetectionCollator` stacks, nothing re-parsed.
    - A (epoch, i) key seeds the augmentation from (seed, epoch, i), independent of the global RNG, of
      the worker and process count, and of prefetching: resumed runs replay the same augmentations.
    - Images are read upright (EXIF orientation applied), 16-bit images scaled to [0, 1], alpha composited
      on white, as the image processor reads them.
    - An image that cannot be read (missing, corrupt, truncated, of another size than a COCO json says) is
      replaced by the next readable row (`unreadable_images` counts them, with a warning).
    - Crowd regions (`objects.iscrowd`) are left out of the labels (they stay in the evaluation ground
      truth); boxes reaching outside the image are clipped by the transform and empty ones dropped
      (`fixed_boxes` counts them, with a warning).
    - `class_names[i]` names label i, whose own category id in the dataset is `category_ids[i]`.
    """

    def __init__(
        self,
        dataset: Any,
        transform: Callable[[dict], dict] | None,
        seed: int = 0,
        label_field: str = "category",
        split: str = "train",
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.label_field = label_field
        self.split = split
        self.unreadable_images = 0
        self.fixed_boxes = 0

    @cached_property
    def class_names(self) -> list[str]:
        return class_names_of(self.dataset, self.label_field)

    @cached_property
    def category_ids(self) -> list[int]:
        return category_ids_of(self.dataset, len(self.class_names))

    def __len__(self) -> int:
        return len(self.dataset)

    def _warn(self, count: int, message: str, *args: Any) -> None:
        if count <= _WARN_FIRST or count % 1000 == 0:
            logger.warning(message, *args)

    def _readable_row(self, index: int) -> tuple[int, dict, torch.Tensor]:
        for attempt in range(_MAX_SUBSTITUTIONS):
            candidate = (index + attempt) % len(self.dataset)
            try:
                row = self.dataset[candidate]
                return candidate, row, image_tensor(row["image"], f"{self.split} split, row {candidate}")
            except _UNREADABLE as error:
                self.unreadable_images += 1
                self._warn(
                    self.unreadable_images,
                    "%s split: row %d has an unreadable image (%s); using the next row instead "
                    "(%d unreadable so far)",
                    self.split, candidate, error, self.unreadable_images,
                )  # fmt: skip
        raise RuntimeError(
            f"{self.split} split: {_MAX_SUBSTITUTIONS} consecutive rows from {index} have unreadable images"
        )

    def _objects(self, row: dict, index: int, height: int, width: int) -> tuple[list, torch.Tensor]:
        """The row's non-crowd boxes (COCO xywh, as stored) and labels; counts boxes needing repair."""
        objects = row["objects"]
        if self.label_field not in objects or "bbox" not in objects:
            raise ValueError(
                f"{self.split} split, row {index}: objects needs 'bbox' and {self.label_field!r} (has {sorted(objects)})"
            )
        boxes, labels = list(objects["bbox"]), list(objects[self.label_field])
        crowd = objects.get("iscrowd") or [0] * len(boxes)
        kept = [k for k, is_crowd in enumerate(crowd) if not is_crowd]
        if len(kept) != len(boxes):
            boxes, labels = [boxes[k] for k in kept], [labels[k] for k in kept]
        changed = _boxes_needing_repair(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), height, width)
        if changed:
            self.fixed_boxes += changed
            self._warn(
                self.fixed_boxes,
                "%s split: row %d (image_id %s) had %d boxes outside the image or empty; clipped/dropped "
                "(%d so far)",
                self.split, index, row.get("image_id"), changed, self.fixed_boxes,
            )  # fmt: skip
        return boxes, torch.as_tensor(labels, dtype=torch.int64).reshape(-1)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        index, row, pixels = self._readable_row(int(index))
        height, width = pixels.shape[-2:]
        image_id = int(row.get("image_id", index))
        boxes, labels = self._objects(row, index, height, width)
        where = f"{self.split} split, row {index} (image_id {image_id})"
        if epoch is None:
            pixels, xyxy, labels = transform_boxes(self.transform, pixels, boxes, labels, where)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + index)
                pixels, xyxy, labels = transform_boxes(self.transform, pixels, boxes, labels, where)
        new_h, new_w = pixels.shape[-2:]
        label = {
            "image_id": torch.tensor([image_id], dtype=torch.int64),
            "class_labels": labels,
            "boxes": normalize_boxes(xyxy, new_h, new_w),
            "area": (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]),
            "iscrowd": torch.zeros_like(labels),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "size": torch.tensor([new_h, new_w], dtype=torch.int64),
        }
        return {"image": pixels, "labels": label, "image_id": image_id, "orig_size": [height, width], "index": index}

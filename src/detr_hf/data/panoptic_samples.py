"""Panoptic training and evaluation samples: a `PanopticFolder`'s images and PNGs → (image, label dict with masks)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset
from torchvision.ops import box_convert

from detr_hf.box_ops import normalize_boxes
from detr_hf.data.panoptic_folder import PanopticFolder
from detr_hf.data.pixels import image_tensor
from detr_hf.data.transforms import transform_segments
from detr_hf.panoptic_annotations import masks_to_xywh, panoptic_to_labels

__all__ = ["PanopticDataset"]


class PanopticDataset(Dataset):
    """The images of a `PanopticFolder` with their segments, transformed together.

    `dataset[i]` or `dataset[(epoch, i)]` → {"image": [3, H, W], "labels": {"class_labels" int64 [N] (the
    folder's labels), "masks" bool [N, H, W] at the transformed (unpadded) size, "boxes" float [N, 4]
    normalised (cx, cy, w, h) bounding each mask, "area", "iscrowd", "image_id", "orig_size" (h, w),
    "size"}, "image_id", "orig_size", "index"}, what `DetectionCollator` batches (it pads the masks).
    Crowd segments are left out of the labels (they stay in the PQ reference); segments cropped away are
    dropped. A (epoch, i) key seeds the augmentation as in `DetectionDataset`. A missing image or PNG, or
    PNG ids that do not match `segments_info`, is a ValueError / FileNotFoundError naming the image.
    """

    def __init__(
        self,
        folder: PanopticFolder,
        transform: Callable[[dict], dict] | None,
        seed: int = 0,
        split: str = "train",
    ):
        self.dataset = folder
        self.transform = transform
        self.seed = int(seed)
        self.split = split
        self.label_of_category = {category_id: k for k, category_id in enumerate(folder.category_ids)}
        self.unreadable_images = 0  # bad images are errors here; the counters match DetectionDataset's
        self.fixed_boxes = 0

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.dataset.category_ids

    def __len__(self) -> int:
        return len(self.dataset)

    def _read(self, index: int) -> tuple[dict, torch.Tensor, dict[str, torch.Tensor]]:
        record = self.dataset.records[index]
        where = f"{self.split} split, image_id {record['image_id']} ({record['file_name']})"
        path = self.dataset.image_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"{where}: image {path} does not exist")
        pixels = image_tensor(str(path), where)
        size = tuple(pixels.shape[-2:])
        labels = panoptic_to_labels(
            record,
            index,
            size,
            size,
            masks_path=self.dataset.masks_dir,
            category_id_to_label=self.label_of_category,
        )
        return record, pixels, labels

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (None, int(key))
        record, pixels, labels = self._read(index)
        height, width = pixels.shape[-2:]
        where = f"{self.split} split, image_id {record['image_id']}"
        if epoch is None:
            pixels, masks, classes = transform_segments(
                self.transform, pixels, labels["masks"], labels["class_labels"], where
            )
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + index)
                pixels, masks, classes = transform_segments(
                    self.transform, pixels, labels["masks"], labels["class_labels"], where
                )
        new_h, new_w = pixels.shape[-2:]
        xyxy = box_convert(masks_to_xywh(masks), "xywh", "xyxy")
        image_id = int(record["image_id"])
        label = {
            "image_id": torch.tensor([image_id], dtype=torch.int64),
            "class_labels": classes,
            "boxes": normalize_boxes(xyxy, new_h, new_w),
            "masks": masks,
            "area": masks.flatten(1).sum(1).float(),
            "iscrowd": torch.zeros_like(classes),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "size": torch.tensor([new_h, new_w], dtype=torch.int64),
        }
        return {
            "image": pixels,
            "labels": label,
            "image_id": image_id,
            "orig_size": [height, width],
            "index": index,
        }

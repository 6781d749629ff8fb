"""The augmentation of transformers' object-detection example (albumentations + its image processor), rebuilt
from the example's described behaviour for the data-pipeline benchmark: same images, same sample shape."""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import PIL.Image
import PIL.ImageOps
from torch.utils.data import Dataset
from transformers import DetrImageProcessor


def example_augmentation(square_size: int) -> A.Compose:
    """What the example applies to a training image, in order:
    - p=0.2: resize the short side to `square_size`, then a random square crop of that side that keeps every box;
    - p=0.1: one of blur / motion blur (kernel ≤ 7) / defocus (radius 1–5);
    - p=0.1: a random perspective warp; p=0.5: horizontal flip; p=0.5: brightness/contrast; p=0.1: hue/saturation;
    boxes stay COCO xywh, clipped to the image; boxes under 25 px² are dropped with their categories."""
    return A.Compose(
        [
            A.Compose(
                [A.SmallestMaxSize(max_size=square_size, p=1.0),
                 A.RandomSizedBBoxSafeCrop(height=square_size, width=square_size, p=1.0)],
                p=0.2,
            ),
            A.OneOf(
                [A.Blur(blur_limit=7, p=0.5), A.MotionBlur(blur_limit=7, p=0.5),
                 A.Defocus(radius=(1, 5), alias_blur=(0.1, 0.25), p=0.1)],
                p=0.1,
            ),
            A.Perspective(p=0.1),
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(p=0.5),
            A.HueSaturationValue(p=0.1),
        ],
        bbox_params=A.BboxParams(format="coco", label_fields=["category"], clip=True, min_area=25),
    )  # fmt: skip


class ExampleDataset(Dataset):
    """Rows of a `CocoFolder` decoded as the example reads them (PIL → RGB array; EXIF orientation applied
    here too, so boxes match) and augmented: {"image": HWC uint8 array, "target": COCO annotations dict}."""

    def __init__(self, folder: Any, square_size: int) -> None:
        self.folder = folder
        self.augment = example_augmentation(square_size)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict:
        with PIL.Image.open(self.folder.path(index)) as opened:
            image = np.asarray(PIL.ImageOps.exif_transpose(opened).convert("RGB"))
        objects = self.folder.objects(index)
        out = self.augment(image=image, bboxes=np.asarray(objects["bbox"]).reshape(-1, 4), category=objects["category"])
        annotations = [
            {"image_id": index, "category_id": int(c), "bbox": [float(v) for v in box], "iscrowd": 0,
             "area": float(box[2] * box[3])}
            for box, c in zip(out["bboxes"], out["category"])
        ]  # fmt: skip
        return {"image": out["image"], "target": {"image_id": index, "annotations": annotations}}


def example_collator(square_size: int):
    """The example's processor step on a batch: long side resized to `square_size`, padded to a square of
    that side, normalised; boxes to normalised (cx, cy, w, h)."""
    processor = DetrImageProcessor(
        do_resize=True, size={"max_height": square_size, "max_width": square_size}, do_pad=True,
        pad_size={"height": square_size, "width": square_size},
    )  # fmt: skip

    def collate(samples: list[dict]) -> dict:
        batch = processor(
            [s["image"] for s in samples], annotations=[s["target"] for s in samples], return_tensors="pt"
        )
        return {"pixel_values": batch["pixel_values"], "pixel_mask": batch.get("pixel_mask"), "labels": batch["labels"]}

    return collate

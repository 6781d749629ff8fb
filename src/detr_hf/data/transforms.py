"""DETR augmentation with torchvision.transforms.v2 on (image, boxes, labels), where training boxes are clipped."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from detr_hf.data.pixels import image_tensor

__all__ = [
    "COCO_TRAIN_SCALES",
    "RandomSizeCrop",
    "box_cleanup",
    "build_train_transform",
    "build_eval_transform",
    "transform_boxes",
    "transform_example",
    "transform_segments",
    "make_transform_fn",
]

# The published COCO recipe; the 64 px demo passes its own small values.
COCO_TRAIN_SCALES: tuple[int, ...] = tuple(range(480, 801, 32))


class RandomSizeCrop(v2.Transform):
    """Crop a random region whose height and width are drawn uniformly from [min_size, max_size].

    Sides are capped at the image's own sides (an image smaller than `min_size` is kept whole along
    that axis). Randomness comes from torch's generator, like every other v2 transform.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 1 <= min_size <= max_size:
            raise ValueError(f"RandomSizeCrop needs 1 <= min_size <= max_size, got ({min_size}, {max_size})")
        self.min_size = min_size
        self.max_size = max_size

    def _draw(self, low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, ()))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_h = self._draw(min(self.min_size, height), min(self.max_size, height))
        crop_w = self._draw(min(self.min_size, width), min(self.max_size, width))
        return dict(
            top=self._draw(0, height - crop_h),
            left=self._draw(0, width - crop_w),
            height=crop_h,
            width=crop_w,
        )

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def box_cleanup(min_box_size: float = 1.0) -> list[v2.Transform]:
    """The one place training boxes are clipped: clamp to the image, then drop boxes thinner than
    `min_box_size` px (or not finite) together with their labels. Every transform built here ends with it."""
    return [
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=min_box_size, min_area=min_box_size**2),
    ]


def build_train_transform(
    scales: Sequence[int] = COCO_TRAIN_SCALES,
    max_size: int = 1333,
    crop_size_range: tuple[int, int] | None = (384, 600),
    crop_resize_scales: Sequence[int] = (400, 500, 600),
    flip_prob: float = 0.5,
    min_box_size: float = 1.0,
) -> v2.Compose:
    """The DETR train recipe on {"image", "boxes", "labels"} samples.

    Horizontal flip (`flip_prob`), then with probability 1/2 each: a shortest-side resize to one of
    `scales` (long side ≤ `max_size`), or a shortest-side resize to one of `crop_resize_scales` → a
    random crop with sides in `crop_size_range` → the multi-scale resize. `crop_size_range=None` keeps
    only the multi-scale resize. Boxes are clamped and boxes thinner than `min_box_size` px dropped.
    Demo values for 64 px images: scales (56, 60, 64, 68, 72), max_size 96, crop (40, 64), crop resize (48, 56, 64).
    """
    if not scales:
        raise ValueError("build_train_transform: `scales` is empty")
    multi_scale = v2.RandomShortestSize(min_size=list(scales), max_size=max_size)
    if crop_size_range is None:
        resize: v2.Transform = multi_scale
    else:
        crop = v2.Compose(
            [
                v2.RandomShortestSize(min_size=list(crop_resize_scales)),
                RandomSizeCrop(*crop_size_range),
                v2.RandomShortestSize(min_size=list(scales), max_size=max_size),
            ]
        )
        resize = v2.RandomChoice([multi_scale, crop])
    return v2.Compose([v2.RandomHorizontalFlip(p=flip_prob), resize, *box_cleanup(min_box_size)])


def build_eval_transform(size: int = 800, max_size: int = 1333, min_box_size: float = 1.0) -> v2.Compose:
    """Deterministic shortest-side resize to `size` (long side ≤ `max_size`); boxes clamped and sanitised."""
    return v2.Compose(
        [v2.RandomShortestSize(min_size=[size], max_size=max_size), *box_cleanup(min_box_size)]
    )


def _boxes_tensor(bboxes: Any, where: str) -> torch.Tensor:
    boxes = torch.as_tensor(bboxes, dtype=torch.float32)
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"{where}: objects.bbox must be a list of [x, y, w, h], got shape {tuple(boxes.shape)}"
        )
    return boxes


def transform_boxes(
    transform: Callable[[dict], dict] | None,
    pixels: torch.Tensor,
    bboxes_xywh: Any,
    labels: torch.Tensor,
    where: str = "example",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply `transform` to an image [C, H, W] and its COCO boxes [x, y, w, h] (converted once to XYXY).

    Returns (image [C, H', W'] contiguous, boxes float [N', 4] absolute XYXY in the transformed image, labels
    int64 [N']). `pixels` may be any strided view (e.g. `image_tensor`'s channels-last one): it is copied only
    once transformed, at its new size.
    `transform=None` only clips (`box_cleanup`); a transform of your own must end with `box_cleanup()`.
    """
    boxes = _boxes_tensor(bboxes_xywh, where)
    if labels.shape[0] != boxes.shape[0]:
        raise ValueError(f"{where}: {boxes.shape[0]} boxes but {labels.shape[0]} categories")
    sample = {
        "image": tv_tensors.Image(pixels),
        "boxes": F.convert_bounding_box_format(
            tv_tensors.BoundingBoxes(boxes, format="XYWH", canvas_size=tuple(pixels.shape[-2:])),
            new_format=tv_tensors.BoundingBoxFormat.XYXY,
        ),
        "labels": labels,
    }
    sample = (transform or v2.Compose(box_cleanup()))(sample)
    return (
        sample["image"].as_subclass(torch.Tensor).contiguous(),
        sample["boxes"].as_subclass(torch.Tensor),
        sample["labels"],
    )


def transform_segments(
    transform: Callable[[dict], dict] | None,
    pixels: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    where: str = "example",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply `transform` to an image [C, H, W] and its non-overlapping segment masks bool [N, H, W] together.

    The masks travel as one `tv_tensors.Mask` index map [1, H, W] (0 = no segment, k + 1 = segment k), so
    flips, resizes (nearest) and crops move them with the pixels. Segments left without a pixel (cropped
    away) are dropped with their labels. Returns (image [C, H', W'], masks bool [N', H', W'], labels [N']).
    """
    if masks.shape[0] != labels.shape[0] or tuple(masks.shape[-2:]) != tuple(pixels.shape[-2:]):
        raise ValueError(
            f"{where}: {masks.shape[0]} masks of size {tuple(masks.shape[-2:])} for {labels.shape[0]} labels "
            f"and an image of size {tuple(pixels.shape[-2:])}"
        )
    if masks.shape[0] and int(masks.sum(0).max()) > 1:
        raise ValueError(f"{where}: segment masks overlap (a panoptic pixel belongs to one segment)")
    order = torch.arange(1, masks.shape[0] + 1, dtype=torch.int32)
    index_map = (masks.to(torch.int32) * order[:, None, None]).sum(0, keepdim=True)  # [1, H, W]
    canvas = tuple(pixels.shape[-2:])
    # Whole-image boxes: only so that box-aware steps (crop, sanitize) run; boxes come from the masks after.
    whole = torch.tensor([[0.0, 0.0, canvas[1], canvas[0]]])
    sample = {
        "image": tv_tensors.Image(pixels),
        "masks": tv_tensors.Mask(index_map),
        "boxes": tv_tensors.BoundingBoxes(whole, format="XYXY", canvas_size=canvas),
        "labels": torch.zeros(1, dtype=torch.int64),
    }
    sample = (transform or v2.Compose(box_cleanup()))(sample)
    new_map = sample["masks"].as_subclass(torch.Tensor)[0]  # [H', W']
    new_masks = new_map[None] == order[:, None, None]  # [N, H', W']
    kept = new_masks.flatten(1).any(1)
    return sample["image"].as_subclass(torch.Tensor), new_masks[kept], labels[kept]


def transform_example(
    transform: Callable[[dict], dict] | None,
    image: Any,
    bboxes_xywh: Any,
    categories: Any,
    where: str = "example",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply `transform` to one image (PIL, array or tensor; decoded like the processor: upright, alpha on
    white, 16-bit scaled) and its COCO boxes.

    Returns (image [3, H', W'] uint8, or float in [0, 1] for 16-bit/float images; boxes float [N', 4] COCO
    xywh in the transformed image; labels int64 [N']). `where` names the example in error messages.
    """
    labels = torch.as_tensor(categories, dtype=torch.int64).reshape(-1)
    pixels, boxes, labels = transform_boxes(transform, image_tensor(image, where), bboxes_xywh, labels, where)
    return pixels, F.convert_bounding_box_format(
        tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(pixels.shape[-2:])),
        new_format=tv_tensors.BoundingBoxFormat.XYWH,
    ).as_subclass(torch.Tensor), labels


def _coco_target(image_id: int, boxes_xywh: torch.Tensor, labels: torch.Tensor, areas: torch.Tensor) -> dict:
    annotations = [
        {"bbox": box, "category_id": label, "area": area, "iscrowd": 0}
        for box, label, area in zip(boxes_xywh.tolist(), labels.tolist(), areas.tolist())
    ]
    return {"image_id": int(image_id), "annotations": annotations}


def make_transform_fn(
    transform: Callable[[dict], dict] | None, label_field: str = "category"
) -> Callable[[dict[str, list]], dict[str, list]]:
    """A batch function for `Dataset.with_transform` on a cppe-5 style dataset, for feeding an image processor
    with COCO annotations (the training scripts use `DetectionDataset`, whose samples carry labels directly).

    Each output row has:
      - "image": tensor [3, H', W'] (transformed; no normalisation or padding; see `transform_example`),
      - "target": {"image_id", "annotations": [{"bbox" xywh, "category_id", "area" (= w·h), "iscrowd": 0}]}
        in the transformed image's pixels (what the image processor takes with `do_resize=False`),
      - "size": [H', W'], "orig_size": [H, W] (the decoded original image; pass it as `target_sizes` to
        `post_process_object_detection` to get boxes in original coordinates),
      - "orig_target": the same COCO dict in ORIGINAL coordinates with the dataset's own areas (mAP references).
    """

    def apply(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"image": [], "target": [], "size": [], "orig_size": [], "orig_target": []}
        for row, (image, image_id, objects) in enumerate(
            zip(batch["image"], batch["image_id"], batch["objects"])
        ):
            where = f"image_id {image_id} (batch row {row})"
            if label_field not in objects:
                raise ValueError(f"{where}: objects has no field {label_field!r} (fields: {sorted(objects)})")
            original = image_tensor(image, where)
            pixels, boxes, labels = transform_example(
                transform, original, objects["bbox"], objects[label_field], where
            )
            orig_boxes = _boxes_tensor(objects["bbox"], where)
            orig_labels = torch.as_tensor(objects[label_field], dtype=torch.int64).reshape(-1)
            orig_areas = torch.as_tensor(
                objects.get("area") or (orig_boxes[:, 2] * orig_boxes[:, 3]).tolist()
            )
            out["image"].append(pixels)
            out["target"].append(_coco_target(image_id, boxes, labels, boxes[:, 2] * boxes[:, 3]))
            out["size"].append(list(pixels.shape[-2:]))
            out["orig_size"].append(list(original.shape[-2:]))
            out["orig_target"].append(_coco_target(image_id, orig_boxes, orig_labels, orig_areas))
        return out

    return apply

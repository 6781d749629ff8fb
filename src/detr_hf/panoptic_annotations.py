"""COCO panoptic PNGs and COCO polygon / RLE segmentations → label dicts with `masks`, `class_labels`, boxes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.nn import functional as F

from .annotations import coco_to_labels
from .image_processor_options import ANNOTATION_FORMATS

__all__ = [
    "annotation_to_labels",
    "decode_coco_segmentation",
    "id_to_rgb",
    "instance_to_labels",
    "masks_to_xywh",
    "pad_label_masks",
    "panoptic_to_labels",
    "read_panoptic_png",
    "rgb_to_id",
]


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] uint8 colours → int64 segment ids, id = R + 256·G + 256²·B (the COCO panoptic encoding)."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids (0 ≤ id < 256³) [...] → uint8 colours [..., 3]; the inverse of `rgb_to_id`."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError(f"segment ids must be in [0, 256**3), got the range [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def read_panoptic_png(path: str | os.PathLike, where: str) -> np.ndarray:
    """A COCO panoptic PNG → int64 [H, W] segment ids (0 = void). `where` names the image in errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: panoptic PNG {str(path)!r} does not exist")
    with PIL.Image.open(path) as png:
        if png.mode not in ("RGB", "RGBA", "P", "L"):
            raise ValueError(f"{where}: panoptic PNG {str(path)!r} has mode {png.mode}, expected RGB colours")
        return rgb_to_id(np.asarray(png.convert("RGB")))


def masks_to_xywh(masks: torch.Tensor) -> torch.Tensor:
    """Bool masks [N, H, W] → float32 [N, 4] COCO (x, y, w, h) boxes with pixel-edge coordinates (a pixel at
    column c spans [c, c + 1)); an empty mask gets a zero box."""
    if masks.shape[0] == 0:
        return torch.zeros(0, 4)
    return _extent_boxes(masks.any(2), masks.any(1))


def _extent_boxes(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Which rows [N, H] and columns [N, W] each mask touches → float32 (x, y, w, h) pixel-edge boxes."""
    height, width = rows.shape[1], cols.shape[1]
    y0 = rows.float().argmax(1)
    y1 = height - rows.flip(1).float().argmax(1)
    x0 = cols.float().argmax(1)
    x1 = width - cols.flip(1).float().argmax(1)
    boxes = torch.stack([x0, y0, x1 - x0, y1 - y0], 1).float()
    return boxes * rows.any(1, keepdim=True)


def _resize_masks(masks: torch.Tensor, new_size: tuple[int, int]) -> torch.Tensor:
    """Bool [N, H, W] → bool [N, h, w], nearest neighbour (as the training transforms resize masks)."""
    if tuple(masks.shape[-2:]) == tuple(new_size):
        return masks
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *new_size))
    return F.interpolate(masks[None].to(torch.uint8), size=tuple(new_size), mode="nearest")[0].bool()


def _labels_and_kept(
    annotation: Mapping[str, Any],
    objects: list[dict[str, Any]],
    nonempty: torch.Tensor,
    index: int,
    orig_size: tuple[int, int],
    new_size: tuple[int, int],
    coco_options: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Labels of `objects` whose boxes were set from their masks (an empty mask → a zero box, which
    `coco_to_labels` drops as it drops any degenerate box), and which objects it kept (bool [N])."""
    record = {"image_id": annotation.get("image_id", annotation.get("id")), "annotations": objects}
    labels = coco_to_labels(record, index, orig_size, new_size, **coco_options)
    crowd = torch.tensor([bool(obj.get("iscrowd", 0)) for obj in objects], dtype=torch.bool)
    kept = nonempty & (~crowd | coco_options.get("keep_crowd", False))
    if int(kept.sum()) != labels["class_labels"].shape[0]:
        raise RuntimeError("masks and class labels went out of step")  # a bug here, never bad input
    return labels, kept


def panoptic_to_labels(
    annotation: Mapping[str, Any],
    index: int,
    orig_size: tuple[int, int],
    new_size: tuple[int, int],
    *,
    masks_path: str | os.PathLike | None,
    **coco_options: Any,
) -> dict[str, torch.Tensor]:
    """One COCO panoptic record `{"image_id", "file_name", "segments_info": [{"id", "category_id", "iscrowd"?,
    "area"?}]}` and its PNG (`masks_path / file_name`) → a label dict as `coco_to_labels` builds it, plus
    `masks` bool [N, new_h, new_w]; boxes bound each segment's pixels.

    Every segment must appear in the PNG and every non-void (non-zero) PNG id must be a segment; the PNG must
    have the image's size `orig_size` (h, w). `coco_options` are `coco_to_labels`' keyword options (crowd
    segments are dropped unless `keep_crowd`).
    """
    if not isinstance(annotation, Mapping):
        raise TypeError(
            f"annotations[{index}] must be a COCO panoptic dict with 'file_name' and 'segments_info', "
            f"got {type(annotation).__name__}"
        )
    image_id = annotation.get("image_id", annotation.get("id"))
    where = f"annotations[{index}] (image_id={image_id!r})"
    segments = annotation.get("segments_info")
    if "file_name" not in annotation or not isinstance(segments, Sequence) or isinstance(segments, str):
        raise ValueError(f"{where}: a COCO panoptic record needs 'file_name' and a 'segments_info' list")
    for j, segment in enumerate(segments):
        if not isinstance(segment, Mapping) or "id" not in segment or "category_id" not in segment:
            raise ValueError(f"{where}: segments_info[{j}] needs 'id' and 'category_id', got {segment!r}")
    path = Path(annotation["file_name"]) if masks_path is None else Path(masks_path) / annotation["file_name"]
    ids = read_panoptic_png(path, where)
    if ids.shape != tuple(orig_size):
        raise ValueError(
            f"{where}: panoptic PNG {str(path)!r} is {ids.shape[0]}x{ids.shape[1]} but the image is "
            f"{orig_size[0]}x{orig_size[1]}"
        )
    segment_ids = [int(segment["id"]) for segment in segments]
    if len(set(segment_ids)) != len(segment_ids):
        raise ValueError(f"{where}: segments_info repeats segment ids {sorted(segment_ids)}")
    values, inverse = np.unique(ids, return_inverse=True)  # inverse: [H, W] index into the sorted ids
    present = set(values.tolist()) - {0}
    if present != set(segment_ids):
        missing, unlisted = sorted(set(segment_ids) - present), sorted(present - set(segment_ids))
        raise ValueError(
            f"{where}: the ids of panoptic PNG {str(path)!r} do not match segments_info: ids listed but not in "
            f"the PNG {missing[:10]}, ids in the PNG but not listed {unlisted[:10]}"
        )
    position = {value: k for k, value in enumerate(values.tolist())}
    order = torch.tensor([position[i] for i in segment_ids], dtype=torch.int64)  # segment j = index order[j]
    index_map = torch.from_numpy(inverse.reshape(ids.shape))
    # Rows / columns each index touches, from one scatter over the pixels instead of one pass per segment.
    rows = torch.zeros(len(values), ids.shape[0], dtype=torch.bool)
    rows[index_map, torch.arange(ids.shape[0])[:, None]] = True
    cols = torch.zeros(len(values), ids.shape[1], dtype=torch.bool)
    cols[index_map, torch.arange(ids.shape[1])[None, :]] = True
    boxes = _extent_boxes(rows[order], cols[order]).tolist()
    areas = torch.bincount(index_map.flatten(), minlength=len(values))[order].tolist()
    objects = [
        {
            "bbox": box,
            "category_id": segment["category_id"],
            "iscrowd": segment.get("iscrowd", 0),
            "area": segment.get("area", float(area)),
        }
        for segment, box, area in zip(segments, boxes, areas)
    ]
    nonempty = torch.ones(len(objects), dtype=torch.bool)
    labels, kept = _labels_and_kept(annotation, objects, nonempty, index, orig_size, new_size, coco_options)
    # Resizing the index map once is the same nearest-neighbour resize as resizing every mask.
    if tuple(new_size) != tuple(ids.shape):
        index_map = F.interpolate(index_map[None, None].float(), size=tuple(new_size), mode="nearest")[
            0, 0
        ].long()
    labels["masks"] = index_map[None] == order[kept][:, None, None]
    return labels


def decode_coco_segmentation(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """A COCO `segmentation` (polygons [[x, y, ...], ...], uncompressed RLE {"counts": [...], "size"} or
    compressed RLE {"counts": str, "size"}) → bool [height, width]. Needs pycocotools."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise ImportError(
            "decoding COCO polygon / RLE segmentations needs pycocotools: pip install pycocotools"
        ) from None
    if isinstance(segmentation, Mapping):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError(
                f"{where}: an RLE segmentation needs 'counts' and 'size', got {sorted(segmentation)}"
            )
        if [int(v) for v in segmentation["size"]] != [height, width]:
            raise ValueError(
                f"{where}: RLE size {list(segmentation['size'])} does not match the image size [{height}, {width}]"
            )
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = coco_mask.frPyObjects(dict(segmentation), height, width)
        else:
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
        return coco_mask.decode(rle).astype(bool)
    if not isinstance(segmentation, Sequence) or isinstance(segmentation, str) or not segmentation:
        raise ValueError(f"{where}: segmentation must be a non-empty list of polygons or an RLE dict")
    polygons = []
    for k, polygon in enumerate(segmentation):
        values = np.asarray(polygon, dtype=np.float64).ravel() if isinstance(polygon, Sequence) else None
        if values is None or values.size < 6 or values.size % 2 or not np.isfinite(values).all():
            raise ValueError(f"{where}: polygon {k} must be >= 3 finite (x, y) points [x0, y0, x1, y1, ...]")
        polygons.append(values.tolist())
    rles = coco_mask.frPyObjects(polygons, height, width)
    return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


def instance_to_labels(
    annotation: Mapping[str, Any],
    index: int,
    orig_size: tuple[int, int],
    new_size: tuple[int, int],
    **coco_options: Any,
) -> dict[str, torch.Tensor]:
    """One COCO detection record whose objects carry a polygon / RLE `segmentation` → `coco_to_labels`' label
    dict with boxes bounding the decoded masks, plus `masks` bool [N, new_h, new_w]. Objects whose mask has no
    pixel inside the image are dropped (as degenerate boxes are); crowd objects unless `keep_crowd`."""
    if not isinstance(annotation, Mapping) or not isinstance(annotation.get("annotations"), Sequence):
        return coco_to_labels(annotation, index, orig_size, new_size, **coco_options)  # it names the problem
    keep_crowd = coco_options.get("keep_crowd", False)
    height, width = orig_size
    objects, masks = [], []
    for j, obj in enumerate(annotation["annotations"]):
        where = f"annotations[{index}] (image_id={annotation.get('image_id')!r}), object {j}"
        if not isinstance(obj, Mapping):
            raise TypeError(
                f"{where} must be a dict with 'segmentation' and 'category_id', got {type(obj).__name__}"
            )
        if obj.get("iscrowd", 0) and not keep_crowd:
            mask = np.zeros((height, width), dtype=bool)  # dropped anyway: not decoded
        elif "segmentation" not in obj:
            raise ValueError(
                f"{where} has no 'segmentation' (return_segmentation_masks=True needs one per object)"
            )
        else:
            mask = decode_coco_segmentation(obj["segmentation"], height, width, where)
        masks.append(torch.from_numpy(mask))
        objects.append(dict(obj))
    stacked = torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.bool)
    for obj, box, mask in zip(objects, masks_to_xywh(stacked).tolist(), stacked):
        obj["bbox"] = box
        if obj.get("area") is None:
            obj["area"] = float(mask.sum())
    nonempty = stacked.flatten(1).any(1)
    labels, kept = _labels_and_kept(annotation, objects, nonempty, index, orig_size, new_size, coco_options)
    labels["masks"] = _resize_masks(stacked[kept], new_size)
    return labels


def annotation_to_labels(
    annotation: Mapping[str, Any],
    index: int,
    orig_size: tuple[int, int],
    new_size: tuple[int, int],
    *,
    format: str = "coco_detection",
    masks_path: str | os.PathLike | None = None,
    return_segmentation_masks: bool = False,
    **coco_options: Any,
) -> dict[str, torch.Tensor]:
    """The processor's one entry: COCO panoptic records (`format="coco_panoptic"`), detection records with
    instance masks (`return_segmentation_masks`), or plain detection records (boxes only)."""
    if format == "coco_panoptic":
        return panoptic_to_labels(
            annotation, index, orig_size, new_size, masks_path=masks_path, **coco_options
        )
    if format != "coco_detection":
        raise ValueError(f"format={format!r} is not supported; use one of {ANNOTATION_FORMATS}")
    if return_segmentation_masks:
        return instance_to_labels(annotation, index, orig_size, new_size, **coco_options)
    return coco_to_labels(annotation, index, orig_size, new_size, **coco_options)


def pad_label_masks(labels: dict[str, torch.Tensor], padded_size: Sequence[int]) -> dict[str, torch.Tensor]:
    """Pad `labels["masks"]` [N, h, w] with False at the bottom / right to `padded_size` (H, W), like the image."""
    masks = labels.get("masks")
    if masks is None:
        return labels
    height, width = int(padded_size[0]), int(padded_size[1])
    if masks.shape[-2] > height or masks.shape[-1] > width:
        raise ValueError(
            f"masks of size {tuple(masks.shape[-2:])} are larger than the padded image {height}x{width}"
        )
    if tuple(masks.shape[-2:]) != (height, width):
        padded = masks.new_zeros((masks.shape[0], height, width))
        padded[:, : masks.shape[-2], : masks.shape[-1]] = masks
        labels["masks"] = padded
    return labels

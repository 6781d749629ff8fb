"""Built-in synthetic panoptic data: shape "things" on sky / wall / ground "stuff" bands, in COCO panoptic format."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from detr_hf.data.synthetic import SHAPE_NAMES, _shape_mask
from detr_hf.panoptic_annotations import id_to_rgb

__all__ = [
    "STUFF_NAMES",
    "SYNTHETIC_PANOPTIC_CATEGORIES",
    "SyntheticPanopticExample",
    "render_synthetic_panoptic_example",
    "write_synthetic_panoptic",
    "write_synthetic_panoptic_splits",
]

STUFF_NAMES: tuple[str, ...] = ("sky", "wall", "ground")
# COCO-like, non-contiguous category ids: things 1..3, stuff from 101 (code that assumes contiguity breaks).
SYNTHETIC_PANOPTIC_CATEGORIES: tuple[dict, ...] = tuple(
    [
        {"id": k + 1, "name": name, "supercategory": "shape", "isthing": 1}
        for k, name in enumerate(SHAPE_NAMES)
    ]
    + [
        {"id": 101 + k, "name": name, "supercategory": "scene", "isthing": 0}
        for k, name in enumerate(STUFF_NAMES)
    ]
)
_STUFF_IDS = {name: 101 + k for k, name in enumerate(STUFF_NAMES)}
# Base colours of the stuff bands (RGB), varied per image.
_STUFF_COLOURS = {"sky": (110, 160, 225), "wall": (150, 140, 130), "ground": (95, 120, 60)}


@dataclass
class SyntheticPanopticExample:
    """One image, its panoptic id map (every pixel belongs to one segment) and COCO `segments_info`."""

    image: np.ndarray  # uint8 [H, W, 3]
    segment_ids: np.ndarray  # int64 [H, W]
    segments_info: list[dict]  # {"id", "category_id", "iscrowd", "bbox" (x, y, w, h), "area"}


def _band_rows(rng: np.random.Generator, height: int, count: int) -> list[int]:
    """Boundaries 0 = r0 < r1 < ... < r_count = height of `count` horizontal bands, each >= height / 8."""
    minimum = max(1, height // 8)
    free = height - minimum * count
    cuts = np.sort(rng.integers(0, free + 1, size=count - 1)) if count > 1 else np.array([], dtype=int)
    return [0, *[int(c) + minimum * (k + 1) for k, c in enumerate(cuts)], height]


def render_synthetic_panoptic_example(
    rng: np.random.Generator,
    height: int = 128,
    width: int = 128,
    num_things_range: tuple[int, int] = (1, 5),
    side_range: tuple[int, int] = (12, 48),
    noise_std: float = 10.0,
) -> SyntheticPanopticExample:
    """Draw 2 or 3 stuff bands top to bottom in the order sky, wall, ground (a random subset of them, kept in
    that order), then shapes that may overlap: a later shape hides an earlier one, and a shape left with no
    visible pixel is dropped. Segment ids are distinct random values in [1, 256³)."""
    if height < 8 or width < 8:
        raise ValueError(f"synthetic panoptic images must be at least 8x8, got {height}x{width}")
    lo, hi = side_range
    if not 1 <= lo <= hi or lo > min(height, width):
        raise ValueError(
            f"side_range must be (lo, hi) with 1 <= lo <= hi <= min(height, width), got {side_range}"
        )
    if not 0 <= num_things_range[0] <= num_things_range[1]:
        raise ValueError(f"num_things_range must be (lo, hi) with 0 <= lo <= hi, got {num_things_range}")
    count = int(rng.integers(2, len(STUFF_NAMES) + 1))
    stuff = [STUFF_NAMES[k] for k in sorted(rng.choice(len(STUFF_NAMES), size=count, replace=False))]
    rows = _band_rows(rng, height, count)
    num_things = int(rng.integers(num_things_range[0], num_things_range[1] + 1))
    ids = rng.integers(1, 256**3, size=count + num_things)  # (not rng.choice over 256³ values: 0.1 s per image)
    while np.unique(ids).size != ids.size:  # distinct ids; a repeat is rare
        ids = rng.integers(1, 256**3, size=count + num_things)

    image = np.empty((height, width, 3), dtype=np.float64)
    segment_ids = np.zeros((height, width), dtype=np.int64)
    categories: dict[int, int] = {}
    for k, name in enumerate(stuff):
        band = slice(rows[k], rows[k + 1])
        colour = np.array(_STUFF_COLOURS[name]) + rng.uniform(-25, 25, size=3)
        image[band] = colour
        if name == "wall":  # a brick-like horizontal stripe texture
            image[band][(np.arange(rows[k + 1] - rows[k]) // 6) % 2 == 1] *= 0.85
        segment_ids[band] = ids[k]
        categories[int(ids[k])] = _STUFF_IDS[name]
    for j in range(num_things):
        shape = int(rng.integers(len(SHAPE_NAMES)))
        side = int(rng.integers(lo, min(hi, height, width) + 1))
        y0, x0 = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        local = _shape_mask(SHAPE_NAMES[shape], side)
        mask = np.zeros((height, width), dtype=bool)
        mask[y0 : y0 + side, x0 : x0 + side] = local
        image[mask] = rng.uniform(0, 255, size=3)
        segment_ids[mask] = ids[count + j]
        categories[int(ids[count + j])] = shape + 1
    image = np.clip(image + rng.normal(0, noise_std, size=image.shape), 0, 255).astype(np.uint8)

    segments_info = []
    for segment_id in ids.tolist():
        mask = segment_ids == segment_id
        if not mask.any():
            continue  # a shape completely hidden by later ones
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        bbox = [int(xs[0]), int(ys[0]), int(xs[-1] + 1 - xs[0]), int(ys[-1] + 1 - ys[0])]
        segments_info.append(
            {
                "id": segment_id,
                "category_id": categories[segment_id],
                "iscrowd": 0,
                "bbox": bbox,
                "area": int(mask.sum()),
            }
        )
    return SyntheticPanopticExample(image=image, segment_ids=segment_ids, segments_info=segments_info)


def write_synthetic_panoptic(
    root: str | os.PathLike,
    num_images: int,
    *,
    split: str = "train",
    seed: int = 0,
    image_size: int | tuple[int, int] = 128,
    first_image_id: int = 0,
    **render_options,
) -> dict[str, Path]:
    """Write `num_images` synthetic images in the COCO panoptic layout under `root`:
    `{split}/NNNNNNNNNNNN.png` (images), `panoptic_{split}/NNNNNNNNNNNN.png` (id maps, id = R + 256 G + 256² B)
    and `annotations/panoptic_{split}.json` (images, annotations with segments_info, categories with isthing).

    Image i depends only on (seed, first_image_id + i), so the files are the same on every run. Returns the
    paths {"images", "masks", "annotation_file"}. `render_options` go to `render_synthetic_panoptic_example`.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    root = Path(root)
    paths = {
        "images": root / split,
        "masks": root / f"panoptic_{split}",
        "annotation_file": root / "annotations" / f"panoptic_{split}.json",
    }
    for folder in (paths["images"], paths["masks"], paths["annotation_file"].parent):
        folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image_id = first_image_id + i
        example = render_synthetic_panoptic_example(
            np.random.default_rng([seed, image_id]), height, width, **render_options
        )
        file_name = f"{image_id:012d}.png"
        PIL.Image.fromarray(example.image).save(paths["images"] / file_name)
        PIL.Image.fromarray(id_to_rgb(example.segment_ids)).save(paths["masks"] / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        annotations.append(
            {"image_id": image_id, "file_name": file_name, "segments_info": example.segments_info}
        )
    document = {
        "info": {"description": f"detr_hf synthetic panoptic shapes, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in SYNTHETIC_PANOPTIC_CATEGORIES],
    }
    paths["annotation_file"].write_text(json.dumps(document))
    return paths


def write_synthetic_panoptic_splits(
    root: str | os.PathLike,
    num_train: int = 500,
    num_validation: int = 50,
    *,
    seed: int = 0,
    image_size: int | tuple[int, int] = 128,
    **render_options,
) -> dict[str, dict[str, Path]]:
    """Train and validation splits (disjoint image ids) under one `root`; {"train": paths, "validation": paths}."""
    train = write_synthetic_panoptic(
        root, num_train, split="train", seed=seed, image_size=image_size, **render_options
    )
    validation = write_synthetic_panoptic(
        root,
        num_validation,
        split="validation",
        seed=seed,
        image_size=image_size,
        first_image_id=num_train,
        **render_options,
    )
    return {"train": train, "validation": validation}

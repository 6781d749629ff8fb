"""Built-in synthetic detection data: coloured shapes on noisy backgrounds, in the cppe-5 schema."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np

from detr_hf.data.schema import detection_features

__all__ = [
    "SHAPE_NAMES",
    "SyntheticExample",
    "render_synthetic_example",
    "make_synthetic_dataset",
    "load_synthetic_splits",
]

SHAPE_NAMES: tuple[str, ...] = ("square", "circle", "triangle")

# How many random placements to try before giving up on one more non-overlapping object.
_PLACEMENT_ATTEMPTS = 20


@dataclass
class SyntheticExample:
    """One rendered image and its objects; `masks[k]` is object k's drawn pixels (H×W bool)."""

    image: np.ndarray  # uint8 [H, W, 3]
    bboxes: list[list[float]]  # COCO (x, y, w, h), pixel-edge coordinates
    categories: list[int]  # index into the shape names
    masks: list[np.ndarray]


def _shape_mask(kind: str, side: int) -> np.ndarray:
    """Boolean side×side mask of a shape whose pixels touch all four edges of the square."""
    centres = np.arange(side) + 0.5  # pixel centres
    y, x = np.meshgrid(centres, centres, indexing="ij")
    if kind == "square":
        return np.ones((side, side), dtype=bool)
    if kind == "circle":
        r = side / 2
        return (x - r) ** 2 + (y - r) ** 2 <= r * r
    if kind == "triangle":
        # Apex at the top centre, base on the bottom row: row y spans half-width y/2 around the centre.
        half_width = y / 2 + 0.5
        return np.abs(x - side / 2) <= half_width
    raise ValueError(f"unknown shape {kind!r}; known shapes: {SHAPE_NAMES}")


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in placed)


def render_synthetic_example(
    rng: np.random.Generator,
    image_size: int = 64,
    num_objects_range: tuple[int, int] = (1, 3),
    side_range: tuple[int, int] = (8, 32),
    shape_names: tuple[str, ...] = SHAPE_NAMES,
    noise_std: float = 12.0,
) -> SyntheticExample:
    """Draw 1 image: a dark noisy background and non-overlapping bright shapes, each box bounding its pixels.

    Objects never overlap, so every box bounds exactly the visible pixels of its shape. If a placement
    cannot be found after a few attempts, the image gets fewer objects.
    """
    size = image_size
    background = rng.uniform(0, 110, size=3)
    image = background + rng.normal(0.0, noise_std, size=(size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)

    num_objects = int(rng.integers(num_objects_range[0], num_objects_range[1] + 1))
    placed: list[tuple[int, int, int, int]] = []
    bboxes: list[list[float]] = []
    categories: list[int] = []
    masks: list[np.ndarray] = []
    for _ in range(num_objects):
        category = int(rng.integers(len(shape_names)))
        side = int(rng.integers(side_range[0], min(side_range[1], size) + 1))
        for _attempt in range(_PLACEMENT_ATTEMPTS):
            x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            box = (x0, y0, x0 + side, y0 + side)
            if not _overlaps(box, placed):
                break
        else:
            continue
        colour = rng.uniform(150, 255, size=3).astype(np.uint8)
        local = _shape_mask(shape_names[category], side)
        mask = np.zeros((size, size), dtype=bool)
        mask[y0 : y0 + side, x0 : x0 + side] = local
        image[mask] = colour
        # The box is taken from the drawn pixels, so it bounds them exactly by construction.
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        bx0, by0, bx1, by1 = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
        placed.append(box)
        bboxes.append([float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)])
        categories.append(category)
        masks.append(mask)
    return SyntheticExample(image=image, bboxes=bboxes, categories=categories, masks=masks)


def _check_ranges(image_size: int, num_objects_range: tuple[int, int], side_range: tuple[int, int]) -> None:
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    lo, hi = num_objects_range
    if not 0 <= lo <= hi:
        raise ValueError(f"num_objects_range must be (lo, hi) with 0 <= lo <= hi, got {num_objects_range}")
    lo, hi = side_range
    if not 1 <= lo <= hi or lo > image_size:
        raise ValueError(
            f"side_range must be (lo, hi) with 1 <= lo <= hi and lo <= image_size ({image_size}), got {side_range}"
        )


def make_synthetic_dataset(
    num_images: int,
    image_size: int = 64,
    seed: int = 0,
    num_objects_range: tuple[int, int] = (1, 3),
    side_range: tuple[int, int] = (8, 32),
    shape_names: tuple[str, ...] = SHAPE_NAMES,
    noise_std: float = 12.0,
    first_image_id: int = 0,
) -> datasets.Dataset:
    """`num_images` synthetic images in the cppe-5 schema (`image, image_id, width, height, objects`).

    Image i depends only on (seed, first_image_id + i): the first k images of a larger dataset equal a
    dataset of k images. `objects.bbox` is COCO (x, y, w, h) in pixels, `objects.area` = w·h,
    `objects.category` a ClassLabel over `shape_names`. Object ids are unique within the dataset.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    _check_ranges(image_size, num_objects_range, side_range)
    for name in shape_names:
        _shape_mask(name, 1)  # reject unknown shape names before drawing anything

    rows: dict[str, list] = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
    next_object_id = 0
    for i in range(num_images):
        image_id = first_image_id + i
        rng = np.random.default_rng([seed, image_id])
        example = render_synthetic_example(
            rng, image_size, num_objects_range, side_range, shape_names, noise_std
        )
        n = len(example.bboxes)
        rows["image"].append(example.image)
        rows["image_id"].append(image_id)
        rows["width"].append(image_size)
        rows["height"].append(image_size)
        rows["objects"].append(
            {
                "id": list(range(next_object_id, next_object_id + n)),
                "area": [b[2] * b[3] for b in example.bboxes],
                "bbox": example.bboxes,
                "category": example.categories,
            }
        )
        next_object_id += n
    return datasets.Dataset.from_dict(rows, features=detection_features(list(shape_names)))


def load_synthetic_splits(
    num_train: int = 2000,
    num_validation: int = 200,
    image_size: int = 64,
    seed: int = 0,
    **kwargs,
) -> datasets.DatasetDict:
    """`DatasetDict(train, validation)` of synthetic images; the splits share no image (disjoint ids).

    Extra keyword arguments go to `make_synthetic_dataset` (object counts, sides, shape names, noise).
    """
    train = make_synthetic_dataset(num_train, image_size=image_size, seed=seed, **kwargs)
    validation = make_synthetic_dataset(
        num_validation, image_size=image_size, seed=seed, first_image_id=num_train, **kwargs
    )
    return datasets.DatasetDict(train=train, validation=validation)

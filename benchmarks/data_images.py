"""Photo-like JPEGs with many boxes in a COCO folder, generated for the data-pipeline benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image

# (height, width) of the generated photos, in turn: VGA and XGA, landscape.
PHOTO_SIZES = ((480, 640), (768, 1024))
CATEGORY_IDS = (1, 3, 7, 18, 44, 90)  # non-contiguous, like COCO's
EXIF_ORIENTATION, ROTATED_90_CW = 0x0112, 6


def photo_like(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[list[float]]]:
    """An RGB uint8 image [H, W, 3] that compresses like a photo (smooth light, soft blobs, textured
    objects, sensor grain) and the COCO [x, y, w, h] boxes of its 10–40 objects."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / max(height, width)
    image = np.empty((height, width, 3), np.float32)
    for channel in range(3):
        a, b, c = rng.uniform(-80, 80), rng.uniform(-80, 80), rng.uniform(60, 190)
        image[..., channel] = a * xx + b * yy + c
    # Soft blobs: coarse noise [H/32, W/32, 3] upsampled to the image.
    coarse = rng.uniform(-40, 40, (max(height // 32, 2), max(width // 32, 2), 3)).astype(np.float32)
    for channel in range(3):
        layer = PIL.Image.fromarray(coarse[..., channel], mode="F").resize((width, height), PIL.Image.BICUBIC)
        image[..., channel] += np.asarray(layer)
    boxes = []
    for _ in range(int(rng.integers(10, 41))):
        w, h = (float(v) for v in rng.uniform(0.03, 0.4, 2) * (width, height))
        x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
        x0, y0, x1, y1 = int(x), int(y), int(x + w), int(y + h)
        texture = rng.normal(0, 12, (y1 - y0, x1 - x0, 1)).astype(np.float32)
        image[y0:y1, x0:x1] = 0.3 * image[y0:y1, x0:x1] + rng.uniform(0, 255, 3) * 0.7 + texture
        boxes.append([x, y, w, h])
    image += rng.normal(0, 3, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), boxes


def write_coco_folder(root: Path, num_images: int, seed: int = 0) -> tuple[Path, Path]:
    """`num_images` JPEGs (quality 90) under root/images, sizes in turn from PHOTO_SIZES, every fourth one
    stored sideways with an EXIF orientation tag (as phones do; its json size and boxes are upright); 5% of
    the boxes crowd. Returns (image_dir, annotation_file)."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        height, width = PHOTO_SIZES[index % len(PHOTO_SIZES)]
        pixels, boxes = photo_like(rng, height, width)
        picture = PIL.Image.fromarray(pixels)
        exif = PIL.Image.Exif()
        if index % 4 == 3:
            exif[EXIF_ORIENTATION] = ROTATED_90_CW
            picture = picture.transpose(PIL.Image.Transpose.ROTATE_90)  # a viewer turns it back upright
        name = f"{index:06d}.jpg"
        picture.save(image_dir / name, quality=90, exif=exif)
        images.append({"id": 1000 + index, "file_name": name, "height": height, "width": width})
        for box in boxes:
            annotations.append({
                "id": len(annotations) + 1, "image_id": 1000 + index, "bbox": box, "area": box[2] * box[3],
                "category_id": int(rng.choice(CATEGORY_IDS)), "iscrowd": int(rng.random() < 0.05),
            })  # fmt: skip
    categories = [{"id": c, "name": f"class_{c}"} for c in CATEGORY_IDS]
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return image_dir, annotation_file

"""Shared test helpers: realistic generated images and COCO annotations, EXIF-tagged and 16-bit files, non-trivial
normalisation statistics for parity tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import torch

# Non-contiguous COCO-style category ids, as real annotation files have them.
CATEGORY_IDS = (1, 3, 7, 18, 44, 90)
EXIF_ORIENTATION = 0x0112


def textured_image(height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """uint8 [height, width, channels]: smooth gradients plus noise (a structure a resize kernel can see)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    planes = [(127 + 100 * np.sin(xs / (7 + 5 * c) + c) * np.cos(ys / (11 + 3 * c))) for c in range(channels)]
    image = np.stack(planes, axis=-1) + rng.normal(0, 12, (height, width, channels))
    return np.clip(image, 0, 255).astype(np.uint8)


def realistic_detection_batch(
    num_images: int = 4, seed: int = 0, min_side: int = 300, max_side: int = 1333
) -> tuple[list[PIL.Image.Image], list[dict]]:
    """Mixed-size RGB images (sides in [min_side, max_side]) with COCO annotations: 10-40 objects each, ids from
    CATEGORY_IDS, large crowd regions, boxes reaching past the border, segment areas below box areas; the last
    image has no objects."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for index in range(num_images):
        height, width = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        images.append(PIL.Image.fromarray(textured_image(height, width, seed + index)))
        objects = []
        count = 0 if index == num_images - 1 else int(rng.integers(10, 41))
        for j in range(count):
            crowd = j % 9 == 4
            w = rng.uniform(0.4, 0.9) * width if crowd else rng.uniform(4, width / 3)
            h = rng.uniform(0.4, 0.9) * height if crowd else rng.uniform(4, height / 3)
            x, y = rng.uniform(-10, width - w / 2), rng.uniform(-10, height - h / 2)
            objects.append(
                {
                    "id": 1000 * index + j,
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "area": float(w * h * rng.uniform(0.5, 0.9)),
                    "iscrowd": int(crowd),
                }
            )
        annotations.append({"image_id": 100 + 7 * index, "annotations": objects})
    return images, annotations


def save_exif_jpeg(path: Path, pixels: np.ndarray, orientation: int) -> Path:
    """Write `pixels` (HWC uint8) as a JPEG carrying EXIF orientation `orientation` (1-8)."""
    exif = PIL.Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    PIL.Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    return path


def save_png16(path: Path, pixels: np.ndarray) -> Path:
    """Write a real 16-bit PNG: `pixels` uint16 [H, W] (grey) or [H, W, 3] (RGB, which PIL cannot write)."""
    if pixels.dtype != np.uint16 or pixels.ndim not in (2, 3):
        raise ValueError("save_png16 wants uint16 [H, W] or [H, W, 3]")
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    rows = pixels.astype(">u2").reshape(height, -1).tobytes()
    stride = len(rows) // height
    raw = b"".join(b"\x00" + rows[r * stride : (r + 1) * stride] for r in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path

def randomize_feature_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm (frozen or not) statistics and affines, and GroupNorm affines, in place.

    A mis-mapped normalisation layer then changes the outputs, so a parity test can see it.
    """
    gen = torch.Generator().manual_seed(seed)

    def fill(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=gen))

    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "running_var") and module.running_var is not None:
                fill(module.running_var, 0.6, 1.4)
                fill(module.running_mean, -0.2, 0.2)
                fill(module.weight, 0.5, 1.0)
                fill(module.bias, -0.2, 0.2)
            elif isinstance(module, torch.nn.GroupNorm):
                fill(module.weight, 0.5, 1.5)
                fill(module.bias, -0.3, 0.3)

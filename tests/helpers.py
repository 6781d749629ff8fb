"""Shared test helpers: tiny configs and padded batches, realistic generated images, COCO annotations and folders, cppe-5 `datasets` rows,
EXIF-tagged and 16-bit files, non-trivial normalisation statistics for parity tests."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch


# ---------------------------------------------------------------------- tiny models and inputs
def tiny_config(**overrides):
    """A DETR small enough for a unit test: timm `test_resnet`, d_model 32, 2+2 layers, 5 queries, 3 labels."""
    from detr_hf import DetrHfConfig

    kwargs = dict(
        backbone="test_resnet",
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=5,
        num_labels=3,
    )
    kwargs.update(overrides)
    return DetrHfConfig(**kwargs)


def padded_batch(sizes=((64, 96), (48, 64)), seed: int = 0):
    """Random pixel_values padded bottom/right to the largest size, with the matching pixel_mask (1 = pixel)."""
    gen = torch.Generator().manual_seed(seed)
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    pixels = torch.zeros(len(sizes), 3, height, width)
    mask = torch.zeros(len(sizes), height, width, dtype=torch.long)
    for i, (h, w) in enumerate(sizes):
        pixels[i, :, :h, :w] = torch.randn(3, h, w, generator=gen)
        mask[i, :h, :w] = 1
    return pixels, mask


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every LayerNorm non-trivial affine weights so tests can see where norms are applied."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=gen))


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

# ---------------------------------------------------------------------- COCO folder
COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}, {"id": 18, "name": "dog"}]


@dataclass
class CocoFixture:
    """A generated COCO folder: `root/annotations/instances_<split>.json`, images in `root/<split>/`."""

    root: Path
    annotation_files: dict[str, Path]
    coco: dict[str, dict]  # split → the json written
    rotated_file: str  # file name (val split) of the EXIF-rotated photo
    empty_image_id: int  # val image without objects

    def image_dir(self, split: str) -> Path:
        return self.root / split


def _polygon(rng: np.random.Generator, x: float, y: float, w: float, h: float) -> tuple[list[float], float]:
    """A convex polygon (8 vertices on an ellipse) touching the box on all four sides, and its area."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, 8))
    angles[:4] = [0.0, np.pi / 2, np.pi, 3 * np.pi / 2]
    angles = np.sort(angles)
    xs = x + w / 2 + (w / 2) * np.cos(angles)
    ys = y + h / 2 + (h / 2) * np.sin(angles)
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))
    return [float(v) for pair in zip(xs, ys) for v in pair], area


def _crowd_rle(x0: int, y0: int, x1: int, y1: int, height: int, width: int) -> dict:
    """Uncompressed COCO RLE (column-major runs, starting with background) of a filled rectangle."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"counts": counts, "size": [height, width]}


def _draw(rng: np.random.Generator, height: int, width: int, boxes: list[list[float]]) -> np.ndarray:
    pixels = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    for x, y, w, h in boxes:
        x0, y0 = max(int(x), 0), max(int(y), 0)
        pixels[y0 : int(y + h), x0 : int(x + w)] = rng.integers(120, 255, size=3, dtype=np.uint8)
    return pixels


def _split(
    root: Path, split: str, num_images: int, seed: int, first_id: int, categories: list[dict]
) -> tuple[dict, str, int]:
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    rotated_file, empty_id = "", -1
    for k in range(num_images):
        image_id = first_id + 7 * k  # sparse ids
        width, height = (int(v) for v in rng.integers(300, 701, size=2))
        boxes, is_empty, is_rotated = [], k == 1, k == 2
        if not is_empty:
            if k % 3 == 0:  # a crowd region over a large part of the image
                cw, ch = int(width * rng.uniform(0.4, 0.7)), int(height * rng.uniform(0.4, 0.7))
                cx, cy = int(rng.integers(0, width - cw)), int(rng.integers(0, height - ch))
                rle = _crowd_rle(cx, cy, cx + cw, cy + ch, height, width)
                annotations.append(
                    {"id": 1000 + len(annotations), "image_id": image_id, "category_id": categories[k % len(categories)]["id"],
                     "bbox": [float(cx), float(cy), float(cw), float(ch)], "area": float(cw * ch), "iscrowd": 1,
                     "segmentation": rle}
                )  # fmt: skip
            for _ in range(int(rng.integers(1, 31))):
                w, h = float(rng.uniform(8, width / 3)), float(rng.uniform(8, height / 3))
                x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
                polygon, area = _polygon(rng, x, y, w, h)
                boxes.append([x, y, w, h])
                annotations.append(
                    {"id": 1000 + len(annotations), "image_id": image_id,
                     "category_id": int(rng.choice([c["id"] for c in categories])),
                     "bbox": [x, y, w, h], "area": area, "iscrowd": 0, "segmentation": [polygon]}
                )  # fmt: skip
        upright = PIL.Image.fromarray(_draw(rng, height, width, boxes))
        name = f"{image_id:012d}.jpg"
        if is_rotated:
            # Stored sideways with orientation 6 ("rotate 90° clockwise to view"); the json describes the
            # upright photo, as a viewer shows it.
            exif = PIL.Image.Exif()
            exif[EXIF_ORIENTATION] = 6
            upright.transpose(PIL.Image.Transpose.ROTATE_90).save(root / split / name, quality=92, exif=exif)
            rotated_file = name
        else:
            upright.save(root / split / name, quality=92)
        if is_empty:
            empty_id = image_id
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    coco = {"images": images, "annotations": annotations, "categories": categories}
    return coco, rotated_file, empty_id


def make_coco_folder(
    root: Path, num_train: int = 6, num_val: int = 5, seed: int = 0, categories: list[dict] | None = None
) -> CocoFixture:
    """A realistic COCO folder: JPEGs of 300-700 px (mixed aspect), 1-30 objects per image with polygon
    segmentations and their areas, category ids 1, 3, 7, 18 (or `categories`), large crowd regions (RLE), an
    image without objects and an EXIF-rotated photo in each split."""
    categories = COCO_CATEGORIES if categories is None else categories
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    files, cocos = {}, {}
    rotated, empty = "", -1
    for split, count, offset in (("train", num_train, 0), ("val", num_val, 1)):
        coco, rotated_file, empty_id = _split(root, split, count, seed + offset, 1 + 10_000 * offset, categories)
        files[split] = root / "annotations" / f"instances_{split}.json"
        files[split].write_text(json.dumps(coco))
        cocos[split] = coco
        if split == "val":
            rotated, empty = rotated_file, empty_id
    return CocoFixture(root=root, annotation_files=files, coco=cocos, rotated_file=rotated, empty_image_id=empty)


def pycocotools_stats(annotation_file: Path, results_file: Path) -> list[float]:
    """The 12 COCOeval box stats of pycocotools itself on two json files (the reference implementation)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        evaluator = COCOeval(gt, gt.loadRes(str(results_file)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


# ---------------------------------------------------------------------- cppe-5 `datasets`
CPPE5_NAMES = ["Coverall", "Face_Shield", "Gloves", "Goggles", "Mask"]


def cppe5_rows(num_rows: int, seed: int = 0, string_categories: bool = False) -> list[dict]:
    """Rows in the cppe-5 schema (PIL images of 300-500 px, 1-6 objects, xywh boxes, areas, ids)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(num_rows):
        width, height = (int(v) for v in rng.integers(300, 501, size=2))
        objects = {"id": [], "area": [], "bbox": [], "category": []}
        for _ in range(int(rng.integers(1, 7))):
            w, h = float(rng.uniform(10, width / 2)), float(rng.uniform(10, height / 2))
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            category = int(rng.integers(0, len(CPPE5_NAMES)))
            objects["id"].append(100 * k + len(objects["id"]))
            objects["area"].append(w * h)
            objects["bbox"].append([x, y, w, h])
            objects["category"].append(CPPE5_NAMES[category] if string_categories else category)
        image = PIL.Image.fromarray(_draw(rng, height, width, objects["bbox"]))
        rows.append({"image": image, "image_id": 500 + k, "width": width, "height": height, "objects": objects})
    return rows


def write_imagefolder(folder: Path, splits: dict[str, list[dict]]) -> Path:
    """An imagefolder: `<folder>/<split>/*.png` + metadata.jsonl (file_name, image_id, width, height, objects)."""
    for split, rows in splits.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        lines = []
        for row in rows:
            name = f"{row['image_id']}.png"
            row["image"].save(folder / split / name)
            meta = {"file_name": name, **{k: v for k, v in row.items() if k != "image"}}
            lines.append(json.dumps(meta))
        (folder / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def frozen_timm_body(name: str = "test_resnet", seed: int = 0) -> torch.nn.Module:
    """A timm feature body (last level) with frozen BN whose statistics and affine are far from identity, so
    folding or dropping a BN changes the output."""
    import timm
    from timm.layers import freeze_batch_norm_2d

    torch.manual_seed(seed)
    body = freeze_batch_norm_2d(timm.create_model(name, features_only=True, out_indices=(-1,)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in body.modules():
            if hasattr(module, "running_var"):
                n = module.weight.numel()
                module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                module.running_mean.copy_(torch.randn(n, generator=gen))
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return body


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    """Within 1e-4 of the tensor's scale: gradients summed over many pixels reach hundreds, and fp32 sums
    taken in another order differ relative to that scale, not to each (possibly tiny) element."""
    scale = max(1.0, expected.abs().max().item())
    error = (actual - expected).abs().max().item()
    assert error <= 1e-4 * scale, f"{name}: max abs difference {error:.3g} > 1e-4 × scale {scale:.3g}"


# ---------------------------------------------------------------------- COCO panoptic folders
def make_panoptic_coco_folder(root: Path, num_train: int = 3, num_val: int = 2, seed: int = 0) -> Path:
    """A COCO panoptic folder: `annotations/panoptic_{train,val}2017.json`, PNG id maps in
    `annotations/panoptic_{split}2017/`, JPEGs of 300-700 px in `{split}2017/`. Shapes ("things", ids 1-3) on
    sky / wall / ground bands ("stuff", ids 101-103), a void hole, in each split a crowd shape, and in train an
    empty (all-void) image with no segments. Returns `root`."""
    from detr_hf.data.synthetic_panoptic import (
        SYNTHETIC_PANOPTIC_CATEGORIES,
        render_synthetic_panoptic_example,
    )
    from detr_hf.panoptic_annotations import id_to_rgb

    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count, first_id in (("train", num_train, 3), ("val", num_val, 500)):
        images_dir, masks_dir = root / f"{split}2017", root / "annotations" / f"panoptic_{split}2017"
        images_dir.mkdir(exist_ok=True)
        masks_dir.mkdir(exist_ok=True)
        images, annotations = [], []
        for k in range(count + (split == "train")):
            rng = np.random.default_rng([seed, first_id, k])
            image_id = first_id + 11 * k  # sparse ids
            height, width = (int(v) for v in rng.integers(300, 701, size=2))
            example = render_synthetic_panoptic_example(rng, height, width, num_things_range=(2, 8), side_range=(40, 160))
            segments, ids = example.segments_info, example.segment_ids
            ids[5:25, 5:45] = 0  # a void hole
            if k == count:  # train's extra image: nothing labelled
                ids[:] = 0
            present = set(np.unique(ids).tolist())
            segments = [dict(s, area=int((ids == s["id"]).sum())) for s in segments if s["id"] in present]
            things = [s for s in segments if s["category_id"] < 100]
            if k == 0 and things:
                things[0]["iscrowd"] = 1
            name = f"{image_id:012d}"
            PIL.Image.fromarray(example.image).save(images_dir / f"{name}.jpg", quality=92)
            PIL.Image.fromarray(id_to_rgb(ids)).save(masks_dir / f"{name}.png")
            images.append({"id": image_id, "file_name": f"{name}.jpg", "height": height, "width": width})
            annotations.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": segments})
        document = {"images": images, "annotations": annotations, "categories": [dict(c) for c in SYNTHETIC_PANOPTIC_CATEGORIES]}
        (root / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(document))
    return root

"""Detect objects in image files or folders with any detr_hf model; write JSON detections and annotated PNGs.

    python examples/predict.py --model outputs/demo images/ photo.jpg --output_dir predictions --threshold 0.5

--model is a detr_hf folder or Hub id. For each image: `<output_dir>/<stem>_<extension>.png` with boxes and labels
drawn (`photo.jpg` → `photo_jpg.png`, `photo.png` → `photo_png.png`; the same name from another folder gets `-2`,
`-3`, ...: no output ever replaces another), and one `<output_dir>/detections.json`:
{file: [{"label", "label_id", "score", "box": [x0, y0, x1, y1]}]} in original (EXIF-upright) image pixels.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

import detr_hf  # noqa: F401  (registers the Auto classes)
from detr_hf.data.pixels import image_tensor
from detr_hf.image_inputs import open_image
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor
from detr_hf.modeling_detr_hf import DetrHfForObjectDetection

logger = logging.getLogger("detr_hf.predict")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_PALETTE = ["red", "lime", "yellow", "cyan", "magenta", "orange", "white", "deepskyblue"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--model", required=True, help="detr_hf folder or Hub id")
    parser.add_argument("--output_dir", default="predictions")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=4)
    return parser.parse_args(argv)


def collect_images(inputs: list[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted), each file once; ValueError for a missing path."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"input {item!r} is neither an image file nor a folder")
    if not files:
        raise ValueError(f"no images found in {inputs}")
    unique = {path.resolve(): path for path in reversed(files)}  # the first mention of a file wins
    return [path for path in files if unique[path.resolve()] is path]


def output_names(files: list[Path]) -> list[str]:
    """A distinct PNG name for every input: `<stem>_<extension>.png`, then `-2`, `-3`, ... for repeats
    (compared case-insensitively, for case-insensitive file systems)."""
    taken: set[str] = set()
    names = []
    for path in files:
        base = f"{path.stem}_{path.suffix[1:].lower()}" if path.suffix else path.name
        name, k = f"{base}.png", 2
        while name.lower() in taken:
            name, k = f"{base}-{k}.png", k + 1
        taken.add(name.lower())
        names.append(name)
    return names


def viewable(image: Image.Image) -> Image.Image:
    """8-bit RGB for drawing: 16/32-bit greyscale scaled to 0..255 (a plain convert would clip it to white)."""
    if image.mode.startswith("I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if pixels.max() > 255 else 255.0
        return Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def draw(image: Image.Image, detections: list[dict]) -> torch.Tensor:
    pixels = image_tensor(image, "image")  # upright, alpha on white, 16-bit scaled: what the model saw
    if pixels.is_floating_point():
        pixels = (pixels * 255).round().to(torch.uint8)
    if not detections:
        return pixels
    boxes = torch.tensor([d["box"] for d in detections], dtype=torch.float32)
    labels = [f"{d['label']} {d['score']:.2f}" for d in detections]
    colours = [_PALETTE[d["label_id"] % len(_PALETTE)] for d in detections]
    return draw_bounding_boxes(pixels, boxes, labels=labels, colors=colours, width=max(1, min(image.size) // 100))


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    args = parse_args(argv)
    files = collect_images(args.inputs)
    drawn_name = dict(zip(files, output_names(files)))
    model = DetrHfForObjectDetection.from_pretrained(args.model).eval()
    processor = DetrHfImageProcessor.from_pretrained(args.model)
    id2label = model.config.id2label
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for start in range(0, len(files), args.batch_size):
        chunk, images = [], []
        for path in files[start : start + args.batch_size]:
            try:
                images.append(open_image(path))  # EXIF orientation applied, the file's own mode (16-bit too)
                chunk.append(path)
            except OSError as error:
                logger.warning("skipping %s: not a readable image (%s)", path, error)
        if not images:
            continue
        inputs = processor(images, return_tensors="pt")
        outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
        sizes = torch.tensor([[im.height, im.width] for im in images])
        found = processor.post_process_object_detection(outputs, args.threshold, sizes, args.top_k)
        for path, image, dets in zip(chunk, images, found):
            detections = [
                {"label": id2label[int(c)], "label_id": int(c), "score": float(s), "box": [float(v) for v in b]}
                for s, c, b in zip(dets["scores"], dets["labels"], dets["boxes"])
            ]
            results[str(path)] = detections
            F.to_pil_image(draw(viewable(image), detections)).save(out_dir / drawn_name[path])
    (out_dir / "detections.json").write_text(json.dumps(results, indent=2))
    logger.info("wrote %d images and detections.json to %s", len(results), out_dir)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])

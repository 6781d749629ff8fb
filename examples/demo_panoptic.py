"""The panoptic demo (`python examples/demo.py --task panoptic`): train on the synthetic panoptic shapes, report PQ,
save, reload with AutoModelForImageSegmentation and draw the predicted segments with their labels.

    python examples/demo.py --task panoptic                          # the panoptic-demo recipe (seeded steps)
    python examples/demo.py --task panoptic --max_train_steps 300    # a quick look (lower PQ)

Writes into --output_dir (default outputs/demo_panoptic): the model + processor, eval_results.json (PQ / SQ / RQ,
all / things / stuff, on the synthetic validation split), demo_panoptic.png (validation images | predicted
segments with labels | ground truth), loss_curve.png and demo_summary.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

import demo  # examples/demo.py (which puts examples/ on sys.path)
import train  # examples/train.py

# One colour per segment (cycled), readable under white labels.
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0),
]  # fmt: skip
_TILE = 192


def _paint(ids: np.ndarray, names: dict[int, str]) -> PIL.Image.Image:
    """A segment id map [h, w] (<= 0 = no segment, black) → a _TILE px picture, each segment coloured and named."""
    colours = np.zeros((*ids.shape, 3), dtype=np.uint8)
    segments = [int(s) for s in np.unique(ids) if s > 0]
    for k, segment in enumerate(segments):
        colours[ids == segment] = _PALETTE[k % len(_PALETTE)]
    scale = _TILE / ids.shape[1]
    picture = PIL.Image.fromarray(colours).resize((_TILE, round(ids.shape[0] * scale)), PIL.Image.NEAREST)
    draw = PIL.ImageDraw.Draw(picture)
    for segment in segments:
        ys, xs = np.nonzero(ids == segment)
        centre = (float(np.median(xs)) * scale, float(np.median(ys)) * scale)
        draw.text(
            centre, names.get(segment, "?"), fill="white", anchor="mm", stroke_width=2, stroke_fill="black"
        )
    return picture


def draw_panoptic(
    images: list, predictions: list[dict], references: list[dict], labels: dict, path: Path
) -> None:
    """One row per image: the image, the predicted segments ("name score"), the ground truth segments."""
    rows = []
    for image, prediction, reference in zip(images, predictions, references):
        predicted = {
            s["id"]: f"{labels[s['label_id']]} {s['score']:.2f}" for s in prediction["segments_info"]
        }
        truth = {s["id"]: labels[s["label"]] for s in reference["segments_info"]}
        tiles = [
            image.convert("RGB").resize(
                (_TILE, round(image.height * _TILE / image.width)), PIL.Image.NEAREST
            ),
            _paint(prediction["segmentation"].numpy(), predicted),
            _paint(reference["segmentation"], truth),
        ]
        rows.append(tiles)
    height = max(t.height for row in rows for t in row)
    sheet = PIL.Image.new("RGB", (3 * _TILE + 8, len(rows) * (height + 4)), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * (_TILE + 4), r * (height + 4)))
    sheet.save(path)


def main(output_dir: str, num_pictures: int, threshold: float, train_argv: list[str]) -> dict:
    out = Path(output_dir)
    started = time.monotonic()
    train.main(
        [
            "--task",
            "panoptic",
            "--recipe",
            "panoptic-demo",
            "--output_dir",
            str(out),
            "--eval_every_epochs",
            "0",
            *train_argv,
        ]
    )
    trained_seconds = time.monotonic() - started

    from transformers import AutoModelForImageSegmentation

    import detr_hf  # noqa: F401  (registers the Auto classes)
    from detr_hf.data.panoptic_folder import PanopticFolder
    from detr_hf.image_processing_detr_hf import DetrHfImageProcessor

    model = AutoModelForImageSegmentation.from_pretrained(out).eval()
    processor = DetrHfImageProcessor.from_pretrained(out)
    settings = json.loads((out / "training_config.json").read_text())
    # The validation split the training script evaluated (written under OUTPUT_DIR/synthetic_panoptic/).
    root = next((out / "synthetic_panoptic").glob("*/COMPLETE")).parent
    val = PanopticFolder(
        root / "validation", root / "annotations/panoptic_validation.json", root / "panoptic_validation"
    )
    images = [PIL.Image.open(val.image_path(i)) for i in range(num_pictures)]
    with torch.no_grad():
        inputs = processor(images, return_tensors="pt")
        outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    predictions = processor.post_process_panoptic_segmentation(
        outputs, threshold=threshold, label_ids_to_fuse=val.stuff_labels, target_sizes=[(im.height, im.width) for im in images]
    )  # fmt: skip
    label_of = {category_id: k for k, category_id in enumerate(val.category_ids)}
    references = []
    for i in range(num_pictures):
        reference = val.reference(val.images[i]["id"])
        for segment in reference["segments_info"]:
            segment["label"] = label_of[segment["category_id"]]
        references.append(reference)
    draw_panoptic(images, predictions, references, dict(model.config.id2label), out / "demo_panoptic.png")

    demo.plot_loss(
        json.loads((out / "loss_history.json").read_text()), out / "loss_curve.png", "detr_hf panoptic demo (synthetic)"
    )  # fmt: skip
    metrics = json.loads((out / "eval_results.json").read_text())
    trained = json.loads((out / "train_results.json").read_text())
    summary = {
        "steps": trained["completed_steps"],
        "stopped_by": trained["stopped_by"],
        **{key: metrics[key] for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")},
        "validation_images": settings["data"]["num_val_images"],
        "train_seconds_incl_eval": round(trained_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "panoptic_png": str(out / "demo_panoptic.png"),
        "loss_curve_png": str(out / "loss_curve.png"),
    }
    print(json.dumps(summary, indent=2))
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary

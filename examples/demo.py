"""The README demo: train on the built-in synthetic shapes, evaluate, save, reload, run the pipeline, draw pictures.

    python examples/demo.py                          # the demo recipe: 5,000 seeded steps (~8 minutes on 2 CPU cores)
    python examples/demo.py --max_train_steps 500    # a quick look (lower AP)
    python examples/demo.py --train_minutes 1        # also stop after 1 minute (machine-dependent result)
    python examples/demo.py --task panoptic          # the segmentation demo (examples/demo_panoptic.py): PQ + PNG

The demo trains a fixed number of optimiser steps (the `demo` recipe of detr_hf/training/recipes.py, seeded: lr 4e-4,
warm-up 200 + cosine, 3 training-only denoising groups, the weight EMA 0.9998 evaluated and saved), so every machine
reaches the same AP up to run-to-run nondeterminism; --train_minutes adds a wall-clock limit. --num_denoising_groups
0 / --ema_decay 0 turn the aids off (the saved model is plain DETR either way).

Writes into --output_dir: the trained model + processor, eval_results.json (COCO AP/AR on the synthetic
validation split), demo_predictions.png (pipeline detections on validation images) and loss_curve.png.
Training options not listed here go to examples/train.py unchanged (e.g. --learning_rate 1e-4).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402  (examples/train.py)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--task", choices=("detection", "panoptic"), default="detection")
    parser.add_argument("--output_dir", default=None, help="default: outputs/demo (panoptic: outputs/demo_panoptic)")
    parser.add_argument(
        "--train_minutes", type=float, default=None, help="optional wall-clock limit on training (default: none)"
    )  # fmt: skip
    parser.add_argument("--num_pictures", type=int, default=8, help="validation images drawn in the PNG")
    parser.add_argument(
        "--threshold", type=float, default=None, help="score threshold of the drawing (boxes 0.5, panoptic 0.85)"
    )  # fmt: skip
    return parser.parse_known_args(argv)


def draw_grid(images: list, detections: list[list[dict]], path: Path) -> None:
    """One row of images with their pipeline detections (box + label + score)."""
    from torchvision.transforms.v2 import functional as F
    from torchvision.utils import draw_bounding_boxes, make_grid, save_image

    colours = {"square": "red", "circle": "lime", "triangle": "yellow"}
    tiles = []
    for image, found in zip(images, detections):
        pixels = F.pil_to_tensor(image.convert("RGB"))
        boxes = torch.tensor(
            [[d["box"]["xmin"], d["box"]["ymin"], d["box"]["xmax"], d["box"]["ymax"]] for d in found],
            dtype=torch.float32,
        ).reshape(-1, 4)
        labels = [f"{d['label']} {d['score']:.2f}" for d in found]
        pixels = F.resize(pixels, [256, 256], interpolation=F.InterpolationMode.NEAREST)
        boxes = boxes * (256 / image.width)
        drawn = draw_bounding_boxes(
            pixels, boxes, labels=labels, colors=[colours.get(d["label"], "white") for d in found], width=2
        )
        tiles.append(drawn.float() / 255)
    save_image(make_grid(tiles, nrow=4, padding=4), str(path))


def plot_loss(history: list[list[float]], path: Path, title: str = "detr_hf demo on synthetic shapes") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = zip(*history) if history else ((), ())
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (all terms, aux included)")
    ax.set_yscale("log")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args, train_argv = parse_args(argv)
    budget = [] if args.train_minutes is None else ["--time_budget_minutes", str(args.train_minutes)]
    if args.task == "panoptic":
        import demo_panoptic

        threshold = 0.85 if args.threshold is None else args.threshold
        output_dir = args.output_dir or "outputs/demo_panoptic"
        return demo_panoptic.main(output_dir, args.num_pictures, threshold, [*budget, *train_argv])
    out = Path(args.output_dir or "outputs/demo")
    started = time.monotonic()
    train.main(["--recipe", "demo", "--output_dir", str(out), "--eval_every_epochs", "5", *budget, *train_argv])
    trained_seconds = time.monotonic() - started

    from transformers import AutoModelForObjectDetection, pipeline

    import detr_hf  # noqa: F401  (registers the Auto classes)
    from detr_hf.data import load_synthetic_splits
    from detr_hf.image_processing_detr_hf import DetrHfImageProcessor

    model = AutoModelForObjectDetection.from_pretrained(out)
    processor = DetrHfImageProcessor.from_pretrained(out)
    detector = pipeline("object-detection", model=model, image_processor=processor, device="cpu")
    # The validation split the training script evaluated (same seed and sizes as its defaults).
    val = load_synthetic_splits(4000, 250, image_size=64, seed=42)["validation"]
    images = [val[i]["image"] for i in range(args.num_pictures)]
    detections = detector(images, threshold=0.5 if args.threshold is None else args.threshold)
    draw_grid(images, detections, out / "demo_predictions.png")
    plot_loss(json.loads((out / "loss_history.json").read_text()), out / "loss_curve.png")

    metrics = json.loads((out / "eval_results.json").read_text())
    trained = json.loads((out / "train_results.json").read_text())
    summary = {
        "steps": trained["completed_steps"],
        "stopped_by": trained["stopped_by"],
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "train_seconds_incl_eval": round(trained_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "predictions_png": str(out / "demo_predictions.png"),
        "loss_curve_png": str(out / "loss_curve.png"),
    }
    print(json.dumps(summary, indent=2))
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()

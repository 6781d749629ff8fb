"""Benchmark: images/s of the training data pipeline (decode + DETR augmentation at 800/1333 + collate) per
DataLoader worker, against the albumentations pipeline of transformers' object-detection example on the same
images, and against what a DETR-R50 training step consumes.

python benchmarks/bench_data_pipeline.py            # 48 images, workers 0/1/2, the R50 step measured on this CPU
python benchmarks/bench_data_pipeline.py --quick    # 8 images, workers 0/1, no step measurement
python benchmarks/bench_data_pipeline.py --step_images_per_s 25   # compare with a GPU's step rate instead
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_report  # noqa: E402
from data_images import write_coco_folder  # noqa: E402
from detr_hf.data import CocoFolder, DetectionCollator, DetectionDataset  # noqa: E402
from detr_hf.data.pixels import image_tensor  # noqa: E402
from detr_hf.data.transforms import build_train_transform, transform_boxes  # noqa: E402
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor  # noqa: E402

HERE = Path(__file__).resolve().parent
BATCH = 2
EXAMPLE_SQUARE_SIZES = (600, 1333)  # the example's default `image_square_size`, and DETR's long side


def detr_hf_loader(folder: CocoFolder, workers: int) -> DataLoader:
    """The training scripts' pipeline: DETR augmentation (flip, multi-scale 480–800 / crop, long side ≤ 1333),
    then the processor normalises and pads in the collator. Keys (epoch, i) seed the augmentation."""
    dataset = DetectionDataset(folder, build_train_transform(), seed=0)
    keys = [(0, i) for i in range(len(folder))]
    return DataLoader(
        dataset, batch_size=BATCH, sampler=keys, num_workers=workers, collate_fn=DetectionCollator(DetrHfImageProcessor()),
        pin_memory=torch.cuda.is_available(),
    )  # fmt: skip


def example_loader(folder: CocoFolder, workers: int, square_size: int) -> DataLoader:
    """transformers' object-detection example, rebuilt from its described behaviour (bench_example_pipeline)."""
    from bench_example_pipeline import ExampleDataset, example_collator

    return DataLoader(
        ExampleDataset(folder, square_size), batch_size=BATCH, num_workers=workers,
        collate_fn=example_collator(square_size), pin_memory=torch.cuda.is_available(),
    )  # fmt: skip


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(make_loader: Callable[[int], DataLoader], workers: int) -> dict:
    """Iterate the whole loader once: wall images/s, and CPU seconds per image of this process plus its
    (finished, reaped) workers — the count of work, steady under load where wall time is not."""
    loader = make_loader(workers)
    cpu, children, wall = time.process_time(), _children_cpu(), time.perf_counter()
    images = 0
    for batch in loader:
        images += batch["pixel_values"].shape[0]
    wall = time.perf_counter() - wall
    del loader  # workers exit with their iterator; their CPU time is counted once they are reaped
    cpu = time.process_time() - cpu + _children_cpu() - children
    return {"images": images, "images_per_s": images / wall, "cpu_ms_per_image": 1e3 * cpu / images}


def stage_costs(folder: CocoFolder) -> dict:
    """CPU ms per image of each stage of the detr_hf pipeline, in this process: decode (open + EXIF), the
    tensor view of the decoded image, the augmentation, the whole sample, and the collator per image."""
    transform = build_train_transform()
    dataset = DetectionDataset(folder, transform, seed=0)
    collate = DetectionCollator(DetrHfImageProcessor())
    totals = dict.fromkeys(("decode", "to_tensor", "augmentation", "whole_sample", "collate"), 0.0)
    samples = []
    for index in range(len(folder)):
        start = time.process_time()
        row = folder[index]
        decoded = time.process_time()
        pixels = image_tensor(row["image"], "bench")
        tensor = time.process_time()
        boxes = row["objects"]["bbox"]
        labels = torch.zeros(len(boxes), dtype=torch.int64)
        augment_start = time.process_time()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(index)
            transform_boxes(transform, pixels, boxes, labels)
        augmented = time.process_time()
        samples.append(dataset[(0, index)])
        whole = time.process_time()
        totals["decode"] += decoded - start
        totals["to_tensor"] += tensor - decoded
        totals["augmentation"] += augmented - augment_start
        totals["whole_sample"] += whole - augmented
    for first in range(0, len(samples) - BATCH + 1, BATCH):
        start = time.process_time()
        collate(samples[first : first + BATCH])
        totals["collate"] += time.process_time() - start
    return {f"{name}_cpu_ms_per_image": 1e3 * value / len(folder) for name, value in totals.items()}


def training_step_images_per_s(repeats: int) -> float:
    """Images/s of a detr_hf DETR-R50 training step (random weights) on this CPU at 800×1066, batch 2."""
    from bench_model import make_batch, training_step
    from detr_hf import DetrHfConfig, DetrHfForObjectDetection

    model = DetrHfForObjectDetection(DetrHfConfig(num_labels=91)).train()
    pixels, mask, labels = make_batch(((800, 1066),) * BATCH)
    times = []
    for round_ in range(repeats + 1):
        start = time.perf_counter()
        training_step(model, pixels, mask, labels)
        if round_:
            times.append(time.perf_counter() - start)
    return BATCH / statistics.median(times)


def run(quick: bool = False, step_images_per_s: float | None = None, num_images: int | None = None) -> dict:
    """{"detr_hf": {workers: {...}}, "example_600": ..., "example_1333": ..., "stages": ..., "step": ...}."""
    import cv2

    cv2.setNumThreads(1)  # one thread per process for every pipeline: per-worker figures compare
    torch.set_num_threads(1)
    num_images = num_images or (8 if quick else 48)
    worker_counts = (0, 1) if quick else (0, 1, 2)
    results: dict = {"num_images": num_images, "batch_size": BATCH, "threads_per_process": 1}
    with tempfile.TemporaryDirectory() as tmp:
        folder = CocoFolder(*write_coco_folder(Path(tmp), num_images))
        pipelines: dict[str, Callable[[int], DataLoader]] = {"detr_hf": lambda w: detr_hf_loader(folder, w)}
        for size in EXAMPLE_SQUARE_SIZES:
            pipelines[f"example_{size}"] = lambda w, size=size: example_loader(folder, w, size)
        for name, make_loader in pipelines.items():
            results[name] = {}
            for workers in worker_counts:
                results[name][f"workers={workers}"] = measure(make_loader, workers)
                print(f"{name} workers={workers}: {results[name][f'workers={workers}']}", file=sys.stderr, flush=True)
        results["stages"] = stage_costs(folder)
    if step_images_per_s is None and not quick:
        step_images_per_s = training_step_images_per_s(repeats=3)
        results["step_source"] = "measured: detr_hf DETR-R50 training step on this CPU, 800×1066, batch 2"
    elif step_images_per_s is not None:
        results["step_source"] = "given with --step_images_per_s"
    if step_images_per_s is not None:
        results["step_images_per_s"] = step_images_per_s
        for name in pipelines:
            # One worker's rate is its share of a core: 1000 / CPU ms per image.
            per_worker = 1e3 / results[name]["workers=0"]["cpu_ms_per_image"]
            results[name]["workers_needed_to_feed_the_step"] = step_images_per_s / per_worker
    return results


def markdown(results: dict) -> str:
    workers = [k for k in results["detr_hf"] if k.startswith("workers=")]
    lines = [
        "| pipeline | " + " | ".join(f"images/s, {w}" for w in workers) + " | CPU ms / image | workers to feed the step |",
        "| --- |" + " --- |" * (len(workers) + 2),
    ]
    labels = {"detr_hf": "detr_hf (DETR augmentation, 800/1333)"}
    labels |= {f"example_{s}": f"transformers example (albumentations, square {s})" for s in EXAMPLE_SQUARE_SIZES}
    for name, label in labels.items():
        entry = results[name]
        needed = entry.get("workers_needed_to_feed_the_step")
        lines.append(
            f"| {label} | " + " | ".join(f"{entry[w]['images_per_s']:.1f}" for w in workers)
            + f" | {entry['workers=0']['cpu_ms_per_image']:.0f} | {'-' if needed is None else f'{needed:.2f}'} |"
        )  # fmt: skip
    stages = ", ".join(f"{k.removesuffix('_cpu_ms_per_image')} {v:.1f}" for k, v in results["stages"].items())
    lines += ["", f"detr_hf stages (CPU ms per image): {stages}."]
    if "step_images_per_s" in results:
        lines.append(f"Training step: {results['step_images_per_s']:.2f} images/s ({results['step_source']}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 images, workers 0/1, no step measurement")
    parser.add_argument("--num_images", type=int, default=None, help="images in the generated COCO folder")
    parser.add_argument(
        "--step_images_per_s", type=float, default=None,
        help="images/s a training step consumes (e.g. measured on a GPU); default: measure DETR-R50 on this CPU",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for data_pipeline.{json,md}")
    args = parser.parse_args()
    start = time.perf_counter()
    results = run(args.quick, args.step_images_per_s, args.num_images)
    write_report(args.out, "data_pipeline", args.quick, time.perf_counter() - start, results, markdown(results))


if __name__ == "__main__":
    main()

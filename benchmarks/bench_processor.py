"""Benchmark: DetrHfImageProcessor vs transformers' DetrImageProcessor (torchvision) and DetrImageProcessorPil."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import PIL.Image
import torch
from transformers import DetrImageProcessor, DetrImageProcessorPil

from detr_hf.image_processing_detr_hf import DetrHfImageProcessor

NUM_IMAGES, MIN_SIDE, MAX_SIDE = 16, 480, 640


def make_batch(seed: int = 0, num_images: int = NUM_IMAGES) -> tuple[list[PIL.Image.Image], list[dict]]:
    """`num_images` RGB PIL images with sides in [480, 640] and 5–20 COCO boxes each (some crowd)."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for index in range(num_images):
        height, width = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, 2))
        images.append(PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
        objects = []
        for _ in range(int(rng.integers(5, 21))):
            x, y = rng.uniform(0, width - 20), rng.uniform(0, height - 20)
            w, h = rng.uniform(5, width - x), rng.uniform(5, height - y)
            objects.append(
                {"bbox": [x, y, w, h], "category_id": int(rng.integers(1, 91)), "area": w * h,
                 "iscrowd": int(rng.random() < 0.05)}
            )  # fmt: skip
        annotations.append({"image_id": index, "annotations": objects})
    return images, annotations


def candidates(images: list, annotations: list | None) -> dict[str, Callable[[], object]]:
    ours, fast, pil = DetrHfImageProcessor(), DetrImageProcessor(), DetrImageProcessorPil()
    return {
        "detr_hf": lambda: ours(images, annotations=annotations, return_tensors="pt"),
        "transformers": lambda: fast(images, annotations=annotations, return_tensors="pt"),
        "transformers_pil": lambda: pil(images, annotations=annotations, return_tensors="pt"),
    }


def median_times(
    fns: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Median seconds per call; one warm-up round, then the candidates alternate every round."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = clock()
            fn()
            if round_:
                samples[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def summarise(medians: dict[str, float]) -> dict[str, float]:
    out = {f"{name}_ms": 1e3 * value for name, value in medians.items()}
    for name in medians:
        if name != "detr_hf":
            out[f"ratio_vs_{name}"] = medians["detr_hf"] / medians[name]
    return out


def run(quick: bool = False, cpu_time: bool = False, smoke: bool = False) -> dict:
    """{"images": {...}, "images+annotations": {...}, "collator": {...}}; each holds per-candidate ms and the
    ratios detr_hf / transformers (torchvision) and detr_hf / transformers_pil. `cpu_time` times with the
    process CPU clock (all threads) instead of wall time: steadier on a machine shared with other jobs.
    `smoke`: 2 images, one repeat (plumbing check only)."""
    clock = time.process_time if cpu_time else time.perf_counter
    images, annotations = make_batch(num_images=2 if smoke else NUM_IMAGES)
    repeats = 1 if smoke else 5 if quick else 15
    results: dict = {}
    for scenario, anns in (("images", None), ("images+annotations", annotations)):
        results[scenario] = summarise(median_times(candidates(images, anns), repeats, clock))
    # The training collator: images already resized by torchvision v2 (uint8 CHW tensors), do_resize=False.
    tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous() for image in images]
    ours, fast = DetrHfImageProcessor(), DetrImageProcessor()
    collate = {
        "detr_hf": lambda: ours(tensors, annotations=annotations, do_resize=False, return_tensors="pt"),
        "transformers": lambda: fast(tensors, annotations=annotations, do_resize=False, return_tensors="pt"),
    }
    results["collator"] = summarise(median_times(collate, repeats, clock))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument(
        "--cpu-time", action="store_true", help="time with the process CPU clock, not wall time"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{NUM_IMAGES} RGB images, sides {MIN_SIDE}-{MAX_SIDE} px, default 800/1333 resize, 5-20 boxes/image, "
          f"torch threads {torch.get_num_threads()}, {'CPU' if args.cpu_time else 'wall'} time; "
          "medians of alternating rounds")  # fmt: skip
    print(f"{'scenario':>19} {'detr_hf ms':>11} {'tf ms':>8} {'tf_pil ms':>10} {'/tf':>6} {'/tf_pil':>8}")
    for scenario, r in run(args.quick, args.cpu_time).items():
        pil_ms = f"{r['transformers_pil_ms']:10.1f}" if "transformers_pil_ms" in r else f"{'-':>10}"
        pil_ratio = (
            f"{r['ratio_vs_transformers_pil']:8.3f}" if "ratio_vs_transformers_pil" in r else f"{'-':>8}"
        )
        print(
            f"{scenario:>19} {r['detr_hf_ms']:11.1f} {r['transformers_ms']:8.1f} {pil_ms} "
            f"{r['ratio_vs_transformers']:6.3f} {pil_ratio}"
        )


if __name__ == "__main__":
    main()

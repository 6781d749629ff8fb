"""Benchmark: start-up of training on a COCO-train2017-sized folder (118,287 images, ~860k annotations).

Generates `instances_train2017.json` (COCO-like: 80 categories with COCO's sparse ids, 0-20 objects per
image, 12-vertex polygon segmentations, ~1% crowd) and a small val json; no image files (none is opened
before its sample is read). Times what the training scripts do before the first step: the two annotation
files parsed and checked, the `DetectionDataset`s, their label spaces and the seeded sampler. Target ≤ 10 s.
Prints process CPU time (what a loaded machine cannot inflate) and wall time of each start-up.

    python benchmarks/bench_coco_startup.py [--work_dir DIR [--reuse]] [--num_images 118287] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from detr_hf.coco_labels import coco_id2label
from detr_hf.data import DetectionDataset, EpochSampler, build_eval_transform, build_train_transform
from detr_hf.data.coco_json import orjson
from detr_hf.data.splits import load_detection_splits


def _write_annotations(path: Path, num_images: int, seed: int) -> int:
    """Write the json piece by piece (the whole file as Python objects would need several GB here)."""
    rng = np.random.default_rng(seed)
    names = coco_id2label()
    categories = [{"id": i, "name": name, "supercategory": "thing"} for i, name in names.items() if name != "N/A"]
    category_ids = np.array([c["id"] for c in categories])
    counts = rng.poisson(7.3, size=num_images).clip(0, 20)
    widths, heights = rng.integers(300, 641, size=num_images), rng.integers(300, 641, size=num_images)
    num_annotations = 0
    with open(path, "w") as f:
        f.write('{"categories": ' + json.dumps(categories) + ', "images": [')
        f.write(", ".join(
            json.dumps({"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": int(w), "height": int(h)})
            for i, (w, h) in enumerate(zip(widths, heights))
        ))  # fmt: skip
        f.write('], "annotations": [')
        for image_id, (count, width, height) in enumerate(zip(counts, widths, heights), start=1):
            boxes = rng.uniform(0, 1, size=(count, 4)) * [width * 0.8, height * 0.8, width * 0.2, height * 0.2]
            rings = rng.uniform(0, 1, size=(count, 12, 2))
            cats = rng.choice(category_ids, size=count)
            crowd = rng.uniform(size=count) < 0.01
            for (x, y, w, h), ring, cat, is_crowd in zip(boxes.round(2).tolist(), rings, cats, crowd):
                polygon = (ring * [w, h] + [x, y]).round(2).reshape(-1).tolist()
                ann = {
                    "id": num_annotations + 1, "image_id": image_id, "category_id": int(cat),
                    "bbox": [x, y, w + 1, h + 1], "area": round(0.6 * (w + 1) * (h + 1), 2),
                    "iscrowd": int(is_crowd), "segmentation": [polygon],
                }  # fmt: skip
                f.write((", " if num_annotations else "") + json.dumps(ann))
                num_annotations += 1
        f.write("]}")
    return num_annotations


def _start_up(root: Path) -> tuple[float, float, tuple[int, int]]:
    """(process CPU seconds, wall seconds, (train images, train annotations)) of one start-up."""
    cpu, wall = time.process_time(), time.perf_counter()
    train_raw, val_raw = load_detection_splits(
        coco_dir=str(root),
        train_annotations="annotations/instances_train2017.json",
        val_annotations="annotations/instances_val2017.json",
    )
    train = DetectionDataset(train_raw, build_train_transform(), split="train")
    val = DetectionDataset(val_raw, build_eval_transform(), split="validation")
    assert train.class_names == val.class_names and len(train.category_ids) == 80
    EpochSampler(len(train), seed=0).start_epoch(0)
    return time.process_time() - cpu, time.perf_counter() - wall, (len(train_raw), len(train_raw.coco["annotations"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=None, help="where to write the generated jsons (default: a temp dir)")
    parser.add_argument("--num_images", type=int, default=118_287)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="keep the jsons already in --work_dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work_dir or tmp)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        train_json = root / "annotations" / "instances_train2017.json"
        val_json = root / "annotations" / "instances_val2017.json"
        if not (args.reuse and train_json.is_file() and val_json.is_file()):
            _write_annotations(train_json, args.num_images, seed=0)
            _write_annotations(val_json, 5000, seed=1)
        cpu_seconds, wall_seconds = [], []
        for _ in range(args.repeats):
            cpu, wall, (num_images, num_annotations) = _start_up(root)
            cpu_seconds.append(cpu)
            wall_seconds.append(wall)
            print(f"start-up: {cpu:.2f} s CPU, {wall:.2f} s wall", flush=True)
        print(
            json.dumps(
                {
                    "num_images": num_images,
                    "num_annotations": num_annotations,
                    "train_json_mb": round(train_json.stat().st_size / 2**20, 1),
                    "startup_cpu_s_median": round(statistics.median(cpu_seconds), 2),
                    "startup_wall_s_median": round(statistics.median(wall_seconds), 2),
                    "startup_cpu_s_all": [round(s, 2) for s in cpu_seconds],
                    "startup_wall_s_all": [round(s, 2) for s in wall_seconds],
                    "target_s": 10.0,
                    "json_parser": "orjson" if orjson is not None else "json (standard library)",
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

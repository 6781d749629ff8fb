"""Training data: load train/validation splits (synthetic, HF datasets, COCO folder) and serve them robustly."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import PIL.Image
import torch
from torch.utils.data import Dataset, Sampler

from detr_hf.data.coco_folder import clip_xywh_box, load_coco_folder
from detr_hf.data.synthetic import load_synthetic_splits
from detr_hf.data.transforms import make_transform_fn

__all__ = ["DetectionDataset", "EpochSampler", "class_names_of", "load_detection_splits"]

logger = logging.getLogger(__name__)

# How many following rows to try when an image cannot be decoded, before giving up with an error.
_MAX_SUBSTITUTIONS = 16
_WARN_FIRST = 10


def _image_dir_for(coco_dir: Path, annotation_file: Path) -> Path:
    """COCO layout guess: annotations/instances_train2017.json → <coco_dir>/train2017 (else coco_dir)."""
    stem = annotation_file.stem
    candidate = coco_dir / (stem.split("instances_", 1)[1] if "instances_" in stem else stem)
    return candidate if candidate.is_dir() else coco_dir


def _split_off_validation(train: datasets.Dataset, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    parts = train.train_test_split(test_size=0.1, seed=seed)
    return parts["train"], parts["test"]


def load_detection_splits(
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    coco_dir: str | None = None,
    train_annotations: str | None = None,
    val_annotations: str | None = None,
    num_train: int = 4000,
    num_validation: int = 250,
    image_size: int = 64,
    seed: int = 0,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, validation) in the cppe-5 schema from one of three sources, chosen by the arguments:

    - `coco_dir` (+ `train_annotations`, `val_annotations`, paths relative to it or absolute; images in the
      folder named after the json, e.g. instances_val2017.json → val2017/, else `coco_dir` itself);
    - `dataset_name`: a Hub dataset name, a `save_to_disk` folder, or a `load_dataset` path; validation is
      its "validation" split, else "test", else 10% of "train";
    - neither: the built-in synthetic shapes (`num_train`/`num_validation` images of `image_size` px).
    """
    if coco_dir is not None:
        root = Path(coco_dir)
        train_ann = root / (train_annotations or "annotations/instances_train2017.json")
        val_ann = root / (val_annotations or "annotations/instances_val2017.json")
        for path in (train_ann, val_ann):
            if not path.is_file():
                raise ValueError(f"COCO annotation file {path} does not exist (see --train_annotations/--val_annotations)")
        train = load_coco_folder(_image_dir_for(root, train_ann), train_ann)
        val = load_coco_folder(_image_dir_for(root, val_ann), val_ann)
        return train, val
    if dataset_name is not None:
        if os.path.isdir(dataset_name) and Path(dataset_name, "dataset_dict.json").is_file():
            splits = datasets.load_from_disk(dataset_name)
        else:
            splits = datasets.load_dataset(dataset_name, dataset_config)
        if "train" not in splits:
            raise ValueError(f"dataset {dataset_name!r} has no 'train' split (splits: {list(splits)})")
        for name in ("validation", "test"):
            if name in splits:
                return splits["train"], splits[name]
        return _split_off_validation(splits["train"], seed)
    synthetic = load_synthetic_splits(num_train, num_validation, image_size=image_size, seed=seed)
    return synthetic["train"], synthetic["validation"]


def class_names_of(dataset: datasets.Dataset, label_field: str = "category") -> list[str]:
    """Class names from the ClassLabel feature of `objects.<label_field>`, else class_0..class_{max id}."""
    feature = dataset.features["objects"]
    feature = feature[label_field] if isinstance(feature, dict) else feature.feature[label_field]
    inner = getattr(feature, "feature", feature)
    if isinstance(inner, datasets.ClassLabel):
        return list(inner.names)
    largest = max((max(cats, default=-1) for cats in _categories(dataset, label_field)), default=-1)
    return [f"class_{i}" for i in range(largest + 1)]


def _categories(dataset: datasets.Dataset, label_field: str) -> Iterator[list[int]]:
    for batch in dataset.select_columns(["objects"]).iter(batch_size=1000):
        for objects in batch["objects"]:
            yield list(objects[label_field])


def check_categories(dataset: datasets.Dataset, num_labels: int, split: str, label_field: str = "category") -> None:
    """ValueError naming the row and value if a category is outside 0..num_labels-1 (before any training)."""
    for row, cats in enumerate(_categories(dataset, label_field)):
        bad = [c for c in cats if not 0 <= int(c) < num_labels]
        if bad:
            raise ValueError(
                f"{split} split, row {row}: objects.{label_field} {bad} outside the {num_labels} known classes "
                f"(0..{num_labels - 1}); fix the dataset or the label set"
            )


def _clip_objects(objects: dict, width: int, height: int, label_field: str) -> tuple[dict, int]:
    """Objects with boxes clipped to the image; boxes with nothing inside (or non-finite) dropped."""
    kept: dict[str, list] = {key: [] for key in objects}
    changed = 0
    for k, box in enumerate(objects["bbox"]):
        clipped = clip_xywh_box(box, width, height)
        if clipped is None:
            changed += 1
            continue
        box, was_clipped = clipped
        changed += was_clipped
        for key, values in objects.items():
            kept[key].append(values[k] if key != "bbox" else box)
        if was_clipped and "area" in kept:
            kept["area"][-1] = box[2] * box[3]
    if label_field not in kept:
        raise ValueError(f"objects has no field {label_field!r} (fields: {sorted(objects)})")
    return kept, changed


class EpochSampler(Sampler):
    """Yields (epoch, index) for every index, shuffled by a generator seeded with (seed, epoch).

    The order of epoch e is a pure function of (seed, e): a resumed run sees the same batches, and the
    dataset can seed each sample's augmentation from the pair. Call `start_epoch` before each epoch (not named
    `set_epoch` on purpose: accelerate's dataloader would overwrite it with its own pass counter, which restarts
    at 0 in a resumed run).
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = range(self.num_samples)
        return iter([(self.epoch, i) for i in order])


class DetectionDataset(Dataset):
    """A cppe-5 dataset served as transformed samples, robust to bad rows.

    `dataset[i]` or `dataset[(epoch, i)]` → dict with `image` (uint8 [3, H, W]), `target` (COCO dict in the
    transformed image), `orig_size`, `orig_target` (COCO dict in original pixels, for mAP) and `index`.
    - A (epoch, i) key seeds the augmentation from (seed, epoch, i), independent of the global RNG, of
      the worker and process count, and of prefetching: resumed runs replay the same augmentations.
    - Images that cannot be decoded are replaced by the next readable row (counted warning).
    - Boxes reaching outside the image are clipped, empty ones dropped (counted warning).
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        transform: Callable[[dict], dict] | None,
        seed: int = 0,
        label_field: str = "category",
        split: str = "train",
    ) -> None:
        self.dataset = dataset
        self.apply = make_transform_fn(transform, label_field=label_field)
        self.seed = int(seed)
        self.label_field = label_field
        self.split = split
        self.unreadable_images = 0
        self.fixed_boxes = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def _warn(self, count: int, message: str, *args: Any) -> None:
        if count <= _WARN_FIRST or count % 1000 == 0:
            logger.warning(message, *args)

    def _readable_row(self, index: int) -> tuple[int, dict]:
        for attempt in range(_MAX_SUBSTITUTIONS):
            candidate = (index + attempt) % len(self.dataset)
            try:
                row = self.dataset[candidate]
                image = row["image"]
                if hasattr(image, "load"):
                    image.load()
                return candidate, row
            except (OSError, ValueError, SyntaxError) as error:
                self.unreadable_images += 1
                self._warn(
                    self.unreadable_images,
                    "%s split: row %d has an unreadable image (%s); using the next row instead "
                    "(%d unreadable so far)",
                    self.split, candidate, error, self.unreadable_images,
                )
        raise RuntimeError(
            f"{self.split} split: {_MAX_SUBSTITUTIONS} consecutive rows from {index} have unreadable images"
        )

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        index, row = self._readable_row(int(index))
        image = row["image"]
        if isinstance(image, PIL.Image.Image):
            width, height = image.size
        else:  # a uint8 CHW tensor
            height, width = image.shape[-2:]
        objects, changed = _clip_objects(row["objects"], width, height, self.label_field)
        if changed:
            self.fixed_boxes += changed
            self._warn(
                self.fixed_boxes,
                "%s split: row %d (image_id %s) had %d boxes outside the image or empty; clipped/dropped "
                "(%d so far)",
                self.split, index, row.get("image_id"), changed, self.fixed_boxes,
            )
        batch = {"image": [image], "image_id": [row.get("image_id", index)], "objects": [objects]}
        if epoch is None:
            out = self.apply(batch)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + index)
                out = self.apply(batch)
        sample = {key: values[0] for key, values in out.items()}
        sample["index"] = index
        return sample

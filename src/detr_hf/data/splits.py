"""(train, validation) from one of the three sources the scripts accept: a COCO folder, `--dataset_name`, or
the built-in synthetic shapes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detr_hf.data.coco_folder import CocoFolder
from detr_hf.data.dataset_sources import load_dataset_splits
from detr_hf.data.synthetic import load_synthetic_splits

__all__ = ["load_detection_splits"]


def _image_dir_for(coco_dir: Path, annotation_file: Path) -> Path:
    """COCO layout guess: annotations/instances_train2017.json → <coco_dir>/train2017 (else coco_dir)."""
    stem = annotation_file.stem
    candidate = coco_dir / (stem.split("instances_", 1)[1] if "instances_" in stem else stem)
    return candidate if candidate.is_dir() else coco_dir


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
    *,
    train_val_split: float = 0.15,
    label_field: str = "category",
    label_names: Sequence[str] | None = None,
) -> tuple[Any, Any]:
    """(train, validation) in the cppe-5 schema, chosen by the arguments:

    - `coco_dir` (+ `train_annotations`, `val_annotations`, paths relative to it or absolute; images in the
      folder named after the json, e.g. instances_val2017.json → val2017/, else `coco_dir` itself): two lazy
      `CocoFolder`s (no image is opened before its row is read);
    - `dataset_name`: see `load_dataset_splits` (Hub id, save_to_disk folder, imagefolder; validation split
      or `train_val_split` of train; `label_names`);
    - neither: the built-in synthetic shapes (`num_train`/`num_validation` images of `image_size` px).
    """
    if coco_dir is not None:
        root = Path(coco_dir)
        if not root.is_dir():
            raise ValueError(f"--coco_dir {root} is not a folder")
        train_ann = root / (train_annotations or "annotations/instances_train2017.json")
        val_ann = root / (val_annotations or "annotations/instances_val2017.json")
        for path in (train_ann, val_ann):
            if not path.is_file():
                raise ValueError(f"COCO annotation file {path} does not exist (see --train_annotations/--val_annotations)")
        train = CocoFolder(_image_dir_for(root, train_ann), train_ann)
        val = CocoFolder(_image_dir_for(root, val_ann), val_ann)
        if (train.category_ids, train.class_names) != (val.category_ids, val.class_names):
            raise ValueError(
                f"{train_ann} and {val_ann} have different categories: "
                f"{dict(zip(train.category_ids, train.class_names))} vs {dict(zip(val.category_ids, val.class_names))}"
            )
        return train, val
    if dataset_name is not None:
        return load_dataset_splits(
            dataset_name,
            dataset_config,
            train_val_split=train_val_split,
            seed=seed,
            label_field=label_field,
            label_names=label_names,
        )
    synthetic = load_synthetic_splits(num_train, num_validation, image_size=image_size, seed=seed)
    return synthetic["train"], synthetic["validation"]

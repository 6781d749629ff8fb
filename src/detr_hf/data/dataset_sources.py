"""`--dataset_name` as it comes: a Hub id, a `save_to_disk` folder (DatasetDict or one split) or an imagefolder
with metadata.jsonl → (train, validation) in the cppe-5 schema with a ClassLabel category."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import datasets

from detr_hf.data.label_space import with_class_labels

__all__ = ["VALIDATION_SPLITS", "load_dataset_splits", "open_dataset"]

# Split names taken as the validation split, in this order; without one, train is split by `train_val_split`.
VALIDATION_SPLITS: tuple[str, ...] = ("validation", "val", "valid")


def open_dataset(name: str, config: str | None = None) -> datasets.DatasetDict:
    """The splits of a `save_to_disk` folder (a single saved split is named "train"), of a local folder
    `load_dataset` reads (e.g. an imagefolder with metadata.jsonl) or of a Hub dataset."""
    folder = Path(name)
    if folder.is_dir() and (folder / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(folder))
    if folder.is_dir() and (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
        return datasets.DatasetDict(train=datasets.load_from_disk(str(folder)))
    loaded = datasets.load_dataset(name, config)
    if isinstance(loaded, datasets.Dataset):
        return datasets.DatasetDict(train=loaded)
    return loaded


def _check_schema(dataset: datasets.Dataset, where: str, label_field: str) -> None:
    missing = [c for c in ("image", "objects") if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{where} lacks the column(s) {missing} (columns: {dataset.column_names}); expected the cppe-5 schema "
            f"image, image_id, width, height, objects{{bbox [x, y, w, h], {label_field}, area?, id?}}"
        )


def load_dataset_splits(
    name: str,
    config: str | None = None,
    *,
    train_val_split: float = 0.15,
    seed: int = 0,
    label_field: str = "category",
    label_names: Sequence[str] | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, validation) of `name` (see `open_dataset`). Validation is the "validation" (or "val",
    "valid") split; without one, a `train_val_split` fraction of "train" (seeded), as transformers' example
    does. Categories become a ClassLabel (names from the feature, `label_names`, or the distinct strings)."""
    if not 0.0 < train_val_split < 1.0:
        raise ValueError(f"--train_val_split must be in (0, 1), got {train_val_split}")
    if os.path.exists(name) and not os.path.isdir(name):
        raise ValueError(f"--dataset_name {name!r} is a file; give a Hub id, a save_to_disk folder or an imagefolder")
    splits = open_dataset(name, config)
    if "train" not in splits:
        raise ValueError(
            f"dataset {name!r} has no 'train' split (splits: {list(splits)}); name the training split 'train'"
        )
    train = splits["train"]
    _check_schema(train, f"dataset {name!r} split 'train'", label_field)
    val_name = next((s for s in VALIDATION_SPLITS if s in splits), None)
    if val_name is None:
        if len(train) < 2:
            raise ValueError(f"dataset {name!r}: 'train' has {len(train)} row(s), too few to split off a validation set")
        parts = train.train_test_split(test_size=train_val_split, seed=seed)
        train, val = parts["train"], parts["test"]
    else:
        val = splits[val_name]
        _check_schema(val, f"dataset {name!r} split {val_name!r}", label_field)
    train = with_class_labels(train, label_field, label_names)
    names = train.features["objects"][label_field].feature.names
    val = with_class_labels(val, label_field, names)
    return train, val

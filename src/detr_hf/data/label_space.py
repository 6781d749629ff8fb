"""A dataset's label space: class names, the dataset's own category id of each label, and category checks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import datasets

from detr_hf.data.coco_folder import CocoFolder, coco_category_ids

__all__ = ["category_ids_of", "check_categories", "class_names_of", "with_class_labels"]


def _label_feature(dataset: datasets.Dataset, label_field: str) -> Any:
    if "objects" not in dataset.features:
        raise ValueError(f"dataset has no 'objects' column (columns: {list(dataset.features)}); see the cppe-5 schema")
    feature = dataset.features["objects"]
    fields = feature if isinstance(feature, dict) else getattr(feature, "feature", {})
    if label_field not in fields or "bbox" not in fields:
        raise ValueError(
            f"objects must have 'bbox' and {label_field!r} (has {sorted(fields)}); see the cppe-5 schema"
        )
    inner = fields[label_field]
    return getattr(inner, "feature", inner)


def _categories(dataset: datasets.Dataset, label_field: str) -> Iterator[list]:
    for batch in dataset.select_columns(["objects"]).iter(batch_size=1000):
        for objects in batch["objects"]:
            yield list(objects[label_field])


def with_class_labels(
    dataset: datasets.Dataset, label_field: str = "category", label_names: Sequence[str] | None = None
) -> datasets.Dataset:
    """The dataset with `objects.<label_field>` as a ClassLabel: names from its ClassLabel feature, else from
    `label_names`, else (string categories) the sorted distinct strings, else (integer ids) class_0..class_max.
    `label_names` with a ClassLabel feature renames its classes (same count required)."""
    feature = _label_feature(dataset, label_field)
    if isinstance(feature, datasets.ClassLabel):
        if label_names is None or list(label_names) == list(feature.names):
            return dataset
        if len(label_names) != feature.num_classes:
            raise ValueError(
                f"--label_names gives {len(label_names)} names but the dataset's ClassLabel has "
                f"{feature.num_classes}: {feature.names}"
            )
        names = list(label_names)
    else:
        values = {v for cats in _categories(dataset, label_field) for v in cats}
        strings = {v for v in values if isinstance(v, str)}
        if strings and len(strings) != len(values):
            raise ValueError(f"objects.{label_field} mixes names and integer ids: {sorted(map(str, values))[:10]}")
        if label_names is not None:
            names = list(label_names)
            unknown = sorted(strings - set(names)) if strings else sorted(v for v in values if not 0 <= v < len(names))
            if unknown:
                raise ValueError(f"objects.{label_field} values {unknown[:10]} are not among --label_names {names}")
        elif strings:
            names = sorted(strings)
        else:
            names = [f"class_{i}" for i in range(max(values, default=-1) + 1)]
    if len(set(names)) != len(names):
        raise ValueError(f"label names must be unique, got {names}")
    features = dataset.features.copy()
    features["objects"][label_field] = datasets.List(datasets.ClassLabel(names=names))
    return dataset.cast(features)


def class_names_of(dataset: Any, label_field: str = "category") -> list[str]:
    """Class names of a `CocoFolder` or of the ClassLabel feature of `objects.<label_field>`, else
    class_0..class_{max id} (see `with_class_labels` for string categories)."""
    if isinstance(dataset, CocoFolder):
        return list(dataset.class_names)
    feature = _label_feature(dataset, label_field)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    largest = max((max(cats, default=-1) for cats in _categories(dataset, label_field)), default=-1)
    return [f"class_{i}" for i in range(largest + 1)]


def category_ids_of(dataset: Any, num_labels: int) -> list[int]:
    """The dataset's own category id of each label: COCO ids for COCO folders, else the label index itself."""
    try:
        return coco_category_ids(dataset)
    except ValueError:
        return list(range(num_labels))


def check_categories(dataset: Any, num_labels: int, split: str, label_field: str = "category") -> None:
    """ValueError naming the row and value if a category is outside 0..num_labels-1 (before any training).
    A `CocoFolder` was checked when its json was read."""
    if isinstance(dataset, CocoFolder):
        return
    for row, cats in enumerate(_categories(dataset, label_field)):
        bad = [c for c in cats if not isinstance(c, int) or not 0 <= c < num_labels]
        if bad:
            raise ValueError(
                f"{split} split, row {row}: objects.{label_field} {bad} outside the {num_labels} known classes "
                f"(0..{num_labels - 1}); fix the dataset or the label set"
            )

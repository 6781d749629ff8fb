"""Label spaces: ClassLabel names, --label_names, string categories, category ids, checks before training."""

from __future__ import annotations

import datasets
import pytest

from detr_hf.data import category_ids_of, check_categories, class_names_of, with_class_labels
from detr_hf.data.schema import detection_features
from helpers import CPPE5_NAMES, cppe5_rows


def _plain(string_categories: bool) -> datasets.Dataset:
    rows = [{k: v for k, v in row.items() if k != "image"} for row in cppe5_rows(4, 0, string_categories)]
    return datasets.Dataset.from_list(rows)


def test_class_label_names_and_renaming():
    data = datasets.Dataset.from_list(cppe5_rows(3, 0), features=detection_features(CPPE5_NAMES))
    assert with_class_labels(data) is data and class_names_of(data) == CPPE5_NAMES
    renamed = with_class_labels(data, label_names=list("abcde"))
    assert class_names_of(renamed) == list("abcde") and renamed["objects"] == data["objects"]
    with pytest.raises(ValueError, match="gives 2 names but the dataset's ClassLabel has 5"):
        with_class_labels(data, label_names=["a", "b"])
    assert category_ids_of(data, 5) == [0, 1, 2, 3, 4]


def test_string_and_integer_categories_become_class_labels():
    strings = with_class_labels(_plain(True))
    names = class_names_of(strings)
    assert names == sorted(names) and set(names) <= set(CPPE5_NAMES)
    original = cppe5_rows(4, 0, True)
    assert [[names[i] for i in row["category"]] for row in strings["objects"]] == [r["objects"]["category"] for r in original]
    integers = with_class_labels(_plain(False))
    largest = max(c for r in cppe5_rows(4, 0) for c in r["objects"]["category"])
    assert class_names_of(integers) == [f"class_{i}" for i in range(largest + 1)]


def test_mixed_categories_and_out_of_range_ids_fail_clearly():
    rows = [{"objects": {"bbox": [[0, 0, 1, 1], [0, 0, 2, 2]], "category": ["a", "b"]}},
            {"objects": {"bbox": [[0, 0, 1, 1]], "category": ["c"]}}]  # fmt: skip
    data = datasets.Dataset.from_list(rows)
    with pytest.raises(ValueError, match=r"values \['c'\] are not among --label_names \['a', 'b'\]"):
        with_class_labels(data, label_names=["a", "b"])
    with pytest.raises(ValueError, match=r"train split, row 0: objects.category \[4\] outside the 3 known classes"):
        check_categories(datasets.Dataset.from_list([{"objects": {"bbox": [[0, 0, 1, 1]], "category": [4]}}]), 3, "train")
    with pytest.raises(ValueError, match="objects must have 'bbox' and 'label'"):
        class_names_of(data, "label")

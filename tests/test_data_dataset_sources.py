"""`--dataset_name` as it comes: save_to_disk (DatasetDict or one split), imagefolder + metadata.jsonl, Hub id."""

from __future__ import annotations

import datasets
import pytest

from detr_hf.data import DetectionDataset, build_eval_transform, load_dataset_splits
from detr_hf.data.schema import detection_features
from helpers import CPPE5_NAMES, cppe5_rows, write_imagefolder


def _dataset(num_rows: int, seed: int) -> datasets.Dataset:
    return datasets.Dataset.from_list(cppe5_rows(num_rows, seed), features=detection_features(CPPE5_NAMES))


def test_save_to_disk_dataset_dict_keeps_its_validation_split(tmp_path):
    datasets.DatasetDict(train=_dataset(6, 0), validation=_dataset(3, 1)).save_to_disk(str(tmp_path / "dd"))
    train, val = load_dataset_splits(str(tmp_path / "dd"))
    assert (len(train), len(val)) == (6, 3)
    assert train.features["objects"]["category"].feature.names == CPPE5_NAMES


def test_single_split_save_to_disk_is_split_by_train_val_split(tmp_path):
    _dataset(20, 0).save_to_disk(str(tmp_path / "one"))
    train, val = load_dataset_splits(str(tmp_path / "one"), train_val_split=0.15, seed=3)
    assert (len(train), len(val)) == (17, 3)
    assert set(train["image_id"]).isdisjoint(val["image_id"])
    again, _ = load_dataset_splits(str(tmp_path / "one"), train_val_split=0.15, seed=3)
    assert again["image_id"] == train["image_id"]  # seeded
    train, val = load_dataset_splits(str(tmp_path / "one"), train_val_split=0.5)
    assert (len(train), len(val)) == (10, 10)


def test_imagefolder_with_string_categories_gets_their_names(tmp_path):
    folder = write_imagefolder(tmp_path / "imgs", {"train": cppe5_rows(5, 0, string_categories=True),
                                                   "validation": cppe5_rows(2, 1, string_categories=True)})  # fmt: skip
    train, val = load_dataset_splits(str(folder))
    names = train.features["objects"]["category"].feature.names
    assert names == sorted({c for row in cppe5_rows(5, 0, string_categories=True) for c in row["objects"]["category"]})
    first = cppe5_rows(5, 0, string_categories=True)[0]["objects"]["category"]
    assert [names[i] for i in train[0]["objects"]["category"]] == first
    assert val.features["objects"]["category"].feature.names == names
    sample = DetectionDataset(train, build_eval_transform(320, 480))[0]
    assert sample["labels"]["class_labels"].tolist() == [names.index(c) for c in first]


def test_label_names_name_integer_categories_of_an_imagefolder(tmp_path):
    folder = write_imagefolder(tmp_path / "imgs", {"train": cppe5_rows(6, 0)})
    train, val = load_dataset_splits(str(folder), label_names=CPPE5_NAMES, train_val_split=0.34)
    assert train.features["objects"]["category"].feature.names == CPPE5_NAMES
    assert (len(train), len(val)) == (3, 3)
    with pytest.raises(ValueError, match=r"values \[.*\] are not among --label_names \['a'\]"):
        load_dataset_splits(str(folder), label_names=["a"])


def test_a_hub_id_goes_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None):
        calls.append((name, config))
        return datasets.DatasetDict(train=_dataset(4, 0), test=_dataset(2, 1))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    train, val = load_dataset_splits("someone/cppe-5", "default", train_val_split=0.5)
    assert calls == [("someone/cppe-5", "default")]
    assert (len(train), len(val)) == (2, 2)  # no validation split: train is split, test stays unused


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ({"test": 3}, r"has no 'train' split \(splits: \['test'\]\)"),
        ({"train": 1}, "too few to split off a validation set"),
    ],
)
def test_datasets_without_a_usable_split_fail_clearly(tmp_path, splits, message):
    datasets.DatasetDict({k: _dataset(n, 0) for k, n in splits.items()}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=message):
        load_dataset_splits(str(tmp_path / "d"))


def test_wrong_schema_and_split_fraction_fail_clearly(tmp_path):
    datasets.Dataset.from_dict({"image_path": ["a.png"], "label": [1]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['image', 'objects'\]"):
        load_dataset_splits(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"--train_val_split must be in \(0, 1\), got 1.5"):
        load_dataset_splits(str(tmp_path / "bad"), train_val_split=1.5)

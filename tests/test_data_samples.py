"""DetectionDataset: samples carry label dicts (crowd left out, boxes clipped once), images as they come."""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest
import torch

from detr_hf.box_ops import denormalize_boxes
from detr_hf.data import (
    CocoFolder,
    DetectionDataset,
    build_eval_transform,
    build_train_transform,
    make_synthetic_dataset,
)
from detr_hf.data.pixels import image_tensor
from detr_hf.data.schema import detection_features
from detr_hf.data.transforms import transform_boxes
from helpers import make_coco_folder, textured_image


@pytest.fixture(scope="module")
def coco_val(tmp_path_factory):
    fixture = make_coco_folder(tmp_path_factory.mktemp("coco"), num_train=1, num_val=5)
    return fixture, CocoFolder(fixture.image_dir("val"), fixture.annotation_files["val"])


def test_coco_samples_are_label_dicts_without_crowd_regions(coco_val):
    fixture, folder = coco_val
    data = DetectionDataset(folder, build_eval_transform(400, 600), split="validation")
    assert data.category_ids == [1, 3, 7, 18] and data.class_names == ["person", "car", "train", "dog"]
    for index, img in enumerate(fixture.coco["val"]["images"]):
        sample = data[index]
        anns = [a for a in fixture.coco["val"]["annotations"] if a["image_id"] == img["id"] and not a["iscrowd"]]
        labels = sample["labels"]
        assert sample["image_id"] == img["id"] and sample["orig_size"] == [img["height"], img["width"]]
        assert labels["class_labels"].tolist() == [[1, 3, 7, 18].index(a["category_id"]) for a in anns]
        h, w = sample["image"].shape[-2:]
        assert min(h, w) == 400 or max(h, w) == 600
        assert labels["size"].tolist() == [h, w] and labels["orig_size"].tolist() == [img["height"], img["width"]]
        # Normalised boxes scaled back to the original image are the json's boxes (no clipping needed here).
        xyxy = denormalize_boxes(labels["boxes"].double(), labels["orig_size"])
        expected = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        expected[:, 2:] += expected[:, :2]
        torch.testing.assert_close(xyxy, expected, atol=1e-3, rtol=0)
    assert data.unreadable_images == 0


def test_exif_rotated_sample_is_upright(coco_val):
    fixture, folder = coco_val
    index = next(i for i, img in enumerate(fixture.coco["val"]["images"]) if img["file_name"] == fixture.rotated_file)
    img = fixture.coco["val"]["images"][index]
    sample = DetectionDataset(folder, None)[index]
    assert tuple(sample["image"].shape) == (3, img["height"], img["width"])


def test_out_of_image_boxes_are_clipped_once_and_counted(caplog):
    rows = make_synthetic_dataset(2, seed=0).to_list()
    rows[0]["objects"] = {"id": [1, 2, 3], "area": [1.0] * 3, "bbox": [[-10, -5, 30, 20], [70, 70, 5, 5], [3, 3, 10, 10]],
                          "category": [0, 1, 2]}  # fmt: skip
    ds = DetectionDataset(
        __import__("datasets").Dataset.from_list(rows, features=detection_features(["a", "b", "c"])), None
    )
    with caplog.at_level(logging.WARNING):
        sample = ds[0]
    assert ds.fixed_boxes == 2 and "outside the image" in caplog.text
    assert sample["labels"]["class_labels"].tolist() == [0, 2]
    xyxy = denormalize_boxes(sample["labels"]["boxes"], sample["labels"]["size"])
    torch.testing.assert_close(xyxy, torch.tensor([[0.0, 0.0, 20.0, 15.0], [3.0, 3.0, 13.0, 13.0]]))


def test_sixteen_bit_and_transparent_images_are_scaled_not_white(tmp_path):
    import datasets

    gray16 = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 13).astype(np.uint16)
    PIL.Image.fromarray(gray16).save(tmp_path / "deep.png")
    rgba = np.zeros((40, 50, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    PIL.Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    with PIL.Image.open(tmp_path / "deep.png") as check:
        assert check.mode.startswith("I")  # really 16-bit on disk
    objects = {"id": [1], "area": [4.0], "bbox": [[1.0, 1.0, 2.0, 2.0]], "category": [0]}
    rows = {"image": [str(tmp_path / "deep.png"), str(tmp_path / "alpha.png")], "image_id": [1, 2],
            "width": [50, 50], "height": [40, 40], "objects": [objects, objects]}  # fmt: skip
    ds = DetectionDataset(datasets.Dataset.from_dict(rows, features=detection_features(["a"])), None)
    deep = ds[0]["image"]
    assert deep.dtype == torch.float32 and deep.shape == (3, 40, 50)
    torch.testing.assert_close(deep[0], torch.from_numpy(gray16.astype(np.float32) / 65535))
    assert float(deep.max()) < 0.5  # not all-white
    alpha = ds[1]["image"]
    assert alpha.dtype == torch.uint8 and alpha[:, 0, 0].tolist() == [227, 127, 127]  # 200·128/255 + 255·127/255 over white


def test_an_unreadable_image_is_skipped_and_counted_when_read(tmp_path, caplog):
    fixture = make_coco_folder(tmp_path, num_train=1, num_val=3)
    broken = fixture.coco["val"]["images"][0]["file_name"]
    (fixture.image_dir("val") / broken).write_bytes(b"not a jpeg")
    data = DetectionDataset(CocoFolder(fixture.image_dir("val"), fixture.annotation_files["val"]), None)
    with caplog.at_level(logging.WARNING):
        sample = data[0]
    assert sample["index"] == 1 and data.unreadable_images == 1
    assert broken in caplog.text and "unreadable image" in caplog.text


def test_seeded_augmentation_replays(coco_val):
    _, folder = coco_val
    data = DetectionDataset(folder, build_train_transform((320, 352), 480, (200, 300), (300, 400)), seed=3)
    torch.manual_seed(0)
    first = data[(1, 2)]
    torch.manual_seed(123)
    again = data[(1, 2)]
    assert torch.equal(first["image"], again["image"])
    assert all(torch.equal(first["labels"][k], again["labels"][k]) for k in first["labels"])
    boxes = first["labels"]["boxes"]
    assert bool(((boxes >= 0) & (boxes <= 1)).all()) and bool((boxes[:, 2:] > 0).all())


class _ContiguousRows:
    """A folder whose rows carry the decoded image as a contiguous CHW copy: the plain computation."""

    def __init__(self, folder: CocoFolder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict:
        row = dict(self.folder[index])
        row["image"] = image_tensor(row["image"], "test").contiguous()
        return row


def test_the_uncopied_decoded_view_is_transformed_exactly_like_a_contiguous_copy(coco_val):
    # Samples skip the full-size HWC → CHW copy (the resize reads the channels-last view); the values must be
    # those of the plain computation, for the train and eval recipes, photos, EXIF-rotated and empty images.
    _, folder = coco_val
    assert not image_tensor(folder[0]["image"], "test").is_contiguous()
    for transform in (build_train_transform(), build_eval_transform()):
        fast = DetectionDataset(folder, transform, seed=3)
        plain = DetectionDataset(_ContiguousRows(folder), transform, seed=3)
        for index in range(len(folder)):
            got, expected = fast[(1, index)], plain[(1, index)]
            assert got["image"].is_contiguous() and got["image"].dtype == torch.uint8
            assert torch.equal(got["image"], expected["image"]), index
            for key, value in expected["labels"].items():
                assert torch.equal(got["labels"][key], value), (index, key)
    # Float images (16-bit scaled, float arrays) take the same path.
    floats = textured_image(300, 420, seed=1).astype(np.float32) / 255.0
    labels = torch.tensor([0, 2])
    for seed in range(4):
        torch.manual_seed(seed)
        got = transform_boxes(build_train_transform(), image_tensor(floats, "f"), [[5, 6, 80, 90], [100, 40, 200, 150]], labels)
        torch.manual_seed(seed)
        expected = transform_boxes(build_train_transform(), image_tensor(floats, "f").contiguous(), [[5, 6, 80, 90], [100, 40, 200, 150]], labels)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), seed

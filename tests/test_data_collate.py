"""DetectionCollator: pixels through the processor, the samples' label dicts passed on as they are."""

from __future__ import annotations

import torch

from detr_hf.data import DetectionCollator, DetectionDataset, build_eval_transform, make_synthetic_dataset
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor


def test_labels_pass_through_and_pixels_are_padded():
    data = DetectionDataset(make_synthetic_dataset(3, image_size=64, seed=1), build_eval_transform(64, 96))
    samples = [data[i] for i in range(3)]
    samples[1]["image"] = samples[1]["image"][:, :48, :40]  # another size: needs padding
    batch = DetectionCollator(DetrHfImageProcessor())(samples)
    assert all(label is sample["labels"] for label, sample in zip(batch["labels"], samples))
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    assert batch["pixel_mask"][1].sum() == 48 * 40
    assert batch["orig_size"].tolist() == [[64, 64]] * 3
    assert batch["image_id"] == [s["image_id"] for s in samples] and batch["index"] == [0, 1, 2]
    inputs_only = DetectionCollator(DetrHfImageProcessor(), model_inputs_only=True)(samples)
    assert set(inputs_only) == {"pixel_values", "pixel_mask", "labels"}


def test_pixels_equal_the_processors_own():
    data = DetectionDataset(make_synthetic_dataset(1, image_size=64, seed=2), None)
    batch = DetectionCollator(DetrHfImageProcessor())([data[0]])
    raw = make_synthetic_dataset(1, image_size=64, seed=2)[0]["image"]
    expected = DetrHfImageProcessor()(raw, do_resize=False, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch["pixel_values"], expected)

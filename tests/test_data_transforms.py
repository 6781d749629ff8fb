"""DETR augmentation (torchvision v2) and the cppe-5 row → (image, COCO target) mapping."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from detr_hf.data.synthetic import make_synthetic_dataset
from detr_hf.data.transforms import (
    RandomSizeCrop,
    build_eval_transform,
    build_train_transform,
    make_transform_fn,
    transform_example,
)

DEMO = dict(
    scales=(56, 60, 64, 68, 72), max_size=96, crop_size_range=(40, 64), crop_resize_scales=(48, 56, 64)
)


def _coordinate_image(height: int, width: int) -> torch.Tensor:
    """uint8 [3, H, W] whose channels 0/1 hold each pixel's x/y, so a crop reveals its offset."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)]).to(torch.uint8)


def test_eval_transform_is_a_fixed_shortest_side_resize():
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    boxes = [[4.0, 8.0, 20.0, 10.0], [30.0, 0.0, 30.0, 40.0]]
    pixels, out, labels = transform_example(build_eval_transform(size=60, max_size=80), image, boxes, [2, 0])
    # Short side 40 → 60 would make the long side 90 > 80, so the long side sets the scale: 80 / 60.
    assert tuple(pixels.shape) == (3, int(40 * 80 / 60), 80)
    scale = torch.tensor([80 / 60, 53 / 40, 80 / 60, 53 / 40])
    assert torch.allclose(out, torch.tensor(boxes) * scale)
    assert labels.tolist() == [2, 0]


def test_flip_moves_boxes_with_the_pixels():
    image = _coordinate_image(64, 64)
    flip_only = build_train_transform(scales=(64,), max_size=64, crop_size_range=None, flip_prob=1.0)
    pixels, out, _ = transform_example(flip_only, image, [[5.0, 7.0, 10.0, 20.0]], [1])
    assert torch.equal(pixels, image.flip(-1))
    assert out.tolist() == [[64 - 5.0 - 10.0, 7.0, 10.0, 20.0]]


def test_random_size_crop_shifts_clips_and_drops_boxes():
    torch.manual_seed(0)
    image = _coordinate_image(50, 70)
    boxes = [[0.0, 0.0, 70.0, 50.0], [10.0, 10.0, 5.0, 5.0], [60.0, 40.0, 10.0, 10.0]]
    crop = build_train_transform(
        scales=(1,), crop_size_range=(20, 30), crop_resize_scales=(50,), flip_prob=0.0
    )
    crop.transforms[1] = crop.transforms[1].transforms[1].transforms[1]  # keep only RandomSizeCrop
    assert isinstance(crop.transforms[1], RandomSizeCrop)
    seen_drop = False
    for _ in range(30):
        pixels, out, labels = transform_example(crop, image, boxes, [0, 1, 2])
        h, w = pixels.shape[-2:]
        assert 20 <= h <= 30 and 20 <= w <= 30
        left, top = int(pixels[0, 0, 0]), int(pixels[1, 0, 0])
        expected = []
        for (x, y, bw, bh), label in zip(boxes, [0, 1, 2]):
            x0, y0 = max(x - left, 0), max(y - top, 0)
            x1, y1 = min(x + bw - left, w), min(y + bh - top, h)
            if x1 - x0 >= 1 and y1 - y0 >= 1:
                expected.append((label, [x0, y0, x1 - x0, y1 - y0]))
        seen_drop |= len(expected) < 3
        assert labels.tolist() == [label for label, _ in expected]
        assert out.tolist() == [box for _, box in expected]
    assert seen_drop


def test_train_transform_respects_scales_and_keeps_boxes_inside():
    torch.manual_seed(1)
    ds = make_synthetic_dataset(16, seed=2)
    fn = make_transform_fn(build_train_transform(**DEMO))
    sizes = set()
    for _ in range(3):
        batch = fn(ds[:16])
        for pixels, target, size in zip(batch["image"], batch["target"], batch["size"]):
            assert pixels.dtype == torch.uint8 and list(pixels.shape[-2:]) == size
            h, w = size
            # The short side is one of the scales unless the long side hit max_size; torchvision truncates
            # sizes to int, so either may come out one pixel short.
            assert max(h, w) <= DEMO["max_size"]
            assert any(s - 1 <= min(h, w) <= s for s in DEMO["scales"]) or max(h, w) >= DEMO["max_size"] - 1
            sizes.add(tuple(size))
            for ann in target["annotations"]:
                x, y, bw, bh = ann["bbox"]
                assert x >= 0 and y >= 0 and x + bw <= w + 1e-4 and y + bh <= h + 1e-4
                assert bw >= 1 and bh >= 1
                assert ann["area"] == pytest.approx(bw * bh)
                assert ann["category_id"] in range(3) and ann["iscrowd"] == 0
    assert len(sizes) > 1


def test_transform_fn_rows_and_original_targets():
    ds = make_synthetic_dataset(4, seed=0)
    view = ds.with_transform(make_transform_fn(build_eval_transform(size=80, max_size=96)))
    row = view[1]
    original = ds[1]["objects"]
    assert row["orig_size"] == [64, 64] and row["size"] == [80, 80]
    assert row["target"]["image_id"] == row["orig_target"]["image_id"] == ds[1]["image_id"]
    orig_anns = row["orig_target"]["annotations"]
    assert [a["bbox"] for a in orig_anns] == original["bbox"]
    assert [a["category_id"] for a in orig_anns] == original["category"]
    assert [a["area"] for a in orig_anns] == original["area"]
    scaled = [v * 80 / 64 for a in orig_anns for v in a["bbox"]]
    assert [v for a in row["target"]["annotations"] for v in a["bbox"]] == pytest.approx(scaled)


def test_same_seed_same_augmentation():
    ds = make_synthetic_dataset(6, seed=4)
    fn = make_transform_fn(build_train_transform(**DEMO))
    torch.manual_seed(5)
    first = fn(ds[:6])
    torch.manual_seed(5)
    second = fn(ds[:6])
    assert first["target"] == second["target"]
    assert all(torch.equal(a, b) for a, b in zip(first["image"], second["image"]))


def test_empty_rows_and_non_rgb_images_pass_through():
    gray = Image.new("L", (30, 20), color=7)
    batch = {
        "image": [gray],
        "image_id": [9],
        "objects": [{"id": [], "area": [], "bbox": [], "category": []}],
    }
    out = make_transform_fn(build_eval_transform(size=20, max_size=40))(batch)
    assert tuple(out["image"][0].shape) == (3, 20, 30)
    assert out["target"] == [{"image_id": 9, "annotations": []}]
    assert out["orig_size"] == [[20, 30]]


def test_output_feeds_an_image_processor_without_resizing():
    from transformers import DetrImageProcessor

    ds = make_synthetic_dataset(2, seed=0)
    batch = make_transform_fn(build_eval_transform(size=72, max_size=96))(ds[:2])
    encoded = DetrImageProcessor().preprocess(
        batch["image"], annotations=batch["target"], do_resize=False, return_tensors="pt"
    )
    for labels, target, size in zip(encoded["labels"], batch["target"], batch["size"]):
        h, w = size
        xywh = torch.tensor([a["bbox"] for a in target["annotations"]])
        cxcywh = torch.cat([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], 1) / torch.tensor([w, h, w, h])
        assert torch.allclose(labels["boxes"], cxcywh, atol=1e-6)
        assert labels["class_labels"].tolist() == [a["category_id"] for a in target["annotations"]]


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        ({"bbox": [[1.0, 2.0, 3.0]], "category": [0]}, r"image_id 3 \(batch row 0\).*bbox"),
        ({"bbox": [[1.0, 2.0, 3.0, 4.0]], "category": [0, 1]}, "1 boxes but 2 categories"),
        ({"bbox": [[1.0, 2.0, 3.0, 4.0]], "label": [0]}, "no field 'category'"),
    ],
)
def test_bad_rows_name_the_image(objects, message):
    batch = {"image": [Image.new("RGB", (16, 16))], "image_id": [3], "objects": [objects]}
    with pytest.raises(ValueError, match=message):
        make_transform_fn(None)(batch)


def test_bad_crop_range():
    with pytest.raises(ValueError, match="min_size <= max_size"):
        RandomSizeCrop(30, 20)


def test_transparent_images_are_composited_on_white_like_the_processor():
    import numpy as np
    from PIL import Image

    from detr_hf import DetrHfImageProcessor
    from detr_hf.data.transforms import build_eval_transform, transform_example

    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 64  # mostly transparent red
    image = Image.fromarray(rgba, "RGBA")
    tensor, _, _ = transform_example(build_eval_transform(16, 16), image, [[2, 2, 4, 4]], [0])
    processor = DetrHfImageProcessor(do_resize=False, do_normalize=False, do_pad=False)
    expected = processor(image, return_tensors="pt")["pixel_values"][0] * 255
    assert (tensor.float() - expected).abs().max() <= 1.0
    assert tensor[1].float().mean() > 150  # green comes from the white background, not dropped alpha

"""The built-in synthetic shapes dataset: schema, determinism, boxes that bound the drawn pixels."""

from __future__ import annotations

import numpy as np
import pytest

from detr_hf.data.synthetic import (
    SHAPE_NAMES,
    load_synthetic_splits,
    make_synthetic_dataset,
    render_synthetic_example,
)


def test_schema_and_counts():
    ds = make_synthetic_dataset(30, image_size=64, seed=3)
    assert len(ds) == 30
    assert set(ds.column_names) == {"image", "image_id", "width", "height", "objects"}
    assert ds.features["objects"]["category"].feature.names == list(SHAPE_NAMES)
    ids = [i for objects in ds["objects"] for i in objects["id"]]
    assert len(ids) == len(set(ids))
    for row in ds:
        assert row["image"].size == (64, 64) and row["image"].mode == "RGB"
        assert (row["width"], row["height"]) == (64, 64)
        objects = row["objects"]
        assert 1 <= len(objects["bbox"]) <= 3
        for (x, y, w, h), area, category in zip(objects["bbox"], objects["area"], objects["category"]):
            assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
            assert 8 <= max(w, h) <= 32
            assert area == pytest.approx(w * h)
            assert category in range(3)


def test_deterministic_by_seed_and_prefix_stable():
    a = make_synthetic_dataset(12, seed=7)
    b = make_synthetic_dataset(20, seed=7)
    c = make_synthetic_dataset(12, seed=8)
    for i in range(12):
        assert np.array_equal(np.asarray(a[i]["image"]), np.asarray(b[i]["image"]))
        assert a[i]["objects"]["bbox"] == b[i]["objects"]["bbox"]
    assert any(a[i]["objects"]["bbox"] != c[i]["objects"]["bbox"] for i in range(12))


def test_boxes_exactly_bound_the_drawn_shapes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        example = render_synthetic_example(rng, image_size=64)
        for (x, y, w, h), mask in zip(example.bboxes, example.masks):
            rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
            assert [x, y, w, h] == [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]
            # Every drawn pixel shows one flat colour (objects never overlap) and the box edges touch it.
            drawn = example.image[mask]
            assert (drawn == drawn[0]).all()
        union = np.sum(example.masks, axis=0) if example.masks else np.zeros((64, 64))
        assert union.max(initial=0) <= 1


def test_stored_image_is_the_rendered_one():
    ds = make_synthetic_dataset(3, seed=5)
    for i in range(3):
        example = render_synthetic_example(np.random.default_rng([5, i]))
        assert np.array_equal(np.asarray(ds[i]["image"]), example.image)  # PNG: lossless


def test_configurable_size_counts_and_classes():
    ds = make_synthetic_dataset(
        10, image_size=96, num_objects_range=(2, 2), side_range=(10, 12), shape_names=("circle", "square")
    )
    assert ds[0]["image"].size == (96, 96)
    assert ds.features["objects"]["category"].feature.names == ["circle", "square"]
    assert all(len(o["bbox"]) == 2 for o in ds["objects"])
    assert all(10 <= max(b[2], b[3]) <= 12 for o in ds["objects"] for b in o["bbox"])


def test_splits_are_disjoint():
    splits = load_synthetic_splits(num_train=8, num_validation=4, seed=1)
    assert (len(splits["train"]), len(splits["validation"])) == (8, 4)
    assert set(splits["train"]["image_id"]).isdisjoint(splits["validation"]["image_id"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_images": -1}, "num_images"),
        ({"num_images": 2, "side_range": (40, 80), "image_size": 32}, "side_range"),
        ({"num_images": 2, "num_objects_range": (3, 1)}, "num_objects_range"),
        ({"num_images": 2, "shape_names": ("hexagon",)}, "hexagon"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_dataset(**kwargs)

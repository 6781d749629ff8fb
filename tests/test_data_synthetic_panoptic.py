"""The built-in synthetic panoptic dataset: COCO panoptic files, deterministic by seed, readable by the processor."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from detr_hf import DetrHfImageProcessor
from detr_hf.data.synthetic_panoptic import (
    STUFF_NAMES,
    SYNTHETIC_PANOPTIC_CATEGORIES,
    render_synthetic_panoptic_example,
    write_synthetic_panoptic,
    write_synthetic_panoptic_splits,
)
from detr_hf.panoptic_annotations import rgb_to_id
from detr_hf.panoptic_quality import compute_panoptic_quality, reference_from_coco_panoptic


def read_split(paths):
    return json.loads(paths["annotation_file"].read_text())


def test_files_are_coco_panoptic_and_consistent(tmp_path):
    paths = write_synthetic_panoptic(tmp_path, 6, image_size=(480, 640), seed=3, num_things_range=(10, 25))
    document = read_split(paths)
    assert [c["isthing"] for c in document["categories"]] == [1, 1, 1, 0, 0, 0]
    things = {c["id"] for c in SYNTHETIC_PANOPTIC_CATEGORIES if c["isthing"]}
    stuff_ids = {c["id"] for c in SYNTHETIC_PANOPTIC_CATEGORIES if not c["isthing"]}
    assert len(document["images"]) == len(document["annotations"]) == 6
    total_things = 0
    for image_info, record in zip(document["images"], document["annotations"]):
        assert image_info["id"] == record["image_id"] and (image_info["height"], image_info["width"]) == (
            480,
            640,
        )
        image = np.asarray(PIL.Image.open(paths["images"] / image_info["file_name"]))
        assert image.shape == (480, 640, 3)
        ids = rgb_to_id(np.asarray(PIL.Image.open(paths["masks"] / record["file_name"]).convert("RGB")))
        assert set(np.unique(ids).tolist()) == {s["id"] for s in record["segments_info"]}  # no void pixel
        for segment in record["segments_info"]:
            mask = ids == segment["id"]
            assert segment["area"] == mask.sum()
            ys, xs = np.nonzero(mask)
            assert segment["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        categories = [s["category_id"] for s in record["segments_info"]]
        assert 2 <= sum(c in stuff_ids for c in categories) <= len(STUFF_NAMES)
        assert len(set(c for c in categories if c in stuff_ids)) == sum(c in stuff_ids for c in categories)
        total_things += sum(c in things for c in categories)
    assert total_things >= 50


def test_deterministic_by_seed_and_prefix_stable(tmp_path):
    a = write_synthetic_panoptic(tmp_path / "a", 4, seed=7)
    b = write_synthetic_panoptic(tmp_path / "b", 4, seed=7)
    c = write_synthetic_panoptic(tmp_path / "c", 2, seed=8)
    prefix = write_synthetic_panoptic(tmp_path / "p", 2, seed=7)
    for name in ("000000000000.png", "000000000003.png"):
        assert (a["images"] / name).read_bytes() == (b["images"] / name).read_bytes()
        assert (a["masks"] / name).read_bytes() == (b["masks"] / name).read_bytes()
    assert a["annotation_file"].read_text() == b["annotation_file"].read_text()
    assert (a["images"] / "000000000000.png").read_bytes() != (c["images"] / "000000000000.png").read_bytes()
    assert read_split(prefix)["annotations"] == read_split(a)["annotations"][:2]


def test_splits_are_disjoint_and_processor_reads_them(tmp_path):
    splits = write_synthetic_panoptic_splits(tmp_path, 5, 3, image_size=(300, 400), seed=1)
    train, validation = read_split(splits["train"]), read_split(splits["validation"])
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in validation["images"]}
    assert splits["validation"]["masks"].name == "panoptic_validation"
    images = [PIL.Image.open(splits["validation"]["images"] / i["file_name"]) for i in validation["images"]]
    mapping = {c["id"]: k for k, c in enumerate(SYNTHETIC_PANOPTIC_CATEGORIES)}
    batch = DetrHfImageProcessor(
        size={"shortest_edge": 320, "longest_edge": 480}, category_id_to_label=mapping
    )(
        images,
        annotations=validation["annotations"],
        format="coco_panoptic",
        masks_path=splits["validation"]["masks"],
    )
    for labels, record in zip(batch["labels"], validation["annotations"]):
        assert labels["masks"].shape[0] == len(record["segments_info"])
        # Every pixel of the resized image belongs to exactly one segment.
        height, width = labels["size"].tolist()
        assert (labels["masks"][:, :height, :width].sum(0) == 1).all()
        assert labels["class_labels"].tolist() == [mapping[s["category_id"]] for s in record["segments_info"]]


def test_ground_truth_scores_perfect_pq(tmp_path):
    paths = write_synthetic_panoptic(tmp_path, 3, image_size=(320, 480), seed=2)
    document = read_split(paths)
    references = [reference_from_coco_panoptic(r, paths["masks"]) for r in document["annotations"]]
    predictions = [
        {
            "segmentation": r["segmentation"],
            "segments_info": [{"id": s["id"], "label_id": s["category_id"]} for s in r["segments_info"]],
        }
        for r in references
    ]
    result = compute_panoptic_quality(predictions, references, categories=document["categories"])
    assert result["PQ"] == result["PQ_th"] == result["PQ_st"] == 1.0


def test_hidden_shapes_are_dropped():
    example = render_synthetic_panoptic_example(np.random.default_rng(0), 64, 64, (40, 40), (30, 40))
    assert len(example.segments_info) < 40 + 3
    assert {s["id"] for s in example.segments_info} == set(np.unique(example.segment_ids).tolist())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"side_range": (0, 10)}, "side_range"),
        ({"num_things_range": (3, 1)}, "num_things_range"),
        ({"height": 4}, "at least 8x8"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render_synthetic_panoptic_example(np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match="num_images"):
        write_synthetic_panoptic("/nonexistent", -1)

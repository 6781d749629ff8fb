"""COCO folders: lazy start-up, category mapping, empty images, crowd regions, EXIF, corrupt files, clear errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from detr_hf.data.coco_folder import CocoFolder, coco_category_ids, load_coco_folder
from helpers import make_coco_folder


def _write_folder(tmp_path, annotations, extra_images=(), categories=None):
    """Three good 40×30 PNGs (ids 1-3) plus `extra_images` [(id, file_name, bytes|None)]."""
    images = []
    for image_id in (1, 2, 3):
        name = f"img{image_id}.png"
        Image.fromarray(np.full((30, 40, 3), image_id * 40, dtype=np.uint8)).save(tmp_path / name)
        images.append({"id": image_id, "file_name": name, "width": 40, "height": 30})
    for image_id, name, data in extra_images:
        if data is not None:
            (tmp_path / name).write_bytes(data)
        images.append({"id": image_id, "file_name": name, "width": 40, "height": 30})
    categories = categories or [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 90, "name": "cow"}]
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _ann(ann_id, image_id, bbox, category_id=7, **extra):
    return {
        "id": ann_id,
        "image_id": image_id,
        "bbox": bbox,
        "category_id": category_id,
        "area": 11.0,
        **extra,
    }


def test_categories_map_to_contiguous_labels_and_empty_images_stay(tmp_path):
    anns = [_ann(1, 1, [1, 2, 10, 5], 90), _ann(2, 1, [20, 10, 4, 4], 3), _ann(3, 2, [0, 0, 40, 30], 7)]
    ds = load_coco_folder(tmp_path, _write_folder(tmp_path, anns))
    names = ds.features["objects"]["category"].feature.names
    assert names == ["dog", "cat", "cow"]  # ascending COCO id: 3, 7, 90
    assert coco_category_ids(ds) == [3, 7, 90]
    rows = {row["image_id"]: row for row in ds}
    assert sorted(rows) == [1, 2, 3]
    assert rows[1]["objects"]["category"] == [2, 0]
    assert rows[1]["objects"]["bbox"] == [[1, 2, 10, 5], [20, 10, 4, 4]]
    assert rows[1]["objects"]["area"] == [11.0, 11.0]  # the json's own areas when nothing was clipped
    assert rows[1]["objects"]["id"] == [1, 2]
    assert rows[3]["objects"] == {"id": [], "area": [], "bbox": [], "category": [], "iscrowd": []}
    assert (rows[2]["width"], rows[2]["height"]) == (40, 30)
    assert rows[2]["image"].size == (40, 30)
    assert np.asarray(rows[2]["image"])[0, 0].tolist() == [80, 80, 80]


def test_boxes_areas_and_crowd_regions_are_the_jsons_own(tmp_path):
    """The folder keeps what the json says (clipping is the training transforms' job, crowd regions are
    evaluation ground truth)."""
    anns = [_ann(1, 1, [-5, -5, 15, 10]), _ann(5, 2, [5, 5, 3, 3], iscrowd=1)]
    folder = CocoFolder(tmp_path, _write_folder(tmp_path, anns))
    assert folder.objects(0) == {"id": [1], "area": [11.0], "bbox": [[-5.0, -5.0, 15.0, 10.0]], "category": [1], "iscrowd": [0]}
    assert folder.objects(1)["iscrowd"] == [1]
    assert folder.coco["annotations"] == anns


def test_start_up_opens_no_image_and_a_bad_file_fails_when_read(tmp_path):
    """Files need not exist (or be valid) until their row is read; then the error names the file."""
    anns = [_ann(1, 1, [1, 1, 5, 5])]
    path = _write_folder(tmp_path, anns, extra_images=[(10, "gone.png", None), (11, "junk.png", b"junk")])
    (tmp_path / "img1.png").unlink()
    folder = CocoFolder(tmp_path, path)
    assert len(folder) == 5 and folder.objects(0)["bbox"] == [[1.0, 1.0, 5.0, 5.0]]
    for index, name in ((0, "img1.png"), (3, "gone.png"), (4, "junk.png")):
        with pytest.raises(OSError, match=name):
            folder[index]
    assert folder[1]["image"].size == (40, 30)


def test_image_of_another_size_than_the_json_fails_when_read(tmp_path):
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    folder = CocoFolder(tmp_path, _write_folder(tmp_path, [], extra_images=[(20, "small.png", None)]))
    with pytest.raises(ValueError, match="small.png: the json says 40x30 but the upright image is 10x10"):
        folder[3]


def test_exif_rotated_photo_is_read_upright_in_the_jsons_frame(tmp_path):
    fixture = make_coco_folder(tmp_path, num_train=1, num_val=3)
    folder = CocoFolder(fixture.image_dir("val"), fixture.annotation_files["val"])
    index = next(i for i, img in enumerate(fixture.coco["val"]["images"]) if img["file_name"] == fixture.rotated_file)
    img = fixture.coco["val"]["images"][index]
    with Image.open(folder.path(index)) as raw:
        assert raw.size == (img["height"], img["width"])  # stored sideways
    row = folder[index]
    assert row["image"].size == (img["width"], img["height"]) == (row["width"], row["height"])
    # The brightest object of the upright drawing sits where its box says, not where the raw pixels are.
    x, y, w, h = (int(v) for v in row["objects"]["bbox"][-1])
    pixels = np.asarray(row["image"].convert("RGB")).astype(float)
    assert pixels[y + h // 2, x + w // 2].min() > 110


def test_categories_and_crowd_flags_of_the_realistic_fixture(tmp_path):
    fixture = make_coco_folder(tmp_path, num_train=1, num_val=4)
    folder = CocoFolder(fixture.image_dir("val"), fixture.annotation_files["val"])
    assert folder.category_ids == coco_category_ids(folder) == [1, 3, 7, 18]
    assert folder.class_names == ["person", "car", "train", "dog"]
    crowd = sum(sum(folder.objects(i)["iscrowd"]) for i in range(len(folder)))
    assert crowd == sum(a["iscrowd"] for a in fixture.coco["val"]["annotations"]) > 0
    empty = next(i for i, img in enumerate(fixture.coco["val"]["images"]) if img["id"] == fixture.empty_image_id)
    assert folder.objects(empty)["bbox"] == []


def test_corrupt_truncated_and_missing_images_skipped_with_one_warning(tmp_path, caplog):
    good = tmp_path / "probe.png"
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(good)
    png = good.read_bytes()
    extra = [
        (10, "garbage.png", b"not an image at all"),
        (11, "truncated.png", png[: len(png) // 2]),
        (12, "gone.png", None),
    ]
    anns = [_ann(1, 10, [1, 1, 5, 5]), _ann(2, 2, [1, 1, 5, 5])]
    with caplog.at_level(logging.WARNING, logger="detr_hf.data.coco_folder"):
        ds = load_coco_folder(tmp_path, _write_folder(tmp_path, anns, extra_images=extra))
    assert sorted(ds["image_id"]) == [1, 2, 3]
    image_warnings = [r.getMessage() for r in caplog.records if "images" in r.getMessage()]
    assert len(image_warnings) == 1 and "skipped 3 of 6 images" in image_warnings[0]
    # Every kept row decodes: nothing corrupt is left for the training loop.
    assert all(row["image"].size == (40, 30) for row in ds)


def test_image_size_disagreeing_with_json_is_skipped_by_the_eager_loader(tmp_path):
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    ds = load_coco_folder(tmp_path, _write_folder(tmp_path, [], extra_images=[(20, "small.png", None)]))
    assert 20 not in ds["image_id"]


def test_unknown_category_names_the_annotation(tmp_path):
    path = _write_folder(tmp_path, [_ann(1, 1, [1, 1, 5, 5]), _ann(42, 2, [1, 1, 5, 5], category_id=5)])
    with pytest.raises(ValueError, match="annotation id 42 has category_id 5"):
        load_coco_folder(tmp_path, path)


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (_ann(8, 99, [1, 1, 5, 5]), "annotation id 8 names unknown image_id 99"),
        (_ann(9, 1, [1, 1, 5]), "annotation id 9 has bbox"),
        (_ann(10, 1, [1, 1, "5", 5]), "annotation id 10 has bbox"),
        (_ann(12, 1, None), "annotation id 12 has bbox None"),
        ({"id": 11, "image_id": 1, "bbox": [1, 1, 5, 5]}, "annotation id 11 has category_id None"),
        ([1, 1, 5, 5], r"annotations\[1\] is a list, not a json object"),
    ],
)
def test_malformed_annotations_name_the_id(tmp_path, annotation, message):
    """The list-wide checks find the problem, the per-annotation check names it (after a good annotation)."""
    with pytest.raises(ValueError, match=message):
        load_coco_folder(tmp_path, _write_folder(tmp_path, [_ann(1, 2, [1, 1, 5, 5]), annotation]))


def test_annotations_grouped_by_image_in_json_order_and_nan_literals_read(tmp_path):
    anns = [_ann(5, 2, [1, 1, 5, 5]), _ann(3, 1, [2, 2, 5, 5]), _ann(9, 2, [3, 3, 5, 5]), _ann(1, 1, [4, 4, 5, 5])]
    path = _write_folder(tmp_path, anns)
    path.write_text(path.read_text().replace('"area": 11.0}', '"area": NaN}', 1))  # json.dumps writes NaN so
    folder = CocoFolder(tmp_path, path)
    assert [folder.objects(row)["id"] for row in range(3)] == [[3, 1], [5, 9], []]
    assert np.isnan(folder.objects(1)["area"][0]) and folder.coco["annotations"][1]["id"] == 3


def test_repeated_image_ids_are_named(tmp_path):
    path = _write_folder(tmp_path, [], extra_images=[(2, "again.png", None)])
    with pytest.raises(ValueError, match=r"repeated image ids, e.g. \[2\]"):
        CocoFolder(tmp_path, path)


def test_duplicate_category_names_rejected(tmp_path):
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]
    with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
        load_coco_folder(tmp_path, _write_folder(tmp_path, [], categories=cats))


def test_loaded_folder_goes_through_the_transforms(tmp_path):
    from detr_hf.data.transforms import build_eval_transform, make_transform_fn

    ds = load_coco_folder(tmp_path, _write_folder(tmp_path, [_ann(1, 1, [4, 2, 8, 6], 90), _ann(2, 1, [30, 20, 20, 20], 3)]))
    view = ds.with_transform(make_transform_fn(build_eval_transform(size=60, max_size=80)))
    row = next(r for r in view if r["target"]["image_id"] == 1)
    assert row["orig_size"] == [30, 40] and row["size"] == [60, 80]
    assert row["target"]["annotations"][0]["bbox"] == [8.0, 4.0, 16.0, 12.0]
    assert row["target"]["annotations"][0]["category_id"] == 2
    assert row["target"]["annotations"][1]["bbox"] == [60.0, 40.0, 20.0, 20.0]  # clipped by the transform

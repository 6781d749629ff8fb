"""COCO panoptic PNGs and polygon / RLE segmentations → labels with masks, through the processor."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from pycocotools import mask as coco_mask
from transformers import DetrImageProcessor

from detr_hf import DetrHfImageProcessor
from detr_hf.panoptic_annotations import id_to_rgb, masks_to_xywh, rgb_to_id

HEIGHT, WIDTH = 480, 640
STUFF = {101: "sky", 105: "wall", 190: "ground"}  # non-contiguous COCO-like category ids
THINGS = (3, 7, 18, 44)


def panoptic_fixture(tmp_path, seed: int = 0, height: int = HEIGHT, width: int = WIDTH):
    """Three stuff bands, ~20 rectangles / discs of thing classes (some overlapping, one crowd), void holes."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((height, width), dtype=np.int64)
    segments = []
    bands = np.linspace(0, height, len(STUFF) + 1).astype(int)
    for k, category in enumerate(STUFF):
        segment_id = int(rng.integers(1, 256**3))
        ids[bands[k] : bands[k + 1]] = segment_id
        segments.append({"id": segment_id, "category_id": category, "iscrowd": 0})
    ys, xs = np.mgrid[:height, :width]
    for j in range(20):
        segment_id = int(rng.integers(1, 256**3))
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        radius = int(rng.integers(8, 60))
        shape = (
            (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
            if j % 2
            else ((abs(ys - cy) <= radius) & (abs(xs - cx) <= radius * 1.5))
        )
        ids[shape] = segment_id
        segments.append({"id": segment_id, "category_id": int(rng.choice(THINGS)), "iscrowd": int(j == 5)})
    ids[10:30, 10:50] = 0  # void
    present = set(np.unique(ids).tolist())
    segments = [s for s in segments if s["id"] in present]  # fully covered segments vanish
    for s in segments:
        s["area"] = int((ids == s["id"]).sum())
    PIL.Image.fromarray(id_to_rgb(ids)).save(tmp_path / f"{seed}.png")
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    record = {"image_id": 40 + seed, "file_name": f"{seed}.png", "segments_info": segments}
    return image, record, ids


def test_rgb_id_round_trip():
    ids = np.random.default_rng(0).integers(0, 256**3, (7, 9))
    assert np.array_equal(rgb_to_id(id_to_rgb(ids)), ids)
    assert rgb_to_id(np.array([1, 2, 3], dtype=np.uint8)) == 1 + 2 * 256 + 3 * 65536
    with pytest.raises(ValueError, match="256"):
        id_to_rgb(np.array([-1]))


def test_masks_to_xywh_pixel_edges():
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[0, 2:5, 7:9] = True
    masks[1, 19, 29] = True
    assert masks_to_xywh(masks).tolist() == [[7, 2, 2, 3], [29, 19, 1, 1], [0, 0, 0, 0]]


def test_panoptic_labels_masks_boxes_and_padding(tmp_path):
    image, record, ids = panoptic_fixture(tmp_path)
    small, _, _ = panoptic_fixture(tmp_path, seed=1, height=300, width=333)
    small_record = panoptic_fixture(tmp_path, seed=1, height=300, width=333)[1]
    processor = DetrHfImageProcessor(size={"shortest_edge": 400, "longest_edge": 700})
    batch = processor(
        [image, small], annotations=[record, small_record], format="coco_panoptic", masks_path=tmp_path
    )
    padded = tuple(batch["pixel_values"].shape[-2:])
    labels = batch["labels"][0]
    kept = [s for s in record["segments_info"] if not s["iscrowd"]]
    assert len(kept) >= 15 and len(kept) < len(record["segments_info"])  # the crowd segment is dropped
    assert labels["class_labels"].tolist() == [s["category_id"] for s in kept]
    assert labels["masks"].dtype == torch.bool and labels["masks"].shape == (len(kept), *padded)
    new_h, new_w = labels["size"].tolist()
    assert (new_h, new_w) == (400, 533)
    assert not labels["masks"][:, new_h:].any() and not labels["masks"][:, :, new_w:].any()
    # Masks are the PNG's segments resized nearest with the image.
    for mask, segment in zip(labels["masks"], kept):
        original = torch.from_numpy(ids == segment["id"])[None, None].float()
        expected = torch.nn.functional.interpolate(original, size=(new_h, new_w), mode="nearest")[0, 0].bool()
        assert torch.equal(mask[:new_h, :new_w], expected)
    # Boxes bound the segment at the original size, normalised by the image's own resized size.
    for box, segment in zip(labels["boxes"], kept):
        rows, cols = (
            np.nonzero((ids == segment["id"]).any(1))[0],
            np.nonzero((ids == segment["id"]).any(0))[0],
        )
        x0, x1, y0, y1 = cols[0] / WIDTH, (cols[-1] + 1) / WIDTH, rows[0] / HEIGHT, (rows[-1] + 1) / HEIGHT
        expected = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dtype=torch.float32)
        torch.testing.assert_close(box, expected, atol=1e-6, rtol=0)
    scale = new_h * new_w / (HEIGHT * WIDTH)
    torch.testing.assert_close(
        labels["area"], torch.tensor([s["area"] * scale for s in kept]), rtol=1e-5, atol=0
    )
    assert batch["labels"][1]["masks"].shape[-2:] == padded

    with_crowd = processor(
        image, annotations=record, format="coco_panoptic", masks_path=tmp_path, keep_crowd_annotations=True
    )["labels"][0]
    assert with_crowd["iscrowd"].tolist() == [s["iscrowd"] for s in record["segments_info"]]


def test_panoptic_masks_match_transformers_at_original_size(tmp_path):
    image, record, _ = panoptic_fixture(tmp_path, seed=2)
    ours = DetrHfImageProcessor(do_resize=False)(
        image, annotations=record, format="coco_panoptic", masks_path=tmp_path, keep_crowd_annotations=True
    )["labels"][0]
    theirs = DetrImageProcessor(do_resize=False, format="coco_panoptic")(
        image, annotations=record, masks_path=tmp_path, return_tensors="pt"
    )["labels"][0]
    assert torch.equal(ours["masks"], theirs["masks"].bool())
    assert torch.equal(ours["class_labels"], theirs["class_labels"])
    assert torch.equal(ours["iscrowd"], theirs["iscrowd"])


def test_panoptic_category_mapping(tmp_path):
    image, record, _ = panoptic_fixture(tmp_path, seed=3)
    mapping = {c: k for k, c in enumerate([*THINGS, *STUFF])}
    labels = DetrHfImageProcessor(category_id_to_label=mapping)(
        image, annotations=record, format="coco_panoptic", masks_path=tmp_path
    )["labels"][0]
    assert labels["class_labels"].tolist() == [
        mapping[s["category_id"]] for s in record["segments_info"] if not s["iscrowd"]
    ]


def test_panoptic_bad_inputs_name_the_image(tmp_path):
    image, record, _ = panoptic_fixture(tmp_path, seed=4)
    processor = DetrHfImageProcessor(size={"shortest_edge": 300, "longest_edge": 500})

    def run(annotation, img=image):
        processor(img, annotations=annotation, format="coco_panoptic", masks_path=tmp_path)

    extra = {**record, "segments_info": [*record["segments_info"], {"id": 5, "category_id": 3}]}
    with pytest.raises(
        ValueError, match=r"image_id=44.*do not match segments_info.*listed but not in the PNG \[5\]"
    ):
        run(extra)
    fewer = {**record, "segments_info": record["segments_info"][1:]}
    unlisted = record["segments_info"][0]["id"]
    with pytest.raises(ValueError, match=rf"image_id=44.*in the PNG but not listed \[{unlisted}\]"):
        run(fewer)
    with pytest.raises(FileNotFoundError, match=r"image_id=44.*missing\.png"):
        run({**record, "file_name": "missing.png"})
    with pytest.raises(ValueError, match=r"image_id=44.*is 480x640 but the image is 300x640"):
        run(record, img=image[:300])
    with pytest.raises(ValueError, match="coco_panoptic.*coco_detection|coco_detection.*coco_panoptic"):
        processor(image, annotations=record, format="pascal_voc")
    with pytest.raises(ValueError, match="segments_info\\[0\\] needs 'id'"):
        run({**record, "segments_info": [{"category_id": 3}]})


def instance_fixture(seed: int = 0):
    """A 512x700 image with polygon, uncompressed-RLE and compressed-RLE objects (and one crowd RLE)."""
    rng = np.random.default_rng(seed)
    height, width = 512, 700
    objects = []
    for j in range(18):
        cx, cy, r = rng.uniform(50, width - 50), rng.uniform(50, height - 50), rng.uniform(10, 60)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
        polygon = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).ravel().tolist()
        segmentation: object = [polygon]
        if j % 3:
            rle = coco_mask.merge(coco_mask.frPyObjects([polygon], height, width))
            if j % 3 == 1:
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:
                dense = coco_mask.decode(rle).ravel(order="F")
                changes = np.flatnonzero(np.diff(np.concatenate([[0], dense, [1 - dense[-1]]]))) + 0
                segmentation = {
                    "size": [height, width],
                    "counts": np.diff(np.concatenate([[0], changes])).tolist(),
                }
        objects.append(
            {
                "id": j,
                "category_id": int(rng.choice(THINGS)),
                "bbox": [0, 0, 1, 1],
                "area": 1.0,
                "iscrowd": 0,
                "segmentation": segmentation,
            }
        )
    objects[4]["iscrowd"] = 1
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return image, {"image_id": 9, "annotations": objects}


def test_instance_masks_from_polygons_and_rle():
    image, record = instance_fixture()
    height, width = image.shape[:2]
    ours = DetrHfImageProcessor(do_resize=False)(image, annotations=record, return_segmentation_masks=True)[
        "labels"
    ][0]
    kept = [o for o in record["annotations"] if not o["iscrowd"]]
    assert ours["masks"].shape == (len(kept), height, width)
    for mask, obj in zip(ours["masks"], kept):
        seg = obj["segmentation"]
        if isinstance(seg, list):
            rle = coco_mask.merge(coco_mask.frPyObjects(seg, height, width))
        elif isinstance(seg["counts"], list):
            rle = coco_mask.frPyObjects(seg, height, width)
        else:
            rle = {"size": seg["size"], "counts": seg["counts"].encode()}
        assert torch.equal(mask, torch.from_numpy(coco_mask.decode(rle).astype(bool)))
    boxes = masks_to_xywh(ours["masks"])
    expected = torch.stack(
        [
            (boxes[:, 0] + boxes[:, 2] / 2) / width,
            (boxes[:, 1] + boxes[:, 3] / 2) / height,
            boxes[:, 2] / width,
            boxes[:, 3] / height,
        ],
        1,
    )
    torch.testing.assert_close(ours["boxes"], expected)

    polygons_only = {"image_id": 9, "annotations": [o for o in kept if isinstance(o["segmentation"], list)]}
    theirs = DetrImageProcessor(do_resize=False)(
        image, annotations=polygons_only, return_segmentation_masks=True, return_tensors="pt"
    )["labels"][0]
    ours = DetrHfImageProcessor(do_resize=False)(
        image, annotations=polygons_only, return_segmentation_masks=True
    )
    assert torch.equal(ours["labels"][0]["masks"], theirs["masks"].bool())


def test_instance_masks_resized_and_degenerate_objects():
    image, record = instance_fixture(1)
    outside = {"category_id": 3, "bbox": [0, 0, 5, 5], "segmentation": [[-50, -50, -10, -50, -10, -10]]}
    record["annotations"].append(outside)
    labels = DetrHfImageProcessor(size={"shortest_edge": 384, "longest_edge": 600})(
        image, annotations=record, return_segmentation_masks=True
    )["labels"][0]
    assert labels["masks"].shape == (len(record["annotations"]) - 2, 384, 525)
    assert labels["masks"].flatten(1).any(1).all()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"segmentation": None}, "segmentation must be a non-empty list"),
        ({"segmentation": [[1, 2, 3, 4]]}, "polygon 0 must be >= 3"),
        (
            {"segmentation": {"size": [10, 10], "counts": [100]}},
            r"RLE size \[10, 10\] does not match.*\[512, 700\]",
        ),
    ],
)
def test_instance_bad_segmentations_name_the_object(change, message):
    image, record = instance_fixture(2)
    record["annotations"][3].update(change)
    with pytest.raises(ValueError, match=rf"image_id=9\), object 3: {message}"):
        DetrHfImageProcessor()(image, annotations=record, return_segmentation_masks=True)
    del record["annotations"][3]["segmentation"]
    with pytest.raises(ValueError, match="object 3 has no 'segmentation'"):
        DetrHfImageProcessor()(image, annotations=record, return_segmentation_masks=True)

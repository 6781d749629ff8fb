"""Bad inputs across processor → model → loss → datasets: the right result, or an error naming the culprit.

Per-module cases live with their modules (processor: tests/test_image_processing.py, matcher:
tests/test_matcher.py, loss: tests/test_criterion.py, COCO folders: tests/test_data_coco_folder.py, files and
configs: tests/test_safe_loading.py); this suite runs them through the whole chain.
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from detr_hf import DetrHfForObjectDetection
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor
from helpers import padded_batch, tiny_config

SMALL = {"shortest_edge": 64, "longest_edge": 128}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DetrHfForObjectDetection(tiny_config(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0))


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _coco(image_id: int, *objects) -> dict:
    return {
        "image_id": image_id,
        "annotations": [{"bbox": list(o[:4]), "category_id": o[4]} for o in objects],
    }


def _train_step(model, batch) -> tuple[torch.Tensor, dict]:
    """One forward + backward in train mode; returns (loss, loss_dict) after checking every gradient is finite."""
    model.train()
    model.zero_grad()
    out = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"])
    out.loss.backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name
    return out.loss, out.loss_dict


def _labels(*per_image) -> list[dict]:
    return [
        {
            "class_labels": torch.tensor(c, dtype=torch.int64),
            "boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
        }
        for c, b in per_image
    ]


# ------------------------------------------------------------------ empty targets
def test_empty_target_list_next_to_a_full_one(model):
    processor = DetrHfImageProcessor(size=SMALL)
    batch = processor(
        [_image(40, 60), _image(50, 30, 1)],
        annotations=[_coco(1), _coco(2, (3, 4, 10, 12, 1), (0, 0, 30, 50, 2))],
        return_tensors="pt",
    )
    assert batch["labels"][0]["boxes"].shape == (0, 4)
    loss, terms = _train_step(model, batch)
    assert torch.isfinite(loss) and terms["loss_bbox"] > 0


def test_all_empty_batch_trains_on_no_object_only(model):
    processor = DetrHfImageProcessor(size=SMALL)
    batch = processor(
        [_image(40, 60), _image(50, 30, 1)], annotations=[_coco(1), _coco(2)], return_tensors="pt"
    )
    loss, terms = _train_step(model, batch)
    assert terms["loss_bbox"] == 0 and terms["loss_giou"] == 0
    assert terms["loss_ce"] > 0 and torch.isfinite(loss)
    # Only the class head learns "no object": the box head gets no gradient signal.
    assert model.bbox_predictor.layers[-1].weight.grad.abs().sum() == 0


def test_every_box_dropped_by_the_processor_gives_an_empty_target(model):
    """Fully outside, zero-size and negative-size boxes all vanish: an empty, valid target."""
    annotation = _coco(1, (100, 100, 10, 10, 0), (5, 5, 0, 10, 1), (5, 5, 10, -3, 1))
    batch = DetrHfImageProcessor(size=SMALL)(_image(40, 50), annotations=annotation, return_tensors="pt")
    assert batch["labels"][0]["boxes"].shape == (0, 4)
    loss, _ = _train_step(model, batch)
    assert torch.isfinite(loss)


# ------------------------------------------------------------------ boxes
def test_box_partly_outside_is_clipped_to_the_image_and_trains(model):
    annotation = _coco(1, (-10, -10, 30, 30, 1), (40, 30, 20, 20, 0))
    batch = DetrHfImageProcessor(do_resize=False)(_image(40, 50), annotations=annotation, return_tensors="pt")
    boxes = batch["labels"][0]["boxes"]
    torch.testing.assert_close(boxes, torch.tensor([[0.2, 0.25, 0.4, 0.5], [0.9, 0.875, 0.2, 0.25]]))
    _train_step(model, batch)


@pytest.mark.parametrize(
    "boxes, culprit",
    [
        ([[0.5, 0.5, 0.2, 0.2], [12.0, 30.0, 40.0, 25.0]], r"labels\[1\]\['boxes'\]\[1\]"),  # absolute pixels
        ([[0.5, 0.5, 0.0, 0.2]], r"labels\[1\]\['boxes'\]\[0\]"),  # zero width
        ([[0.5, 0.5, 0.3, -0.2]], r"labels\[1\]\['boxes'\]\[0\]"),  # negative height
        ([[0.5, 0.5, 0.2, 0.2], [0.6, 0.6, 0.4, 0.4], [1.2, 0.5, 0.1, 0.1]], r"labels\[1\]\['boxes'\]\[2\]"),
        ([[float("nan"), 0.5, 0.2, 0.2]], r"labels\[1\]\['boxes'\]\[0\]"),
        ([[0.5, 0.5, float("inf"), 0.2]], r"labels\[1\]\['boxes'\]\[0\]"),
    ],
)
def test_invalid_target_boxes_name_image_and_box(model, boxes, culprit):
    pixels, mask = padded_batch()
    labels = _labels(([0], [[0.5, 0.5, 0.5, 0.5]]), ([1] * len(boxes), boxes))
    with pytest.raises(ValueError, match=culprit):
        model(pixel_values=pixels, pixel_mask=mask, labels=labels)


def test_xyxy_coco_boxes_passed_as_xywh_are_caught_when_they_leave_the_image():
    """[x0, y0, x1, y1] read as [x, y, w, h] reaches past the image whenever x0 + x1 > width: the processor clips
    such boxes (COCO convention), the COCO folder loader counts and warns; here the clip is visible in the area."""
    xyxy = (30, 10, 45, 35)  # a 15×25 box at (30, 10) on a 50-wide image, wrongly given as xyxy
    batch = DetrHfImageProcessor(do_resize=False)(
        _image(40, 50), annotations=_coco(1, (*xyxy, 0)), do_convert_annotations=False
    )
    x0, y0, x1, y1 = batch["labels"][0]["boxes"][0].tolist()
    assert (x0, y0, x1, y1) == (30, 10, 50, 40)  # clipped at the right and bottom edges


# ------------------------------------------------------------------ class ids
@pytest.mark.parametrize("bad_id", [3, 4, 99, -1])
def test_class_id_out_of_range_is_named(model, bad_id):
    """num_labels = 3: id 3 is the "no object" slot and must not be accepted silently (peer pitfall 7)."""
    pixels, mask = padded_batch()
    labels = _labels(([0, 2], [[0.5, 0.5, 0.2, 0.2]] * 2), ([1, bad_id], [[0.5, 0.5, 0.2, 0.2]] * 2))
    with pytest.raises(ValueError, match=rf"labels\[1\]\['class_labels'\]\[1\] = {bad_id} is outside 0..2"):
        model(pixel_values=pixels, pixel_mask=mask, labels=labels)


def test_processor_category_outside_the_model_labels_is_named_before_training(model):
    annotation = _coco(7, (1, 1, 5, 5, 1), (2, 2, 5, 5, 5))
    batch = DetrHfImageProcessor(size=SMALL)(_image(20, 20), annotations=annotation, return_tensors="pt")
    with pytest.raises(ValueError, match=r"labels\[0\]\['class_labels'\]\[1\] = 5"):
        model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"])


# ------------------------------------------------------------------ NaN / inf
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixels_name_the_image(model, value):
    pixels, mask = padded_batch(((32, 32), (40, 24), (16, 16)))
    pixels[2, 1, 3, 4] = value
    with pytest.raises(ValueError, match=r"NaN or inf in image\(s\) \[2\]"):
        model.eval()(pixel_values=pixels, pixel_mask=mask)


def test_non_finite_float_image_names_the_image_in_the_processor():
    image = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    image[3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="image 1"):
        DetrHfImageProcessor(size=SMALL)([np.zeros((20, 30, 3), np.float32), image])


@pytest.mark.parametrize("tensor", ["logits", "pred_boxes"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_predictions_name_tensor_layer_and_image(model, tensor, value):
    """A diverged model: the loss says which output, which decoder layer and which image (peer pitfall 6)."""
    from detr_hf.criterion import DetrHfLoss

    criterion = DetrHfLoss.from_config(model.config)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, generator=gen)
    boxes = torch.rand(2, 5, 4, generator=gen) * 0.5 + 0.25
    aux = [{"logits": logits.clone(), "pred_boxes": boxes.clone()}]
    aux[0][tensor][1, 2, 0] = value
    labels = _labels(([0], [[0.5, 0.5, 0.2, 0.2]]), ([], []))
    with pytest.raises(ValueError, match=rf"{tensor} of .*(layer|0).* \(image 1\)"):
        criterion(logits, boxes, labels, aux)


# ------------------------------------------------------------------ image formats and sizes
def _formats() -> dict:
    rgb = _image(30, 40)
    return {
        "grayscale PIL": PIL.Image.fromarray(rgb[..., 0], "L"),
        "grayscale HxW array": rgb[..., 0],
        "RGBA PIL": PIL.Image.fromarray(np.dstack([rgb, np.full((30, 40), 128, np.uint8)]), "RGBA"),
        "16-bit array": rgb.astype(np.uint16) * 257,
        "16-bit PIL I;16": PIL.Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "float [0, 1] array": rgb.astype(np.float32) / 255,
        "float64 CHW tensor": torch.from_numpy(rgb).permute(2, 0, 1).double() / 255,
        "palette PIL": PIL.Image.fromarray(rgb).convert("P"),
        "CMYK PIL": PIL.Image.fromarray(rgb).convert("CMYK"),
    }


@pytest.mark.parametrize("kind", list(_formats()))
def test_image_formats_run_through_processor_and_model(model, kind):
    image = _formats()[kind]
    batch = DetrHfImageProcessor(size=SMALL)([image, _image(20, 50)], return_tensors="pt")
    assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].shape[:2] == (2, 3)
    with torch.no_grad():
        out = model.eval()(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.pred_boxes).all()


@pytest.mark.parametrize("height, width", [(1, 1), (1, 4000), (4000, 1), (3, 7)])
def test_extreme_image_sizes_train_through_processor_and_model(model, height, width):
    """A small size rule (64 / 128): 1×4000 → 1×128, a one-row feature map; the full-image box stays exact."""
    image = np.full((height, width, 3), 200, np.uint8)
    batch = DetrHfImageProcessor(size=SMALL)(
        [image, _image(30, 40)],
        annotations=[_coco(1, (0, 0, width, height, 1)), _coco(2)],
        return_tensors="pt",
    )
    torch.testing.assert_close(batch["labels"][0]["boxes"], torch.tensor([[0.5, 0.5, 1.0, 1.0]]))
    _, loss_terms = _train_step(model, batch)
    assert torch.isfinite(loss_terms["loss_giou"])


def test_extreme_image_sizes_at_the_default_size_rule(model):
    """Default rule (800 / 1333): 1×1 → 800×800, 1×4000 → 1×1333, 4000×1 → 1333×1, batched and padded."""
    images = [
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((1, 4000, 3), np.uint8),
        np.zeros((4000, 1, 3), np.uint8),
    ]
    batch = DetrHfImageProcessor()(images, return_tensors="pt")
    assert batch["pixel_values"].shape == (3, 3, 1333, 1333)
    assert batch["pixel_mask"].flatten(1).sum(1).tolist() == [800 * 800, 1333, 1333]
    with torch.no_grad():
        out = model.eval()(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.pred_boxes).all()


@pytest.mark.parametrize("height, width", [(1, 1), (1, 300), (300, 1), (31, 33)])
def test_model_accepts_feature_maps_of_one_cell(model, height, width):
    """Inputs smaller than the backbone stride give 1-cell-high/wide feature maps; padding must not empty them."""
    pixels, mask = padded_batch(((height, width), (max(1, height // 2), max(1, width // 2))))
    with torch.no_grad():
        out = model.eval()(pixel_values=pixels, pixel_mask=mask)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.pred_boxes).all()


# ------------------------------------------------------------------ structure, dtypes, keys
def test_mismatched_lengths_are_named(model):
    pixels, mask = padded_batch()
    with pytest.raises(ValueError, match="labels has 1 dicts but the predictions have batch size 2"):
        model(pixel_values=pixels, pixel_mask=mask, labels=_labels(([0], [[0.5, 0.5, 0.2, 0.2]])))
    with pytest.raises(ValueError, match="pixel_mask must have shape"):
        model(pixel_values=pixels, pixel_mask=mask[:1])
    with pytest.raises(ValueError, match="got 2 images but 1 annotations"):
        DetrHfImageProcessor()([_image(10, 10)] * 2, annotations=[_coco(1)])
    with pytest.raises(
        ValueError, match=r"labels\[0\]\['boxes'\] must have shape \[N, 4\] with N = len\(class_labels\) = 2"
    ):
        model(
            pixel_values=pixels, pixel_mask=mask, labels=_labels(([0, 1], [[0.5, 0.5, 0.2, 0.2]]), ([], []))
        )


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p, m: dict(pixel_values=(p * 255).to(torch.uint8), pixel_mask=m), TypeError, "float tensor"),
        (lambda p, m: dict(pixel_values=p, pixel_mask=m.float() * 0.5), ValueError, r"pixel_mask must hold only 1"),
        (lambda p, m: dict(pixel_values=p.numpy(), pixel_mask=m), TypeError, "must be a torch.Tensor"),
        (lambda p, m: dict(pixel_values=p[:, :1], pixel_mask=m), ValueError, r"shape \[batch, 3, height, width\]"),
        (lambda p, m: dict(pixel_values=p, pixel_mask=m * torch.tensor([0, 1])[:, None, None]), ValueError,
         r"no valid pixel in image\(s\) \[0\]"),
    ],
)  # fmt: skip
def test_wrong_input_dtypes_and_shapes_are_named(model, make, error, message):
    pixels, mask = padded_batch()
    with pytest.raises(error, match=message):
        model.eval()(**make(pixels, mask))


@pytest.mark.parametrize(
    "labels, error, message",
    [
        ([{"class_labels": torch.tensor([0.0]), "boxes": torch.rand(1, 4)}], TypeError,
         r"labels\[1\]\['class_labels'\] must be an integer tensor"),
        ([{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[1, 1, 1, 1]])}], TypeError,
         r"labels\[1\]\['boxes'\] must be a floating point tensor"),
        ([{"class_labels": [0], "boxes": torch.rand(1, 4)}], TypeError,
         r"labels\[1\]\['class_labels'\] must be a torch.Tensor"),
        ([{"boxes": torch.rand(1, 4)}], ValueError, r"labels\[1\] is missing the key 'class_labels'"),
        ([{"class_labels": torch.tensor([0]), "bbox": torch.rand(1, 4)}], ValueError,
         r"labels\[1\] is missing the key 'boxes'"),
        (["not a dict"], TypeError, r"labels\[1\] must be a dict"),
    ],
)  # fmt: skip
def test_wrong_label_dtypes_and_missing_keys_are_named(model, labels, error, message):
    pixels, mask = padded_batch()
    good = _labels(([0], [[0.5, 0.5, 0.2, 0.2]]))
    with pytest.raises(error, match=message):
        model(pixel_values=pixels, pixel_mask=mask, labels=good + labels)


def test_labels_as_a_single_dict_are_refused(model):
    pixels, mask = padded_batch()
    with pytest.raises(TypeError, match="labels must be a list of dicts"):
        model(pixel_values=pixels, pixel_mask=mask, labels=_labels(([0], [[0.5, 0.5, 0.2, 0.2]]))[0])


# ------------------------------------------------------------------ datasets
def _coco_folder(tmp_path, files: dict[str, bytes]) -> object:
    images = [{"id": i + 1, "file_name": n, "width": 40, "height": 30} for i, n in enumerate(files)]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    annotations = [
        {"id": i + 1, "image_id": i + 1, "bbox": [2, 3, 10, 12], "category_id": 1, "area": 120.0}
        for i in range(len(files))
    ]
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]})
    )
    return path


def _encoded(fmt: str) -> bytes:
    import io

    buffer = io.BytesIO()
    PIL.Image.fromarray(_image(30, 40)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_dataset_with_corrupt_and_truncated_files_yields_only_decodable_images(tmp_path, model):
    from detr_hf.data.coco_folder import load_coco_folder

    jpeg, png = _encoded("JPEG"), _encoded("PNG")
    files = {
        "good.png": png,
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "no_end_chunk.png": png[:-12],  # only the IEND trailer lost: every pixel decodes, so it is kept
        "garbage.jpg": b"\xff\xd8\xff\xe0 definitely not a jpeg",
        "empty.png": b"",
        "good.jpg": jpeg,
    }
    dataset = load_coco_folder(tmp_path, _coco_folder(tmp_path, files))
    assert sorted(dataset["image_id"]) == [1, 4, 7]
    rows = list(dataset)
    batch = DetrHfImageProcessor(size=SMALL)(
        [r["image"] for r in rows],
        annotations=[
            {"image_id": r["image_id"], "annotations": [
                {"bbox": b, "category_id": c} for b, c in zip(r["objects"]["bbox"], r["objects"]["category"])
            ]}
            for r in rows
        ],
        return_tensors="pt",
    )  # fmt: skip
    loss, _ = _train_step(model, batch)
    assert torch.isfinite(loss)


def test_dataset_where_no_image_decodes_fails_with_the_folder_named(tmp_path):
    from detr_hf.data.coco_folder import load_coco_folder

    path = _coco_folder(tmp_path, {"a.png": b"junk", "b.png": b""})
    with pytest.raises(ValueError, match=r"instances\.json: no readable image among 2 .*a\.png, b\.png"):
        load_coco_folder(tmp_path, path)

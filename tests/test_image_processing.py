"""DetrHfImageProcessor: parity with transformers' DETR processors, labels, post-processing, bad input, pipeline."""

from __future__ import annotations

import json
import logging

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoImageProcessor, DetrImageProcessor, DetrImageProcessorPil
from transformers.image_transforms import get_size_with_aspect_ratio

from detr_hf.configuration_detr_hf import DetrHfConfig
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor, resized_size
from helpers import realistic_detection_batch, textured_image

SMALL = {"shortest_edge": 64, "longest_edge": 96}


def random_image(height: int, width: int, seed: int = 0, mode: str = "RGB") -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode)


def coco(image_id: int, *objects: tuple) -> dict:
    """objects: (x, y, w, h, category_id[, iscrowd])."""
    return {
        "image_id": image_id,
        "annotations": [
            {
                "bbox": list(o[:4]),
                "category_id": o[4],
                "area": o[2] * o[3],
                "iscrowd": o[5] if len(o) > 5 else 0,
            }
            for o in objects
        ],
    }


def one_hot_outputs(labels: list[dict], num_queries: int, num_classes: int) -> dict:
    """Pretend-perfect predictions: query i predicts target i with certainty; the rest predict no object."""
    logits = torch.full((len(labels), num_queries, num_classes + 1), -50.0)
    logits[..., -1] = 50.0
    boxes = torch.full((len(labels), num_queries, 4), 0.5)
    for b, target in enumerate(labels):
        n = len(target["class_labels"])
        logits[b, :n, -1] = -50.0
        logits[b, torch.arange(n), target["class_labels"]] = 50.0
        boxes[b, :n] = target["boxes"]
    return {"logits": logits, "pred_boxes": boxes}


# ---------------------------------------------------------------- parity with transformers
@pytest.mark.parametrize(
    "size", [None, SMALL, {"max_height": 70, "max_width": 50}, {"height": 40, "width": 30}]
)
def test_pixels_match_transformers_torchvision_processor(size):
    images = [
        random_image(48, 64, 0),
        random_image(61, 50, 1),
        random_image(33, 97, 2),
        random_image(48, 64, 3),
    ]
    ours = DetrHfImageProcessor(size=size)(images, return_tensors="pt")
    ref = DetrImageProcessor(**({} if size is None else {"size": size}))(images, return_tensors="pt")
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    assert torch.equal(ours["pixel_mask"].long(), ref["pixel_mask"])
    # Both resize the uint8 image with torchvision's antialiased bilinear kernel (identical bytes); only the
    # float order of rescale+normalise differs (x*g + b vs (x - m)/s): float32 rounding, ~5e-7.
    torch.testing.assert_close(ours["pixel_values"], ref["pixel_values"], atol=1e-5, rtol=0)


def test_pixels_match_transformers_pil_processor():
    images = [random_image(48, 64, 0), random_image(61, 50, 1), random_image(20, 120, 2)]
    ours = DetrHfImageProcessor(size=SMALL)(images)
    ref = DetrImageProcessorPil(size=SMALL)(images, return_tensors="pt")
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    assert torch.equal(ours["pixel_mask"].long(), torch.as_tensor(ref["pixel_mask"]).long())
    # PIL's and torchvision's bilinear kernels round differently: at most one 8-bit level, which after
    # normalisation is 1 / (255 * min std 0.224) = 0.0175.
    diff = (ours["pixel_values"] - torch.as_tensor(ref["pixel_values"])).abs()
    assert diff.max() <= 1 / (255 * 0.224) + 1e-5
    assert diff.mean() < 1e-3


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 900), st.integers(0, 1200))
def test_size_rule_matches_transformers(height, width, shortest, extra):
    longest = shortest + extra
    expected = get_size_with_aspect_ratio((height, width), shortest, longest)
    got = resized_size(height, width, {"shortest_edge": shortest, "longest_edge": longest})
    # transformers can return a 0-px side for extreme aspect ratios (and then fails); ours keeps 1 px.
    assert got == (max(1, expected[0]), max(1, expected[1]))


def test_labels_match_transformers_for_a_single_image():
    image = random_image(48, 64)
    annotation = coco(7, (3, 4, 20, 10, 1), (50, 40, 30, 30, 2), (0, 0, 64, 48, 0), (10, 10, 5, 5, 1, 1))
    ours = DetrHfImageProcessor(size=SMALL)(image, annotations=annotation)["labels"][0]
    ref = DetrImageProcessor(size=SMALL)(image, annotations=annotation, return_tensors="pt")["labels"][0]
    for key in ("class_labels", "iscrowd", "orig_size", "size", "image_id"):
        assert torch.equal(ours[key], torch.as_tensor(ref[key])), key
    torch.testing.assert_close(ours["boxes"], ref["boxes"], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours["area"], ref["area"])
    assert len(ours["boxes"]) == 3  # the crowd object is dropped, the box past the right edge is clipped


def test_boxes_do_not_depend_on_the_rest_of_the_batch():
    small, large = random_image(40, 60, 0), random_image(90, 70, 1)
    annotation = coco(1, (0, 0, 60, 40, 0), (15, 10, 30, 20, 1))
    big_annotation = coco(2, (5, 5, 10, 10, 0))
    ours = DetrHfImageProcessor(size=SMALL)
    alone = ours(small, annotations=annotation)["labels"][0]["boxes"]
    batched = ours([small, large], annotations=[annotation, big_annotation])
    assert batched["pixel_values"].shape[-2:] != (64, 96)  # the small image really is padded
    torch.testing.assert_close(batched["labels"][0]["boxes"], alone, atol=0, rtol=0)
    torch.testing.assert_close(alone[0], torch.tensor([0.5, 0.5, 1.0, 1.0]))  # the full-image box

    ref = DetrImageProcessor(size=SMALL)
    ref_alone = ref(small, annotations=annotation, return_tensors="pt")["labels"][0]["boxes"]
    ref_batched = ref([small, large], annotations=[annotation, big_annotation], return_tensors="pt")
    torch.testing.assert_close(ref_alone, alone, atol=1e-6, rtol=0)
    # transformers normalises by the padded canvas: the same full-image box shrinks when batched.
    assert not torch.allclose(ref_batched["labels"][0]["boxes"], ref_alone, atol=1e-3)


# ---------------------------------------------------------------- configs saved by transformers
REALISTIC = realistic_detection_batch(num_images=4, seed=3)


def assert_labels_match_transformers(
    ours: list[dict], ref: list[dict], canvas: tuple[int, int], normalized: bool
):
    """Equal labels up to the two documented conventions: detr_hf normalises boxes by each image's own resized
    size and reports that size; transformers normalises by the padded canvas and reports the canvas."""
    height, width = canvas
    for mine, theirs in zip(ours, ref, strict=True):
        for key in ("class_labels", "iscrowd", "orig_size", "image_id"):
            assert torch.equal(mine[key], torch.as_tensor(theirs[key])), key
        torch.testing.assert_close(mine["area"], torch.as_tensor(theirs["area"]), rtol=1e-5, atol=1e-2)
        assert torch.as_tensor(theirs["size"]).tolist() == [height, width]
        h, w = mine["size"].tolist()
        boxes = mine["boxes"]
        if normalized:  # own size → canvas
            boxes = boxes * torch.tensor([w / width, h / height, w / width, h / height])
        torch.testing.assert_close(boxes, torch.as_tensor(theirs["boxes"]), atol=2e-5, rtol=0)


SMALLER = {"shortest_edge": 400, "longest_edge": 666}
TRANSFORMERS_OPTIONS = {
    "defaults": {},
    "bicubic+pad_size+absolute_boxes": {
        "size": SMALLER, "resample": 3, "pad_size": {"height": 700, "width": 700},
        "do_convert_annotations": False, "do_convert_rgb": True,
    },
    "nearest": {"size": SMALLER, "resample": 0},
    "lanczos": {"size": SMALLER, "resample": 1},
}  # fmt: skip


# Both transformers variants save the same JSON; PIL's nearest kernel picks other source pixels than
# torchvision's (2% of pixels), so "nearest" is compared with the torchvision variant only.
VARIANT_CASES = [(DetrImageProcessor, name) for name in TRANSFORMERS_OPTIONS] + [
    (DetrImageProcessorPil, name) for name in TRANSFORMERS_OPTIONS if name != "nearest"
]


@pytest.mark.parametrize(
    ("variant", "options"), VARIANT_CASES, ids=[f"{v.__name__}-{o}" for v, o in VARIANT_CASES]
)
def test_config_saved_by_transformers_loads_and_gives_the_same_batch(tmp_path, caplog, variant, options):
    variant(**TRANSFORMERS_OPTIONS[options]).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="detr_hf"):
        ours = DetrHfImageProcessor.from_pretrained(tmp_path)
    assert "unknown option" not in caplog.text  # every key transformers writes is understood
    ref = variant.from_pretrained(tmp_path)
    assert ours.format == "coco_detection" and ours.resample == int(ref.resample)
    assert ours.do_convert_annotations == ref.do_convert_annotations and ours.do_convert_rgb is True
    assert ours.pad_size == (
        {"height": 700, "width": 700} if "pad_size" in TRANSFORMERS_OPTIONS[options] else None
    )

    images, annotations = REALISTIC
    mine = ours(images, annotations=annotations, return_tensors="pt")
    theirs = ref(images, annotations=annotations, return_tensors="pt")
    assert mine["pixel_values"].shape == theirs["pixel_values"].shape
    assert torch.equal(mine["pixel_mask"].long(), torch.as_tensor(theirs["pixel_mask"]).long())
    diff = (mine["pixel_values"] - torch.as_tensor(theirs["pixel_values"])).abs()
    if variant is DetrImageProcessor:  # the same torchvision kernel: float rounding of the normalisation only
        assert float(diff.max()) < 1e-5
    else:  # PIL rounds its kernels differently: at most two 8-bit levels, on ~2% of values (textured images)
        assert float(diff.max()) <= 2 / (255 * 0.224) + 1e-5 and float((diff > 1e-4).float().mean()) < 0.05
    assert_labels_match_transformers(
        mine["labels"], theirs["labels"], tuple(mine["pixel_values"].shape[-2:]), ref.do_convert_annotations
    )
    assert sum(len(t["boxes"]) for t in mine["labels"]) > 40 and len(mine["labels"][-1]["boxes"]) == 0


def test_each_image_alone_has_exactly_transformers_labels():
    """Without padding the two box conventions coincide: then boxes and size equal transformers' as they are."""
    images, annotations = REALISTIC
    ours, ref = DetrHfImageProcessor(size=SMALLER), DetrImageProcessor(size=SMALLER)
    for image, annotation in zip(images, annotations):
        mine = ours(image, annotations=annotation)["labels"][0]
        theirs = ref(image, annotations=annotation, return_tensors="pt")["labels"][0]
        assert torch.equal(mine["size"], theirs["size"]) and torch.equal(
            mine["class_labels"], theirs["class_labels"]
        )
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], atol=2e-6, rtol=0)


def test_coco_panoptic_config_loads_and_detection_records_are_a_clear_error(tmp_path):
    DetrImageProcessor(format="coco_panoptic", size=SMALLER).save_pretrained(tmp_path)
    ours = DetrHfImageProcessor.from_pretrained(tmp_path)
    assert ours.format == "coco_panoptic"
    images, annotations = REALISTIC
    # Inference needs no annotations: a panoptic checkpoint's processor still prepares images.
    expected = DetrImageProcessor.from_pretrained(tmp_path)(images[:2], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours(images[:2])["pixel_values"], expected, atol=1e-5, rtol=0)
    # Panoptic records are read (tests/test_panoptic_annotations.py); detection records given as panoptic are not.
    message = r"annotations\[0\] \(image_id=100\): a COCO panoptic record needs 'file_name' and a 'segments_info'"
    with pytest.raises(ValueError, match=message):
        ours(images[:1], annotations=annotations[:1])
    with pytest.raises(ValueError, match=message):
        DetrHfImageProcessor()(images[:1], annotations=annotations[:1], format="coco_panoptic")
    with pytest.raises(
        ValueError, match=r"format must be one of \['coco_detection', 'coco_panoptic'\], got 'voc'"
    ):
        DetrHfImageProcessor(format="voc")


def test_original_detr_hub_config_with_legacy_keys(tmp_path, caplog):
    """facebook/detr-resnet-50's first preprocessor_config.json: an int size, `max_size`, a feature extractor."""
    legacy = {
        "do_normalize": True, "do_resize": True, "feature_extractor_type": "DetrFeatureExtractor",
        "format": "coco_detection", "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "max_size": 1333, "size": 800,
    }  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    with caplog.at_level(logging.WARNING, logger="detr_hf"):
        ours = DetrHfImageProcessor.from_pretrained(tmp_path)
    assert "unknown option" not in caplog.text and ours.size == {"shortest_edge": 800, "longest_edge": 1333}
    assert DetrHfImageProcessor(size=500, max_size=600).size == {"shortest_edge": 500, "longest_edge": 600}
    assert DetrHfImageProcessor(pad_and_return_pixel_mask=False).do_pad is False
    # Explicit nulls: box conversion follows do_normalize (transformers' rule); RGB conversion stays on (our default).
    nulls = DetrHfImageProcessor(do_convert_rgb=None, do_convert_annotations=None, do_normalize=False)
    assert nulls.do_convert_rgb is True and nulls.do_convert_annotations is False


# ---------------------------------------------------------------- channels
def test_do_convert_rgb_composites_like_transformers():
    rgba = textured_image(420, 610, seed=5, channels=4)
    rgba[..., 3] = np.linspace(0, 255, 610).astype(np.uint8)
    images = [PIL.Image.fromarray(rgba, "RGBA"), PIL.Image.fromarray(rgba[..., 0], "L")]
    mine = DetrHfImageProcessor(size=SMALLER)(images)["pixel_values"]
    theirs = DetrImageProcessor(size=SMALLER, do_convert_rgb=True)(images, return_tensors="pt")[
        "pixel_values"
    ]
    # PIL's integer alpha_composite vs our float blend: at most one 8-bit level apart.
    assert float((mine - theirs).abs().max()) <= 1 / (255 * 0.224) + 1e-5


def test_do_convert_rgb_false_keeps_the_channels_for_their_own_model():
    from detr_hf.modeling_detr_hf import DetrHfForObjectDetection

    rgba = textured_image(330, 500, seed=6, channels=4)
    rgba[..., 3] = np.linspace(0, 255, 500).astype(np.uint8)
    mean, std = [0.485, 0.456, 0.406, 0.5], [0.229, 0.224, 0.225, 0.25]
    four = DetrHfImageProcessor(size=SMALLER, do_convert_rgb=False, image_mean=mean, image_std=std)
    batch = four([PIL.Image.fromarray(rgba, "RGBA"), rgba[:300, :400]], return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 4, 400, 606)
    reference = DetrImageProcessor(size=SMALLER, do_convert_rgb=False, image_mean=mean, image_std=std)
    expected = reference(PIL.Image.fromarray(rgba, "RGBA"), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch["pixel_values"][:1], expected, atol=1e-5, rtol=0)  # alpha is channel 3

    grey = DetrHfImageProcessor(size=SMALLER, do_convert_rgb=False, image_mean=0.5, image_std=0.25)
    one = grey(PIL.Image.fromarray(rgba[..., 0], "L"), return_tensors="pt")["pixel_values"]
    assert one.shape == (1, 1, 400, 606)

    torch.manual_seed(0)
    config = DetrHfConfig(
        backbone="test_resnet", num_channels=4, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        num_queries=5, num_labels=3,
    )  # fmt: skip
    with torch.no_grad():
        outputs = DetrHfForObjectDetection(config).eval()(**batch)
    assert outputs.logits.shape == (2, 5, 4) and bool(torch.isfinite(outputs.pred_boxes).all())

    with pytest.raises(ValueError, match="image_mean has 4 values but the images have 3 channels"):
        DetrHfImageProcessor(image_mean=mean, image_std=std)(rgba)
    with pytest.raises(ValueError, match="do_convert_rgb=False: image 1 has 3 channels but image 0 has 4"):
        four([rgba, rgba[..., :3]])
    with pytest.raises(ValueError, match="image_mean has 4 values but the images have 1 channels"):
        four(rgba[..., 0])


# ---------------------------------------------------------------- round trips
def round_trip(height: int, width: int, xywh: list[tuple[float, float, float, float]], size: dict) -> None:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    annotation = coco(0, *[(*box, i % 3) for i, box in enumerate(xywh)])
    proc = DetrHfImageProcessor(size=size)
    labels = proc(image, annotations=annotation)["labels"]
    outputs = one_hot_outputs(labels, num_queries=len(xywh) + 2, num_classes=3)
    result = proc.post_process_object_detection(
        outputs, threshold=0.5, target_sizes=labels[0]["orig_size"][None]
    )[0]
    expected = torch.tensor([[x, y, min(x + w, width), min(y + h, height)] for x, y, w, h in xywh])
    order = result["scores"].argsort(descending=True, stable=True)
    assert len(result["boxes"]) == len(xywh)
    # Sorting by score is stable and all scores tie, so detections keep the annotation order.
    assert torch.equal(result["labels"][order], torch.tensor([i % 3 for i in range(len(xywh))]))
    assert (result["boxes"][order] - expected).abs().max() <= 1.0


def test_annotation_round_trip_recovers_absolute_boxes():
    round_trip(
        480,
        640,
        [(10, 20, 100, 50), (0, 0, 640, 480), (600.5, 470.25, 39.5, 9.75)],
        size={"shortest_edge": 800, "longest_edge": 1333},
    )
    round_trip(37, 1200, [(3, 1, 1000, 30), (1100, 0, 99, 37)], size=SMALL)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 200),
    st.integers(2, 200),
    st.lists(st.tuples(*[st.floats(0, 1, allow_nan=False)] * 4), min_size=1, max_size=6),
)
def test_box_round_trip_property(height, width, unit_boxes):
    xywh = []
    for fx, fy, fw, fh in unit_boxes:
        x, y = fx * (width - 1), fy * (height - 1)
        xywh.append((x, y, max(fw * (width - x), 0.5), max(fh * (height - y), 0.5)))
    round_trip(height, width, xywh, size=SMALL)


# ---------------------------------------------------------------- annotation edge cases
def test_empty_annotations_give_empty_labels():
    labels = DetrHfImageProcessor(size=SMALL)(
        random_image(30, 40), annotations={"image_id": 3, "annotations": []}
    )
    target = labels["labels"][0]
    assert target["boxes"].shape == (0, 4) and target["class_labels"].shape == (0,)
    assert target["class_labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32


def test_outside_zero_area_and_crowd_boxes():
    annotation = coco(
        5,
        (-10, -10, 30, 30, 1),  # partly outside: clipped to (0, 0, 20, 20)
        (100, 100, 10, 10, 1),  # fully outside: dropped
        (5, 5, 0, 10, 1),  # zero width: dropped
        (5, 5, 10, -3, 1),  # negative height: dropped
        (1, 1, 4, 4, 2, 1),  # crowd: dropped by default
    )
    proc = DetrHfImageProcessor(do_resize=False)
    target = proc(random_image(40, 50), annotations=annotation)["labels"][0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[10 / 50, 10 / 40, 20 / 50, 20 / 40]]))
    kept = proc(random_image(40, 50), annotations=annotation, keep_crowd_annotations=True)["labels"][0]
    assert kept["iscrowd"].tolist() == [0, 1] and kept["class_labels"].tolist() == [1, 2]
    absolute = proc(random_image(40, 50), annotations=annotation, do_convert_annotations=False)["labels"][0]
    torch.testing.assert_close(absolute["boxes"], torch.tensor([[0.0, 0.0, 20.0, 20.0]]))


def test_category_mapping_and_unknown_ids():
    annotation = coco(11, (1, 1, 5, 5, 90), (2, 2, 5, 5, 1))
    proc = DetrHfImageProcessor(do_resize=False, category_id_to_label={1: 0, 90: 1})
    assert proc(random_image(20, 20), annotations=annotation)["labels"][0]["class_labels"].tolist() == [1, 0]
    with pytest.raises(
        ValueError, match=r"annotations\[1\] \(image_id=11\), object 0: category_id 90 is not in"
    ):
        DetrHfImageProcessor(do_resize=False, category_id_to_label={1: 0})(
            [random_image(20, 20)] * 2, annotations=[coco(10), annotation]
        )
    named = {"image_id": 1, "annotations": [{"bbox": [1, 1, 3, 3], "category_id": "dog"}]}
    by_name = DetrHfImageProcessor(do_resize=False, label2id={"cat": 0, "dog": 1})
    assert by_name(random_image(9, 9), annotations=named)["labels"][0]["class_labels"].tolist() == [1]
    with pytest.raises(ValueError, match="'dog' is a name that is not in label2id"):
        DetrHfImageProcessor(do_resize=False)(random_image(9, 9), annotations=named)
    with pytest.raises(ValueError, match="category_id -1 is negative"):
        DetrHfImageProcessor(do_resize=False)(random_image(9, 9), annotations=coco(1, (1, 1, 2, 2, -1)))


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ({"annotations": []}, r"annotations\[0\] has no 'image_id'"),
        (
            {"image_id": 1, "annotations": [{"bbox": [1, 2, 3], "category_id": 0}]},
            r"object 0: 'bbox' must be 4",
        ),
        ({"image_id": 1, "annotations": [{"bbox": [1, 2, float("nan"), 3], "category_id": 0}]}, "4 finite"),
        ({"image_id": 1, "annotations": [{"bbox": [1, 2, 3, 4]}]}, "needs 'bbox' and 'category_id'"),
        ({"image_id": 1, "annotations": "oops"}, "must be a list of objects"),
    ],
)
def test_malformed_annotations_raise_clear_errors(annotation, message):
    with pytest.raises(ValueError, match=message):
        DetrHfImageProcessor()(random_image(10, 10), annotations=annotation)


def test_mismatched_images_and_annotations():
    with pytest.raises(ValueError, match="got 2 images but 1 annotations"):
        DetrHfImageProcessor()([random_image(10, 10)] * 2, annotations=[coco(1)])


# ---------------------------------------------------------------- image inputs
def test_extreme_sizes():
    proc = DetrHfImageProcessor()
    tiny = proc(PIL.Image.new("RGB", (1, 1), (255, 0, 0)))
    assert tiny["pixel_values"].shape == (1, 3, 800, 800) and bool(tiny["pixel_mask"].all())
    thin = proc(PIL.Image.new("RGB", (4000, 1)), annotations=coco(1, (0, 0, 4000, 1, 0)))
    assert thin["pixel_values"].shape == (1, 3, 1, 1333)
    torch.testing.assert_close(thin["labels"][0]["boxes"], torch.tensor([[0.5, 0.5, 1.0, 1.0]]))
    with pytest.raises(ValueError):  # transformers computes a 0-px height and fails
        DetrImageProcessor()(PIL.Image.new("RGB", (4000, 1)))
    tall = proc(np.zeros((4000, 1, 3), np.uint8))
    assert tall["pixel_values"].shape == (1, 3, 1333, 1)


def test_input_types_and_layouts_agree():
    rgb = np.array(random_image(30, 40))
    proc = DetrHfImageProcessor(size=SMALL)
    reference = proc(PIL.Image.fromarray(rgb))["pixel_values"]
    chw = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    for variant in (rgb, chw, chw[None], np.ascontiguousarray(rgb.transpose(2, 0, 1)), [rgb]):
        torch.testing.assert_close(proc(variant)["pixel_values"], reference, atol=0, rtol=0)
    forced = proc(np.ascontiguousarray(rgb[:3, :3]), input_data_format="channels_last")["pixel_values"]
    assert forced.shape == (1, 3, 64, 64)


def test_bit_depths_grayscale_and_alpha():
    rgb8 = np.asarray(random_image(30, 40))
    proc = DetrHfImageProcessor(size=SMALL, resample="nearest")  # nearest: no interpolation rounding
    base = proc(rgb8)["pixel_values"]
    rgb16 = rgb8.astype(np.uint16) * 257
    torch.testing.assert_close(proc(rgb16)["pixel_values"], base, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        proc(PIL.Image.fromarray(rgb16[..., 0]))["pixel_values"][:, 0], base[:, 0], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(proc(rgb8 / 255.0)["pixel_values"], base, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"image 1 is a float image with values in \[0, 255\]"):
        proc([rgb8, rgb8.astype(np.float32)])
    raw = proc(rgb8.astype(np.float32), do_rescale=False, do_normalize=False)["pixel_values"]
    torch.testing.assert_close(raw, proc(rgb8, do_rescale=False, do_normalize=False)["pixel_values"])

    gray = PIL.Image.fromarray(rgb8[..., 1])
    torch.testing.assert_close(
        proc(gray)["pixel_values"], proc(gray.convert("RGB"))["pixel_values"], atol=1e-6, rtol=0
    )
    rgba = np.concatenate([rgb8, np.full((30, 40, 1), 255, np.uint8)], axis=-1)
    torch.testing.assert_close(proc(PIL.Image.fromarray(rgba, "RGBA"))["pixel_values"], base)
    rgba[..., 3] = 0  # fully transparent → white
    white = proc(np.full((30, 40, 3), 255, np.uint8))["pixel_values"]
    torch.testing.assert_close(proc(rgba)["pixel_values"], white)


def test_bad_images_raise_clear_errors():
    proc = DetrHfImageProcessor()
    with pytest.raises(TypeError, match="image 1: unsupported type object"):
        proc([random_image(5, 5), object()])
    with pytest.raises(TypeError, match=r"image 0: unsupported dtype int64"):
        proc(np.zeros((5, 5, 3), np.int64))
    with pytest.raises(ValueError, match="expected 1, 2, 3 or 4 channels"):
        proc(np.zeros((5, 5, 5), np.uint8), input_data_format="channels_last")
    with pytest.raises(ValueError, match="images is an empty list"):
        proc([])
    with pytest.raises(ValueError, match="image 0 is empty"):
        proc(np.zeros((0, 5, 3), np.uint8))


# ---------------------------------------------------------------- options
def test_switches_and_padding_options():
    images = [random_image(30, 40, 0), random_image(25, 50, 1)]
    proc = DetrHfImageProcessor(size=SMALL)
    raw = proc(images, do_resize=False, do_rescale=False, do_normalize=False)
    assert raw["pixel_values"].shape == (2, 3, 30, 50)
    assert torch.equal(
        raw["pixel_values"][1, :, :25, :50], torch.from_numpy(np.array(images[1])).permute(2, 0, 1).float()
    )
    assert float(raw["pixel_values"][1, :, 25:].abs().sum()) == 0 and not raw["pixel_mask"][1, 25:].any()
    rescaled = proc(images, do_resize=False, do_normalize=False)["pixel_values"]
    torch.testing.assert_close(rescaled, raw["pixel_values"] / 255)

    unpadded = proc(images, do_pad=False)
    assert "pixel_mask" not in unpadded and [tuple(p.shape) for p in unpadded["pixel_values"]] == [
        (3, 64, 85),
        (3, 48, 96),
    ]
    fixed = proc(images, pad_size={"height": 100, "width": 100})
    assert fixed["pixel_values"].shape == (2, 3, 100, 100) and int(fixed["pixel_mask"][0].sum()) == 64 * 85
    assert proc(images, pad_to_multiple_of=32)["pixel_values"].shape == (2, 3, 64, 96)
    assert proc(images, pad_to_multiple_of=40)["pixel_values"].shape == (2, 3, 80, 120)
    with pytest.raises(ValueError, match="image 0 is 64x85 after resizing, larger than pad_size 50x100"):
        proc(images, pad_size={"height": 50, "width": 100})
    with pytest.raises(ValueError, match="size must have keys"):
        DetrHfImageProcessor(size={"longest_edge": 10})
    numpy_out = proc(images, annotations=[coco(1, (1, 1, 5, 5, 0)), coco(2)], return_tensors="np")
    assert isinstance(numpy_out["pixel_values"], np.ndarray) and isinstance(
        numpy_out["labels"][0]["boxes"], np.ndarray
    )


def test_training_collator_path_with_augmented_tensors():
    """torchvision v2 already resized the images: do_resize=False keeps sizes, boxes follow each own size."""
    from torchvision import tv_tensors

    images = [
        tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8)) for h, w in [(50, 70), (64, 40)]
    ]
    annotations = [coco(0, (0, 0, 70, 50, 1)), coco(1, (10, 16, 20, 32, 2))]
    batch = DetrHfImageProcessor()(images, annotations=annotations, do_resize=False, return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 64, 70)
    assert [t["size"].tolist() for t in batch["labels"]] == [[50, 70], [64, 40]]
    torch.testing.assert_close(batch["labels"][1]["boxes"], torch.tensor([[0.5, 0.5, 0.5, 0.5]]))


def test_save_and_load_round_trip(tmp_path):
    proc = DetrHfImageProcessor(
        size={"max_height": 300, "max_width": 200}, category_id_to_label={5: 0, 17: 1}, pad_to_multiple_of=8
    )
    proc.save_pretrained(tmp_path)
    loaded = DetrHfImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == proc.to_dict() and loaded.category_id_to_label == {5: 0, 17: 1}
    overridden = DetrHfImageProcessor.from_pretrained(tmp_path, do_pad=False)
    assert overridden.do_pad is False
    image = random_image(40, 50)
    torch.testing.assert_close(loaded(image)["pixel_values"], proc(image)["pixel_values"])

    auto = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(auto) is DetrHfImageProcessor and auto.to_dict() == proc.to_dict()


def test_unknown_options_are_kept_with_a_warning_everywhere(tmp_path, caplog):
    """One policy, DetrHfConfig's: unknown keys are kept (and saved) with a warning naming the closest option."""
    with caplog.at_level(logging.WARNING, logger="detr_hf"):
        proc = DetrHfImageProcessor(do_resise=False, future_option={"a": 1})
    assert (
        "unknown option 'do_resise' is kept but not used by detr_hf; did you mean 'do_resize'?" in caplog.text
    )
    assert "'future_option'" in caplog.text
    assert proc.do_resise is False and proc.do_resize is True and proc.future_option == {"a": 1}
    proc.save_pretrained(tmp_path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detr_hf"):
        loaded = DetrHfImageProcessor.from_pretrained(tmp_path, other_override=3, do_pad=False)
    assert loaded.future_option == {"a": 1} and loaded.other_override == 3 and loaded.do_pad is False
    assert "'future_option' is kept" in caplog.text and "'other_override' is kept" in caplog.text
    again, unused = DetrHfImageProcessor.from_dict(
        proc.to_dict(), other=1, do_pad=False, return_unused_kwargs=True
    )
    assert unused == {"other": 1} and again.other == 1 and again.do_pad is False
    caplog.clear()
    image = random_image(40, 50)
    with caplog.at_level(logging.WARNING, logger="detr_hf"):
        batch = proc(image, do_normalise=False)
    assert "preprocess: unknown option 'do_normalise' is ignored; did you mean 'do_normalize'?" in caplog.text
    torch.testing.assert_close(batch["pixel_values"], proc(image)["pixel_values"])


# ---------------------------------------------------------------- post-processing
def test_post_process_threshold_top_k_clipping():
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 5.0], [2.0, 0.0, 0.0]]])
    boxes = torch.tensor(
        [[[0.5, 0.5, 0.2, 0.2], [0.9, 0.5, 0.4, 0.4], [0.5, 0.5, 1.0, 1.0], [0.1, 0.1, 0.4, 0.4]]]
    )
    proc = DetrHfImageProcessor()
    outputs = {"logits": logits, "pred_boxes": boxes}
    result = proc.post_process_object_detection(outputs, 0.5, torch.tensor([[100, 200]], dtype=torch.int32))[
        0
    ]
    probs = logits.softmax(-1)[0, :, :-1].max(-1).values
    assert result["labels"].tolist() == [0, 1, 0]  # query 2 is "no object"; sorted best first
    torch.testing.assert_close(result["scores"], probs[[0, 1, 3]])
    torch.testing.assert_close(
        result["boxes"],
        torch.tensor([[80.0, 40.0, 120.0, 60.0], [140.0, 30.0, 200.0, 70.0], [0.0, 0.0, 60.0, 30.0]]),
    )
    top1 = proc.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(100, 200)], top_k=1)[0]
    assert top1["labels"].tolist() == [0] and len(top1["boxes"]) == 1
    relative = proc.post_process_object_detection(outputs, threshold=0.5)[0]["boxes"]
    assert relative.min() >= 0 and relative.max() <= 1
    with pytest.raises(ValueError, match="target_sizes has 2 entries for a batch of 1"):
        proc.post_process_object_detection(outputs, target_sizes=[(1, 1), (2, 2)])
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        proc.post_process_object_detection(outputs, top_k=0)


# ---------------------------------------------------------------- pipeline
@pytest.mark.slow
def test_object_detection_pipeline(caplog, capsys, tmp_path):
    import transformers

    import detr_hf  # noqa: F401  (registers the Auto classes)
    from detr_hf.modeling_detr_hf import DetrHfForObjectDetection

    torch.manual_seed(0)
    config = DetrHfConfig(
        backbone="test_resnet", d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32,
        decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=6, num_labels=3,
        id2label={0: "circle", 1: "square", 2: "triangle"},
    )  # fmt: skip
    model = DetrHfForObjectDetection(config).eval()
    proc = DetrHfImageProcessor(size=SMALL)
    image = random_image(50, 70)
    with caplog.at_level(logging.ERROR, logger="transformers"):
        pipe = transformers.pipeline("object-detection", model=model, image_processor=proc)
        detections = pipe(image, threshold=0.0)
    assert "is not supported" not in caplog.text

    with torch.no_grad():
        outputs = model(**proc(image, return_tensors="pt"))
    expected = proc.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(50, 70)])[0]
    assert len(detections) == 6
    for det, score, label, box in zip(detections, expected["scores"], expected["labels"], expected["boxes"]):
        assert det["label"] == config.id2label[int(label)]
        assert det["score"] == pytest.approx(float(score), abs=1e-5)
        assert det["box"] == dict(zip(("xmin", "ymin", "xmax", "ymax"), box.int().tolist()))
        assert 0 <= det["box"]["xmin"] <= det["box"]["xmax"] <= 70 and 0 <= det["box"]["ymax"] <= 50

    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    capsys.readouterr()
    from_folder = transformers.pipeline("object-detection", model=str(tmp_path))
    # With detr_hf imported, the folder's own code copy must not trigger a trust_remote_code prompt.
    assert "custom code" not in "".join(capsys.readouterr())
    assert type(from_folder.image_processor) is DetrHfImageProcessor
    assert from_folder(image, threshold=0.0) == detections


def test_unpadded_mixed_sizes_cannot_become_one_tensor():
    proc = DetrHfImageProcessor(size=SMALL, do_pad=False)
    images = [random_image(40, 60), random_image(50, 50)]
    with pytest.raises(ValueError, match="do_pad=False with images of different sizes"):
        proc(images, return_tensors="pt")
    as_list = proc(images)["pixel_values"]
    assert len(as_list) == 2 and as_list[0].shape[-2:] != as_list[1].shape[-2:]

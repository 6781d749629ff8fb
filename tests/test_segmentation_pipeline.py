"""pipeline("image-segmentation"): by instance, from a saved folder and as remote code without detr_hf, for the
panoptic, instance and semantic subtasks, equal to the processor's own post-processing."""

from __future__ import annotations

import json
import logging

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import pipeline

from detr_hf import DetrHfForObjectDetection, DetrHfForSegmentation, DetrHfImageProcessor
from helpers import padded_batch, randomize_feature_norms, save_exif_jpeg, textured_image, tiny_config
from remote_code_helpers import SEGMENTATION_CHILD, run_child

LABELS = {0: "sky", 1: "cat", 2: "road", 3: "dog"}
# The class each query is made to predict (4 = no object) on the reference image.
QUERY_CLASSES = [0, 1, 4, 2, 3, 4, 1, 0]
SUBTASKS = ("panoptic", "instance", "semantic")
# ImageSegmentationPipeline.postprocess defaults.
PIPELINE_DEFAULTS = {"threshold": 0.9, "mask_threshold": 0.5, "overlap_mask_area_threshold": 0.5}


def _fit_linear(linear: torch.nn.Linear, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Set `linear` so that it maps the rows of `inputs` [N, d] to `targets` [N, k] (least squares)."""
    centre = inputs.mean(0)
    weight = torch.linalg.lstsq(inputs - centre, targets - targets.mean(0)).solution.T  # [k, d]
    linear.weight.copy_(weight)
    linear.bias.copy_(targets.mean(0) - weight @ centre)


def decisive_segmenter() -> tuple[DetrHfForSegmentation, DetrHfImageProcessor]:
    """A tiny random model made to segment: on a textured 420x560 image, 6 of its 8 queries are confident
    (p > 0.99) of 4 different classes, they attend to different places, and mask logits spread over ±10."""
    torch.manual_seed(0)
    config = tiny_config(
        encoder_attention_heads=8, decoder_attention_heads=8, num_queries=8, num_labels=4, id2label=LABELS
    )
    model = DetrHfForSegmentation(config).eval()
    randomize_feature_norms(model, 1)
    processor = DetrHfImageProcessor(size={"shortest_edge": 96, "longest_edge": 128})
    inputs = processor(images=[textured_image(420, 560, 3)], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state[0]  # [Q, d]
        targets = torch.full((len(QUERY_CLASSES), len(LABELS) + 1), -4.0)
        for query, label in enumerate(QUERY_CLASSES):
            targets[query, label] = 4.0 + query % 3
        _fit_linear(model.class_labels_classifier, hidden, targets)
        # Distinct attention queries, and attention maps strong enough to move the masks.
        gen = torch.Generator().manual_seed(1)
        _fit_linear(model.bbox_attention.q_proj, hidden, 3 * torch.randn(hidden.shape, generator=gen))
        model.mask_head.blocks[0].conv.weight[:, config.d_model :].mul_(100)
        masks = model(**inputs).pred_masks
        model.mask_head.output_conv.weight.mul_(10 / masks.std())
        model.mask_head.output_conv.bias.sub_(10 * masks.mean() / masks.std())
    return model, processor


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """(model, processor, saved folder, [PIL image, PNG path, EXIF-rotated JPEG path])."""
    model, processor = decisive_segmenter()
    root = tmp_path_factory.mktemp("segpipe")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    image = PIL.Image.fromarray(textured_image(420, 560, 3))
    PIL.Image.fromarray(textured_image(333, 480, 4)).save(root / "street.png")
    # Stored 360x640 with orientation 6: upright it is 640 high and 360 wide.
    save_exif_jpeg(root / "rotated.jpg", textured_image(360, 640, 5), orientation=6)
    return model, processor, root / "model", [image, str(root / "street.png"), str(root / "rotated.jpg")]


_OUTPUTS: dict[tuple[int, int | str], tuple[list, object]] = {}


def _direct_outputs(model, processor, image) -> tuple[list[tuple[int, int]], object]:
    """([(height, width)] of the upright image, model outputs), computed once per model and image."""
    key = (id(model), image if isinstance(image, str) else id(image))
    if key not in _OUTPUTS:
        upright = image
        if isinstance(image, str):
            upright = PIL.ImageOps.exif_transpose(PIL.Image.open(image)).convert("RGB")
        with torch.no_grad():
            outputs = model(**processor(images=[upright], return_tensors="pt"))
        _OUTPUTS[key] = ([(upright.height, upright.width)], outputs)
    return _OUTPUTS[key]


def direct_results(model, processor, image, subtask: str, **thresholds) -> list[tuple]:
    """What the pipeline should return, from the processor and model called directly: (label, score, bool mask);
    `thresholds` default to the pipeline's own defaults."""
    size, outputs = _direct_outputs(model, processor, image)
    if subtask == "semantic":
        segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=size)[0].numpy()
        return [(LABELS[int(c)], None, segmentation == c) for c in np.unique(segmentation)]
    post_process = getattr(processor, f"post_process_{subtask}_segmentation")
    result = post_process(outputs, target_sizes=size, **(thresholds or PIPELINE_DEFAULTS))[0]
    segmentation = result["segmentation"].numpy()
    return [(LABELS[s["label_id"]], s["score"], segmentation == s["id"]) for s in result["segments_info"]]


def as_tuples(annotations: list[dict]) -> list[tuple]:
    return [(a["label"], a["score"], np.asarray(a["mask"]) > 0) for a in annotations]


def assert_same(got: list[tuple], expected: list[tuple], where: str) -> None:
    assert [(label, score) for label, score, _ in got] == [(label, score) for label, score, _ in expected], (
        where
    )
    for n, ((_, _, mask), (_, _, want)) in enumerate(zip(got, expected)):
        assert mask.shape == want.shape and np.array_equal(mask, want), f"{where}: mask {n}"


@pytest.mark.parametrize("subtask", SUBTASKS)
def test_pipeline_by_instance_equals_the_processor_post_processing(segmenter, subtask):
    model, processor, _, images = segmenter
    segment = pipeline("image-segmentation", model=model, image_processor=processor)
    results = segment(images, subtask=subtask)
    assert len(results) == len(images)
    upright_sizes = [(560, 420), (480, 333), (360, 640)]  # PIL (width, height); the JPEG is turned upright
    for image, size, got in zip(images, upright_sizes, results):
        assert_same(as_tuples(got), direct_results(model, processor, image, subtask), f"{subtask} {image}")
        assert all(a["mask"].size == size for a in got)
        assert got and all(np.asarray(a["mask"]).any() for a in got), (subtask, image)
        if subtask == "semantic":  # one mask per class present, together covering every pixel once
            assert (sum(np.asarray(a["mask"]) > 0 for a in got) == 1).all()
        else:  # non-trivial: no segment covers the whole image
            assert all(not np.asarray(a["mask"]).all() for a in got), (subtask, image)
    assert len({a["label"] for got in results for a in got}) >= 3, subtask
    if subtask == "panoptic":  # (instance runs the same code, without fusing)
        # Thresholds are forwarded: looser ones give other results (here more segments), equal again.
        looser = {"threshold": 0.6, "mask_threshold": 0.3, "overlap_mask_area_threshold": 0.2}
        got = as_tuples(segment(images[0], subtask=subtask, **looser))
        assert_same(got, direct_results(model, processor, images[0], subtask, **looser), f"{subtask} looser")
        assert len(got) >= len(results[0])


def test_pipeline_from_a_saved_folder_with_detr_hf_imported(segmenter):
    model, processor, folder, images = segmenter
    segment = pipeline("image-segmentation", model=str(folder))
    assert (
        type(segment.model) is DetrHfForSegmentation and type(segment.image_processor) is DetrHfImageProcessor
    )
    # No subtask: the pipeline picks panoptic first.
    got = segment(images[2])
    assert_same(as_tuples(got), direct_results(model, processor, images[2], "panoptic"), "folder")
    assert len(got) >= 2
    semantic = segment(images[1], subtask="semantic")
    assert_same(
        as_tuples(semantic), direct_results(model, processor, images[1], "semantic"), "folder semantic"
    )


def test_pipeline_on_a_detection_folder_initialises_the_mask_head_with_one_log_line(tmp_path, caplog):
    torch.manual_seed(0)
    DetrHfForObjectDetection(
        tiny_config(encoder_attention_heads=8, decoder_attention_heads=8)
    ).save_pretrained(tmp_path)
    DetrHfImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        segment = pipeline("image-segmentation", model=str(tmp_path))
    # One line from detr_hf, instead of transformers' table of every missing tensor; no processor warnings.
    said = [r.getMessage() for r in caplog.records if r.name.startswith(("detr_hf", "transformers"))]
    assert len(said) == 1 and "no mask head weights" in said[0] and str(tmp_path) in said[0], said
    assert type(segment.model) is DetrHfForSegmentation
    assert segment(PIL.Image.fromarray(textured_image(300, 410, 6)), subtask="semantic", threshold=0.0)
    # A detector tensor missing too: transformers' report is shown as it is, and no mask-head line.
    weights = load_file(tmp_path / "model.safetensors")
    del weights["class_labels_classifier.bias"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        DetrHfForSegmentation.from_pretrained(tmp_path)
    said = [r.getMessage() for r in caplog.records if r.name.startswith(("detr_hf", "transformers"))]
    assert any("LOAD REPORT" in m and "class_labels_classifier.bias" in m for m in said), said
    assert not [m for m in said if "no mask head weights" in m], said


@pytest.mark.slow
def test_remote_code_folder_without_detr_hf_loads_and_runs_the_pipeline(segmenter, tmp_path):
    model, processor, folder, images = segmenter
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageSegmentation"] == "modeling_detr_hf_segmentation.DetrHfForSegmentation"
    for name in ("modeling_detr_hf_segmentation.py", "mask_head.py", "mask_loss.py", "backbone.py",
                 "segmentation_post_processing.py"):  # fmt: skip
        assert (folder / name).is_file(), name
    pixel_values, pixel_mask = padded_batch()
    inputs_file = tmp_path / "inputs.pt"
    torch.save({"pixel_values": pixel_values, "pixel_mask": pixel_mask, "images": images[1:]}, inputs_file)

    got, classes = run_child(
        str(folder), tmp_path, inputs_file, {"HF_HUB_OFFLINE": "1"}, child=SEGMENTATION_CHILD
    )

    assert classes["loaded_detr_hf"] == []
    assert classes["model"].startswith("transformers_modules.") and classes["model"].endswith(
        "modeling_detr_hf_segmentation.DetrHfForSegmentation"
    )
    assert classes["pipeline_model"] == classes["model"]
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, pixel_mask=pixel_mask).pred_masks
    torch.testing.assert_close(got["pred_masks"], expected, rtol=0, atol=1e-6)
    for subtask in SUBTASKS:
        for n, image in enumerate(images[1:]):
            want = direct_results(
                model,
                processor,
                image,
                subtask,
            )
            result = classes["results"][subtask][n]
            masks = got[f"{subtask}_{n}"]
            assert_same(
                [(label, score, mask.numpy()) for (label, score), mask in zip(result, masks)],
                want,
                f"remote {subtask} {image}",
            )

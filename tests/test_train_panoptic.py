"""`--task panoptic` of the training scripts: masks through augmentation, panoptic samples and their errors, PQ
evaluation, the frozen-detector stage and saved folders that load as image-segmentation models."""

from __future__ import annotations

import json

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from detr_hf.data.panoptic_folder import load_panoptic_splits
from detr_hf.data.panoptic_samples import PanopticDataset
from detr_hf.data.transforms import build_train_transform, transform_segments
from detr_hf.panoptic_annotations import id_to_rgb, read_panoptic_png
from helpers import make_panoptic_coco_folder
from script_helpers import QUIET_RUN, TINY_FRESH_MODEL, load_script, save_tiny_checkpoint

SMALL_IMAGES = [
    "--augmentation", "detr", "--eval_size", "96", "--max_size", "160", "--train_scales", "80,96",
    "--crop_size_range", "48,96", "--crop_resize_scales", "64,96",
]  # fmt: skip
RUN = [
    *QUIET_RUN,
    "--per_device_train_batch_size",
    "2",
    "--per_device_eval_batch_size",
    "2",
    "--learning_rate",
    "1e-3",
]


@pytest.fixture(scope="module")
def panoptic_dir(tmp_path_factory):
    return make_panoptic_coco_folder(tmp_path_factory.mktemp("panoptic"))


def test_masks_move_with_the_image_through_detr_augmentation():
    """Each segment's pixels have the segment's own colour; after flips, resizes and crops every mask still
    covers pixels of its colour, and a segment cropped away is gone with its label."""
    height, width = 360, 520
    masks = torch.zeros(4, height, width, dtype=torch.bool)
    masks[0, :120], masks[1, 120:], masks[2, 40:100, 30:200], masks[3, 200:330, 400:500] = (
        True,
        True,
        True,
        True,
    )
    masks[0] &= ~masks[2]
    masks[1] &= ~masks[3]
    colours = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 20]], dtype=torch.uint8)
    pixels = torch.zeros(3, height, width, dtype=torch.uint8)
    for k in range(4):
        pixels[:, masks[k]] = colours[k][:, None]
    transform = build_train_transform(
        scales=[200, 240], max_size=400, crop_size_range=(100, 300), crop_resize_scales=[240]
    )
    labels = torch.tensor([101, 102, 1, 3])
    dropped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        image, new_masks, new_labels = transform_segments(transform, pixels, masks, labels, f"seed {seed}")
        assert new_masks.dtype == torch.bool and new_masks.shape[1:] == image.shape[1:]
        assert not (new_masks.sum(0) > 1).any()
        dropped += 4 - len(new_labels)
        for mask, label in zip(new_masks, new_labels):
            expected = colours[labels.tolist().index(int(label))].float()
            median = image[:, mask].float().median(dim=1).values
            assert torch.allclose(median, expected, atol=3), (seed, int(label), median)
    assert dropped > 0  # some crops removed a segment


def test_panoptic_samples_leave_crowd_out_and_keep_empty_images(panoptic_dir):
    train, val = load_panoptic_splits(str(panoptic_dir))
    dataset = PanopticDataset(train, None, split="train")
    first = dataset[0]
    record = train.records[0]
    crowd = [s for s in record["segments_info"] if s.get("iscrowd")]
    assert len(crowd) == 1
    labels = first["labels"]
    assert labels["masks"].shape == (len(record["segments_info"]) - 1, *first["image"].shape[1:])
    assert labels["class_labels"].tolist() == [
        train.category_ids.index(s["category_id"]) for s in record["segments_info"] if not s.get("iscrowd")
    ]
    # Boxes bound the masks (normalised cx, cy, w, h of the pixel extents).
    ys, xs = torch.nonzero(labels["masks"][0], as_tuple=True)
    h, w = first["image"].shape[1:]
    box = torch.tensor(
        [
            (xs.min() + xs.max() + 1) / 2 / w,
            (ys.min() + ys.max() + 1) / 2 / h,
            (xs.max() + 1 - xs.min()) / w,
            (ys.max() + 1 - ys.min()) / h,
        ]
    )
    assert torch.allclose(labels["boxes"][0], box, atol=1e-6)
    empty = dataset[len(dataset) - 1]["labels"]
    assert empty["masks"].shape[0] == 0 and empty["boxes"].shape == (0, 4)
    assert train.stuff_labels == [3, 4, 5] and val.categories == train.categories


def test_bad_panoptic_files_name_the_image(panoptic_dir, tmp_path):
    import shutil

    root = shutil.copytree(panoptic_dir, tmp_path / "bad")
    train, _ = load_panoptic_splits(str(root))
    record = train.records[1]
    (train.masks_dir / record["file_name"]).unlink()
    dataset = PanopticDataset(train, None)
    with pytest.raises(
        FileNotFoundError, match=rf"image_id={record['image_id']}\).*{record['file_name']}' does not exist"
    ):
        dataset[1]
    record = train.records[0]
    ids = read_panoptic_png(train.masks_dir / record["file_name"], "test")
    ids[100:110, 100:110] = 4242  # an id segments_info does not list
    PIL.Image.fromarray(id_to_rgb(ids)).save(train.masks_dir / record["file_name"])
    with pytest.raises(ValueError, match=rf"image_id={record['image_id']}.*not listed \[4242\]"):
        dataset[0]


def _eval_results(out) -> dict:
    return json.loads((out / "eval_results.json").read_text())


@pytest.mark.slow
def test_accelerate_two_stage_panoptic_on_a_coco_folder(panoptic_dir, tmp_path, fresh_accelerate_state):
    """From a detection checkpoint, the detector stays bit-identical and only the mask head trains; PQ is
    written; the folder loads with AutoModelForImageSegmentation."""
    from transformers import AutoModelForImageSegmentation

    import detr_hf  # noqa: F401

    labels = {0: "square", 1: "circle", 2: "triangle", 3: "sky", 4: "wall", 5: "ground"}
    checkpoint = save_tiny_checkpoint(
        tmp_path / "detector", labels, {"shortest_edge": 96, "longest_edge": 160}
    )
    before = load_file(checkpoint / "model.safetensors")
    train = load_script("train")
    out = tmp_path / "frozen"
    argv = [
        "--task",
        "panoptic",
        "--coco_dir",
        str(panoptic_dir),
        "--model_name_or_path",
        str(checkpoint),
        *RUN,
        *SMALL_IMAGES,
    ]
    train.main(
        [
            *argv,
            "--output_dir",
            str(out),
            "--max_train_steps",
            "3",
            "--checkpointing_steps",
            "1",
            "--checkpoints_total_limit",
            "3",
        ]
    )
    after = load_file(out / "model.safetensors")
    head = [k for k in after if k.startswith(("bbox_attention.", "mask_head."))]
    assert head and set(after) - set(head) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    first = load_file(out / "checkpoints" / "step_00000001" / "model.safetensors")
    assert any(not torch.equal(after[k], first[k]) for k in head)  # the mask head trains
    metrics = _eval_results(out)
    assert {"PQ", "SQ", "RQ", "PQ_th", "PQ_st", "num_images"} <= set(metrics) and metrics["num_images"] == 2
    assert 0.0 <= metrics["PQ"] <= 1.0 or metrics["PQ"] == -1.0
    settings = json.loads((out / "training_config.json").read_text())
    assert settings["task"] == "panoptic" and settings["recipe"] == "panoptic-finetune"
    assert settings["model"]["trainable_parameters"] == sum(after[k].numel() for k in head)
    assert type(AutoModelForImageSegmentation.from_pretrained(out)).__name__ == "DetrHfForSegmentation"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train", "train_trainer"])
def test_both_scripts_train_panoptic_on_synthetic_and_coco_data(
    script, panoptic_dir, tmp_path, fresh_accelerate_state
):
    module = load_script(script)
    quiet = (
        [*RUN, "--checkpointing_steps", "no"]
        if script == "train"
        else [a for a in RUN if a != "--no_progress_bar"] + ["--save_strategy", "no"]
    )
    common = ["--task", "panoptic", *TINY_FRESH_MODEL, *quiet, "--max_train_steps", "2"]
    synthetic = tmp_path / "synthetic"
    module.main(
        [*common, "--output_dir", str(synthetic), "--synthetic_train_size", "4", "--synthetic_val_size", "3"]
    )
    prefix = "" if script == "train" else "eval_"
    found = _eval_results(synthetic)
    assert found[f"{prefix}num_images"] == 3 and 0.0 <= found[f"{prefix}SQ"] <= 1.0
    assert (synthetic / "synthetic_panoptic").is_dir()
    coco = tmp_path / "coco"
    module.main([*common, *SMALL_IMAGES, "--coco_dir", str(panoptic_dir), "--output_dir", str(coco)])
    metrics = _eval_results(coco)
    assert metrics[f"{prefix}num_images"] == 2 and f"{prefix}PQ_st" in metrics

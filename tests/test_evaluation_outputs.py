"""Both training scripts leave files pycocotools re-checks: COCOeval on the original annotation json (or the
written references) and eval_predictions.json gives exactly eval_results.json, crowd regions included."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from detr_hf.data.schema import detection_features
from detr_hf.evaluation import COCO_METRIC_NAMES
from helpers import CPPE5_NAMES, cppe5_rows, make_coco_folder, pycocotools_stats
from script_helpers import TINY_TRAINING_ARGV, coco_folder_argv, load_script

SMALL = ["--eval_size", "160", "--max_size", "256", "--augmentation", "none", "--per_device_train_batch_size", "2",
         "--per_device_eval_batch_size", "3", "--learning_rate", "1e-3"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _check(out, annotation_file, prefix: str = "") -> list[dict]:
    results = json.loads((out / "eval_results.json").read_text())
    predictions = json.loads((out / "eval_predictions.json").read_text())
    ours = [results[prefix + name] for name in COCO_METRIC_NAMES]
    np.testing.assert_allclose(ours, pycocotools_stats(annotation_file, out / "eval_predictions.json"), rtol=0, atol=1e-9)
    return predictions


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco_folder(tmp_path_factory.mktemp("coco"), num_train=4, num_val=4)


@pytest.mark.slow
def test_accelerate_script_on_a_coco_folder(coco, tmp_path):
    train = load_script("train")
    argv = [*TINY_TRAINING_ARGV, "--no_progress_bar", *coco_folder_argv(coco), *SMALL, "--output_dir", str(tmp_path),
            "--max_train_steps", "2", "--eval_every_epochs", "0", "--checkpointing_steps", "no"]  # fmt: skip
    train.main(argv)
    predictions = _check(tmp_path, coco.annotation_files["val"])
    val = coco.coco["val"]
    assert {p["image_id"] for p in predictions} == {img["id"] for img in val["images"]}
    assert {p["category_id"] for p in predictions} <= {1, 3, 7, 18}
    sizes = {img["id"]: (img["width"], img["height"]) for img in val["images"]}
    for p in predictions:  # boxes in the original (upright) pixels
        width, height = sizes[p["image_id"]]
        x, y, w, h = p["bbox"]
        assert x >= -1e-3 and x + w <= width + 1e-3 and y >= -1e-3 and y + h <= height + 1e-3
    assert not (tmp_path / "eval_references.json").exists()  # the annotation file is the reference


@pytest.mark.slow
def test_trainer_script_on_a_coco_folder(coco, tmp_path):
    trainer = load_script("train_trainer")
    argv = [*TINY_TRAINING_ARGV, *coco_folder_argv(coco), *SMALL, "--output_dir", str(tmp_path), "--max_steps", "2",
            "--use_cpu", "--save_strategy", "no", "--eval_strategy", "no"]  # fmt: skip
    trainer.main(argv)
    predictions = _check(tmp_path, coco.annotation_files["val"], prefix="eval_")
    assert {p["image_id"] for p in predictions} == {img["id"] for img in coco.coco["val"]["images"]}


@pytest.mark.slow
def test_accelerate_script_on_a_saved_dataset_writes_its_references(tmp_path):
    features = detection_features(CPPE5_NAMES)
    data = tmp_path / "cppe5"
    datasets.DatasetDict(
        train=datasets.Dataset.from_list(cppe5_rows(4, 0), features=features),
        validation=datasets.Dataset.from_list(cppe5_rows(3, 1), features=features),
    ).save_to_disk(str(data))
    out = tmp_path / "out"
    argv = [*TINY_TRAINING_ARGV, "--no_progress_bar", "--dataset_name", str(data), *SMALL, "--output_dir", str(out),
            "--max_train_steps", "2", "--eval_every_epochs", "0", "--checkpointing_steps", "no"]  # fmt: skip
    load_script("train").main(argv)
    references = json.loads((out / "eval_references.json").read_text())
    assert [img["id"] for img in references["images"]] == [500, 501, 502]
    assert [c["id"] for c in references["categories"]] == [0, 1, 2, 3, 4]
    rows = cppe5_rows(3, 1)
    assert [a["area"] for a in references["annotations"]] == pytest.approx([a for r in rows for a in r["objects"]["area"]])
    _check(out, out / "eval_references.json")

"""examples/train.py (Accelerate): overfitting, exact resume, two-process DDP evaluation, bad dataset rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from detr_hf import DetrHfForObjectDetection
from detr_hf.data import make_synthetic_dataset
from detr_hf.data.schema import detection_features
from detr_hf.data.transforms import build_eval_transform, build_train_transform
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor
from detr_hf.training import (
    COMPLETE_MARKER,
    DetectionCollator,
    DetectionDataset,
    build_param_groups,
    evaluate_coco,
    find_latest_checkpoint,
)
from detr_hf.training.data import check_categories
from helpers import tiny_config
from script_helpers import ROOT, TINY_MODEL_ARGS, load_script


@pytest.fixture(scope="module")
def train_script():
    return load_script("train")


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def test_a_few_steps_overfit_a_fixed_batch():
    torch.manual_seed(0)
    model = DetrHfForObjectDetection(tiny_config(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0))
    data = DetectionDataset(make_synthetic_dataset(4, seed=3), build_eval_transform(64, 96))
    batch = DetectionCollator(DetrHfImageProcessor())([data[i] for i in range(4)])
    optimizer = torch.optim.AdamW(build_param_groups(model, 1e-3, 1e-4, 1e-4))
    losses = []
    for _ in range(40):
        out = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(out.loss))
    assert losses[-1] < 0.6 * losses[0], losses


def test_param_groups_give_the_backbone_its_own_lr():
    model = DetrHfForObjectDetection(tiny_config())
    groups = build_param_groups(model, 1e-4, 1e-5, 1e-4)
    by_name = {g["name"]: g for g in groups}
    backbone_ids = {id(p) for p in model.model.backbone.parameters() if p.requires_grad}
    assert {id(p) for p in by_name["backbone"]["params"]} == backbone_ids
    assert by_name["backbone"]["lr"] == 1e-5 and by_name["transformer_and_heads"]["lr"] == 1e-4
    total = sum(len(g["params"]) for g in groups)
    assert total == sum(1 for p in model.parameters() if p.requires_grad)


def _run(train_script, out: Path, *extra: str) -> dict:
    argv = [
        *TINY_MODEL_ARGS, "--output_dir", str(out), "--synthetic_train_size", "20", "--synthetic_val_size", "6",
        "--per_device_train_batch_size", "4", "--augmentation", "detr", "--dropout", "0.1",
        "--eval_every_epochs", "0", "--checkpointing_steps", "3", "--checkpoints_total_limit", "0",
        "--max_train_steps", "8", "--learning_rate", "1e-3", "--lr_scheduler", "cosine", "--warmup_steps", "2",
        *extra,
    ]  # fmt: skip
    return train_script.main(argv)


@pytest.mark.parametrize("accumulation, ema", [("1", "0"), ("2", "0"), ("1", "0.9")])
def test_resume_reaches_bit_identical_weights(train_script, tmp_path, accumulation, ema):
    # 20 images / batch 4 = 5 batches per epoch: the checkpoint at optimiser step 3 is mid-epoch
    # (accumulation 1) or in the second epoch (accumulation 2: 3 steps per epoch). With the weight EMA, the
    # saved model is the average, restored from the checkpoint.
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _run(train_script, full, "--gradient_accumulation_steps", accumulation, "--ema_decay", ema)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003")
    marker = json.loads((resumed / "checkpoints" / "step_00000003" / COMPLETE_MARKER).read_text())
    assert marker["step"] == 3
    _run(train_script, resumed, "--gradient_accumulation_steps", accumulation, "--resume_from_checkpoint", "latest", "--ema_decay", ema)

    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    start = load_file(full / "checkpoints" / "step_00000003" / "model.safetensors")
    assert any(not torch.equal(start[k], a[k]) for k in a), "training after the checkpoint changed nothing"
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history_full = json.loads((full / "train_results.json").read_text())
    history_resumed = json.loads((resumed / "train_results.json").read_text())
    assert history_full["completed_steps"] == history_resumed["completed_steps"] == 8
    if ema != "0":
        _check_ema_run(full, start)


def _check_ema_run(out: Path, raw_at_3: dict) -> None:
    """The EMA is checkpointed (not the raw weights), and the saved average is a plain detr_hf model:
    it loads without missing/unexpected keys and re-saves to the same bytes."""
    averaged_at_3 = torch.load(out / "checkpoints" / "step_00000003" / "custom_checkpoint_2.pkl", weights_only=False)
    assert averaged_at_3["decay"] == 0.9
    assert any(not torch.equal(averaged_at_3["weights"][k], raw_at_3[k]) for k in raw_at_3)
    model, info = DetrHfForObjectDetection.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.save_pretrained(out / "resaved")
    assert (out / "resaved" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert json.loads((out / "training_config.json").read_text())["optimisation"]["ema_decay"] == 0.9


def test_incomplete_checkpoints_are_never_resumed(train_script, tmp_path):
    out = tmp_path / "run"
    _run(train_script, out, "--max_train_steps", "3")
    ckpts = out / "checkpoints"
    fake = ckpts / "step_00000009"
    shutil.copytree(ckpts / "step_00000003", fake)
    (fake / COMPLETE_MARKER).unlink()  # looks like a save killed before its marker
    shutil.copytree(ckpts / "step_00000003", ckpts / ".tmp-step_00000012")
    assert find_latest_checkpoint(ckpts).name == "step_00000003"
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        _run(train_script, out, "--resume_from_checkpoint", str(fake))


def _bad_rows_dataset(path: Path) -> None:
    good = make_synthetic_dataset(10, seed=1)
    rows = good.to_list()
    rows[1]["objects"] = {"id": [], "area": [], "bbox": [], "category": []}  # no objects
    rows[2]["objects"]["bbox"][0] = [-10.0, -5.0, 200.0, 30.0]  # reaches outside the image
    rows[3]["objects"]["bbox"][0] = [70.0, 70.0, 5.0, 5.0]  # entirely outside
    rows[4]["image"] = {"bytes": b"definitely not an image", "path": None}  # corrupt file
    features = detection_features(["square", "circle", "triangle"])
    train = datasets.Dataset.from_list(rows, features=features)
    val = make_synthetic_dataset(4, seed=2, first_image_id=100)
    datasets.DatasetDict(train=train, validation=val).save_to_disk(str(path))


def test_bad_rows_are_skipped_or_repaired_with_counts(train_script, tmp_path, caplog):
    data_dir = tmp_path / "bad_data"
    _bad_rows_dataset(data_dir)
    out = tmp_path / "run"
    argv = [
        *TINY_MODEL_ARGS, "--recipe", "demo", "--dataset_name", str(data_dir), "--output_dir", str(out),
        "--per_device_train_batch_size", "5", "--num_train_epochs", "2", "--checkpointing_steps", "no",
    ]  # fmt: skip
    with caplog.at_level("WARNING"):
        metrics = train_script.main(argv)
    results = json.loads((out / "train_results.json").read_text())
    assert results["completed_steps"] == 4
    assert results["unreadable_images"] == 2  # row 4, once per epoch
    assert results["fixed_boxes"] == 4  # rows 2 and 3, once per epoch
    assert "unreadable image" in caplog.text and "outside the image" in caplog.text
    assert metrics["num_images"] == 4


def test_unknown_categories_fail_before_training():
    data = make_synthetic_dataset(6, seed=0)
    with pytest.raises(ValueError, match=r"train split, row \d+: objects.category \[2\]"):
        check_categories(data.cast(data.features), 2, "train")


def test_seeded_augmentation_does_not_depend_on_global_rng():
    data = DetectionDataset(make_synthetic_dataset(4, seed=0), build_train_transform((48, 64, 80), 120, (30, 60)), seed=7)
    torch.manual_seed(1)
    first = data[(2, 3)]
    torch.manual_seed(999)
    again = data[(2, 3)]
    other_epoch = data[(3, 3)]
    assert torch.equal(first["image"], again["image"])
    assert all(torch.equal(first["labels"][k], again["labels"][k]) for k in first["labels"])
    assert not (first["image"].shape == other_epoch["image"].shape and torch.equal(first["image"], other_epoch["image"]))


@pytest.mark.slow
def test_two_process_run_matches_one_process_evaluation(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(ROOT / "examples" / "train.py"), *TINY_MODEL_ARGS, "--output_dir", str(out),
        "--synthetic_train_size", "16", "--synthetic_val_size", "11", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "3", "--max_train_steps", "6", "--learning_rate", "1e-3",
        "--checkpointing_steps", "no", "--eval_every_epochs", "0", "--ema_decay", "0.9",
    ]  # fmt: skip
    # With the weight EMA: every process averages the same synced weights; evaluated and saved is the average.
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp = json.loads((out / "eval_results.json").read_text())
    assert json.loads((out / "train_results.json").read_text())["num_processes"] == 2

    model = DetrHfForObjectDetection.from_pretrained(out).eval()
    processor = DetrHfImageProcessor.from_pretrained(out)
    val = make_synthetic_dataset(11, seed=42, first_image_id=16)
    data = DetectionDataset(val, build_eval_transform(64, 96), split="validation")
    loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=DetectionCollator(processor))
    single_predictions: list = []
    single = evaluate_coco(model, loader, processor, predictions_out=single_predictions)
    assert ddp["num_images"] == single["num_images"] == 11
    # Every image's detections (what the metric is computed from) agree, not only the summary numbers.
    ddp_predictions = json.loads((out / "eval_predictions.json").read_text())  # COCO results format
    assert [(p["image_id"], p["category_id"]) for p in ddp_predictions] == [
        (p["image_id"], p["category_id"]) for p in single_predictions
    ]
    assert sorted({p["image_id"] for p in single_predictions}) == list(range(16, 27))
    np.testing.assert_allclose([p["score"] for p in ddp_predictions], [p["score"] for p in single_predictions], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([p["bbox"] for p in ddp_predictions], [p["bbox"] for p in single_predictions], rtol=1e-5, atol=1e-4)
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key
    assert np.isfinite(ddp["eval_loss"])


def _short_run(out: Path, *extra: str) -> list[str]:
    return [
        *TINY_MODEL_ARGS, "--output_dir", str(out), "--synthetic_train_size", "8", "--synthetic_val_size", "4",
        "--per_device_train_batch_size", "4", "--eval_every_epochs", "0", "--checkpointing_steps", "epoch",
        "--checkpoints_total_limit", "0", *extra,
    ]  # fmt: skip


def test_a_run_ending_on_an_epoch_boundary_counts_and_checkpoints_that_epoch(train_script, tmp_path):
    out = tmp_path / "run"
    train_script.main(_short_run(out, "--max_train_steps", "4"))  # 2 steps per epoch: ends with epoch 2
    results = json.loads((out / "train_results.json").read_text())
    assert results["completed_steps"] == 4 and results["epochs"] == 2 and results["stopped_by"] == "max_train_steps"
    marker = json.loads((out / "checkpoints" / "step_00000004" / COMPLETE_MARKER).read_text())
    assert marker == {"step": 4, "epoch": 2, "batches_in_epoch": 0}
    assert (out / "checkpoints" / "step_00000002").is_dir()


def test_the_time_budget_ends_training_and_says_so(train_script, tmp_path, monkeypatch, caplog):
    # The budget runs out after the 2nd step, the last batch of epoch 1: that epoch counts and is checkpointed.
    calls = {"n": 0}

    def out_of_time(self):
        calls["n"] += 1
        return calls["n"] >= 2

    monkeypatch.setattr(train_script.TrainProgress, "out_of_time", out_of_time)
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        train_script.main(_short_run(out, "--max_train_steps", "100", "--time_budget_minutes", "5"))
    results = json.loads((out / "train_results.json").read_text())
    assert results["completed_steps"] == 2 and results["epochs"] == 1 and results["stopped_by"] == "time budget"
    assert "the time budget of 5 minutes ended training after 2 of 100 steps (epoch 1" in caplog.text
    assert json.loads((out / "checkpoints" / "step_00000002" / COMPLETE_MARKER).read_text())["epoch"] == 1
    settings = json.loads((out / "training_config.json").read_text())
    assert settings["steps"]["stops_at"] == "100 steps or 5 minutes, whichever first"

"""examples/train_trainer.py: the HF Trainer trains a tiny DETR (with the weight EMA) and reports COCO mAP."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import EvalPrediction

from detr_hf.coco_evaluation import compute_coco_map
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor
from script_helpers import TINY_MODEL_ARGS, load_script


def test_trainer_trains_and_reports_coco_map(tmp_path):
    script = load_script("train_trainer")
    tiny = [a for a in TINY_MODEL_ARGS if a != "--no_progress_bar"]
    metrics = script.main(
        [
            *tiny, "--output_dir", str(tmp_path), "--synthetic_train_size", "16", "--synthetic_val_size", "6",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--max_steps", "4",
            "--use_cpu", "--save_strategy", "steps", "--save_steps", "4", "--eval_strategy", "no",
            "--logging_steps", "1", "--ema_decay", "0.9",
        ]
    )  # fmt: skip
    # --ema_decay: the checkpoint holds the raw weights and the average; the final model is the average.
    raw = load_file(tmp_path / "checkpoint-4" / "model.safetensors")
    averaged = torch.load(tmp_path / "checkpoint-4" / "ema_state.pt", weights_only=True)["weights"]
    final = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(final[k], averaged[k]) for k in final)
    assert any(not torch.equal(final[k], raw[k]) for k in final)
    for key in ("eval_AP", "eval_AP50", "eval_AR100", "eval_loss"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert json.loads((tmp_path / "eval_results.json").read_text())["eval_AP"] == metrics["eval_AP"]
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "preprocessor_config.json").is_file()


def test_compute_metrics_maps_boxes_to_original_pixels():
    """Per-batch predictions equal to the ground truth give AP 1, also when images were resized."""
    script = load_script("train_trainer")
    metric = script.CocoMetrics(DetrHfImageProcessor())
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.2], [0.2, 0.3, 0.1, 0.1]]])  # normalised cxcywh
    logits = torch.full((1, 2, 4), -10.0)
    logits[0, 0, 1] = 10.0
    logits[0, 1, 2] = 10.0
    labels = [{"boxes": boxes[0], "class_labels": torch.tensor([1, 2]), "orig_size": torch.tensor([300, 500])}]
    batches = EvalPrediction(predictions=[(logits.numpy(), boxes.numpy())], label_ids=[labels])
    result = metric(batches)
    assert result["AP"] == 1.0
    reference = {"boxes": [[150.0, 120.0, 350.0, 180.0], [75.0, 75.0, 125.0, 105.0]], "labels": [1, 2]}
    prediction = {"boxes": reference["boxes"], "scores": [0.9, 0.9], "labels": [1, 2]}
    assert compute_coco_map([prediction], [reference])["AP"] == result["AP"]

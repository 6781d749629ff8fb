"""CocoTrainerMetrics: the Trainer's compute_metrics scores on the split's ground truth, even from cut labels."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import EvalPrediction

from detr_hf.box_ops import normalize_boxes
from detr_hf.data import DetectionDataset
from detr_hf.data.schema import detection_features
from detr_hf.evaluation import CocoTrainerMetrics
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor
from helpers import CPPE5_NAMES, cppe5_rows


def _perfect_outputs(rows: list[dict], num_queries: int = 8):
    """Logits and boxes predicting every true object exactly (class ids are ClassLabel indices)."""
    logits = torch.full((len(rows), num_queries, len(CPPE5_NAMES) + 1), -10.0)
    boxes = torch.full((len(rows), num_queries, 4), 0.5)
    for b, row in enumerate(rows):
        for q, (box, category) in enumerate(zip(row["objects"]["bbox"], row["objects"]["category"])):
            x, y, w, h = box
            xyxy = torch.tensor([[x, y, x + w, y + h]])
            boxes[b, q] = normalize_boxes(xyxy, row["height"], row["width"])[0]
            logits[b, q, category] = 10.0
    return logits, boxes


def test_perfect_detections_score_one_even_when_accelerate_cut_the_labels():
    rows = cppe5_rows(3, 2)
    dataset = DetectionDataset(datasets.Dataset.from_list(rows, features=detection_features(CPPE5_NAMES)), None)
    logits, boxes = _perfect_outputs(rows)
    labels = [{"image_id": torch.tensor([r["image_id"]]), "orig_size": torch.tensor([r["height"], r["width"]])} for r in rows]
    labels[2]["orig_size"] = labels[2]["orig_size"][:1]  # what gather_for_metrics does to a remainder of 1
    metric = CocoTrainerMetrics(DetrHfImageProcessor(), dataset)
    predictions = [(logits[:2].numpy(), boxes[:2].numpy()), (logits[2:].numpy(), boxes[2:].numpy())]
    result = metric(EvalPrediction(predictions=predictions, label_ids=[labels[:2], labels[2:]]))
    assert result["AP"] == pytest.approx(1.0) and result["num_images"] == 3
    assert {r["image_id"] for r in metric.last_results} == {500, 501, 502}
    assert len(metric.last_results) == 3 * 8

"""COCO evaluation in one place: the official box protocol, the metric, the evaluation loop and its files."""

from detr_hf.evaluation.coco_metric import (
    CocoMeanAveragePrecision,
    compute_coco_map,
    normalize_prediction,
    normalize_reference,
)
from detr_hf.evaluation.coco_protocol import COCO_METRIC_NAMES, detections_to_results, evaluate_results
from detr_hf.evaluation.ground_truth import coco_ground_truth, ground_truth_of
from detr_hf.evaluation.loop import evaluate_coco, predictions_to_original
from detr_hf.evaluation.outputs import PREDICTIONS_FILE, REFERENCES_FILE, write_evaluation_files
from detr_hf.evaluation.trainer_metrics import CocoTrainerMetrics

__all__ = [
    "COCO_METRIC_NAMES",
    "PREDICTIONS_FILE",
    "REFERENCES_FILE",
    "CocoMeanAveragePrecision",
    "CocoTrainerMetrics",
    "coco_ground_truth",
    "compute_coco_map",
    "detections_to_results",
    "evaluate_coco",
    "evaluate_results",
    "ground_truth_of",
    "normalize_prediction",
    "normalize_reference",
    "predictions_to_original",
    "write_evaluation_files",
]

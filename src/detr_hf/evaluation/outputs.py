"""The files an evaluation leaves: `eval_predictions.json` (COCO results) and, when the split is not a COCO
annotation file, `eval_references.json` (its COCO ground truth), so pycocotools can re-check the numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from detr_hf.evaluation.ground_truth import ground_truth_of

__all__ = ["PREDICTIONS_FILE", "REFERENCES_FILE", "write_evaluation_files"]

PREDICTIONS_FILE = "eval_predictions.json"
REFERENCES_FILE = "eval_references.json"


def write_evaluation_files(output_dir: str | os.PathLike, results: list[dict], dataset: Any) -> list[Path]:
    """Write the COCO results of an evaluation of `dataset` (a `DetectionDataset`), plus its ground truth
    unless it is a COCO folder (whose annotation file already is); returns the paths written."""
    output_dir = Path(output_dir)
    written = [output_dir / PREDICTIONS_FILE]
    written[0].write_text(json.dumps(results))
    if not hasattr(dataset.dataset, "coco"):
        written.append(output_dir / REFERENCES_FILE)
        written[1].write_text(json.dumps(ground_truth_of(dataset)))
    return written

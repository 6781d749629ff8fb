"""Moved names keep working for one release from their old modules, with a DeprecationWarning."""

from __future__ import annotations

import importlib

import pytest

import detr_hf.data
import detr_hf.evaluation

MOVED = [
    ("detr_hf.coco_evaluation", "compute_coco_map", detr_hf.evaluation),
    ("detr_hf.coco_evaluation", "CocoMeanAveragePrecision", detr_hf.evaluation),
    ("detr_hf.training.evaluation", "evaluate_coco", detr_hf.evaluation),
    ("detr_hf.training", "evaluate_coco", detr_hf.evaluation),
    ("detr_hf.training", "DetectionCollator", detr_hf.data),
    ("detr_hf.training", "DetectionDataset", detr_hf.data),
    ("detr_hf.training.data", "load_detection_splits", detr_hf.data),
    ("detr_hf.training.data", "check_categories", detr_hf.data),
    ("detr_hf.training.collate", "DetectionCollator", detr_hf.data),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_old_import_path_warns_and_gives_the_same_object(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} moved to {new.__name__}.{name}"):
        value = getattr(module, name)
    assert value is getattr(new, name)


def test_unknown_names_still_fail():
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        importlib.import_module("detr_hf.training").__getattr__("nothing_here")

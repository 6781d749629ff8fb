"""Old import paths of moved names keep working for one release, with a DeprecationWarning naming the new home."""

from __future__ import annotations

import importlib

import pytest

import detr_hf.data
import detr_hf.evaluation
import detr_hf.extra_queries
import detr_hf.extra_query_loss
import detr_hf.targets


@pytest.mark.parametrize(
    ("old_module", "old_name", "new_module", "new_name"),
    [
        ("detr_hf.matcher", "NonFinitePredictionError", detr_hf.targets, "NonFinitePredictionError"),
        ("detr_hf.matcher", "PackedTargets", detr_hf.targets, "PackedTargets"),
        ("detr_hf.matcher", "pack_targets", detr_hf.targets, "pack_targets"),
        ("detr_hf.matcher", "check_predictions_finite", detr_hf.targets, "check_predictions_finite"),
        ("detr_hf.matcher", "check_prediction_shapes", detr_hf.targets, "check_prediction_shapes"),
        ("detr_hf.training_queries", "TrainingQueries", detr_hf.extra_queries, "ExtraQueries"),
        ("detr_hf.training_queries", "TrainingQueryLayout", detr_hf.extra_queries, "ExtraQueryLayout"),
        ("detr_hf.training_queries", "training_query_mask", detr_hf.extra_queries, "extra_query_mask"),
        ("detr_hf.training_queries", "noise_boxes", detr_hf.extra_queries, "noise_boxes"),
        ("detr_hf.training_query_loss", "training_query_loss", detr_hf.extra_query_loss, "extra_query_loss"),
        ("detr_hf.training_query_loss", "denoising_loss", detr_hf.extra_query_loss, "denoising_loss"),
    ],
)  # fmt: skip
def test_old_path_warns_and_gives_the_moved_object(old_module, old_name, new_module, new_name):
    module = importlib.import_module(old_module)
    with pytest.warns(DeprecationWarning, match=rf"{old_module}\.{old_name} moved to {new_module.__name__}\.{new_name}"):
        value = getattr(module, old_name)
    assert value is getattr(new_module, new_name)


def test_from_import_of_an_old_name_warns():
    with pytest.warns(DeprecationWarning, match="detr_hf.targets.NonFinitePredictionError"):
        from detr_hf.matcher import NonFinitePredictionError
    with pytest.raises(NonFinitePredictionError):
        raise detr_hf.targets.NonFinitePredictionError("caught by the old name")


def test_unknown_names_still_raise_attribute_error():
    import detr_hf.matcher

    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        detr_hf.matcher.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        from detr_hf.training_queries import TrainingQueryThing  # noqa: F401

# Names moved into the data and evaluation packages.

MOVED_PACKAGES = [
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


@pytest.mark.parametrize(("old", "name", "new"), MOVED_PACKAGES)
def test_old_import_path_warns_and_gives_the_same_object(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} moved to {new.__name__}.{name}"):
        value = getattr(module, name)
    assert value is getattr(new, name)


def test_unknown_names_still_fail():
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        importlib.import_module("detr_hf.training").__getattr__("nothing_here")

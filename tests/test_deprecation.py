"""Old import paths of moved names keep working for one release, with a DeprecationWarning naming the new home."""

from __future__ import annotations

import importlib

import pytest

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

"""The loss-input contract: packing and validating label dicts, checks on stacked predictions."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from detr_hf.targets import (
    NonFinitePredictionError,
    check_predictions_finite,
    check_stacked_predictions,
    layer_names,
    pack_targets,
    stack_layer_predictions,
)
from loss_problems import random_labels, random_predictions

NUM_LABELS = 91  # COCO-style raw ids: 1..90 used, with gaps


def coco_like_labels() -> list[dict[str, torch.Tensor]]:
    """A crowded image (60 objects, non-contiguous COCO ids), an empty image and a one-object image."""
    gen = torch.Generator().manual_seed(0)
    crowded = random_labels(gen, [60], NUM_LABELS)[0]
    crowded["class_labels"] = torch.tensor([1, 3, 18, 44, 90] * 12)
    empty = {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    single = {"class_labels": torch.tensor([67]), "boxes": torch.tensor([[0.5, 0.5, 0.999, 0.2]])}
    return [crowded, empty, single]


def test_pack_concatenates_and_pads_every_image():
    labels = coco_like_labels()
    packed = pack_targets(labels, 3, NUM_LABELS, torch.device("cpu"), torch.float64)
    assert packed.counts == [60, 0, 1] and packed.batch_size == 3
    assert packed.class_labels.dtype == torch.int64 and packed.boxes.dtype == torch.float64
    assert torch.equal(packed.class_labels, torch.cat([t["class_labels"] for t in labels]))
    assert packed.padded_labels.shape == (3, 60) and packed.padded_boxes.shape == (3, 60, 4)
    assert torch.equal(packed.padded_labels[2, :1], torch.tensor([67]))
    torch.testing.assert_close(packed.padded_boxes[0], labels[0]["boxes"].double())
    # Padding boxes are valid boxes, so no matching cost is NaN.
    assert (packed.padded_boxes[1] == 0.5).all()


def test_packed_targets_are_immutable_and_tile_without_revalidating():
    packed = pack_targets(coco_like_labels(), 3, NUM_LABELS, torch.device("cpu"), torch.float32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        packed.counts = [1, 2, 3]
    tiled = packed.tile(2)
    assert tiled.counts == packed.counts * 2 and tiled.batch_size == 6
    assert torch.equal(tiled.padded_boxes[3:], packed.padded_boxes)
    assert torch.equal(tiled.class_labels, torch.cat([packed.class_labels] * 2))
    assert packed.tile(1) is packed
    assert packed.to(torch.float32) is packed
    assert packed.to(torch.float64).boxes.dtype == torch.float64


@pytest.mark.parametrize(
    ("mutate", "error", "pattern"),
    [
        (lambda lab: lab[2]["class_labels"].__setitem__(0, NUM_LABELS), ValueError, r"labels\[2\]\['class_labels'\]\[0\] = 91 .*0\.\.90"),
        (lambda lab: lab[0]["boxes"].__setitem__((37, 3), 0.0), ValueError, r"labels\[0\]\['boxes'\]\[37\]"),
        (lambda lab: lab[0]["boxes"].mul_(800), ValueError, r"labels\[0\]\['boxes'\]\[0\].*absolute pixels"),
        (lambda lab: lab[1].pop("class_labels"), ValueError, r"labels\[1\] is missing the key 'class_labels'"),
        (lambda lab: lab.append(lab[0]), ValueError, r"labels has 4 dicts but .* batch size 3"),
    ],
)  # fmt: skip
def test_bad_labels_name_the_image_and_box(mutate, error, pattern):
    labels = coco_like_labels()
    mutate(labels)
    with pytest.raises(error, match=pattern):
        pack_targets(labels, 3, NUM_LABELS, torch.device("cpu"), torch.float32)


def test_non_finite_predictions_name_the_layer_and_image():
    gen = torch.Generator().manual_seed(1)
    logits, boxes = random_predictions(gen, 3, 4, 10, 5)
    check_predictions_finite(logits, boxes, layer_names(3))
    boxes[1, 2, 7, 0] = float("nan")
    with pytest.raises(NonFinitePredictionError, match=r"pred_boxes of auxiliary output 1 .*image 2"):
        check_predictions_finite(logits, boxes, layer_names(3))
    # Finite values whose sum overflows are not an error.
    big = torch.full((1, 2, 3, 6), 3e38)
    check_predictions_finite(big, torch.rand(1, 2, 3, 4), layer_names(1))


def test_stacked_shape_errors():
    gen = torch.Generator().manual_seed(2)
    logits, boxes = random_predictions(gen, 2, 3, 10, 5)
    check_stacked_predictions(logits, boxes, 5)
    with pytest.raises(ValueError, match=r"stacked logits must have shape \[layers"):
        check_stacked_predictions(logits[0], boxes, 5)
    with pytest.raises(ValueError, match=r"num_labels \+ 1 = 7"):
        check_stacked_predictions(logits, boxes, 6)
    with pytest.raises(ValueError, match=r"pred_boxes of the last decoder layer must have shape"):
        check_stacked_predictions(logits, boxes[..., :2], 5)
    with pytest.raises(ValueError, match=r"2 layers but pred_boxes hold 1"):
        check_stacked_predictions(logits, boxes[:1], 5)


def test_stack_layer_predictions_orders_auxiliary_layers_first():
    gen = torch.Generator().manual_seed(3)
    logits, boxes = random_predictions(gen, 3, 2, 4, 5)
    aux = [{"logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
    got_logits, got_boxes = stack_layer_predictions(logits[-1], boxes[-1], aux, 5)
    assert torch.equal(got_logits, logits) and torch.equal(got_boxes, boxes)
    only_last = stack_layer_predictions(logits[-1], boxes[-1], None, 5)
    assert only_last[0].shape == (1, 2, 4, 6)
    with pytest.raises(ValueError, match=r"auxiliary output 1 \(decoder layer 1\) must be a dict"):
        stack_layer_predictions(logits[-1], boxes[-1], [aux[0], {"logits": logits[1]}], 5)


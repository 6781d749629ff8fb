"""DetrHfLoss: parity with transformers' DETR loss, empty targets, normalisation, input errors."""

from __future__ import annotations

import types

import pytest
import torch
from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss
from transformers.loss.loss_for_object_detection import HungarianMatcher as ReferenceMatcher

import detr_hf.criterion as criterion_module
from detr_hf.configuration_detr_hf import DetrHfConfig
from detr_hf.criterion import DetrHfLoss
from detr_hf.matcher import HungarianMatcher
from detr_hf.targets import pack_targets
from loss_problems import random_counts, random_labels, random_predictions

NUM_LABELS = 10


def make_loss(auxiliary_loss: bool = True) -> DetrHfLoss:
    return DetrHfLoss(NUM_LABELS, HungarianMatcher(1.0, 5.0, 2.0), 0.1, 5.0, 2.0, auxiliary_loss)


def split_layers(logits, boxes):
    """Stacked [L, B, Q, ...] → (last logits, last boxes, auxiliary_outputs list)."""
    aux = [{"logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
    return logits[-1], boxes[-1], aux


def problem(seed: int, counts: list[int], layers: int = 4, queries: int = 20, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits, box_logits = random_predictions(gen, layers, len(counts), queries, NUM_LABELS, dtype=dtype)
    box_logits = torch.logit(box_logits)
    return (
        logits.requires_grad_(True),
        box_logits.requires_grad_(True),
        random_labels(gen, counts, NUM_LABELS, dtype),
    )


@pytest.mark.parametrize("seed", range(3))
def test_parity_with_transformers(seed):
    gen = torch.Generator().manual_seed(seed)
    counts = random_counts(gen, 5, 0, 9)
    counts[seed] = 0
    layers = 4
    logits, box_logits, labels = problem(seed, counts, layers)

    last_logits, last_boxes, aux = split_layers(logits, box_logits.sigmoid())
    loss, loss_dict = make_loss()(last_logits, last_boxes, labels, aux)
    ours_grads = torch.autograd.grad(loss, (logits, box_logits))

    config = types.SimpleNamespace(
        class_cost=1.0, bbox_cost=5.0, giou_cost=2.0, num_labels=NUM_LABELS, eos_coefficient=0.1,
        bbox_loss_coefficient=5.0, giou_loss_coefficient=2.0, auxiliary_loss=True, decoder_layers=layers,
    )  # fmt: skip
    boxes = box_logits.sigmoid()
    ref_loss, ref_dict, _ = ForObjectDetectionLoss(
        logits[-1], labels, logits.device, boxes[-1], config, outputs_class=logits, outputs_coord=boxes
    )
    ref_grads = torch.autograd.grad(ref_loss, (logits, box_logits))

    assert set(ref_dict) <= set(loss_dict)
    assert {f"loss_giou_{i}" for i in range(layers - 1)} <= set(loss_dict)
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    for key, value in ref_dict.items():
        assert abs(loss_dict[key].item() - value.item()) < 1e-5, key
    for ours, ref in zip(ours_grads, ref_grads):
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)

    matcher, reference = HungarianMatcher(1.0, 5.0, 2.0), ReferenceMatcher(1.0, 5.0, 2.0)
    for layer in range(layers):
        ours = matcher(logits[layer].detach(), boxes[layer].detach(), labels)
        ref = reference({"logits": logits[layer].detach(), "pred_boxes": boxes[layer].detach()}, labels)
        for (rows, cols), (ref_rows, ref_cols) in zip(ours, ref):
            assert torch.equal(rows, ref_rows) and torch.equal(cols, ref_cols)


def test_logging_terms_carry_no_gradient_and_are_not_in_loss():
    logits, box_logits, labels = problem(0, [3, 4], layers=3)
    last_logits, last_boxes, aux = split_layers(logits, box_logits.sigmoid())
    loss, loss_dict = make_loss()(last_logits, last_boxes, labels, aux)
    for key in ("cardinality_error", "cardinality_error_0", "class_error"):
        assert not loss_dict[key].requires_grad
    weighted = sum(
        loss_dict[f"loss_ce{s}"] + 5 * loss_dict[f"loss_bbox{s}"] + 2 * loss_dict[f"loss_giou{s}"]
        for s in ("", "_0", "_1")
    )
    torch.testing.assert_close(loss, weighted)
    assert 0.0 <= loss_dict["class_error"].item() <= 100.0


def test_auxiliary_loss_off_ignores_auxiliary_outputs():
    logits, box_logits, labels = problem(1, [2, 5])
    last_logits, last_boxes, aux = split_layers(logits, box_logits.sigmoid())
    loss, loss_dict = make_loss(auxiliary_loss=False)(last_logits, last_boxes, labels, aux)
    assert not any(key.endswith("_0") for key in loss_dict)
    _, with_aux = make_loss()(last_logits, last_boxes, labels, aux)
    for key in ("loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(loss_dict[key], with_aux[key])
    torch.testing.assert_close(
        loss, loss_dict["loss_ce"] + 5 * loss_dict["loss_bbox"] + 2 * loss_dict["loss_giou"]
    )


@pytest.mark.parametrize("counts", [[0, 3, 0], [0, 0, 0], [0]])
def test_empty_targets_give_finite_loss_and_gradients(counts):
    logits, box_logits, labels = problem(2, counts, layers=3)
    last_logits, last_boxes, aux = split_layers(logits, box_logits.sigmoid())
    loss, loss_dict = make_loss()(last_logits, last_boxes, labels, aux)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and torch.isfinite(box_logits.grad).all()
    assert logits.grad.abs().sum() > 0
    if sum(counts) == 0:
        assert loss_dict["loss_bbox"].item() == 0.0 and loss_dict["loss_giou"].item() == 0.0
        # Every query's target is "no object"; weights cancel in the weighted mean.
        expected = torch.nn.functional.cross_entropy(
            last_logits.detach().flatten(0, 1), torch.full((last_logits.shape[0] * 20,), NUM_LABELS)
        )
        torch.testing.assert_close(loss_dict["loss_ce"].detach(), expected)


def test_more_targets_than_queries():
    logits, box_logits, labels = problem(4, [7, 2], layers=2, queries=5)
    last_logits, last_boxes, aux = split_layers(logits, box_logits.sigmoid())
    loss, loss_dict = make_loss()(last_logits, last_boxes, labels, aux)
    assert torch.isfinite(loss)
    # Cardinality error counts all 7 targets, whatever the number of queries.
    predicted = (last_logits.argmax(-1) != NUM_LABELS).sum(-1).float()
    expected = (predicted - torch.tensor([7.0, 2.0])).abs().mean()
    torch.testing.assert_close(loss_dict["cardinality_error"], expected)


def test_normalisers_computed_once_per_forward(monkeypatch):
    calls = []
    original = criterion_module.global_normalizers
    monkeypatch.setattr(criterion_module, "global_normalizers", lambda *a: calls.append(a) or original(*a))
    logits, box_logits, labels = problem(5, [3, 1, 4], layers=6)
    last_logits, last_boxes, aux = split_layers(logits, box_logits.sigmoid())
    make_loss()(last_logits, last_boxes, labels, aux)
    assert len(calls) == 1
    assert calls[0][0] == 8  # target boxes of this process


def test_simulated_two_processes_divide_by_world_size_once(monkeypatch):
    """Fake a 2-process group whose other rank holds the same batch: every term equals the 1-process value."""
    logits, box_logits, labels = problem(6, [3, 0, 5])
    args = (
        *split_layers(logits, box_logits.sigmoid())[:2],
        labels,
        split_layers(logits, box_logits.sigmoid())[2],
    )
    _, single = make_loss()(*args)
    monkeypatch.setattr(criterion_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(criterion_module.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(criterion_module.dist, "all_reduce", lambda t: t.mul_(2))
    _, double = make_loss()(*args)
    for key in single:
        torch.testing.assert_close(double[key], single[key])


def test_num_boxes_normalisation_and_eos_weight():
    """Hand-computed terms on one image: two queries, one target."""
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])  # 2 labels + no object
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    labels = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.6, 0.2, 0.2]])}]
    loss_fn = DetrHfLoss(2, HungarianMatcher(1.0, 5.0, 2.0), eos_coefficient=0.1, auxiliary_loss=False)
    loss, loss_dict = loss_fn(logits, boxes, labels)
    log_p = logits[0].log_softmax(-1)
    expected_ce = (-log_p[0, 0] - 0.1 * log_p[1, 2]) / (1 + 0.1)
    torch.testing.assert_close(loss_dict["loss_ce"], expected_ce)
    torch.testing.assert_close(loss_dict["loss_bbox"], torch.tensor(0.1))
    # Boxes 0.2×0.2 shifted by 0.1: intersection 0.02, union 0.06, hull = union → GIoU 1/3.
    torch.testing.assert_close(loss_dict["loss_giou"], torch.tensor(2 / 3))
    torch.testing.assert_close(loss_dict["class_error"], torch.tensor(0.0))
    torch.testing.assert_close(loss, expected_ce + 5 * 0.1 + 2 * 2 / 3)


def test_from_config():
    config = DetrHfConfig(
        backbone="resnet18", num_labels=7, eos_coefficient=0.2, giou_cost=3.0, auxiliary_loss=False
    )
    loss_fn = DetrHfLoss.from_config(config)
    assert loss_fn.num_labels == 7 and loss_fn.eos_coefficient == 0.2 and not loss_fn.auxiliary_loss
    assert loss_fn.matcher.giou_cost == 3.0
    assert loss_fn.class_weight.tolist() == pytest.approx([1.0] * 7 + [0.2])


def test_bad_inputs_raise_clear_errors():
    logits, box_logits, labels = problem(8, [2, 3], layers=3)
    logits, boxes = logits.detach(), box_logits.detach().sigmoid()
    last_logits, last_boxes, aux = split_layers(logits, boxes)
    loss_fn = make_loss()

    bad_aux = [dict(a) for a in aux]
    bad_aux[1]["pred_boxes"] = bad_aux[1]["pred_boxes"].clone()
    bad_aux[1]["pred_boxes"][1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"pred_boxes of auxiliary output 1 .*image 1.*diverged"):
        loss_fn(last_logits, last_boxes, labels, bad_aux)
    bad_logits = last_logits.clone()
    bad_logits[0, 3, 1] = float("-inf")
    with pytest.raises(ValueError, match=r"logits of the last decoder layer .*image 0.*diverged"):
        loss_fn(bad_logits, last_boxes, labels, aux)

    bad_labels = [dict(t) for t in labels]
    bad_labels[1]["class_labels"] = torch.tensor([1, NUM_LABELS, 2])
    with pytest.raises(ValueError, match=rf"labels\[1\]\['class_labels'\]\[1\] = {NUM_LABELS} is outside"):
        loss_fn(last_logits, last_boxes, bad_labels, aux)
    with pytest.raises(ValueError, match=r"labels has 1 dicts .* batch size 2"):
        loss_fn(last_logits, last_boxes, labels[:1], aux)
    with pytest.raises(ValueError, match=r"labels\[0\] is missing the key 'class_labels'"):
        loss_fn(last_logits, last_boxes, [{"boxes": labels[0]["boxes"]}, labels[1]], aux)
    with pytest.raises(ValueError, match=r"num_labels \+ 1 = 11"):
        loss_fn(last_logits[..., :-1], last_boxes, labels, aux)
    with pytest.raises(ValueError, match=r"auxiliary output 0 .*shape"):
        loss_fn(last_logits, last_boxes, labels, [{"logits": last_logits[:1], "pred_boxes": last_boxes[:1]}])
    with pytest.raises(ValueError, match=r"auxiliary output 0 .* 'logits' and 'pred_boxes'"):
        loss_fn(last_logits, last_boxes, labels, [{"logits": last_logits}])
    with pytest.raises(TypeError, match=r"auxiliary_outputs must be a list"):
        loss_fn(last_logits, last_boxes, labels, {"logits": last_logits, "pred_boxes": last_boxes})
    with pytest.raises(ValueError, match=r"num_labels must be an integer"):
        DetrHfLoss(0, HungarianMatcher())


def test_stacked_entry_point_equals_forward_bit_for_bit():
    logits, box_logits, labels = problem(9, [4, 0, 7, 2])
    boxes = box_logits.sigmoid()
    loss_fn = make_loss()
    via_forward = loss_fn(*split_layers(logits, boxes)[:2], labels, split_layers(logits, boxes)[2])
    via_stacked = loss_fn.stacked(logits, boxes, labels)
    packed = pack_targets(labels, 4, NUM_LABELS, logits.device, torch.float32)
    via_packed = loss_fn.stacked(logits, boxes, packed)
    for loss, terms in (via_stacked, via_packed):
        assert torch.equal(loss, via_forward[0])
        assert terms.keys() == via_forward[1].keys()
        assert all(torch.equal(terms[k], via_forward[1][k]) for k in terms)
    # Without auxiliary loss only the last stacked layer counts.
    last_only = make_loss(auxiliary_loss=False).stacked(logits, boxes, packed)
    assert torch.equal(last_only[0], make_loss(auxiliary_loss=False).stacked(logits[-1:], boxes[-1:], labels)[0])
    assert "loss_ce_0" not in last_only[1]


class _LossWithCentreTerm(DetrHfLoss):
    """A loss with one more named part: the L2 distance of matched box centres (stands in for a mask loss)."""

    @property
    def term_weights(self):
        return {**super().term_weights, "loss_centre": 3.0}

    def layer_losses(self, logits, log_normalizer, pred_boxes, targets, matching, norms):
        terms = super().layer_losses(logits, log_normalizer, pred_boxes, targets, matching, norms)
        pred = pred_boxes[matching.layer, matching.image, matching.query][..., :2]  # [L, M, 2]
        target = targets.boxes[matching.target][..., :2]
        terms["loss_centre"] = (pred - target).norm(dim=-1).sum(-1) / norms.num_boxes
        return terms


def test_a_new_named_part_joins_the_loss_and_the_loss_dict():
    logits, box_logits, labels = problem(10, [3, 5])
    boxes = box_logits.sigmoid()
    base_loss, base_terms = make_loss().stacked(logits, boxes, labels)
    extended = _LossWithCentreTerm(NUM_LABELS, HungarianMatcher(1.0, 5.0, 2.0), 0.1, 5.0, 2.0)
    loss, terms = extended.stacked(logits, boxes, labels)
    centre = [terms[f"loss_centre{s}"] for s in ("_0", "_1", "_2", "")]
    assert all(c > 0 for c in centre)
    torch.testing.assert_close(loss, base_loss + 3.0 * sum(centre))
    assert all(torch.equal(terms[k], base_terms[k]) for k in base_terms)


def test_model_builds_its_criterion_once_and_rebuilds_on_config_change(monkeypatch):
    from detr_hf import DetrHfForObjectDetection
    from helpers import padded_batch, tiny_config

    model = DetrHfForObjectDetection(tiny_config()).train()
    built = []
    original = DetrHfLoss.from_config
    monkeypatch.setattr(DetrHfLoss, "from_config", classmethod(lambda cls, c: built.append(c) or original(c)))
    pixels, mask = padded_batch()
    labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])}] * 2
    first = model(pixels, mask, labels=labels).loss
    model(pixels, mask, labels=labels)
    assert len(built) == 1
    model.config.eos_coefficient = 0.5
    changed = model(pixels, mask, labels=labels).loss
    assert len(built) == 2 and model.criterion.eos_coefficient == 0.5
    assert not torch.equal(first, changed)
    assert not any("criterion" in key for key in model.state_dict())

"""HungarianMatcher: optimality, parity with transformers' matcher, empty targets, input errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.loss.loss_for_object_detection import HungarianMatcher as ReferenceMatcher

from detr_hf.matcher import HungarianMatcher
from detr_hf.targets import pack_targets
from loss_problems import random_counts, random_labels, random_predictions

WEIGHTS = (1.0, 5.0, 2.0)


def naive_cost(logits_q, box_q, label, box_t, weights=WEIGHTS) -> float:
    """Matching cost of one (query, target) pair in plain Python floats, independent of the library code."""
    prob = torch.softmax(logits_q.double(), -1)[label].item()
    l1 = sum(abs(a - b) for a, b in zip(box_q.tolist(), box_t.tolist()))

    def corners(box):
        cx, cy, w, h = box.tolist()
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    ax0, ay0, ax1, ay1 = corners(box_q)
    bx0, by0, bx1, by1 = corners(box_t)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    giou = inter / union - (hull - union) / hull
    return -weights[0] * prob + weights[1] * l1 - weights[2] * giou


def brute_force_best(cost: list[list[float]]) -> float:
    """Minimum total cost over every one-to-one assignment of min(Q, N) pairs (cost is Q×N)."""
    queries, targets = len(cost), len(cost[0]) if cost else 0
    if targets == 0:
        return 0.0
    if queries >= targets:
        return min(
            sum(cost[q][t] for t, q in enumerate(p)) for p in itertools.permutations(range(queries), targets)
        )
    return min(
        sum(cost[q][t] for q, t in enumerate(p)) for p in itertools.permutations(range(targets), queries)
    )


def check_optimal(logits, boxes, labels) -> None:
    indices = HungarianMatcher(*WEIGHTS)(logits, boxes, labels)
    assert len(indices) == len(labels)
    for b, (target, (rows, cols)) in enumerate(zip(labels, indices)):
        n, queries = len(target["class_labels"]), logits.shape[1]
        assert rows.dtype == cols.dtype == torch.int64
        assert len(rows) == len(cols) == min(n, queries)
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        assert rows.tolist() == sorted(rows.tolist())
        cost = [
            [
                naive_cost(logits[b, q], boxes[b, q], target["class_labels"][t], target["boxes"][t])
                for t in range(n)
            ]
            for q in range(queries)
        ]
        found = sum(cost[q][t] for q, t in zip(rows.tolist(), cols.tolist()))
        assert math.isclose(found, brute_force_best(cost), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_matching_is_brute_force_optimal(seed):
    gen = torch.Generator().manual_seed(seed)
    queries = 5
    counts = [0, 1, 3, 5, 7][: 2 + seed % 4]  # includes more targets than queries (7 > 5)
    logits, boxes = random_predictions(gen, 1, len(counts), queries, 4, dtype=torch.float64)
    check_optimal(logits[0], boxes[0], random_labels(gen, counts, 4, dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(
    queries=st.integers(1, 4),
    counts=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    num_labels=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_matching_optimal_property(queries, counts, num_labels, seed):
    gen = torch.Generator().manual_seed(seed)
    logits, boxes = random_predictions(gen, 1, len(counts), queries, num_labels, dtype=torch.float64)
    check_optimal(logits[0], boxes[0], random_labels(gen, counts, num_labels, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(4))
def test_indices_equal_transformers_matcher(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    batch, queries, num_labels = 6, 30, 12
    counts = random_counts(gen, batch, 0, 12)
    logits, boxes = random_predictions(gen, 1, batch, queries, num_labels)
    labels = random_labels(gen, counts, num_labels)
    ours = HungarianMatcher(*WEIGHTS)(logits[0], boxes[0], labels)
    theirs = ReferenceMatcher(*WEIGHTS)({"logits": logits[0], "pred_boxes": boxes[0]}, labels)
    for (rows, cols), (ref_rows, ref_cols) in zip(ours, theirs):
        assert torch.equal(rows, ref_rows) and torch.equal(cols, ref_cols)


def test_cost_blocks_are_per_image_and_gradient_free():
    gen = torch.Generator().manual_seed(0)
    counts = [3, 0, 8, 5]
    logits, boxes = random_predictions(gen, 2, 4, 10, 6, dtype=torch.float64)
    logits.requires_grad_(True)
    labels = random_labels(gen, counts, 6, dtype=torch.float64)
    targets = pack_targets(labels, 4, 6, logits.device, torch.float64)
    cost = HungarianMatcher(*WEIGHTS).cost_blocks(logits, boxes, targets)
    # [layers, batch, queries, max targets per image], never [batch·queries, all targets].
    assert cost.shape == (2, 4, 10, 8)
    assert not cost.requires_grad
    for layer, image in [(0, 0), (1, 2), (1, 3)]:
        for q in range(10):
            for t in range(counts[image]):
                target = labels[image]
                expected = naive_cost(
                    logits[layer, image, q].detach(),
                    boxes[layer, image, q],
                    target["class_labels"][t],
                    target["boxes"][t],
                )
                assert math.isclose(cost[layer, image, q, t].item(), expected, rel_tol=1e-12, abs_tol=1e-12)


def test_empty_targets_match_nothing():
    gen = torch.Generator().manual_seed(3)
    logits, boxes = random_predictions(gen, 1, 3, 8, 4)
    labels = random_labels(gen, [0, 2, 0], 4)
    indices = HungarianMatcher(*WEIGHTS)(logits[0], boxes[0], labels)
    assert [len(r) for r, _ in indices] == [0, 2, 0]
    assert all(r.dtype == torch.int64 and c.dtype == torch.int64 for r, c in indices)
    all_empty = HungarianMatcher(*WEIGHTS)(logits[0], boxes[0], random_labels(gen, [0, 0, 0], 4))
    assert [(len(r), len(c)) for r, c in all_empty] == [(0, 0)] * 3


def _inputs():
    gen = torch.Generator().manual_seed(7)
    logits, boxes = random_predictions(gen, 1, 2, 6, 5)
    return logits[0], boxes[0], random_labels(gen, [2, 3], 5)


@pytest.mark.parametrize(
    ("mutate", "error", "pattern"),
    [
        (lambda lab: lab[1]["class_labels"].__setitem__(2, 5), ValueError, r"labels\[1\]\['class_labels'\]\[2\] = 5 .*0\.\.4"),
        (lambda lab: lab[0]["class_labels"].__setitem__(0, -1), ValueError, r"labels\[0\]\['class_labels'\]\[0\] = -1"),
        (lambda lab: lab[1]["boxes"].__setitem__((1, 2), 0.0), ValueError, r"labels\[1\]\['boxes'\]\[1\].*w > 0"),
        (lambda lab: lab[0]["boxes"].mul_(640), ValueError, r"labels\[0\]\['boxes'\]\[0\].*normalised"),
        (lambda lab: lab[1]["boxes"].__setitem__((0, 0), float("nan")), ValueError, r"labels\[1\]\['boxes'\]\[0\]"),
        (lambda lab: lab[0].pop("boxes"), ValueError, r"labels\[0\] is missing the key 'boxes'"),
        (lambda lab: lab.pop(), ValueError, r"labels has 1 dicts but .* batch size 2"),
        (lambda lab: lab[1].__setitem__("class_labels", lab[1]["class_labels"].float()), TypeError, r"labels\[1\]\['class_labels'\] must be an integer"),
        (lambda lab: lab[1].__setitem__("boxes", lab[1]["boxes"].long()), TypeError, r"labels\[1\]\['boxes'\] must be a floating"),
        (lambda lab: lab[0].__setitem__("boxes", lab[0]["boxes"][:, :3]), ValueError, r"labels\[0\]\['boxes'\] must have shape \[N, 4\]"),
        (lambda lab: lab[0].__setitem__("boxes", lab[0]["boxes"][:1]), ValueError, r"labels\[0\]\['boxes'\] must have shape"),
        (lambda lab: lab.__setitem__(0, [1, 2]), TypeError, r"labels\[0\] must be a dict"),
    ],
)  # fmt: skip
def test_bad_labels_raise_naming_the_image(mutate, error, pattern):
    logits, boxes, labels = _inputs()
    mutate(labels)
    with pytest.raises(error, match=pattern):
        HungarianMatcher(*WEIGHTS)(logits, boxes, labels)


def test_bad_predictions_raise():
    logits, boxes, labels = _inputs()
    bad = boxes.clone()
    bad[1, 4, 0] = float("nan")
    with pytest.raises(ValueError, match=r"pred_boxes .*NaN or infinite.*image 1.*diverged"):
        HungarianMatcher(*WEIGHTS)(logits, bad, labels)
    bad = logits.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"logits .*image 0.*diverged"):
        HungarianMatcher(*WEIGHTS)(bad, boxes, labels)
    with pytest.raises(ValueError, match=r"pred_boxes .*shape \[batch, queries, 4\]"):
        HungarianMatcher(*WEIGHTS)(logits, boxes[..., :3], labels)
    with pytest.raises(TypeError, match=r"logits .*floating point"):
        HungarianMatcher(*WEIGHTS)(logits.long(), boxes, labels)
    with pytest.raises(TypeError, match=r"labels must be a list of dicts"):
        HungarianMatcher(*WEIGHTS)(logits, boxes, labels[0])


def test_invalid_weights():
    with pytest.raises(ValueError, match="at least one"):
        HungarianMatcher(0, 0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        HungarianMatcher(1, -1, 1)

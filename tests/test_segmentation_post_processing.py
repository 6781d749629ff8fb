"""Panoptic / semantic / instance post-processing: same results as transformers' DetrImageProcessor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DetrImageProcessor
from transformers.models.detr.modeling_detr import DetrSegmentationOutput

from detr_hf.segmentation_post_processing import (
    binary_mask_to_rle,
    post_process_instance_segmentation,
    post_process_panoptic_segmentation,
    post_process_semantic_segmentation,
    segmentation_to_rle,
)

NUM_LABELS = 9  # + 1 "no object"


def random_outputs(
    seed: int, batch: int = 2, queries: int = 40, mask_size=(120, 168)
) -> DetrSegmentationOutput:
    """Logits where many queries are confident (one boosted class each) and blob-like mask logits."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, NUM_LABELS + 1, generator=gen)
    best = torch.randint(0, NUM_LABELS + 1, (batch, queries), generator=gen)
    boost = torch.rand(batch, queries, generator=gen) * 7
    logits.scatter_add_(2, best[..., None], boost[..., None])
    # Each query's mask logits: a high ellipse (its object) over a low noisy background; ellipses overlap
    # sometimes, so the overlap and fusing rules matter.
    height, width = mask_size
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    masks = torch.randn(batch, queries, height, width, generator=gen) - 4
    centres = torch.rand(batch, queries, 2, generator=gen) * torch.tensor([height, width])
    radii = 4 + torch.rand(batch, queries, 2, generator=gen) * torch.tensor([height, width]) / 5
    for b in range(batch):
        for q in range(queries):
            (cy, cx), (ry, rx) = centres[b, q].tolist(), radii[b, q].tolist()
            inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
            masks[b, q] += 9 * inside
    return DetrSegmentationOutput(logits=logits, pred_masks=masks, pred_boxes=torch.rand(batch, queries, 4))


def same_segments(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours, theirs):
        assert mine["segmentation"].shape == ref["segmentation"].shape
        assert torch.equal(mine["segmentation"].long(), ref["segmentation"].long())
        assert mine["segments_info"] == ref["segments_info"]


def labels_by_id(segments_info: list[dict]) -> dict[int, set[int]]:
    result: dict[int, set[int]] = {}
    for info in segments_info:
        result.setdefault(info["id"], set()).add(info["label_id"])
    return result


def same_segments_up_to_renumbering(ours: list[dict], theirs: list[dict]) -> None:
    """transformers re-uses a fused label's id as its running counter, so a later new segment can get an id
    already taken by another label; detr_hf numbers segments 1, 2, ... without collisions. Everything else
    (which queries become segments, their pixels, labels, scores, order) must be identical."""
    for mine, ref in zip(ours, theirs):
        strip = [{k: v for k, v in s.items() if k != "id"} for s in mine["segments_info"]]
        assert strip == [{k: v for k, v in s.items() if k != "id"} for s in ref["segments_info"]]
        assert all(len(labels) == 1 for labels in labels_by_id(mine["segments_info"]).values())
        ids = torch.tensor([s["id"] for s in mine["segments_info"]] + [0])
        their_ids = torch.tensor([s["id"] for s in ref["segments_info"]] + [0])
        # Our map, with each of our ids replaced by transformers' id for the same entry, is transformers' map.
        lookup = torch.zeros(int(ids.max()) + 1, dtype=torch.long)
        lookup[ids] = their_ids
        assert torch.equal(lookup[mine["segmentation"].long()], ref["segmentation"].long())


@pytest.mark.parametrize(
    "seed, threshold, mask_threshold, overlap, fuse, sizes",
    [
        (0, 0.5, 0.5, 0.8, None, None),
        (1, 0.3, 0.4, 0.6, {0, 3, 5}, [(480, 640), (333, 700)]),
        (0, 0.7, 0.2, 0.9, {1}, [(700, 512), (300, 300)]),
        (1, 0.1, 0.5, 0.0, {0, 1, 2, 3, 4, 5, 6, 7, 8}, [(421, 613), (640, 480)]),
    ],
)
def test_panoptic_matches_transformers(seed, threshold, mask_threshold, overlap, fuse, sizes):
    outputs = random_outputs(seed)
    kwargs = dict(
        threshold=threshold,
        mask_threshold=mask_threshold,
        overlap_mask_area_threshold=overlap,
        label_ids_to_fuse=fuse,
        target_sizes=sizes,
    )
    ours = post_process_panoptic_segmentation(outputs, **kwargs)
    theirs = DetrImageProcessor().post_process_panoptic_segmentation(outputs, **kwargs)
    if all(len(v) == 1 for r in theirs for v in labels_by_id(r["segments_info"]).values()):
        same_segments(ours, theirs)
    else:
        same_segments_up_to_renumbering(ours, theirs)
    assert sum(len(r["segments_info"]) for r in ours) >= 4, "fixture too easy: few segments"
    if fuse:
        assert any(s["was_fused"] for r in ours for s in r["segments_info"])
    for result in ours:
        ids = {s["id"] for s in result["segments_info"]}
        assert set(torch.unique(result["segmentation"]).tolist()) <= ids | {0}


@pytest.mark.parametrize(
    "seed, threshold, overlap, sizes", [(2, 0.5, 0.8, None), (3, 0.2, 0.5, [(512, 384), (300, 451)])]
)
def test_instance_matches_transformers(seed, threshold, overlap, sizes):
    outputs = random_outputs(seed)
    kwargs = dict(threshold=threshold, overlap_mask_area_threshold=overlap, target_sizes=sizes)
    ours = post_process_instance_segmentation(outputs, **kwargs)
    theirs = DetrImageProcessor().post_process_instance_segmentation(outputs, **kwargs)
    same_segments(ours, theirs)

    ours_rle = post_process_instance_segmentation(outputs, return_coco_annotation=True, **kwargs)
    theirs_rle = DetrImageProcessor().post_process_instance_segmentation(
        outputs, return_coco_annotation=True, **kwargs
    )
    for mine, ref in zip(ours_rle, theirs_rle):
        assert mine["segmentation"] == [[int(v) for v in rle] for rle in ref["segmentation"]]

    binary = post_process_instance_segmentation(outputs, return_binary_maps=True, **kwargs)
    for result, id_map in zip(binary, ours):
        masks = result["segmentation"]
        assert masks.dtype == torch.bool and masks.shape[0] == len(result["segments_info"])
        for mask, info in zip(masks, result["segments_info"]):
            assert torch.equal(mask, id_map["segmentation"] == info["id"])
            assert mask.any()


@pytest.mark.parametrize("sizes", [None, [(480, 640), (357, 533)]])
def test_semantic_matches_transformers(sizes):
    outputs = random_outputs(4)
    ours = post_process_semantic_segmentation(outputs, target_sizes=sizes)
    theirs = DetrImageProcessor().post_process_semantic_segmentation(outputs, target_sizes=sizes)
    for mine, ref in zip(ours, theirs):
        assert torch.equal(mine, ref)
        assert len(torch.unique(mine)) > 3
    scored = post_process_semantic_segmentation(outputs, target_sizes=sizes, return_segmentation_scores=True)
    ref_scored = DetrImageProcessor().post_process_semantic_segmentation(
        outputs, target_sizes=sizes, return_segmentation_scores=True
    )
    for mine, ref in zip(scored, ref_scored):
        assert mine["segmentation_scores"].shape[0] == NUM_LABELS
        torch.testing.assert_close(mine["segmentation_scores"], ref["segmentation_scores"], rtol=0, atol=1e-6)


def test_fused_ids_never_collide_where_transformers_ids_do():
    kwargs = dict(
        threshold=0.3, mask_threshold=0.4, overlap_mask_area_threshold=0.6, label_ids_to_fuse={0, 3, 5}
    )
    outputs = random_outputs(0)
    theirs = DetrImageProcessor().post_process_panoptic_segmentation(outputs, **kwargs)
    assert any(len(v) > 1 for r in theirs for v in labels_by_id(r["segments_info"]).values())
    for result in post_process_panoptic_segmentation(outputs, **kwargs):
        by_id = labels_by_id(result["segments_info"])
        assert all(len(labels) == 1 for labels in by_id.values())
        assert sorted(by_id) == list(range(1, len(by_id) + 1))


def test_nothing_above_threshold_gives_minus_one_map():
    outputs = random_outputs(5)
    outputs.logits[..., -1] = 50.0  # every query says "no object"
    (first, second) = post_process_panoptic_segmentation(outputs, target_sizes=[(400, 500), (300, 310)])
    assert first["segments_info"] == [] and first["segmentation"].shape == (400, 500)
    assert (first["segmentation"] == -1).all() and second["segmentation"].shape == (300, 310)
    instance = post_process_instance_segmentation(outputs, return_binary_maps=True)
    assert instance[0]["segmentation"].shape == (0, 120, 168)


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    rle = binary_mask_to_rle(mask)
    decoded = np.zeros(mask.size, dtype=bool)
    for start, length in zip(rle[::2], rle[1::2]):
        decoded[start - 1 : start - 1 + length] = True
    assert np.array_equal(decoded.reshape(mask.shape), mask)
    segmentation = torch.from_numpy(rng.integers(0, 4, (20, 30)))
    assert len(segmentation_to_rle(segmentation)) == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": 1.5}, "threshold"),
        ({"target_sizes": [(10, 10)]}, "target_sizes has 1 entries"),
        ({"target_sizes": [(10, 0), (5, 5)]}, r"target_sizes\[0\]"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        post_process_panoptic_segmentation(random_outputs(6), **kwargs)


def test_outputs_without_masks_are_refused():
    with pytest.raises(ValueError, match="pred_masks"):
        post_process_semantic_segmentation({"logits": torch.zeros(1, 3, 4)})
    with pytest.raises(ValueError, match="exclusive"):
        post_process_instance_segmentation(
            random_outputs(7), return_coco_annotation=True, return_binary_maps=True
        )


def test_processor_delegates_and_remote_code_closure(tmp_path):
    from detr_hf import DetrHfImageProcessor
    from detr_hf.sharing import copy_code

    outputs = random_outputs(8)
    processor = DetrHfImageProcessor()
    kwargs = dict(threshold=0.4, label_ids_to_fuse={2}, target_sizes=[(300, 400), (450, 333)])
    same_segments(
        processor.post_process_panoptic_segmentation(outputs, **kwargs),
        post_process_panoptic_segmentation(outputs, **kwargs),
    )
    same_segments(
        processor.post_process_instance_segmentation(outputs, threshold=0.4),
        post_process_instance_segmentation(outputs, threshold=0.4),
    )
    for mine, ref in zip(
        processor.post_process_semantic_segmentation(outputs), post_process_semantic_segmentation(outputs)
    ):
        assert torch.equal(mine, ref)
    copied = copy_code(tmp_path)
    assert {"segmentation_post_processing.py", "panoptic_annotations.py", "annotations.py"} <= set(copied)


def test_coco_sized_head_matches_transformers_at_area_ratio_boundaries():
    """100 queries, 250 classes, plain random logits: many small segments whose won / own pixel ratio lands on
    the threshold exactly (e.g. 4 of 5 pixels at 0.8), which transformers compares in float32."""
    gen = torch.Generator().manual_seed(0)
    outputs = DetrSegmentationOutput(
        logits=torch.randn(1, 100, 251, generator=gen) * 3,
        pred_masks=torch.randn(1, 100, 200, 267, generator=gen),
    )
    kwargs = dict(threshold=0.0, target_sizes=[(480, 640)])
    ours = post_process_panoptic_segmentation(outputs, **kwargs)
    same_segments(ours, DetrImageProcessor().post_process_panoptic_segmentation(outputs, **kwargs))
    assert len(ours[0]["segments_info"]) == 5

"""Mask losses: focal and dice equal the original formulas and transformers' utilities; bad mask targets are named."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.loss.loss_for_object_detection import dice_loss as hf_dice_loss
from transformers.loss.loss_for_object_detection import sigmoid_focal_loss as hf_focal_loss

from detr_hf.mask_loss import MaskLoss, check_mask_targets, dice_loss, sigmoid_focal_loss


def original_focal(logits: torch.Tensor, targets: torch.Tensor, alpha=0.25, gamma=2.0) -> torch.Tensor:
    """RetinaNet's focal loss pixel by pixel in float64: -α_t (1 - p_t)^γ log p_t, mean over pixels per row."""
    out = torch.empty(logits.shape[0], dtype=torch.float64)
    for m in range(logits.shape[0]):
        total = 0.0
        for x, t in zip(logits[m].double().tolist(), targets[m].double().tolist()):
            p = 1 / (1 + math.exp(-x))
            p_t = p if t == 1 else 1 - p
            alpha_t = alpha if t == 1 else 1 - alpha
            total += -alpha_t * (1 - p_t) ** gamma * math.log(p_t)
        out[m] = total / logits.shape[1]
    return out


def original_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    p = logits.double().sigmoid()
    t = targets.double()
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


def test_focal_and_dice_equal_the_original_formulas_and_transformers():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(5, 200, generator=gen)
    targets = (torch.rand(5, 200, generator=gen) < 0.3).float()
    focal, dice = sigmoid_focal_loss(logits, targets), dice_loss(logits, targets)
    torch.testing.assert_close(focal.double(), original_focal(logits, targets), atol=1e-5, rtol=0)
    torch.testing.assert_close(dice.double(), original_dice(logits, targets), atol=1e-5, rtol=0)
    num_boxes = 3.0
    torch.testing.assert_close(focal.sum() / num_boxes, hf_focal_loss(logits, targets, num_boxes), atol=1e-6, rtol=0)
    torch.testing.assert_close(dice.sum() / num_boxes, hf_dice_loss(logits, targets, num_boxes), atol=1e-6, rtol=0)


def labels_with_masks(sizes, padded, seed=0):
    """Rectangles inside each image's own (unpadded) area; different object counts per image."""
    gen = torch.Generator().manual_seed(seed)
    labels = []
    for i, (h, w) in enumerate(sizes):
        n = 2 + i
        masks = torch.zeros(n, *padded, dtype=torch.bool)
        for j in range(n):
            y0, x0 = int(torch.randint(0, h // 2, (1,), generator=gen)), int(torch.randint(0, w // 2, (1,), generator=gen))
            masks[j, y0 : y0 + h // 3, x0 : x0 + w // 4] = True
        labels.append({"class_labels": torch.arange(n), "boxes": torch.full((n, 4), 0.25), "masks": masks})
    return labels


def test_mask_loss_upsamples_matched_predictions_and_divides_by_num_boxes():
    gen = torch.Generator().manual_seed(1)
    padded = (322, 417)  # not a multiple of 4: the upsampling goes to the exact padded size
    labels = labels_with_masks([(322, 300), (250, 417)], padded)
    pred_masks = torch.randn(2, 6, 81, 105, generator=gen, requires_grad=True)
    indices = [(torch.tensor([4, 1]), torch.tensor([1, 0])), (torch.tensor([0, 2, 5]), torch.tensor([2, 0, 1]))]
    num_boxes = torch.tensor(4.0)
    total, parts = MaskLoss(mask_loss_coefficient=2.0, dice_loss_coefficient=0.5)(pred_masks, labels, indices, num_boxes)

    pairs = [(b, q, t) for b, (qs, ts) in enumerate(indices) for q, t in zip(qs.tolist(), ts.tolist())]
    logits = torch.stack(
        [
            torch.nn.functional.interpolate(pred_masks[b, q][None, None], size=padded, mode="bilinear")[0, 0]
            for b, q, _ in pairs
        ]
    ).flatten(1)
    targets = torch.stack([labels[b]["masks"][t] for b, _, t in pairs]).flatten(1).float()
    expected_focal = original_focal(logits.detach()[:, ::97], targets[:, ::97])  # subsampled: the loop is slow
    got_focal = sigmoid_focal_loss(logits[:, ::97], targets[:, ::97])
    torch.testing.assert_close(got_focal.double(), expected_focal, atol=1e-5, rtol=0)
    torch.testing.assert_close(parts["loss_mask"], sigmoid_focal_loss(logits, targets).sum() / 4, atol=1e-6, rtol=0)
    torch.testing.assert_close(parts["loss_dice"].double(), original_dice(logits, targets).sum() / 4, atol=1e-5, rtol=0)
    torch.testing.assert_close(total, 2.0 * parts["loss_mask"] + 0.5 * parts["loss_dice"])
    total.backward()
    touched = pred_masks.grad.abs().flatten(2).sum(-1) > 0
    assert touched.tolist() == [[False, True, False, False, True, False], [True, False, True, False, False, True]]


def test_no_matched_pair_gives_zero_loss():
    labels = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4),
               "masks": torch.zeros(0, 64, 80, dtype=torch.bool)}]  # fmt: skip
    pred = torch.randn(1, 3, 16, 20, requires_grad=True)
    indices = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))]
    total, parts = MaskLoss()(pred, labels, indices, torch.tensor(1.0))
    assert float(total.detach()) == 0.0 and float(parts["loss_dice"].detach()) == 0.0
    total.backward()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("masks"), r"labels\[1\] has no 'masks'"),
        (lambda t: t.update(masks=t["masks"][:, :-4]), r"labels\[1\]\['masks'\] has shape \[3, 96, 160\], expected \[3, 100, 160\]"),
        (lambda t: t.update(masks=t["masks"][:2]), r"labels\[1\]\['masks'\] has shape \[2, 100, 160\]"),
        (lambda t: t["masks"][2].zero_(), r"labels\[1\]\['masks'\]\[2\] is empty"),
        (lambda t: t.update(masks=t["masks"].float() * 0.5 + 0.25), r"labels\[1\]\['masks'\] must be boolean"),
        (lambda t: t.update(masks=t["masks"].numpy()), r"labels\[1\]\['masks'\] must be a torch.Tensor"),
    ],
    ids=["missing", "unpadded-size", "count", "empty", "soft", "numpy"],
)
def test_invalid_mask_targets_name_the_image(change, message):
    labels = labels_with_masks([(100, 120), (90, 160)], (100, 160))
    change(labels[1])
    with pytest.raises((ValueError, TypeError), match=message):
        check_mask_targets(labels, (100, 160))


def test_valid_targets_pass_including_0_1_integer_masks():
    labels = labels_with_masks([(100, 120), (90, 160)], (100, 160))
    labels[0]["masks"] = labels[0]["masks"].to(torch.uint8)
    check_mask_targets(labels, (100, 160))

"""Mask losses of DETR segmentation: sigmoid focal and dice between matched predicted and target masks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .precision import float32_loss

__all__ = ["MaskLoss", "check_mask_targets", "dice_loss", "sigmoid_focal_loss"]


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss of RetinaNet per pair: logits, targets [M, P] (targets 0/1) → [M], the mean over the P pixels.

    BCE-with-logits × (1 − p_t)^γ, weighted by α for positives and 1 − α for negatives (no weighting if α < 0).
    """
    prob = logits.sigmoid()
    bce = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 − (2·Σ σ(x)·t + 1) / (Σ σ(x) + Σ t + 1) per pair: logits, targets [M, P] → [M]."""
    prob = logits.sigmoid()
    overlap = (prob * targets).sum(1)
    return 1 - (2 * overlap + 1) / (prob.sum(1) + targets.sum(1) + 1)


def check_mask_targets(labels: Sequence[Mapping[str, torch.Tensor]], padded_size: tuple[int, int]) -> None:
    """Raise TypeError/ValueError naming the image (and object) unless every label dict has `masks`
    [N, H, W] (bool or 0/1 values) at the padded image size (H, W), one per box, none of them empty."""
    height, width = padded_size
    for i, target in enumerate(labels):
        if "masks" not in target:
            raise ValueError(
                f"labels[{i}] has no 'masks' (it has {sorted(target)}); segmentation needs one mask per box"
            )
        masks = target["masks"]
        if not isinstance(masks, torch.Tensor):
            raise TypeError(f"labels[{i}]['masks'] must be a torch.Tensor, got {type(masks).__name__}")
        count = int(target["class_labels"].shape[0])
        if masks.shape != (count, height, width):
            raise ValueError(
                f"labels[{i}]['masks'] has shape {list(masks.shape)}, expected [{count}, {height}, {width}]: one mask "
                "per box at the resized, padded size of pixel_values"
            )
        if masks.is_complex() or not (masks.dtype == torch.bool or bool(((masks == 0) | (masks == 1)).all())):
            raise ValueError(f"labels[{i}]['masks'] must be boolean (or hold only 0 and 1), got {masks.dtype}")
        empty = ~(masks.flatten(1) != 0).any(1)
        if bool(empty.any()):
            raise ValueError(
                f"labels[{i}]['masks'][{int(empty.nonzero()[0, 0])}] is empty although it has a box; "
                "drop objects whose mask vanished (e.g. after cropping) from the labels"
            )


class MaskLoss(nn.Module):
    """Focal (`loss_mask`) and dice (`loss_dice`) losses of the matched masks, each summed over the matched pairs
    and divided by `num_boxes`; masks are only supervised for the last decoder layer, as the original DETR.

    Predicted mask logits are upsampled (bilinear, align_corners=False) to the padded target size first; bf16/fp16
    mask logits are upcast to float32 and the loss runs with autocast off.

    Args:
        mask_loss_coefficient: weight of the focal loss in the total.
        dice_loss_coefficient: weight of the dice loss in the total.
        focal_alpha, focal_gamma: the focal loss's α and γ.
    """

    def __init__(
        self,
        *,
        mask_loss_coefficient: float = 1.0,
        dice_loss_coefficient: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if min(mask_loss_coefficient, dice_loss_coefficient, focal_gamma) < 0:
            raise ValueError("mask_loss_coefficient, dice_loss_coefficient and focal_gamma must be >= 0")
        self.mask_loss_coefficient = mask_loss_coefficient
        self.dice_loss_coefficient = dice_loss_coefficient
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @float32_loss
    def forward(
        self,
        pred_masks: torch.Tensor,
        labels: Sequence[Mapping[str, torch.Tensor]],
        indices: Sequence[tuple[torch.Tensor, torch.Tensor]],
        num_boxes: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """pred_masks [B, Q, h, w] logits; labels with validated `masks` [N_i, H, W] (see `check_mask_targets`);
        indices: per image (query_idx, target_idx) of the matching; num_boxes: the (synchronised) normaliser.
        Returns (weighted sum, {"loss_mask", "loss_dice"})."""
        image_idx = torch.cat([torch.full_like(query, i) for i, (query, _) in enumerate(indices)])
        query_idx = torch.cat([query for query, _ in indices])
        device = pred_masks.device
        matched = pred_masks[image_idx.to(device), query_idx.to(device)]  # [M, h, w]
        targets = torch.cat(
            [target["masks"][target_idx.to(target["masks"].device)].to(device) for target, (_, target_idx) in
             zip(labels, indices)]
        )  # fmt: skip
        # [M, h, w] -> [M, H, W] at the padded target size, then one row of pixels per pair.
        upsampled = nn.functional.interpolate(
            matched[:, None], size=targets.shape[-2:], mode="bilinear", align_corners=False
        )
        logits = upsampled.flatten(1)
        targets = targets.flatten(1).to(logits.dtype)
        loss_mask = sigmoid_focal_loss(logits, targets, self.focal_alpha, self.focal_gamma).sum() / num_boxes
        loss_dice = dice_loss(logits, targets).sum() / num_boxes
        total = self.mask_loss_coefficient * loss_mask + self.dice_loss_coefficient * loss_dice
        return total, {"loss_mask": loss_mask, "loss_dice": loss_dice}

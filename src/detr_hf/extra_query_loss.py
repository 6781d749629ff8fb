"""Loss with the training-only extra queries: one-to-one matching per query group, reconstruction of denoising queries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .criterion import DetrHfLoss, global_normalizers, matched_box_losses, weighted_cross_entropy
from .extra_queries import ExtraQueryLayout
from .precision import float32_loss
from .targets import PackedTargets, layer_suffixes, pack_targets

__all__ = ["denoising_loss", "extra_query_loss", "group_matching_loss"]


def group_matching_loss(
    criterion: DetrHfLoss,
    logits: torch.Tensor,
    boxes: torch.Tensor,
    targets: PackedTargets,
    num_groups: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DETR set loss of G query groups, each matched one-to-one on its own, averaged over groups (Group DETR's
    default normalisation: num_boxes and the class-weight sum count every group).

    logits [L, B, G·Q, C+1], boxes [L, B, G·Q, 4], group-major along the query axis. The groups are folded
    into the batch axis, so one criterion call matches all of them and syncs one pair of normalisers.
    """
    q = logits.shape[2] // num_groups
    # [L, B, G·Q, X] -> [L, B, G, Q, X] -> [L, G, B, Q, X] -> [L, G·B, Q, X]: image b of group g at g·B + b.
    folded_logits = logits.unflatten(2, (num_groups, q)).transpose(1, 2).flatten(1, 2)
    folded_boxes = boxes.unflatten(2, (num_groups, q)).transpose(1, 2).flatten(1, 2)
    return criterion.stacked(folded_logits, folded_boxes, targets.tile(num_groups))


@float32_loss
def denoising_loss(
    criterion: DetrHfLoss, logits: torch.Tensor, boxes: torch.Tensor, layout: ExtraQueryLayout
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reconstruction loss of the denoising queries, whose targets are known (no matching).

    logits [L, B, G_dn·P, C+1], boxes [L, B, G_dn·P, 4]. Cross-entropy to the clean class and L1 + GIoU to the
    clean box, each summed over real queries and divided by their number in the global batch (synced over
    processes like num_boxes), i.e. averaged over denoising groups. Padding queries enter the
    cross-entropy with weight 0, which keeps the denoising parameters in the graph of every step.
    """
    layers, groups = logits.shape[0], layout.num_denoising_groups
    dtype = torch.promote_types(boxes.dtype, torch.float32)
    # [L, B, G_dn·P, X] -> [L, B·G_dn·P, X]; targets [B, P] -> [B, G_dn, P] -> [B·G_dn·P].
    work_logits = logits.to(dtype).flatten(1, 2)
    pred = boxes.to(dtype).flatten(1, 2)
    expand = lambda t: t[:, None].expand(-1, groups, *t.shape[1:]).flatten(0, 2)  # noqa: E731
    classes, target_boxes, valid = (
        expand(layout.denoising_classes), expand(layout.denoising_boxes).to(dtype), expand(layout.denoising_valid),
    )  # fmt: skip
    count = float(valid.sum())
    num_boxes, _ = global_normalizers(count, count, logits.device).to(dtype).unbind()

    weights = (criterion.class_weight.to(dtype)[classes] * valid)[None].expand(layers, -1)
    loss_ce = weighted_cross_entropy(
        work_logits, work_logits.logsumexp(-1), classes[None].expand(layers, -1), weights, num_boxes
    )
    real = valid.nonzero()[:, 0]
    loss_bbox, loss_giou = matched_box_losses(
        pred[:, real], target_boxes[real][None].expand(layers, -1, -1), num_boxes
    )
    terms = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
    loss_dict = {}
    for i, suffix in enumerate(layer_suffixes(layers)):
        for name, values in terms.items():
            loss_dict[f"{name}_dn{suffix}"] = values[i]
    return criterion.weighted_sum(terms), loss_dict


@float32_loss
def extra_query_loss(
    criterion: DetrHfLoss,
    logits: torch.Tensor,
    boxes: torch.Tensor,
    extra_logits: torch.Tensor,
    extra_boxes: torch.Tensor,
    layout: ExtraQueryLayout,
    labels: PackedTargets | Sequence[Mapping[str, torch.Tensor]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss of a training step with extra queries.

    logits [L, B, Q, C+1] and boxes [L, B, Q, 4]: group 0 (the inference queries), L = the decoder layers
    that are supervised (1 without auxiliary loss); extra_logits/extra_boxes [L, B, T - Q, ...]: the other
    groups, then the denoising queries, as in `layout`; labels packed by `pack_targets` (or label dicts).
    Returns (loss, loss_dict): the group-averaged matching terms under the usual names, plus `loss_*_dn*`.
    """
    if not isinstance(labels, PackedTargets):
        dtype = torch.promote_types(boxes.dtype, torch.float32)
        labels = pack_targets(labels, logits.shape[1], criterion.num_labels, logits.device, dtype)
    split = layout.num_group_queries
    loss, loss_dict = group_matching_loss(
        criterion,
        torch.cat((logits, extra_logits[:, :, :split]), 2),
        torch.cat((boxes, extra_boxes[:, :, :split]), 2),
        labels,
        layout.num_groups,
    )
    if layout.num_denoising_groups:
        dn_loss, dn_dict = denoising_loss(
            criterion, extra_logits[:, :, split:], extra_boxes[:, :, split:], layout
        )
        loss = loss + dn_loss
        loss_dict.update(dn_dict)
    return loss, loss_dict

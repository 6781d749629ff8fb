"""DETR set loss: Hungarian-matched cross-entropy, L1 and GIoU over every decoder layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .box_ops import box_convert, generalized_box_iou
from .matcher import (
    HungarianMatcher,
    NonFinitePredictionError,
    check_prediction_shapes,
    check_predictions_finite,
    pack_targets,
)

if TYPE_CHECKING:
    from .configuration_detr_hf import DetrHfConfig

__all__ = ["DetrHfLoss", "global_normalizers", "matched_box_losses", "weighted_cross_entropy"]


def global_normalizers(
    num_boxes: float, class_weight_sum: float, device: torch.device, local_error: Exception | None = None
) -> torch.Tensor:
    """[num_boxes, class_weight_sum] summed over all processes (when torch.distributed is initialised, which
    covers accelerate and torchrun), divided by the world size and clamped >= 1 / > 0.

    Local sum / (global sum / world size), averaged by DDP over processes, equals the single-process
    normalisation of the whole global batch; one all_reduce carries both numbers.

    `local_error`, this process's input error, travels in the same all_reduce so every process raises
    together: a lone failing process would leave the others waiting in a collective forever.
    """
    failed = [float(isinstance(local_error, NonFinitePredictionError)), float(local_error is not None)]
    totals = torch.tensor([num_boxes, class_weight_sum, *failed], dtype=torch.float32, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals)
        totals[:2] = totals[:2] / dist.get_world_size()
    if local_error is not None:
        raise local_error
    if totals[2] > 0:
        raise NonFinitePredictionError("predictions on another process contain NaN or inf: training has diverged")
    if totals[3] > 0:
        raise ValueError("the loss inputs of another process are invalid (see that process's error)")
    return torch.stack([totals[0].clamp(min=1.0), totals[1].clamp(min=1e-12)])


def weighted_cross_entropy(
    logits: torch.Tensor,
    log_normalizer: torch.Tensor,
    target_classes: torch.Tensor,
    weights: torch.Tensor,
    norm: torch.Tensor,
) -> torch.Tensor:
    """Per-layer Σ w · (logsumexp − logit[y]) / norm from logits [L, ..., C+1], log_normalizer, target_classes
    and weights [L, ...] (`norm` is the synced sum of weights); returns [L]."""
    nll = log_normalizer - logits.gather(-1, target_classes[..., None])[..., 0]
    return (weights * nll).flatten(1).sum(1) / norm


def matched_box_losses(
    pred: torch.Tensor, target: torch.Tensor, num_boxes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer (Σ L1, Σ (1 − GIoU)) / num_boxes of paired boxes pred, target [L, M, 4] (cx, cy, w, h)."""
    loss_bbox = (pred - target).abs().sum((1, 2)) / num_boxes
    # Pairwise GIoU of 1×1 blocks = GIoU of each matched pair: [L, M, 1, 1].
    giou = generalized_box_iou(
        box_convert(pred, "cxcywh", "xyxy")[..., None, :],
        box_convert(target, "cxcywh", "xyxy")[..., None, :],
    )
    return loss_bbox, (1 - giou).flatten(1).sum(1) / num_boxes


class DetrHfLoss(nn.Module):
    """Loss of `DetrHfForObjectDetection` given labels.

    Per decoder layer (matching re-run per layer): `loss_ce`, cross-entropy over num_labels + 1 classes
    with the "no object" class weighted by `eos_coefficient`, normalised by the sum of class weights;
    `loss_bbox`, L1 of matched (cx, cy, w, h) boxes; `loss_giou`, 1 − GIoU of matched boxes; both divided
    by num_boxes, the number of target boxes per process in the global batch. Both normalisers are
    synchronised across processes, so N processes equal one process on the whole batch.

    `loss` = Σ_layers loss_ce + bbox_loss_coefficient · loss_bbox + giou_loss_coefficient · loss_giou.
    `loss_dict` holds each term unweighted (`loss_ce`, … for the last layer, `loss_ce_0`, … for auxiliary
    layer 0, …) plus logging-only, gradient-free `cardinality_error(_i)` and `class_error` (last layer, %).
    """

    def __init__(
        self,
        num_labels: int,
        matcher: HungarianMatcher,
        eos_coefficient: float = 0.1,
        bbox_loss_coefficient: float = 5.0,
        giou_loss_coefficient: float = 2.0,
        auxiliary_loss: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be an integer >= 1, got {num_labels!r}")
        if not isinstance(matcher, HungarianMatcher):
            raise TypeError(f"matcher must be a detr_hf HungarianMatcher, got {type(matcher).__name__}")
        if min(eos_coefficient, bbox_loss_coefficient, giou_loss_coefficient) < 0:
            raise ValueError("eos_coefficient, bbox_loss_coefficient and giou_loss_coefficient must be >= 0")
        self.num_labels = num_labels
        self.matcher = matcher
        self.eos_coefficient = eos_coefficient
        self.bbox_loss_coefficient = bbox_loss_coefficient
        self.giou_loss_coefficient = giou_loss_coefficient
        self.auxiliary_loss = auxiliary_loss
        class_weight = torch.ones(num_labels + 1)
        class_weight[-1] = eos_coefficient
        self.register_buffer("class_weight", class_weight, persistent=False)

    @classmethod
    def from_config(cls, config: DetrHfConfig) -> DetrHfLoss:
        """Build the loss (and its matcher) from a `DetrHfConfig`'s loss fields."""
        matcher = HungarianMatcher(config.class_cost, config.bbox_cost, config.giou_cost)
        return cls(
            config.num_labels,
            matcher,
            eos_coefficient=config.eos_coefficient,
            bbox_loss_coefficient=config.bbox_loss_coefficient,
            giou_loss_coefficient=config.giou_loss_coefficient,
            auxiliary_loss=config.auxiliary_loss,
        )

    def _stack_layers(
        self, logits: torch.Tensor, pred_boxes: torch.Tensor, auxiliary_outputs: Sequence[Mapping] | None
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Validate shapes and stack [auxiliary layers..., last layer] → logits [L, B, Q, C+1], boxes [L, B, Q, 4]."""
        check_prediction_shapes(logits, pred_boxes, "the last decoder layer")
        if logits.shape[-1] != self.num_labels + 1:
            raise ValueError(
                f"logits have {logits.shape[-1]} classes but the loss expects num_labels + 1 = {self.num_labels + 1}"
            )
        all_logits, all_boxes, names = [], [], []
        if self.auxiliary_loss and auxiliary_outputs is not None:
            if isinstance(auxiliary_outputs, Mapping) or not isinstance(auxiliary_outputs, Sequence):
                raise TypeError(
                    f"auxiliary_outputs must be a list of dicts, got {type(auxiliary_outputs).__name__}"
                )
            for i, aux in enumerate(auxiliary_outputs):
                name = f"auxiliary output {i} (decoder layer {i})"
                if not isinstance(aux, Mapping) or "logits" not in aux or "pred_boxes" not in aux:
                    raise ValueError(f"{name} must be a dict with 'logits' and 'pred_boxes'")
                check_prediction_shapes(aux["logits"], aux["pred_boxes"], name)
                if aux["logits"].shape != logits.shape:
                    raise ValueError(
                        f"logits of {name} have shape {list(aux['logits'].shape)}, "
                        f"the last layer's have {list(logits.shape)}"
                    )
                all_logits.append(aux["logits"])
                all_boxes.append(aux["pred_boxes"])
                names.append(name)
        all_logits.append(logits)
        all_boxes.append(pred_boxes)
        names.append("the last decoder layer")
        return torch.stack(all_logits), torch.stack(all_boxes), names

    def forward(
        self,
        logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        labels: Sequence[Mapping[str, torch.Tensor]],
        auxiliary_outputs: Sequence[Mapping[str, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """logits [B, Q, num_labels+1], pred_boxes [B, Q, 4] (cx, cy, w, h); labels: B dicts with
        `class_labels` [N_i] int64 and `boxes` [N_i, 4] normalised (cx, cy, w, h); auxiliary_outputs: one
        dict {"logits", "pred_boxes"} per earlier decoder layer, first layer first, or None.
        Returns (loss, loss_dict)."""
        all_logits, all_boxes, names = self._stack_layers(logits, pred_boxes, auxiliary_outputs)
        layers, batch, queries = all_logits.shape[:3]
        device = logits.device
        dtype = torch.promote_types(all_boxes.dtype, torch.float32)
        error, targets, num_matched, weight_sum = None, None, 0, 0.0
        try:
            targets = pack_targets(labels, batch, self.num_labels, device, dtype)
            check_predictions_finite(all_logits.detach(), all_boxes.detach(), names)
            sizes = np.minimum(targets.counts, queries)
            num_matched = int(sizes.sum())
            weight_sum = num_matched + self.eos_coefficient * (batch * queries - num_matched)
        except (TypeError, ValueError) as exc:
            error = exc
        count = sum(targets.counts) if targets is not None else 0
        num_boxes, class_norm = global_normalizers(count, weight_sum, device, error).to(dtype).unbind()

        work_logits = all_logits.to(dtype)
        log_normalizer = work_logits.logsumexp(-1)  # [L, B, Q], shared by the matching cost and the CE
        query_idx, target_idx = self.matcher.match_layers(
            all_logits.detach(), all_boxes.detach(), targets, log_normalizer.detach()
        )
        # One host→device copy: image of each pair [M], query [L, M], flat target [L, M], counts [B].
        image_idx = np.repeat(np.arange(batch), sizes)
        offsets = np.cumsum(targets.counts) - targets.counts
        flat_target = offsets[image_idx][None] + target_idx
        packed = np.concatenate([image_idx, query_idx.ravel(), flat_target.ravel(), targets.counts])
        image_t, query_t, target_t, counts_t = (
            torch.from_numpy(packed)
            .to(device)
            .split([num_matched, layers * num_matched, layers * num_matched, batch])
        )
        query_t, target_t = query_t.view(layers, num_matched), target_t.view(layers, num_matched)
        layer_t = torch.arange(layers, device=device)[:, None]

        target_classes = torch.full(
            (layers, batch, queries), self.num_labels, dtype=torch.int64, device=device
        )
        target_classes[layer_t, image_t, query_t] = targets.class_labels[target_t]
        weights = self.class_weight.to(dtype)[target_classes]
        loss_ce = weighted_cross_entropy(work_logits, log_normalizer, target_classes, weights, class_norm)
        matched_pred = all_boxes.to(dtype)[layer_t, image_t, query_t]  # [L, M, 4]
        loss_bbox, loss_giou = matched_box_losses(matched_pred, targets.boxes[target_t], num_boxes)

        per_layer = loss_ce + self.bbox_loss_coefficient * loss_bbox + self.giou_loss_coefficient * loss_giou
        loss = per_layer.sum()

        loss_dict: dict[str, torch.Tensor] = {}
        suffixes = [f"_{i}" for i in range(layers - 1)] + [""]
        with torch.no_grad():
            predicted = work_logits.argmax(-1)  # [L, B, Q]
            cardinality = (predicted != self.num_labels).sum(-1).to(dtype)
            cardinality_error = (cardinality - counts_t.to(dtype)).abs().mean(-1)
            if num_matched:
                correct = predicted[-1, image_t, query_t[-1]] == target_classes[-1, image_t, query_t[-1]]
                class_error = 100.0 - 100.0 * correct.to(dtype).mean()
            else:
                class_error = torch.zeros((), dtype=dtype, device=device)
        for i, suffix in enumerate(suffixes):
            loss_dict[f"loss_ce{suffix}"] = loss_ce[i]
            loss_dict[f"loss_bbox{suffix}"] = loss_bbox[i]
            loss_dict[f"loss_giou{suffix}"] = loss_giou[i]
            loss_dict[f"cardinality_error{suffix}"] = cardinality_error[i]
        loss_dict["class_error"] = class_error
        return loss, loss_dict

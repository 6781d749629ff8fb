"""DETR set loss: Hungarian-matched cross-entropy, L1 and GIoU over every decoder layer, in named parts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .box_ops import box_convert, generalized_box_iou
from .matcher import HungarianMatcher
from .precision import float32_loss
from .targets import (
    NonFinitePredictionError,
    PackedTargets,
    check_predictions_finite,
    check_stacked_predictions,
    layer_names,
    layer_suffixes,
    pack_targets,
    stack_layer_predictions,
)

if TYPE_CHECKING:
    from .configuration_detr_hf import DetrHfConfig

__all__ = [
    "DetrHfLoss",
    "LossNormalizers",
    "Matching",
    "global_normalizers",
    "matched_box_losses",
    "weighted_cross_entropy",
]


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


@dataclass(frozen=True)
class LossNormalizers:
    """The loss denominators of one step, synced over processes (see `global_normalizers`): num_boxes divides
    the box terms, class_weight_sum the cross-entropy. Scalars in the loss's working dtype."""

    num_boxes: torch.Tensor
    class_weight_sum: torch.Tensor


@dataclass(frozen=True)
class Matching:
    """The one-to-one assignment of every supervised layer, on the predictions' device (M matched pairs).

    image [M]: image of pair m (image b holds min(Q, counts[b]) pairs, the same in every layer);
    query [L, M]: its query; target [L, M]: its index into the packed targets (`PackedTargets.boxes`);
    layer [L, 1]: layer indices, broadcastable against query and target;
    target_classes [L, B, Q]: each query's target class, num_labels ("no object") where unmatched;
    target_counts [B]: each image's number of targets.
    """

    image: torch.Tensor
    query: torch.Tensor
    target: torch.Tensor
    layer: torch.Tensor
    target_classes: torch.Tensor
    target_counts: torch.Tensor

    @property
    def num_matched(self) -> int:
        return self.image.shape[0]


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

    Named parts, each overridable: `match` (Hungarian assignment), `classification_loss`, `box_losses`,
    `logging_metrics`; `layer_losses` gathers the terms and `term_weights` weighs them, so another term
    (e.g. a mask loss) is one more entry in both. `stacked` is the one entry point on predictions stacked
    [L, B, Q, ...]; `forward` takes them per layer as the model's public output holds them.

    Matching and loss are float32 whatever precision the model ran in: bf16/fp16 predictions are upcast at
    `stacked` and autocast is off inside (see precision.py).
    """

    # DetrHfConfig fields `from_config` reads: a model rebuilds its criterion when one of them changes.
    config_fields: ClassVar[tuple[str, ...]] = (
        "num_labels", "class_cost", "bbox_cost", "giou_cost", "eos_coefficient", "bbox_loss_coefficient",
        "giou_loss_coefficient", "auxiliary_loss",
    )  # fmt: skip

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
        """Build the loss (and its matcher) from a `DetrHfConfig`'s loss fields (`config_fields`)."""
        matcher = HungarianMatcher(config.class_cost, config.bbox_cost, config.giou_cost)
        return cls(
            config.num_labels,
            matcher,
            eos_coefficient=config.eos_coefficient,
            bbox_loss_coefficient=config.bbox_loss_coefficient,
            giou_loss_coefficient=config.giou_loss_coefficient,
            auxiliary_loss=config.auxiliary_loss,
        )

    @classmethod
    def config_values(cls, config: DetrHfConfig) -> tuple:
        """The values of `config_fields` in `config`: equal tuples build equal losses."""
        return tuple(getattr(config, field) for field in cls.config_fields)

    @property
    def term_weights(self) -> dict[str, float]:
        """Weight of each per-layer term of `layer_losses` in the total loss."""
        return {"loss_ce": 1.0, "loss_bbox": self.bbox_loss_coefficient, "loss_giou": self.giou_loss_coefficient}

    def weighted_sum(self, terms: Mapping[str, torch.Tensor], suffix: str = "") -> torch.Tensor:
        """Σ_terms weight · term[L] (terms named `<term><suffix>`), summed over layers: a scalar."""
        per_layer = 0
        for name, weight in self.term_weights.items():
            per_layer = per_layer + weight * terms[name + suffix]
        return per_layer.sum()

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
        all_logits, all_boxes = stack_layer_predictions(
            logits, pred_boxes, auxiliary_outputs if self.auxiliary_loss else None, self.num_labels
        )
        return self.stacked(all_logits, all_boxes, labels)

    @float32_loss
    def stacked(
        self,
        logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        labels: PackedTargets | Sequence[Mapping[str, torch.Tensor]],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of predictions stacked over decoder layers, first layer first: logits [L, B, Q, C+1],
        pred_boxes [L, B, Q, 4] (only the last layer counts without `auxiliary_loss`); labels packed by
        `pack_targets` or as `forward` takes them. Returns (loss, loss_dict)."""
        check_stacked_predictions(logits, pred_boxes, self.num_labels)
        if not self.auxiliary_loss:
            logits, pred_boxes = logits[-1:], pred_boxes[-1:]
        layers, batch, queries = logits.shape[:3]
        device = logits.device
        dtype = torch.promote_types(pred_boxes.dtype, torch.float32)
        # Input errors travel through the normalisers' all_reduce, so every process raises together.
        error, targets, weight_sum = None, None, 0.0
        try:
            if isinstance(labels, PackedTargets):
                targets = labels.to(dtype)
            else:
                targets = pack_targets(labels, batch, self.num_labels, device, dtype)
            check_predictions_finite(logits.detach(), pred_boxes.detach(), layer_names(layers))
            num_matched = int(np.minimum(targets.counts, queries).sum())
            weight_sum = num_matched + self.eos_coefficient * (batch * queries - num_matched)
        except (TypeError, ValueError) as exc:
            error = exc
        count = sum(targets.counts) if targets is not None else 0
        num_boxes, class_norm = global_normalizers(count, weight_sum, device, error).to(dtype).unbind()
        norms = LossNormalizers(num_boxes, class_norm)

        work_logits = logits.to(dtype)
        log_normalizer = work_logits.logsumexp(-1)  # [L, B, Q], shared by the matching cost and the CE
        matching = self.match(logits, pred_boxes, targets, log_normalizer)
        terms = self.layer_losses(work_logits, log_normalizer, pred_boxes.to(dtype), targets, matching, norms)
        loss = self.weighted_sum(terms)
        loss_dict: dict[str, torch.Tensor] = {}
        metrics = self.logging_metrics(work_logits, matching)
        for i, suffix in enumerate(layer_suffixes(layers)):
            for name, values in terms.items():
                loss_dict[f"{name}{suffix}"] = values[i]
            loss_dict[f"cardinality_error{suffix}"] = metrics["cardinality_error"][i]
        loss_dict["class_error"] = metrics["class_error"]
        return loss, loss_dict

    @torch.no_grad()
    def match(
        self, logits: torch.Tensor, pred_boxes: torch.Tensor, targets: PackedTargets, log_normalizer: torch.Tensor
    ) -> Matching:
        """Hungarian assignment of every layer (logits [L, B, Q, C+1], pred_boxes [L, B, Q, 4]), as device tensors."""
        layers, batch, queries = logits.shape[:3]
        device = logits.device
        query_idx, target_idx = self.matcher.match_layers(logits, pred_boxes, targets, log_normalizer)
        sizes = np.minimum(targets.counts, queries)
        num_matched = int(sizes.sum())
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
        target_classes = torch.full((layers, batch, queries), self.num_labels, dtype=torch.int64, device=device)
        target_classes[layer_t, image_t, query_t] = targets.class_labels[target_t]
        return Matching(image_t, query_t, target_t, layer_t, target_classes, counts_t)

    def layer_losses(
        self,
        logits: torch.Tensor,
        log_normalizer: torch.Tensor,
        pred_boxes: torch.Tensor,
        targets: PackedTargets,
        matching: Matching,
        norms: LossNormalizers,
    ) -> dict[str, torch.Tensor]:
        """Every unweighted term per layer ({name: [L]}), inputs in the working dtype."""
        loss_ce = self.classification_loss(logits, log_normalizer, matching, norms)
        loss_bbox, loss_giou = self.box_losses(pred_boxes, targets, matching, norms)
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def classification_loss(
        self, logits: torch.Tensor, log_normalizer: torch.Tensor, matching: Matching, norms: LossNormalizers
    ) -> torch.Tensor:
        """Class-weighted cross-entropy of every query to its matched class or "no object": [L]."""
        weights = self.class_weight.to(logits.dtype)[matching.target_classes]
        return weighted_cross_entropy(
            logits, log_normalizer, matching.target_classes, weights, norms.class_weight_sum
        )

    def box_losses(
        self, pred_boxes: torch.Tensor, targets: PackedTargets, matching: Matching, norms: LossNormalizers
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L1, 1 − GIoU) of the matched boxes per layer, each [L], divided by num_boxes."""
        matched_pred = pred_boxes[matching.layer, matching.image, matching.query]  # [L, M, 4]
        return matched_box_losses(matched_pred, targets.boxes[matching.target], norms.num_boxes)

    @torch.no_grad()
    def logging_metrics(self, logits: torch.Tensor, matching: Matching) -> dict[str, torch.Tensor]:
        """Gradient-free metrics: cardinality_error [L] (|predicted objects − targets| averaged over images) and
        class_error (scalar, % of matched queries of the last layer with the wrong top class)."""
        dtype = logits.dtype
        predicted = logits.argmax(-1)  # [L, B, Q]
        cardinality = (predicted != self.num_labels).sum(-1).to(dtype)
        cardinality_error = (cardinality - matching.target_counts.to(dtype)).abs().mean(-1)
        if matching.num_matched:
            image, query = matching.image, matching.query[-1]
            correct = predicted[-1, image, query] == matching.target_classes[-1, image, query]
            class_error = 100.0 - 100.0 * correct.to(dtype).mean()
        else:
            class_error = torch.zeros((), dtype=dtype, device=logits.device)
        return {"cardinality_error": cardinality_error, "class_error": class_error}

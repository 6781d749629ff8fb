"""The loss-input contract: label dicts validated and packed once per step, and checks on the predictions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "NonFinitePredictionError",
    "PackedTargets",
    "check_label_structure",
    "check_num_classes",
    "check_prediction_shapes",
    "check_predictions_finite",
    "check_stacked_predictions",
    "layer_names",
    "layer_suffixes",
    "pack_targets",
    "pack_targets_or_keep",
    "stack_layer_predictions",
]


@dataclass(frozen=True)
class PackedTargets:
    """Validated targets of one batch.

    class_labels [T] int64 and boxes [T, 4] hold every image's targets concatenated (T = sum of counts);
    padded_labels [B, N] and padded_boxes [B, N, 4] hold the same right-padded to N = max(counts).
    """

    class_labels: torch.Tensor
    boxes: torch.Tensor
    counts: list[int]
    padded_labels: torch.Tensor
    padded_boxes: torch.Tensor

    @property
    def batch_size(self) -> int:
        return len(self.counts)

    def tile(self, times: int) -> PackedTargets:
        """The same targets for `times` copies of the batch (image b of copy g at g·B + b), without re-validating."""
        if times == 1:
            return self
        return PackedTargets(
            self.class_labels.repeat(times),
            self.boxes.repeat(times, 1),
            self.counts * times,
            self.padded_labels.repeat(times, 1),
            self.padded_boxes.repeat(times, 1, 1),
        )

    def to(self, dtype: torch.dtype) -> PackedTargets:
        """These targets with boxes in `dtype` (self when they already are)."""
        if self.boxes.dtype == dtype:
            return self
        return PackedTargets(
            self.class_labels, self.boxes.to(dtype), self.counts, self.padded_labels, self.padded_boxes.to(dtype)
        )


def check_label_structure(labels: Sequence[Mapping[str, torch.Tensor]], batch_size: int) -> None:
    """Raise TypeError/ValueError naming the image unless `labels` is `batch_size` dicts with `class_labels`
    [N] integer and `boxes` [N, 4] floating point tensors (values are checked by `pack_targets`)."""
    if isinstance(labels, Mapping) or not isinstance(labels, Sequence):
        raise TypeError(f"labels must be a list of dicts (one per image), got {type(labels).__name__}")
    if len(labels) != batch_size:
        raise ValueError(f"labels has {len(labels)} dicts but the predictions have batch size {batch_size}")
    for i, target in enumerate(labels):
        if not isinstance(target, Mapping):
            raise TypeError(
                f"labels[{i}] must be a dict with 'class_labels' and 'boxes', got {type(target).__name__}"
            )
        for key in ("class_labels", "boxes"):
            if key not in target:
                raise ValueError(f"labels[{i}] is missing the key {key!r} (it has {sorted(target)})")
            if not isinstance(target[key], torch.Tensor):
                raise TypeError(
                    f"labels[{i}][{key!r}] must be a torch.Tensor, got {type(target[key]).__name__}"
                )
        class_labels, boxes = target["class_labels"], target["boxes"]
        if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool:
            raise TypeError(
                f"labels[{i}]['class_labels'] must be an integer tensor (int64), got {class_labels.dtype}"
            )
        if not boxes.is_floating_point():
            raise TypeError(f"labels[{i}]['boxes'] must be a floating point tensor, got {boxes.dtype}")
        if class_labels.ndim != 1:
            raise ValueError(
                f"labels[{i}]['class_labels'] must have shape [N], got {list(class_labels.shape)}"
            )
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != class_labels.shape[0]:
            raise ValueError(
                f"labels[{i}]['boxes'] must have shape [N, 4] with N = len(class_labels) = {class_labels.shape[0]}, "
                f"got {list(boxes.shape)}"
            )


def _locate(flat_index: int, counts: list[int]) -> tuple[int, int]:
    """Flat index into the concatenated targets → (image index, box index within that image)."""
    ends = np.cumsum(counts)
    image = int(np.searchsorted(ends, flat_index, side="right"))
    return image, flat_index - int(ends[image] - counts[image])


def pack_targets(
    labels: Sequence[Mapping[str, torch.Tensor]],
    batch_size: int,
    num_labels: int,
    device: torch.device,
    dtype: torch.dtype,
) -> PackedTargets:
    """Validate the label dicts (one host sync for all images) and concatenate/pad them on `device`.

    Raises TypeError/ValueError naming the image (and box) index for: wrong container, length, keys,
    dtypes or shapes; class ids outside 0..num_labels-1; boxes that are not normalised (cx, cy, w, h).
    """
    check_label_structure(labels, batch_size)
    counts = [int(t["class_labels"].shape[0]) for t in labels]
    class_labels = torch.cat([t["class_labels"].to(device=device, dtype=torch.int64) for t in labels])
    boxes = torch.cat([t["boxes"].to(device=device, dtype=dtype) for t in labels])

    bad_class = (class_labels < 0) | (class_labels >= num_labels)
    bad_box = (
        ~torch.isfinite(boxes).all(-1)
        | (boxes < 0).any(-1)
        | (boxes > 1).any(-1)
        | (boxes[:, 2:] <= 0).any(-1)
    )
    bad = bad_class | bad_box
    if class_labels.numel() and bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        image, box = _locate(first, counts)
        if bool(bad_class[first]):
            raise ValueError(
                f"labels[{image}]['class_labels'][{box}] = {int(class_labels[first])} is outside 0..{num_labels - 1} "
                f"(num_labels = {num_labels}; the extra 'no object' logit is not a valid target class)"
            )
        raise ValueError(
            f"labels[{image}]['boxes'][{box}] = {boxes[first].tolist()} is not a normalised (cx, cy, w, h) box: "
            "values must be finite and in [0, 1] with w > 0 and h > 0, relative to the image's own unpadded size "
            "(absolute pixels or (x0, y0, x1, y1) boxes are a common cause)"
        )

    padded_labels = nn.utils.rnn.pad_sequence(list(class_labels.split(counts)), batch_first=True)
    # Padding columns are never read by the assignment; a valid box keeps their costs finite.
    padded_boxes = nn.utils.rnn.pad_sequence(list(boxes.split(counts)), batch_first=True, padding_value=0.5)
    return PackedTargets(class_labels, boxes, counts, padded_labels, padded_boxes)


class NonFinitePredictionError(ValueError):
    """Predictions contain NaN or inf: training has diverged (training loops may skip the step)."""


def check_predictions_finite(
    logits: torch.Tensor, pred_boxes: torch.Tensor, layer_names: Sequence[str]
) -> None:
    """Raise NonFinitePredictionError naming the tensor, decoder layer and image if a prediction is NaN or inf.

    logits [L, B, Q, C+1] and pred_boxes [L, B, Q, 4] stack the decoder layers named by `layer_names`.
    """
    # A NaN or inf anywhere makes the sum non-finite: one cheap reduction, the full scan only on failure.
    if bool(torch.isfinite(logits.sum() + pred_boxes.sum())):
        return
    bad = torch.stack([~torch.isfinite(t).flatten(2).all(-1) for t in (logits, pred_boxes)])  # [2, L, B]
    if not bool(bad.any()):
        return  # finite values whose sum overflowed
    which, layer, image = (int(v) for v in bad.nonzero()[0])
    tensor = ("logits", "pred_boxes")[which]
    raise NonFinitePredictionError(
        f"{tensor} of {layer_names[layer]} contain NaN or infinite values (image {image}): training has diverged "
        "(lower the learning rate, clip gradients, or check the inputs for NaN)"
    )


def check_prediction_shapes(logits: torch.Tensor, pred_boxes: torch.Tensor, name: str) -> None:
    """Raise TypeError/ValueError unless logits is [B, Q, C+1] and pred_boxes [B, Q, 4], both floating point;
    `name` says whose predictions they are."""
    for tensor_name, tensor in (("logits", logits), ("pred_boxes", pred_boxes)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise TypeError(f"{tensor_name} of {name} must be a floating point tensor, got {kind}")
    if logits.ndim != 3 or logits.shape[-1] < 2:
        raise ValueError(
            f"logits of {name} must have shape [batch, queries, num_labels + 1], got {list(logits.shape)}"
        )
    if pred_boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(
            f"pred_boxes of {name} must have shape [batch, queries, 4] = {[*logits.shape[:2], 4]}, "
            f"got {list(pred_boxes.shape)}"
        )


def layer_names(layers: int) -> list[str]:
    """How errors name each of `layers` stacked decoder layers: the auxiliary outputs, then the last layer."""
    return [f"auxiliary output {i} (decoder layer {i})" for i in range(layers - 1)] + ["the last decoder layer"]


def layer_suffixes(layers: int) -> list[str]:
    """loss_dict key suffix of each of `layers` stacked layers: `_0`, `_1`, … for auxiliary layers, "" for the last."""
    return [f"_{i}" for i in range(layers - 1)] + [""]


def check_num_classes(logits: torch.Tensor, num_labels: int) -> None:
    """Raise ValueError unless the last axis of `logits` holds num_labels + 1 classes (the last = no object)."""
    if logits.shape[-1] != num_labels + 1:
        raise ValueError(
            f"logits have {logits.shape[-1]} classes but the loss expects num_labels + 1 = {num_labels + 1}"
        )


def check_stacked_predictions(logits: torch.Tensor, pred_boxes: torch.Tensor, num_labels: int) -> None:
    """Raise TypeError/ValueError unless logits is [L, B, Q, num_labels + 1] and pred_boxes [L, B, Q, 4]."""
    for name, tensor in (("logits", logits), ("pred_boxes", pred_boxes)):
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
            got = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"stacked {name} must have shape [layers, batch, queries, ...], got {got}")
    check_prediction_shapes(logits[-1], pred_boxes[-1], "the last decoder layer")
    if pred_boxes.shape[0] != logits.shape[0]:
        raise ValueError(
            f"stacked logits hold {logits.shape[0]} layers but pred_boxes hold {pred_boxes.shape[0]}"
        )
    check_num_classes(logits, num_labels)


def stack_layer_predictions(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    auxiliary_outputs: Sequence[Mapping[str, torch.Tensor]] | None,
    num_labels: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the per-layer predictions of a model's public output and stack them, first layer first:
    logits [B, Q, C+1], pred_boxes [B, Q, 4] and the auxiliary dicts → logits [L, B, Q, C+1], boxes [L, B, Q, 4]."""
    check_prediction_shapes(logits, pred_boxes, "the last decoder layer")
    check_num_classes(logits, num_labels)
    all_logits, all_boxes = [], []
    if auxiliary_outputs is not None:
        if isinstance(auxiliary_outputs, Mapping) or not isinstance(auxiliary_outputs, Sequence):
            raise TypeError(f"auxiliary_outputs must be a list of dicts, got {type(auxiliary_outputs).__name__}")
        for i, aux in enumerate(auxiliary_outputs):
            name = layer_names(i + 2)[i]
            if not isinstance(aux, Mapping) or "logits" not in aux or "pred_boxes" not in aux:
                raise ValueError(f"{name} must be a dict with 'logits' and 'pred_boxes'")
            check_prediction_shapes(aux["logits"], aux["pred_boxes"], name)
            if aux["logits"].shape != logits.shape:
                raise ValueError(
                    f"logits of {name} have shape {list(aux['logits'].shape)}, the last layer's have {list(logits.shape)}"
                )
            all_logits.append(aux["logits"])
            all_boxes.append(aux["pred_boxes"])
    all_logits.append(logits)
    all_boxes.append(pred_boxes)
    return torch.stack(all_logits), torch.stack(all_boxes)


def pack_targets_or_keep(
    labels: Sequence[Mapping[str, torch.Tensor]] | None,
    pixel_values: torch.Tensor,
    num_labels: int,
    model_dtype: torch.dtype,
) -> PackedTargets | Sequence[Mapping[str, torch.Tensor]] | None:
    """A model's labels packed once for its step (on the pixels' device, boxes in at least float32), or returned
    as given when they are invalid (or the pixels are not a tensor) so the caller can raise the error where
    every process raises it together (the criterion does)."""
    if labels is None or not isinstance(pixel_values, torch.Tensor):
        return labels
    dtype = torch.promote_types(model_dtype, torch.float32)
    try:
        return pack_targets(labels, pixel_values.shape[0], num_labels, pixel_values.device, dtype)
    except (TypeError, ValueError):
        return labels

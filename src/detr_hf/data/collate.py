"""Batch collation: the image processor normalises and pads the pixels; the samples' label dicts pass through."""

from __future__ import annotations

from typing import Any

import torch

from detr_hf.panoptic_annotations import pad_label_masks

__all__ = ["DetectionCollator"]


class DetectionCollator:
    """Samples of `DetectionDataset` → model batch.

    Returns `pixel_values`, `pixel_mask` (the processor, `do_resize=False`: the transforms sized the images),
    `labels` (the samples' label dicts as they are: boxes normalised by each image's own transformed size,
    `orig_size` the ORIGINAL size, so label dicts alone map back to it) and, unless `model_inputs_only`,
    `orig_size` (int64 [B, 2] = original (h, w)), `image_id` and `index` (dataset rows) for evaluation.
    Segment `masks` in the label dicts are padded like the pixels (False at the bottom / right).
    """

    def __init__(self, processor: Any, model_inputs_only: bool = False) -> None:
        self.processor = processor
        self.model_inputs_only = model_inputs_only

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        if not samples:
            raise ValueError("DetectionCollator got an empty list of samples")
        batch = self.processor([s["image"] for s in samples], do_resize=False, return_tensors="pt")
        out: dict[str, Any] = {
            "pixel_values": batch["pixel_values"],
            "pixel_mask": batch["pixel_mask"],
            "labels": [self._padded(s["labels"], batch["pixel_values"].shape[-2:]) for s in samples],
        }
        if not self.model_inputs_only:
            out["orig_size"] = torch.tensor([list(s["orig_size"]) for s in samples], dtype=torch.int64)
            out["image_id"] = [int(s["image_id"]) for s in samples]
            out["index"] = [int(s["index"]) for s in samples]
        return out

    @staticmethod
    def _padded(labels: dict, padded_size: Any) -> dict:
        """The label dict itself, or (with segment `masks`) a copy whose masks are padded to `padded_size`."""
        return pad_label_masks(dict(labels), padded_size) if "masks" in labels else labels

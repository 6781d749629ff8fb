"""Batch collation through DetrHfImageProcessor (normalise, pad, mask, label dicts) plus evaluation metadata."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DetectionCollator"]


class DetectionCollator:
    """Samples of `DetectionDataset` → model batch.

    Returns `pixel_values`, `pixel_mask`, `labels` (one dict per image, boxes normalised by the image's own
    transformed size) and, unless `model_inputs_only`, `orig_size` (int64 [B, 2] = original (h, w)),
    `orig_target` (COCO dicts in original pixels) and `index` (dataset rows) for evaluation.
    Each label dict's `orig_size` is the ORIGINAL image size, so label dicts alone map back to it
    (what the Trainer path uses as references).
    """

    def __init__(self, processor: Any, model_inputs_only: bool = False) -> None:
        self.processor = processor
        self.model_inputs_only = model_inputs_only

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        if not samples:
            raise ValueError("DetectionCollator got an empty list of samples")
        batch = self.processor(
            [s["image"] for s in samples],
            annotations=[s["target"] for s in samples],
            do_resize=False,
            return_tensors="pt",
        )
        orig_size = torch.tensor([list(s["orig_size"]) for s in samples], dtype=torch.int64)
        labels = batch["labels"]
        for label, size in zip(labels, orig_size):
            label["orig_size"] = size.clone()
        out: dict[str, Any] = {
            "pixel_values": batch["pixel_values"],
            "pixel_mask": batch["pixel_mask"],
            "labels": labels,
        }
        if not self.model_inputs_only:
            out["orig_size"] = orig_size
            out["orig_target"] = [s["orig_target"] for s in samples]
            out["index"] = [int(s["index"]) for s in samples]
        return out

"""Random detection-loss problems (predictions and label dicts) shared by the matcher/criterion tests."""

from __future__ import annotations

import torch


def random_labels(
    gen: torch.Generator, counts: list[int], num_labels: int, dtype: torch.dtype = torch.float32
) -> list[dict[str, torch.Tensor]]:
    """One label dict per entry of `counts`: valid normalised (cx, cy, w, h) boxes inside the image."""
    labels = []
    for n in counts:
        centers = torch.rand(n, 2, generator=gen, dtype=dtype) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=gen, dtype=dtype) * 0.3 + 0.05
        classes = torch.randint(0, num_labels, (n,), generator=gen)
        labels.append({"class_labels": classes, "boxes": torch.cat([centers, sizes], 1)})
    return labels


def random_predictions(
    gen: torch.Generator,
    layers: int,
    batch: int,
    queries: int,
    num_labels: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [L, B, Q, num_labels+1] and pred_boxes [L, B, Q, 4] (sigmoid of Gaussian, so inside (0, 1))."""
    logits = torch.randn(layers, batch, queries, num_labels + 1, generator=gen, dtype=dtype) * 2
    boxes = torch.randn(layers, batch, queries, 4, generator=gen, dtype=dtype).sigmoid()
    return logits, boxes


def random_counts(gen: torch.Generator, batch: int, low: int, high: int) -> list[int]:
    """`batch` target counts drawn uniformly from low..high."""
    return torch.randint(low, high + 1, (batch,), generator=gen).tolist()

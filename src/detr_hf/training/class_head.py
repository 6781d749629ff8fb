"""Fine-tuning's class head: keep the checkpoint's rows of the classes it already knows (by name or COCO id)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from detr_hf.coco_labels import COCO_NUM_LABELS, UNUSED_LABEL, coco_id2label

__all__ = ["HeadTransfer", "plan_head_transfer", "transfer_class_head"]

logger = logging.getLogger(__name__)


@dataclass
class HeadTransfer:
    """Which checkpoint row each new class starts from (None = a fresh row); the no-object row is always kept."""

    rows: list[int | None]
    by_name: list[str] = field(default_factory=list)
    by_coco_id: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """True when the new head is the checkpoint's head unchanged (same classes in the same order)."""
        return not self.new and self.rows == list(range(len(self.rows)))

    def describe(self, num_checkpoint_labels: int) -> str:
        kept = self.by_name + self.by_coco_id
        parts = [f"class head: kept {len(kept)} of the checkpoint's {num_checkpoint_labels} class rows and its no-object row"]
        if self.by_name:
            parts.append(f"by name: {', '.join(self.by_name)}")
        if self.by_coco_id:
            parts.append(f"by COCO id: {', '.join(self.by_coco_id)}")
        parts.append(f"{len(self.new)} new class(es) with fresh rows" + (f": {', '.join(self.new)}" if self.new else ""))
        return "; ".join(parts)


def _normalised(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def _is_placeholder(index: int, name: str) -> bool:
    return name == f"LABEL_{index}"


def _is_coco_head(id2label: Mapping[int, str]) -> bool:
    """A 91-label head indexed by raw COCO category id (converted DETR checkpoints), named or unnamed."""
    if len(id2label) != COCO_NUM_LABELS:
        return False
    coco = coco_id2label()
    if all(_is_placeholder(i, n) for i, n in id2label.items()):
        return True
    agree = sum(_normalised(id2label[i]) == _normalised(name) for i, name in coco.items() if name != UNUSED_LABEL)
    return agree >= 0.9 * sum(name != UNUSED_LABEL for name in coco.values())


def plan_head_transfer(
    checkpoint_id2label: Mapping[int, str],
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
) -> HeadTransfer:
    """Rows of the checkpoint's class head for each of `class_names` (the new labels 0..N-1).

    A class starts from the checkpoint row of the same name (case and `_` vs space ignored). For a
    91-label COCO head (label id == raw COCO id) a class not matched by name starts from the row of its
    dataset category id (`category_ids[i]`, e.g. a COCO folder's own ids) when that id is a COCO class.
    Every other class gets a fresh row.
    """
    id2label = {int(k): str(v) for k, v in checkpoint_id2label.items()}
    by_name_index = {
        _normalised(name): i
        for i, name in sorted(id2label.items(), reverse=True)  # the lowest id wins on repeated names
        if name != UNUSED_LABEL and not _is_placeholder(i, name)
    }
    coco_head = _is_coco_head(id2label)
    coco = coco_id2label()
    plan = HeadTransfer(rows=[])
    used: set[int] = set()
    for i, name in enumerate(class_names):
        row = by_name_index.get(_normalised(name))
        if row is not None and row not in used:
            plan.rows.append(row)
            plan.by_name.append(f"{name}<-{row}")
            used.add(row)
            continue
        coco_id = int(category_ids[i]) if category_ids is not None else None
        if coco_head and coco_id is not None and coco.get(coco_id, UNUSED_LABEL) != UNUSED_LABEL and coco_id not in used:
            plan.rows.append(coco_id)
            plan.by_coco_id.append(f"{name}<-{coco_id}")
            used.add(coco_id)
            continue
        plan.rows.append(None)
        plan.new.append(str(name))
    return plan


@torch.no_grad()
def transfer_class_head(
    head: nn.Linear, checkpoint_weight: torch.Tensor, checkpoint_bias: torch.Tensor, plan: HeadTransfer
) -> None:
    """Overwrite `head` (Linear(d, N + 1), freshly initialised) in place: row i ← checkpoint row `plan.rows[i]`
    where set, the last (no-object) row ← the checkpoint's last row; fresh rows stay as initialised."""
    num_new = len(plan.rows)
    if head.weight.shape[0] != num_new + 1:
        raise ValueError(f"class head has {head.weight.shape[0]} rows, expected {num_new} classes + no object")
    if checkpoint_weight.shape[1] != head.weight.shape[1]:
        raise ValueError(
            f"checkpoint class head has width {checkpoint_weight.shape[1]}, the new head {head.weight.shape[1]}"
        )
    for i, row in enumerate(plan.rows):
        if row is not None:
            head.weight[i] = checkpoint_weight[row]
            head.bias[i] = checkpoint_bias[row]
    head.weight[num_new] = checkpoint_weight[-1]
    head.bias[num_new] = checkpoint_bias[-1]

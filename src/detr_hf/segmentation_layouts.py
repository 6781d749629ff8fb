"""Key maps of DETR segmentation checkpoints (original panoptic `.pth`, transformers DetrForSegmentation folders).

Both wrap the detector's keys in `detr.` and store the mask head under the original names (`bbox_attention.q_linear`,
`mask_head.lay1..5`, `gn1..5`, `adapter1..3`, `out_lay`). Importing this module registers the layouts
"original_panoptic" and "transformers_segmentation" with `detr_hf.checkpoint_layouts.to_detr_hf` / `from_detr_hf`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .checkpoint_layouts import LAYOUTS, ORIGINAL_RULES, TRANSFORMERS_RULES, Rule

DETECTOR_PREFIX = "detr."


def _mask_head_rules() -> tuple[Rule, ...]:
    """Original mask head names ↔ ours; the numbered layers lay1..5 / gn1..5 are our blocks 0..4."""
    rules = [
        Rule("bbox_attention.q_linear.{p}", ("bbox_attention.q_proj.{p}",)),
        Rule("bbox_attention.k_linear.{p}", ("bbox_attention.k_proj.{p}",)),
        Rule("mask_head.out_lay.{p}", ("mask_head.output_conv.{p}",)),
    ]
    for k in range(1, 6):
        rules.append(Rule(f"mask_head.lay{k}.{{p}}", (f"mask_head.blocks.{k - 1}.conv.{{p}}",)))
        rules.append(Rule(f"mask_head.gn{k}.{{p}}", (f"mask_head.blocks.{k - 1}.norm.{{p}}",)))
    for k in range(1, 4):
        rules.append(Rule(f"mask_head.adapter{k}.{{p}}", (f"mask_head.adapters.{k - 1}.{{p}}",)))
    return tuple(rules)


MASK_HEAD_RULES = _mask_head_rules()


def _wrapped(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """The detector's rules under the `detr.` prefix, then the mask head's."""
    return tuple(Rule(DETECTOR_PREFIX + rule.external, rule.ours) for rule in rules) + MASK_HEAD_RULES


SEGMENTATION_LAYOUTS: dict[str, tuple[Rule, ...]] = {
    "original_panoptic": _wrapped(ORIGINAL_RULES),
    "transformers_segmentation": _wrapped(TRANSFORMERS_RULES),
}
for _name, _rules in SEGMENTATION_LAYOUTS.items():
    LAYOUTS.setdefault(_name, _rules)


def is_segmentation_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a segmentation checkpoint: the detector under `detr.` and/or a mask head."""
    return any(key.startswith((DETECTOR_PREFIX, "mask_head.", "bbox_attention.")) for key in state_dict)

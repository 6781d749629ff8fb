"""The DetrHfConfig a converted DETR checkpoint implies: backbone depth, sizes, labels, pre-norm, from its weights."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .coco_labels import COCO_NUM_LABELS, coco_id2label
from .configuration_detr_hf import DetrHfConfig

_BODY = "model.backbone.body."
# (block type, blocks per stage, width factor) -> timm name; every one has the plain 7x7 stem.
_RESNETS: dict[tuple[str, tuple[int, ...], int], str] = {
    ("basic", (2, 2, 2, 2), 1): "resnet18",
    ("basic", (3, 4, 6, 3), 1): "resnet34",
    ("bottleneck", (2, 2, 2, 2), 1): "resnet26",
    ("bottleneck", (3, 4, 6, 3), 1): "resnet50",
    ("bottleneck", (3, 4, 23, 3), 1): "resnet101",
    ("bottleneck", (3, 8, 36, 3), 1): "resnet152",
    ("bottleneck", (3, 24, 36, 3), 1): "resnet200",
    ("bottleneck", (3, 4, 6, 3), 2): "wide_resnet50_2",
    ("bottleneck", (3, 4, 23, 3), 2): "wide_resnet101_2",
}
# Settings a trained DETR backbone gets, as in the paper: frozen BN statistics, stem + first stage frozen.
TRAINED_BACKBONE = {"freeze_backbone_batch_norm": True, "backbone_frozen_stages": 1}


def count_layers(state_dict: Mapping[str, Any], prefix: str) -> int:
    """How many numbered children `prefix.0.`, `prefix.1.`, ... the keys show (highest index + 1)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


@dataclass(frozen=True)
class ResNetShape:
    """What a ResNet backbone's weights (timm names under `model.backbone.body.`) show."""

    plain_stem: bool
    block: str
    depths: tuple[int, ...]
    width_factor: int

    @classmethod
    def of(cls, state_dict: Mapping[str, torch.Tensor]) -> ResNetShape:
        depths = tuple(count_layers(state_dict, f"{_BODY}layer{stage}") for stage in range(1, 5))
        first_conv = state_dict.get(f"{_BODY}layer1.0.conv1.weight")
        bottleneck = f"{_BODY}layer1.0.conv3.weight" in state_dict
        # A bottleneck's inner width is 64 per unit of width factor in the first stage; a basic block's too.
        width = 0 if first_conv is None else first_conv.shape[0] // 64
        return cls(f"{_BODY}conv1.weight" in state_dict, "bottleneck" if bottleneck else "basic", depths, width)

    @property
    def name(self) -> str | None:
        """The timm ResNet with exactly this shape, or None."""
        return _RESNETS.get((self.block, self.depths, self.width_factor)) if self.plain_stem else None

    def __str__(self) -> str:
        wide = f", width x{self.width_factor}" if self.width_factor not in (0, 1) else ""
        stem = "" if self.plain_stem else ", no plain 7x7 stem (conv1)"
        return f"{self.block} blocks {list(self.depths)} per stage{wide}{stem}"


def resolve_backbone(state_dict: Mapping[str, torch.Tensor], named: str | None) -> str:
    """The timm backbone of converted weights: the ResNet their shape shows, checked against a source's name.

    A name the weights contradict (config says resnet50, blocks say resnet34) is an error; a timm name outside
    the known ResNets (e.g. resnet50d) is trusted, the exact weight load checks it.
    """
    shape = ResNetShape.of(state_dict)
    if named is None:
        if shape.name is None:
            known = ", ".join(sorted(set(_RESNETS.values())))
            raise ValueError(f"backbone weights have {shape}: not a ResNet detr_hf recognises ({known})")
        return shape.name
    base_name = named.split(".")[0]  # "resnet50.tv_in1k" -> "resnet50"
    if shape.name is not None and base_name in _RESNETS.values() and shape.name != base_name:
        raise ValueError(f"config.json names backbone {named!r} but its weights are a {shape.name} ({shape})")
    return named


def is_placeholder(id2label: Mapping[Any, str]) -> bool:
    """transformers' default names LABEL_0, LABEL_1, ...: no real names."""
    return all(name == f"LABEL_{key}" for key, name in id2label.items())


def label_kwargs(num_head_rows: int, id2label: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Labels of a head with `num_head_rows` rows (last = no object); COCO names for a 92-row head."""
    num_labels = num_head_rows - 1
    if id2label is not None and len(id2label) == num_labels and not is_placeholder(id2label):
        return {"id2label": {int(k): v for k, v in id2label.items()}}
    if num_labels == COCO_NUM_LABELS:
        return {"id2label": coco_id2label()}
    return {"num_labels": num_labels}


def config_from_weights(
    state_dict: Mapping[str, torch.Tensor],
    *,
    dilation: bool,
    num_attention_heads: int,
    backbone: str | None = None,
    id2label: Mapping[int, str] | None = None,
    **overrides: Any,
) -> DetrHfConfig:
    """Everything visible in detr_hf-named weights: sizes, depths, labels, pre-norm; the rest as DETR's recipe.

    backbone: the timm name the source states, if any (checked against the weights by `resolve_backbone`).
    """
    num_queries, d_model = state_dict["model.query_position_embeddings.weight"].shape
    row_embeddings = state_dict.get("model.position_encoding.row_embeddings.weight")
    kwargs: dict[str, Any] = dict(
        backbone=resolve_backbone(state_dict, backbone),
        backbone_kwargs={"output_stride": 16} if dilation else {},
        use_pretrained_backbone=False,
        d_model=d_model,
        num_queries=num_queries,
        encoder_layers=count_layers(state_dict, "model.encoder.layers"),
        decoder_layers=count_layers(state_dict, "model.decoder.layers"),
        encoder_attention_heads=num_attention_heads,
        decoder_attention_heads=num_attention_heads,
        encoder_ffn_dim=state_dict["model.encoder.layers.0.ffn.fc1.weight"].shape[0],
        decoder_ffn_dim=state_dict["model.decoder.layers.0.ffn.fc1.weight"].shape[0],
        pre_norm="model.encoder.layer_norm.weight" in state_dict,
        position_embedding_type="sine" if row_embeddings is None else "learned",
        **TRAINED_BACKBONE,
    )
    if row_embeddings is not None:
        kwargs["max_position_embeddings"] = row_embeddings.shape[0]
    kwargs.update(label_kwargs(state_dict["class_labels_classifier.weight"].shape[0], id2label))
    kwargs.update(overrides)
    return DetrHfConfig(**kwargs)

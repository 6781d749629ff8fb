"""Key maps between detr_hf's state dict and the two DETR checkpoint layouts users bring (original, transformers)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

# Placeholders usable in a rule: {i} a layer index, {p} weight/bias, {key} any rest of a key.
_PLACEHOLDERS = {"i": r"\d+", "p": r"weight|bias", "key": r".+"}

_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


@dataclass(frozen=True)
class Rule:
    """One family of keys: `external` ↔ `ours`; several `ours` templates mean `external` stacks them on dim 0."""

    external: str
    ours: tuple[str, ...]

    def _regex(self, template: str) -> re.Pattern:
        pattern = re.escape(template)
        for name, body in _PLACEHOLDERS.items():
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{body})")
        return re.compile(pattern + "$")

    def match_external(self, key: str) -> dict[str, str] | None:
        found = self._regex(self.external).match(key)
        return None if found is None else found.groupdict()

    def match_ours(self, key: str) -> dict[str, str] | None:
        """Match a key of ours; for a stacked rule only the first part (q_proj) is matched."""
        found = self._regex(self.ours[0]).match(key)
        return None if found is None else found.groupdict()


def _one(external: str, ours: str) -> Rule:
    return Rule(external, (ours,))


def _stacked_attention(external_module: str, our_module: str) -> Rule:
    """Original `in_proj_{weight,bias}` = rows [W_q; W_k; W_v] ↔ our separate q/k/v projections."""
    return Rule(
        f"{external_module}.in_proj_{{p}}",
        tuple(f"{our_module}.{proj}.{{p}}" for proj in _ATTENTION_PROJECTIONS),
    )


_ENC = "transformer.encoder.layers.{i}"
_DEC = "transformer.decoder.layers.{i}"

ORIGINAL_RULES: tuple[Rule, ...] = (
    _one("backbone.0.body.{key}", "model.backbone.body.{key}"),
    _one("input_proj.{p}", "model.input_projection.{p}"),
    _one("query_embed.weight", "model.query_position_embeddings.weight"),
    _stacked_attention(f"{_ENC}.self_attn", "model.encoder.layers.{i}.self_attn"),
    _one(f"{_ENC}.self_attn.out_proj.{{p}}", "model.encoder.layers.{i}.self_attn.out_proj.{p}"),
    _one(f"{_ENC}.linear1.{{p}}", "model.encoder.layers.{i}.ffn.fc1.{p}"),
    _one(f"{_ENC}.linear2.{{p}}", "model.encoder.layers.{i}.ffn.fc2.{p}"),
    _one(f"{_ENC}.norm1.{{p}}", "model.encoder.layers.{i}.self_attn_layer_norm.{p}"),
    _one(f"{_ENC}.norm2.{{p}}", "model.encoder.layers.{i}.final_layer_norm.{p}"),
    _one("transformer.encoder.norm.{p}", "model.encoder.layer_norm.{p}"),
    _stacked_attention(f"{_DEC}.self_attn", "model.decoder.layers.{i}.self_attn"),
    _one(f"{_DEC}.self_attn.out_proj.{{p}}", "model.decoder.layers.{i}.self_attn.out_proj.{p}"),
    _stacked_attention(f"{_DEC}.multihead_attn", "model.decoder.layers.{i}.encoder_attn"),
    _one(f"{_DEC}.multihead_attn.out_proj.{{p}}", "model.decoder.layers.{i}.encoder_attn.out_proj.{p}"),
    _one(f"{_DEC}.linear1.{{p}}", "model.decoder.layers.{i}.ffn.fc1.{p}"),
    _one(f"{_DEC}.linear2.{{p}}", "model.decoder.layers.{i}.ffn.fc2.{p}"),
    _one(f"{_DEC}.norm1.{{p}}", "model.decoder.layers.{i}.self_attn_layer_norm.{p}"),
    _one(f"{_DEC}.norm2.{{p}}", "model.decoder.layers.{i}.encoder_attn_layer_norm.{p}"),
    _one(f"{_DEC}.norm3.{{p}}", "model.decoder.layers.{i}.final_layer_norm.{p}"),
    _one("transformer.decoder.norm.{p}", "model.decoder.layer_norm.{p}"),
    _one("class_embed.{p}", "class_labels_classifier.{p}"),
    _one("bbox_embed.layers.{i}.{p}", "bbox_predictor.layers.{i}.{p}"),
)


def _transformers_attention(layer: str, theirs: str, ours: str) -> tuple[Rule, ...]:
    return tuple(
        _one(
            f"model.{layer}.layers.{{i}}.{theirs}.{proj}.{{p}}",
            f"model.{layer}.layers.{{i}}.{ours}.{proj}.{{p}}",
        )
        for proj in (*_ATTENTION_PROJECTIONS, "out_proj")
    )


def _transformers_layer_parts(layer: str, norms: tuple[str, ...]) -> tuple[Rule, ...]:
    prefix = f"model.{layer}.layers.{{i}}"
    rules = [_one(f"{prefix}.{fc}.{{p}}", f"{prefix}.ffn.{fc}.{{p}}") for fc in ("fc1", "fc2")]
    rules += [_one(f"{prefix}.{norm}.{{p}}", f"{prefix}.{norm}.{{p}}") for norm in norms]
    return tuple(rules)


# The names transformers' DETR `save_pretrained` writes to model.safetensors (not its in-memory names).
TRANSFORMERS_RULES: tuple[Rule, ...] = (
    _one("model.backbone.conv_encoder.model.{key}", "model.backbone.body.{key}"),
    _one("model.input_projection.{p}", "model.input_projection.{p}"),
    _one("model.query_position_embeddings.weight", "model.query_position_embeddings.weight"),
    _one(
        "model.backbone.position_embedding.row_embeddings.weight",
        "model.position_encoding.row_embeddings.weight",
    ),
    _one(
        "model.backbone.position_embedding.column_embeddings.weight",
        "model.position_encoding.column_embeddings.weight",
    ),
    *_transformers_attention("encoder", "self_attn", "self_attn"),
    *_transformers_layer_parts("encoder", ("self_attn_layer_norm", "final_layer_norm")),
    *_transformers_attention("decoder", "self_attn", "self_attn"),
    *_transformers_attention("decoder", "encoder_attn", "encoder_attn"),
    *_transformers_layer_parts(
        "decoder", ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm")
    ),
    _one("model.decoder.layernorm.{p}", "model.decoder.layer_norm.{p}"),
    _one("class_labels_classifier.{p}", "class_labels_classifier.{p}"),
    _one("bbox_predictor.layers.{i}.{p}", "bbox_predictor.layers.{i}.{p}"),
)

LAYOUTS: dict[str, tuple[Rule, ...]] = {"original": ORIGINAL_RULES, "transformers": TRANSFORMERS_RULES}


class CheckpointKeyError(ValueError):
    """A checkpoint's keys do not fit the expected layout; the message lists every offending key."""


def _format_keys(title: str, keys: list[str], limit: int = 40) -> str:
    shown = "\n  ".join(keys[:limit])
    more = f"\n  ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{title} ({len(keys)}):\n  {shown}{more}"


# transformers' own ResNet (`use_timm_backbone=False`, Hub revision "no_timm") under its backbone prefix.
_TRANSFORMERS_BACKBONE = "model.backbone.conv_encoder.model."
_HF_RESNET_STEM = re.compile(r"embedder\.embedder\.(?P<part>convolution|normalization)\.(?P<rest>.+)")
_HF_RESNET_BLOCK = re.compile(
    r"encoder\.stages\.(?P<stage>\d+)\.layers\.(?P<block>\d+)\."
    r"(?P<unit>shortcut|layer\.\d+)\.(?P<part>convolution|normalization)\.(?P<rest>.+)"
)


def hf_resnet_key_to_timm(key: str) -> str | None:
    """The timm/torchvision name of a transformers `ResNetBackbone` key (None if `key` is not one).

    embedder.embedder.{convolution,normalization} -> conv1 / bn1; encoder.stages.S.layers.B.layer.J.* ->
    layer{S+1}.B.conv{J+1} / bn{J+1}; the shortcut -> layer{S+1}.B.downsample.{0,1}. Both ResNets put the
    stride in the 3x3 conv (transformers' default `downsample_in_bottleneck=False`).
    """
    if found := _HF_RESNET_STEM.fullmatch(key):
        return f"{'conv1' if found['part'] == 'convolution' else 'bn1'}.{found['rest']}"
    found = _HF_RESNET_BLOCK.fullmatch(key)
    if found is None:
        return None
    block = f"layer{int(found['stage']) + 1}.{found['block']}"
    is_conv = found["part"] == "convolution"
    if found["unit"] == "shortcut":
        return f"{block}.downsample.{0 if is_conv else 1}.{found['rest']}"
    index = int(found["unit"].split(".")[1]) + 1
    return f"{block}.{'conv' if is_conv else 'bn'}{index}.{found['rest']}"


def hf_resnet_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers DETR state dict with its HF-ResNet backbone keys renamed to the timm layout (others kept).

    `num_batches_tracked` counters are dropped: DETR's backbone BatchNorm is frozen, they mean nothing.
    """
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        timm_key = None
        if key.startswith(_TRANSFORMERS_BACKBONE):
            timm_key = hf_resnet_key_to_timm(key[len(_TRANSFORMERS_BACKBONE) :])
        renamed[key if timm_key is None else _TRANSFORMERS_BACKBONE + timm_key] = tensor
    return renamed


def to_detr_hf(state_dict: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Rename (and split stacked attention projections of) an external state dict into detr_hf names.

    The transformers layout accepts both of its backbones: timm's ResNet and its own (see `hf_resnet_to_timm`).
    Raises `CheckpointKeyError` listing every key that no rule of `layout` explains.
    """
    rules = _rules(layout)
    if layout == "transformers":
        state_dict = hf_resnet_to_timm(state_dict)
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        rule, groups = next(((r, g) for r in rules if (g := r.match_external(key)) is not None), (None, None))
        if rule is None:
            unknown.append(key)
            continue
        # A stacked tensor [n * d, ...] splits into n equal row blocks, in the order of `rule.ours`.
        parts = tensor.chunk(len(rule.ours), dim=0) if len(rule.ours) > 1 else (tensor,)
        for template, part in zip(rule.ours, parts):
            converted[template.format(**groups)] = part.clone()
    if unknown:
        raise CheckpointKeyError(
            _format_keys(f"keys not part of the {layout!r} DETR layout", sorted(unknown))
        )
    return converted


def from_detr_hf(state_dict: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """The inverse of `to_detr_hf`: detr_hf names → `layout` names, stacking q/k/v where the layout does.

    Raises `CheckpointKeyError` for keys with no equivalent in `layout` (e.g. learned position
    embeddings in the original layout, which only has sine encodings).
    """
    rules = _rules(layout)
    converted: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    unknown = []
    for key in state_dict:
        if key in consumed:
            continue
        rule, groups = next(((r, g) for r in rules if (g := r.match_ours(key)) is not None), (None, None))
        if rule is None:
            if not any(_is_stacked_part(r, key) for r in rules):
                unknown.append(key)
            continue
        names = [template.format(**groups) for template in rule.ours]
        missing = [name for name in names if name not in state_dict]
        if missing:
            raise CheckpointKeyError(_format_keys(f"stacked projections missing next to {key!r}", missing))
        consumed.update(names)
        converted[rule.external.format(**groups)] = torch.cat([state_dict[name] for name in names], dim=0)
    if unknown:
        raise CheckpointKeyError(
            _format_keys(f"detr_hf keys with no place in the {layout!r} layout", sorted(unknown))
        )
    return converted


def _is_stacked_part(rule: Rule, key: str) -> bool:
    return len(rule.ours) > 1 and any(rule._regex(t).match(key) for t in rule.ours[1:])


def _rules(layout: str) -> tuple[Rule, ...]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[layout]


def check_exact_fit(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise one `CheckpointKeyError` listing every key of `state_dict` missing from, unexpected in, or shaped
    differently than `expected` (a model's state dict, possibly on the meta device)."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    problems = [
        f"{title} ({len(keys)}): {', '.join(keys[:40])}{' ...' if len(keys) > 40 else ''}"
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise CheckpointKeyError("converted checkpoint does not fit the detr_hf model:\n" + "\n".join(problems))

"""Import COCO-pretrained DETR checkpoints (facebookresearch/detr `.pth`, transformers folders) as detr_hf folders.

CLI::

    python -m detr_hf.convert --from original detr-r50-e632da11.pth out/detr-r50
    python -m detr_hf.convert --from original detr-r50-dc5-f0fb7ef5.pth out/detr-r50-dc5 --dilation
    python -m detr_hf.convert --from transformers path/to/detr-resnet-50 out/detr-r50

Label ids: a class head with 92 rows is COCO's. Its rows are indexed by the raw COCO category id (0..90) and
the last row is "no object", so the converted model keeps `num_labels=91` with label id == raw COCO category
id; `id2label` names the 80 real classes and "N/A" for the 11 ids COCO never assigns. COCO annotations
therefore need no category remapping, and predictions carry raw COCO ids.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .checkpoint_layouts import CheckpointKeyError, to_detr_hf
from .coco_labels import COCO_NUM_LABELS, coco_id2label
from .configuration_detr_hf import DetrHfConfig
from .modeling_detr_hf import DetrHfForObjectDetection
from .segmentation_layouts import is_segmentation_state_dict

logger = logging.getLogger(__name__)

_RESNET_BY_LAYER3_BLOCKS = {6: "resnet50", 23: "resnet101"}
# Settings a trained DETR backbone gets, as in the paper: frozen BN statistics, stem + first stage frozen.
_TRAINED_BACKBONE = {"freeze_backbone_batch_norm": True, "backbone_frozen_stages": 1}


def convert_original_checkpoint(
    checkpoint_path: str | os.PathLike,
    dest_dir: str | os.PathLike | None = None,
    *,
    dilation: bool | None = None,
    num_attention_heads: int | None = None,
) -> DetrHfForObjectDetection:
    """Convert a facebookresearch/detr checkpoint (a dict with "model") into a detr_hf model, saved to `dest_dir`.

    dilation: DC5 (last stage dilated, output stride 16). Its keys equal the plain model's, so it comes from the
        checkpoint's saved training `args` when present, else from this flag, else from "dc5" in the file name.
    num_attention_heads: heads are not visible in the weights; `args.nheads`, this flag, or 8 (DETR's value).
    """
    checkpoint = _load_original(checkpoint_path)
    state_dict = checkpoint["model"]
    args = checkpoint.get("args")
    if dilation is None:
        dilation = bool(getattr(args, "dilation", "dc5" in Path(checkpoint_path).name.lower()))
    if num_attention_heads is None:
        num_attention_heads = int(getattr(args, "nheads", 8))
    if is_segmentation_state_dict(state_dict):  # a panoptic DETR: see convert_segmentation.py
        from .convert_segmentation import convert_original_panoptic

        return convert_original_panoptic(state_dict, checkpoint_path, dest_dir, dilation, num_attention_heads)
    converted = to_detr_hf(state_dict, "original")
    config = _config_from_weights(converted, dilation=dilation, num_attention_heads=num_attention_heads)
    logger.info(
        "original DETR checkpoint %s: backbone=%s, dilation=%s, heads=%d, %d labels, pre_norm=%s",
        checkpoint_path, config.backbone, dilation, num_attention_heads, config.num_labels, config.pre_norm,
    )  # fmt: skip
    return _finish(
        config, converted, dest_dir, source=f"facebookresearch/detr checkpoint {Path(checkpoint_path).name}"
    )


def convert_transformers_checkpoint(
    source_dir: str | os.PathLike, dest_dir: str | os.PathLike | None = None
) -> DetrHfForObjectDetection:
    """Convert a folder written by transformers' `DetrForObjectDetection.save_pretrained` (config.json +
    model.safetensors, possibly sharded) into a detr_hf model, saved to `dest_dir`. transformers is not run."""
    source_dir = Path(source_dir)
    config_file = source_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{source_dir} has no config.json; expected a transformers DETR folder")
    source_config = json.loads(config_file.read_text())
    if source_config.get("model_type") != "detr":
        raise ValueError(
            f"{config_file} has model_type={source_config.get('model_type')!r}; only transformers 'detr' is supported"
        )
    state_dict = _read_safetensors(source_dir)
    if is_segmentation_state_dict(state_dict):  # a DetrForSegmentation folder: see convert_segmentation.py
        from .convert_segmentation import convert_transformers_segmentation

        return convert_transformers_segmentation(source_dir, source_config, state_dict, dest_dir)
    converted = to_detr_hf(state_dict, "transformers")
    config = _config_from_transformers(source_config, converted)
    return _finish(config, converted, dest_dir, source=f"transformers DETR folder {source_dir.name}")


def _load_original(path: str | os.PathLike) -> dict[str, Any]:
    # Training checkpoints also store the argparse Namespace of the run; it is plain data.
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path}: expected a dict with a 'model' state dict (facebookresearch/detr), found {found}"
        )
    return checkpoint


def _read_safetensors(source_dir: Path) -> dict[str, torch.Tensor]:
    single = source_dir / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = source_dir / "model.safetensors.index.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"{source_dir} has neither model.safetensors nor model.safetensors.index.json"
        )
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state_dict: dict[str, torch.Tensor] = {}
    for shard in shards:
        state_dict.update(load_file(source_dir / shard))
    return state_dict


def _count_layers(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _resnet_name(state_dict: Mapping[str, torch.Tensor]) -> str:
    blocks = _count_layers(state_dict, "model.backbone.body.layer3")
    if blocks not in _RESNET_BY_LAYER3_BLOCKS:
        raise ValueError(
            f"backbone has {blocks} blocks in layer3; only ResNet-50 (6) and ResNet-101 (23) DETR backbones are known"
        )
    return _RESNET_BY_LAYER3_BLOCKS[blocks]


def _label_kwargs(num_head_rows: int, id2label: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Labels of a head with `num_head_rows` rows (last = no object); COCO names for a 92-row head."""
    num_labels = num_head_rows - 1
    if id2label is not None and len(id2label) == num_labels and not _is_placeholder(id2label):
        return {"id2label": {int(k): v for k, v in id2label.items()}}
    if num_labels == COCO_NUM_LABELS:
        return {"id2label": coco_id2label()}
    return {"num_labels": num_labels}


def _is_placeholder(id2label: Mapping[Any, str]) -> bool:
    return all(name == f"LABEL_{key}" for key, name in id2label.items())


def _config_from_weights(
    state_dict: Mapping[str, torch.Tensor],
    dilation: bool,
    num_attention_heads: int,
    id2label: Mapping[int, str] | None = None,
    **overrides: Any,
) -> DetrHfConfig:
    """Everything visible in the weights: sizes, depths, labels, pre-norm; the rest as DETR's recipe."""
    num_queries, d_model = state_dict["model.query_position_embeddings.weight"].shape
    kwargs: dict[str, Any] = dict(
        backbone=_resnet_name(state_dict),
        backbone_kwargs={"output_stride": 16} if dilation else {},
        use_pretrained_backbone=False,
        d_model=d_model,
        num_queries=num_queries,
        encoder_layers=_count_layers(state_dict, "model.encoder.layers"),
        decoder_layers=_count_layers(state_dict, "model.decoder.layers"),
        encoder_attention_heads=num_attention_heads,
        decoder_attention_heads=num_attention_heads,
        encoder_ffn_dim=state_dict["model.encoder.layers.0.ffn.fc1.weight"].shape[0],
        decoder_ffn_dim=state_dict["model.decoder.layers.0.ffn.fc1.weight"].shape[0],
        pre_norm="model.encoder.layer_norm.weight" in state_dict,
        position_embedding_type=(
            "learned" if "model.position_encoding.row_embeddings.weight" in state_dict else "sine"
        ),
        **_TRAINED_BACKBONE,
    )
    if kwargs["position_embedding_type"] == "learned":
        kwargs["max_position_embeddings"] = state_dict["model.position_encoding.row_embeddings.weight"].shape[
            0
        ]
    kwargs.update(_label_kwargs(state_dict["class_labels_classifier.weight"].shape[0], id2label))
    kwargs.update(overrides)
    return DetrHfConfig(**kwargs)


# transformers DetrConfig fields that mean the same in DetrHfConfig.
_SHARED_FIELDS = (
    "dropout", "attention_dropout", "activation_dropout", "activation_function", "init_std", "init_xavier_std",
    "auxiliary_loss", "class_cost", "bbox_cost", "giou_cost", "bbox_loss_coefficient", "giou_loss_coefficient",
    "eos_coefficient",
)  # fmt: skip


def _config_from_transformers(
    source: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> DetrHfConfig:
    backbone_config = source.get("backbone_config") or {}
    backbone = backbone_config.get("backbone") or source.get("backbone")
    dilation = bool(source.get("dilation")) or backbone_config.get("output_stride") == 16
    shared = {name: source[name] for name in _SHARED_FIELDS if name in source}
    heads = int(source.get("encoder_attention_heads", 8))
    config = _config_from_weights(
        state_dict,
        dilation=dilation,
        num_attention_heads=heads,
        id2label=_source_id2label(source),
        decoder_attention_heads=int(source.get("decoder_attention_heads", heads)),
        **shared,
    )
    if backbone and backbone != config.backbone:
        raise ValueError(f"config.json names backbone {backbone!r} but the weights are a {config.backbone}")
    return config


def _source_id2label(source: Mapping[str, Any]) -> dict[int, str] | None:
    id2label = source.get("id2label")
    return None if id2label is None else {int(k): v for k, v in id2label.items()}


def load_converted_weights(model: DetrHfForObjectDetection, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load converted weights, refusing anything but an exact fit: every missing, unexpected or
    wrongly shaped key is listed in one `CheckpointKeyError`."""
    expected = model.state_dict()
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
        raise CheckpointKeyError(
            "converted checkpoint does not fit the detr_hf model:\n" + "\n".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)


def _finish(
    config: DetrHfConfig,
    state_dict: Mapping[str, torch.Tensor],
    dest_dir: str | os.PathLike | None,
    source: str,
) -> DetrHfForObjectDetection:
    model = DetrHfForObjectDetection(config)
    load_converted_weights(model, state_dict)
    model.eval()
    if dest_dir is not None:
        save_converted_folder(model, dest_dir, source=source)
    return model


def save_converted_folder(model: DetrHfForObjectDetection, dest_dir: str | os.PathLike, source: str) -> None:
    """Write a complete detr_hf folder: config, safetensors weights, image processor config, model card."""
    from .image_processing_detr_hf import DetrHfImageProcessor
    from .modelcard import write_model_card

    dest_dir = Path(dest_dir)
    model.save_pretrained(dest_dir)
    DetrHfImageProcessor().save_pretrained(dest_dir)
    write_model_card(dest_dir, model.config, base_model=source)
    logger.info("wrote detr_hf folder %s (converted from %s)", dest_dir, source)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m detr_hf.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="layout", choices=("original", "transformers"), required=True)
    parser.add_argument("source", help="original: the .pth file; transformers: the model folder")
    parser.add_argument("dest_dir", help="output detr_hf folder")
    parser.add_argument(
        "--dilation", action=argparse.BooleanOptionalAction, default=None,
        help="original only: DC5 checkpoint (default: training args in the file, else 'dc5' in the file name)",
    )  # fmt: skip
    parser.add_argument(
        "--num-heads", type=int, default=None, help="original only: attention heads (default 8)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.layout == "original":
            convert_original_checkpoint(
                args.source, args.dest_dir, dilation=args.dilation, num_attention_heads=args.num_heads
            )
        else:
            if args.dilation is not None or args.num_heads is not None:
                parser.error(
                    "--dilation/--num-heads apply to --from original only (transformers folders say so)"
                )
            convert_transformers_checkpoint(args.source, args.dest_dir)
    except (CheckpointKeyError, ValueError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()

"""transformers DETR checkpoints (model_type "detr", local folder or Hub id) read as detr_hf config + weights.

Both backbone layouts transformers writes are accepted: timm's ResNet (`use_timm_backbone=True`, the Hub's
main revisions) and its own ResNet (`use_timm_backbone=False`, Hub revision "no_timm"), any depth, DC5.
`load_converted` is what `DetrHfForObjectDetection.from_pretrained` calls to convert while loading.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors.torch import load_file, save_file

from .checkpoint_config import config_from_weights
from .checkpoint_layouts import check_exact_fit, to_detr_hf
from .configuration_detr_hf import DetrHfConfig

logger = logging.getLogger(__name__)

# from_pretrained keywords that say where a Hub file comes from (not used once the folder is converted).
HUB_OPTIONS = ("revision", "subfolder", "cache_dir", "token", "local_files_only", "force_download")
# transformers DetrConfig fields that describe the architecture the same way DetrHfConfig does. Training-only
# fields (dropouts, aux loss, matcher costs) follow detr_hf's recipe: transformers' configs carry
# auxiliary_loss=False and attention/activation dropout 0, which are not the paper's recipe.
_ARCHITECTURE_FIELDS = ("activation_function", "num_channels")
# DetrImageProcessor options with the same meaning in DetrHfImageProcessor.
_PROCESSOR_FIELDS = (
    "do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
    "image_std", "do_pad", "pad_size", "do_convert_annotations",
)  # fmt: skip
_BAD_SOURCE = (OSError, ValueError, EntryNotFoundError)


def read_source_config(source: str | os.PathLike, **hub_options: Any) -> dict[str, Any] | None:
    """config.json of a local folder or Hub repo as a dict; None if there is none to read (the caller's own
    loading then reports why)."""
    folder = Path(source) / (hub_options.get("subfolder") or "")
    if folder.is_dir():
        file = folder / "config.json"
        return json.loads(file.read_text()) if file.is_file() else None
    if Path(source).exists():
        return None
    try:
        return json.loads(Path(_hub_file(str(source), "config.json", hub_options)).read_text())
    except _BAD_SOURCE:
        return None


def check_detr(config: Mapping[str, Any], where: str) -> None:
    """Raise `ValueError` unless `config` is a transformers DETR config."""
    if config.get("model_type") != "detr":
        raise ValueError(
            f"{where} is not a DETR checkpoint: its config.json has model_type={config.get('model_type')!r}; "
            "detr_hf reads transformers DETR ('detr') and detr_hf ('detr_hf') checkpoints"
        )


def fetch_transformers_detr(source: str | os.PathLike, *, read_bin: bool = False, **hub_options: Any) -> Path:
    """A local folder with the config.json, weights and (when present) preprocessor_config.json of a
    transformers DETR: `source` itself if it is a folder, else those files downloaded from the Hub repo `source`
    (huggingface_hub cache; `revision`, `token`, ... as in `hf_hub_download`).

    read_bin: fall back to pytorch_model.bin (read with `torch.load(weights_only=True)`) when the repo
        has no safetensors weights.
    """
    folder = Path(source) / (hub_options.get("subfolder") or "")
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} has no config.json; expected a transformers DETR folder")
        check_detr(json.loads((folder / "config.json").read_text()), str(folder / "config.json"))
        return folder
    repo = str(source)
    try:
        config_file = Path(_hub_file(repo, "config.json", hub_options))
    except _BAD_SOURCE as error:
        raise FileNotFoundError(
            f"{repo!r} is neither a local folder nor a Hub model repo with a config.json "
            f"(revision {hub_options.get('revision') or 'main'}): {error}"
        ) from error
    check_detr(json.loads(config_file.read_text()), f"Hub repo {repo!r}")
    with contextlib.suppress(EntryNotFoundError):  # optional: the source's image sizes and normalisation
        _hub_file(repo, "preprocessor_config.json", hub_options)
    names = (
        "model.safetensors",
        "model.safetensors.index.json",
        *(("pytorch_model.bin",) if read_bin else ()),
    )
    for name in names:
        try:
            weights = Path(_hub_file(repo, name, hub_options))
        except EntryNotFoundError:
            continue
        if name.endswith(".index.json"):
            for shard in sorted(set(json.loads(weights.read_text())["weight_map"].values())):
                _hub_file(repo, shard, hub_options)
        return config_file.parent
    raise FileNotFoundError(
        f"Hub repo {repo!r} has no model.safetensors (nor a sharded index)"
        + ("" if read_bin else "; to read its pytorch_model.bin pass use_safetensors=False")
    )


def _hub_file(repo: str, filename: str, hub_options: Mapping[str, Any]) -> str:
    options = {k: v for k, v in hub_options.items() if k in HUB_OPTIONS and v is not None}
    return hf_hub_download(repo, filename, **options)


def read_weights(folder: Path, *, read_bin: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a transformers folder: model.safetensors, its shards, or (allowed) pytorch_model.bin."""
    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        state_dict: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state_dict.update(load_file(folder / shard))
        return state_dict
    bin_file = folder / "pytorch_model.bin"
    if read_bin and bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"{folder} has neither model.safetensors nor model.safetensors.index.json"
        + (" (its pytorch_model.bin is read only with use_safetensors=False)" if bin_file.is_file() else "")
    )


def read_transformers_detr(
    folder: str | os.PathLike, *, read_bin: bool = False, state_dict: Mapping[str, torch.Tensor] | None = None
) -> tuple[DetrHfConfig, dict[str, torch.Tensor]]:
    """The detr_hf config and detr_hf-named weights of a local transformers DETR folder (transformers is not run);
    `state_dict`: its weights when already read (`read_weights`)."""
    folder = Path(folder)
    source = json.loads((folder / "config.json").read_text())
    check_detr(source, str(folder / "config.json"))
    if state_dict is None:
        state_dict = read_weights(folder, read_bin=read_bin)
    state_dict = to_detr_hf(state_dict, "transformers")
    return config_from_transformers(source, state_dict), state_dict


def config_from_transformers(
    source: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> DetrHfConfig:
    """DetrHfConfig of a transformers DetrConfig dict and its (converted) weights; the weights decide sizes."""
    backbone_config = source.get("backbone_config") or {}
    if backbone_config.get("model_type") == "resnet":
        _check_hf_resnet(backbone_config)
        named = None  # transformers' ResNet: the weights name the depth
    else:
        named = backbone_config.get("backbone") or source.get("backbone")
    dilation = bool(source.get("dilation")) or backbone_config.get("output_stride") == 16
    heads = int(source.get("encoder_attention_heads", 8))
    id2label = source.get("id2label")
    return config_from_weights(
        state_dict,
        dilation=dilation,
        num_attention_heads=heads,
        backbone=named,
        id2label=None if id2label is None else {int(k): v for k, v in id2label.items()},
        decoder_attention_heads=int(source.get("decoder_attention_heads", heads)),
        **{name: source[name] for name in _ARCHITECTURE_FIELDS if name in source},
    )


def _check_hf_resnet(backbone_config: Mapping[str, Any]) -> None:
    """transformers' ResNet options timm's ResNet cannot reproduce."""
    unsupported = {
        "downsample_in_bottleneck": (backbone_config.get("downsample_in_bottleneck", False), False),
        "downsample_in_first_stage": (backbone_config.get("downsample_in_first_stage", False), False),
        "hidden_act": (backbone_config.get("hidden_act", "relu"), "relu"),
    }
    wrong = {name: value for name, (value, wanted) in unsupported.items() if value != wanted}
    if wrong:
        raise ValueError(f"transformers ResNet backbone_config {wrong} has no timm ResNet equivalent")


def processor_kwargs(folder: str | os.PathLike) -> dict[str, Any]:
    """DetrHfImageProcessor arguments equal to a folder's DetrImageProcessor preprocessor_config.json (sizes,
    resampling, normalisation, padding); {} (detr_hf's defaults, DETR's 800/1333) when it has none."""
    file = Path(folder) / "preprocessor_config.json"
    if not file.is_file():
        return {}
    source = json.loads(file.read_text())
    kwargs = {name: source[name] for name in _PROCESSOR_FIELDS if source.get(name) is not None}
    max_size = source.get("max_size")  # older DetrFeatureExtractor configs: "size": 800, "max_size": 1333
    if isinstance(kwargs.get("size"), int):
        kwargs["size"] = {"shortest_edge": kwargs["size"], "longest_edge": max_size or 1333}
    elif isinstance(kwargs.get("size"), dict) and max_size and set(kwargs["size"]) == {"shortest_edge"}:
        kwargs["size"] = {**kwargs["size"], "longest_edge": max_size}
    if source.get("format", "coco_detection") != "coco_detection":
        logger.warning(
            "%s: annotation format %r is not converted; detr_hf reads COCO detection", file, source["format"]
        )
    return kwargs


def load_converted(
    model_class: type,
    base_from_pretrained: Callable[..., Any],
    source: Any,
    args: tuple,
    kwargs: dict[str, Any],
) -> Any | None:
    """`from_pretrained` of a transformers DETR: converted into a temporary detr_hf folder, then loaded from it
    by `base_from_pretrained` with the caller's other options. None if `source` is not one.

    A config.json of any other model type than `model_class`'s raises `ValueError` naming it.
    """
    hub_options = {k: kwargs[k] for k in HUB_OPTIONS if k in kwargs}
    if not isinstance(source, (str, os.PathLike)):
        return None
    source_config = read_source_config(source, **hub_options)
    own_type = model_class.config_class.model_type
    if source_config is None or source_config.get("model_type") in (None, own_type):
        return None
    check_detr(source_config, f"{source!s} ({model_class.__name__}.from_pretrained)")
    read_bin = kwargs.get("use_safetensors") is False
    folder = fetch_transformers_detr(source, read_bin=read_bin, **hub_options)
    config, state_dict = read_transformers_detr(folder, read_bin=read_bin)
    with torch.device("meta"):
        expected = model_class(config).state_dict()
    if "class_labels_classifier.weight" not in expected:  # a base model (DetrHfModel) takes no heads
        prefix = f"{model_class.base_model_prefix}."
        expected = {prefix + k: v for k, v in expected.items()}
        check_exact_fit(expected, {k: v for k, v in state_dict.items() if k.startswith(prefix)})
    else:
        check_exact_fit(expected, state_dict)
    # The converted folder is local safetensors: where the source came from and its file format no longer apply.
    rest = {
        k: v
        for k, v in kwargs.items()
        if k not in (*HUB_OPTIONS, "pretrained_model_name_or_path", "use_safetensors")
    }
    with tempfile.TemporaryDirectory(prefix="detr_hf-converted-") as converted:
        config.save_pretrained(converted)
        save_file(
            {k: v.contiguous() for k, v in state_dict.items()},
            f"{converted}/model.safetensors",
            {"format": "pt"},
        )
        model = base_from_pretrained(converted, *args, **rest)
    loaded = model[0] if isinstance(model, tuple) else model
    loaded.config._name_or_path = str(source)
    logger.warning(
        "converted transformers DETR %s (%s backbone, %d labels) to detr_hf while loading; "
        "save_pretrained() keeps the converted model",
        source, config.backbone, config.num_labels,
    )  # fmt: skip
    return model

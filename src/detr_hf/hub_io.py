"""How detr_hf models load, save and publish: the policy around transformers' from_pretrained / save_pretrained /
push_to_hub, in one place so the model classes only delegate to it."""

from __future__ import annotations

import copy
import importlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from safetensors import SafetensorError, safe_open
from transformers import PretrainedConfig

from .backbone import DetrHfBackbone
from .transformers_checkpoint import load_converted

logger = logging.getLogger(__name__)

__all__ = ["load_pretrained", "push_to_hub", "save_pretrained"]


def load_pretrained(model_class: type, from_pretrained: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run transformers' `from_pretrained` (bound to `model_class`) under detr_hf's loading policy:

    - the caller's `config` object is copied, never changed;
    - the backbone's weights come from the checkpoint, never from timm's pretrained source;
    - weights load only from safetensors (a pytorch_model.bin is a pickle; `use_safetensors=False` opts in),
      and a folder holding only a .bin, or an unreadable .safetensors file, is an OSError that says so;
    - the config's frozen backbone stages are frozen again (transformers rebuilds loaded parameters trainable);
    - a transformers DETR (config.json model_type "detr", folder or Hub id) is converted while loading.
    """
    config = kwargs.get("config")
    # Not `DetrHfConfig`: under trust_remote_code the config class may come from another module copy.
    if isinstance(config, PretrainedConfig):
        config = kwargs["config"] = copy.deepcopy(config)
        config.use_pretrained_backbone = False
        config.backbone_weights_path = None
    else:
        kwargs.setdefault("use_pretrained_backbone", False)
        kwargs.setdefault("backbone_weights_path", None)
    safetensors_only = kwargs.setdefault("use_safetensors", True)
    source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
    # A transformers DETR is converted first; its own errors (e.g. weights only in a .bin) name that folder.
    model = load_converted(model_class, from_pretrained, source, args[1:], kwargs)
    try:
        if model is None:
            model = from_pretrained(*args, **kwargs)
    except SafetensorError as error:
        raise OSError(f"unreadable safetensors file {_unreadable_safetensors(source)}: {error}") from error
    except OSError as error:
        if safetensors_only and source is not None and (Path(source) / "pytorch_model.bin").is_file():
            raise OSError(
                f"{source} has pytorch_model.bin but no model.safetensors; detr_hf loads weights only from "
                "safetensors (a .bin file is a pickle). Re-save it with save_pretrained, or pass "
                "use_safetensors=False if you trust the file."
            ) from error
        raise
    loaded = model[0] if isinstance(model, tuple) else model  # (model, loading_info) with output_loading_info
    for module in loaded.modules():
        if isinstance(module, DetrHfBackbone):
            module.apply_freezing()
    return model


def save_pretrained(
    save: Callable[..., Any],
    model: Any,
    save_directory: str | os.PathLike,
    *args: Any,
    model_card: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """transformers' `save` (the bound `PreTrainedModel.save_pretrained`) plus, with the detr_hf package
    installed, the code of all four auto classes and a README.md model card (see `detr_hf.sharing`).

    A remote-code copy in a process without detr_hf saves as transformers does: the weights, the config and
    the model's own code closure, which is all the folder needs to load again; it writes no model card.
    """
    sharing = _publishing_module()
    if sharing is None:
        if model_card:
            logger.warning("model_card ignored: writing a model card needs the detr_hf package")
        return save(save_directory, *args, **kwargs)
    # This file sits with the model code that runs (the package, or a remote-code copy): save that code.
    return sharing.save_with_code_and_card(
        save, model.config, save_directory, args, kwargs, model_card, code_dir=Path(__file__).parent
    )


def push_to_hub(
    push: Callable[..., Any], model: Any, repo_id: str, *, model_card: Mapping[str, Any] | None = None, **kwargs: Any
) -> Any:
    """`push_to_hub` that uploads the generated model card (see `save_pretrained`); without the detr_hf
    package, transformers' `push` (the bound `PreTrainedModel.push_to_hub`)."""
    sharing = _publishing_module()
    if sharing is None:
        if model_card:
            logger.warning("model_card ignored: writing a model card needs the detr_hf package")
        return push(repo_id, **kwargs)
    tags = list(dict.fromkeys([*(model.model_tags or []), *(kwargs.pop("tags", None) or [])]))
    return sharing.push_with_card(model.save_pretrained, repo_id, tags=tags or None, model_card=model_card, **kwargs)


def _publishing_module() -> ModuleType | None:
    """`detr_hf.sharing`, the publishing code (code copy, model card, upload) that saved folders do not carry;
    None in a process without the detr_hf package (a remote-code copy loaded with trust_remote_code)."""
    try:
        importlib.import_module("detr_hf")
    except ModuleNotFoundError:
        return None
    return importlib.import_module("detr_hf.sharing")


def _unreadable_safetensors(source: Any) -> str:
    """The first .safetensors file in a local folder whose header does not parse (else `source` itself)."""
    folder = Path(str(source))
    for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(file, "pt"):
                pass
        except SafetensorError:
            return str(file)
    return str(source)

"""Import COCO-pretrained DETR checkpoints (facebookresearch/detr `.pth`, transformers DETR) as detr_hf folders.

CLI::

    python -m detr_hf.convert --from original detr-r50-e632da11.pth out/detr-r50
    python -m detr_hf.convert --from original https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth out/detr-r50
    python -m detr_hf.convert --from original detr-r50-dc5-f0fb7ef5.pth out/detr-r50-dc5 --dilation
    python -m detr_hf.convert --from transformers facebook/detr-resnet-50 out/detr-r50
    python -m detr_hf.convert --from transformers facebook/detr-resnet-50 out/detr-r50 --revision no_timm
    python -m detr_hf.convert --from transformers path/to/detr-resnet-50 out/detr-r50

An http(s) URL is downloaded once to torch.hub's cache (`TORCH_HOME`/hub/checkpoints; a `-<sha256 prefix>`
in the file name is checked) and read with `torch.load(weights_only=True)`; a Hub id with huggingface_hub
(its cache, `--revision`). `DetrHfForObjectDetection.from_pretrained` converts a transformers DETR itself.

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
from urllib.parse import urlparse

import torch

from .checkpoint_config import config_from_weights
from .checkpoint_layouts import CheckpointKeyError, check_exact_fit, to_detr_hf
from .configuration_detr_hf import DetrHfConfig
from .modeling_detr_hf import DetrHfForObjectDetection
from .segmentation_layouts import is_segmentation_state_dict
from .transformers_checkpoint import (
    fetch_transformers_detr,
    processor_kwargs,
    read_transformers_detr,
    read_weights,
)

logger = logging.getLogger(__name__)

# torch.hub's convention: "name-<first hex digits of the file's sha256>.pth".
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


def convert_original_checkpoint(
    checkpoint_path: str | os.PathLike,
    dest_dir: str | os.PathLike | None = None,
    *,
    dilation: bool | None = None,
    num_attention_heads: int | None = None,
) -> DetrHfForObjectDetection:
    """Convert a facebookresearch/detr checkpoint (a dict with "model") into a detr_hf model, saved to `dest_dir`.

    checkpoint_path: a local `.pth` or an http(s) URL (downloaded to torch.hub's cache, see `download_checkpoint`).
    dilation: DC5 (last stage dilated, output stride 16). Its keys equal the plain model's, so it comes from the
        checkpoint's saved training `args` when present, else from this flag, else from "dc5" in the file name.
    num_attention_heads: heads are not visible in the weights; `args.nheads`, this flag, or 8 (DETR's value).
    """
    if is_url(checkpoint_path):
        checkpoint_path = download_checkpoint(str(checkpoint_path))
    checkpoint = _load_original(checkpoint_path)
    args = checkpoint.get("args")
    if dilation is None:
        dilation = bool(getattr(args, "dilation", "dc5" in Path(checkpoint_path).name.lower()))
    if num_attention_heads is None:
        num_attention_heads = int(getattr(args, "nheads", 8))
    state_dict = checkpoint["model"]
    if is_segmentation_state_dict(state_dict):  # a panoptic DETR: see convert_segmentation.py
        from .convert_segmentation import convert_original_panoptic

        return convert_original_panoptic(state_dict, checkpoint_path, dest_dir, dilation, num_attention_heads)
    converted = to_detr_hf(state_dict, "original")
    config = config_from_weights(converted, dilation=dilation, num_attention_heads=num_attention_heads)
    logger.info(
        "original DETR checkpoint %s: backbone=%s, dilation=%s, heads=%d, %d labels, pre_norm=%s",
        checkpoint_path, config.backbone, dilation, num_attention_heads, config.num_labels, config.pre_norm,
    )  # fmt: skip
    return finish_conversion(
        config, converted, dest_dir, source=f"facebookresearch/detr checkpoint {Path(checkpoint_path).name}"
    )


def convert_transformers_checkpoint(
    source: str | os.PathLike,
    dest_dir: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    read_bin: bool = True,
    **hub_options: Any,
) -> DetrHfForObjectDetection:
    """Convert a transformers DETR (`DetrForObjectDetection.save_pretrained` folder, or a Hub id downloaded with
    huggingface_hub at `revision`) into a detr_hf model, saved to `dest_dir` with the source's processor
    sizes and normalisation. transformers is not run. Both backbone layouts (timm, HF ResNet), any ResNet depth.

    read_bin: read a pytorch_model.bin (with `weights_only=True`) when there are no safetensors weights.
    """
    folder = fetch_transformers_detr(source, read_bin=read_bin, revision=revision, **hub_options)
    state_dict = read_weights(folder, read_bin=read_bin)
    if is_segmentation_state_dict(state_dict):  # a DetrForSegmentation: see convert_segmentation.py
        from .convert_segmentation import convert_transformers_segmentation

        source_config = json.loads((folder / "config.json").read_text())
        return convert_transformers_segmentation(folder, source_config, state_dict, dest_dir)
    config, converted = read_transformers_detr(folder, state_dict=state_dict)
    if Path(source).is_dir():
        described = f"transformers DETR folder {Path(source).name}"
    else:
        described = f"transformers DETR Hub repo {source}" + (f" (revision {revision})" if revision else "")
    return finish_conversion(config, converted, dest_dir, source=described, processor=processor_kwargs(folder))


def is_url(source: str | os.PathLike) -> bool:
    return urlparse(str(source)).scheme in ("http", "https")


def download_checkpoint(url: str) -> Path:
    """Download `url` once into torch.hub's checkpoint cache (`torch.hub.get_dir()`/checkpoints) and return the
    file; a `-<hex>` sha256 prefix in the file name is verified, as torch.hub does."""
    name = Path(urlparse(url).path).name
    if not name:
        raise ValueError(f"{url}: the URL names no file")
    target = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        found = _HASH_IN_NAME.search(name)
        logger.info("downloading %s to %s", url, target)
        try:
            torch.hub.download_url_to_file(url, str(target), hash_prefix=found.group(1) if found else None)
        except RuntimeError as error:  # torch.hub reports a hash mismatch as RuntimeError
            raise ValueError(f"{url}: {error}") from error
        except OSError as error:
            raise FileNotFoundError(f"could not download {url}: {error}") from error
    return target


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


def load_converted_weights(model: DetrHfForObjectDetection, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load converted weights, refusing anything but an exact fit: every missing, unexpected or
    wrongly shaped key is listed in one `CheckpointKeyError`."""
    check_exact_fit(model.state_dict(), state_dict)
    model.load_state_dict(state_dict, strict=True)


def finish_conversion(
    config: DetrHfConfig,
    state_dict: Mapping[str, torch.Tensor],
    dest_dir: str | os.PathLike | None,
    source: str,
    processor: Mapping[str, Any] | None = None,
    model_class: type[DetrHfForObjectDetection] = DetrHfForObjectDetection,
) -> DetrHfForObjectDetection:
    """Build `model_class` from `config`, load the converted weights exactly, save the folder when asked."""
    model = model_class(config)
    load_converted_weights(model, state_dict)
    model.eval()
    if dest_dir is not None:
        save_converted_folder(model, dest_dir, source=source, processor=processor)
    return model


def save_converted_folder(
    model: DetrHfForObjectDetection,
    dest_dir: str | os.PathLike,
    source: str,
    processor: Mapping[str, Any] | None = None,
) -> None:
    """Write a complete detr_hf folder: config, safetensors weights, image processor config (`processor`:
    DetrHfImageProcessor arguments; its defaults are DETR's 800/1333 and ImageNet statistics), model card."""
    from .image_processing_detr_hf import DetrHfImageProcessor
    from .modelcard import write_model_card

    dest_dir = Path(dest_dir)
    model.save_pretrained(dest_dir)
    DetrHfImageProcessor(**dict(processor or {})).save_pretrained(dest_dir)
    write_model_card(dest_dir, model.config, base_model=source)
    logger.info("wrote detr_hf folder %s (converted from %s)", dest_dir, source)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m detr_hf.convert", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--from", dest="layout", choices=("original", "transformers"), required=True)
    parser.add_argument(
        "source", help="original: a .pth file or http(s) URL; transformers: a model folder or a Hub model id"
    )
    parser.add_argument("dest_dir", help="output detr_hf folder")
    parser.add_argument(
        "--dilation", action=argparse.BooleanOptionalAction, default=None,
        help="original only: DC5 checkpoint (default: training args in the file, else 'dc5' in the file name)",
    )  # fmt: skip
    parser.add_argument(
        "--num-heads", type=int, default=None, help="original only: attention heads (default 8)"
    )
    parser.add_argument("--revision", default=None, help="transformers Hub id only: branch, tag or commit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.layout == "transformers" and (args.dilation is not None or args.num_heads is not None):
        parser.error("--dilation/--num-heads apply to --from original only (transformers configs say so)")
    if args.layout == "original" and args.revision is not None:
        parser.error("--revision applies to --from transformers (a Hub id) only")
    try:
        if args.layout == "original":
            convert_original_checkpoint(
                args.source, args.dest_dir, dilation=args.dilation, num_attention_heads=args.num_heads
            )
        else:
            convert_transformers_checkpoint(args.source, args.dest_dir, revision=args.revision)
    except (CheckpointKeyError, ValueError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()

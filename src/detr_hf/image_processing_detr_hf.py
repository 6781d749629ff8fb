"""DetrHfImageProcessor: images (+ COCO annotations) → padded batch + labels; model outputs → detections."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import torch
from torchvision.transforms.v2 import functional as tvF
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .annotations import normalize_category_mapping
from .detection_post_processing import post_process_object_detection as _object_detection
from .image_inputs import as_annotation_list, as_image_list, check_unit_range, prepare_image
from .image_processor_options import (
    check_format,
    check_multiple,
    check_pad_size,
    check_size,
    interpolation,
    per_channel,
    resample_code,
    resized_size,
    warn_unknown_options,
)
from .panoptic_annotations import annotation_to_labels, pad_label_masks
from .pixel_batch import assemble_batch
from .segmentation_post_processing import post_process_instance_segmentation as _instance_segmentation
from .segmentation_post_processing import post_process_panoptic_segmentation as _panoptic_segmentation
from .segmentation_post_processing import post_process_semantic_segmentation as _semantic_segmentation

__all__ = ["DetrHfImageProcessor", "resized_size"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keys transformers' save/load machinery adds to the JSON, and model-loading options pipeline() passes on to the
# processor too (code_revision, dtype); accepted and otherwise ignored (auto_map is kept).
_SERVICE_KEYS = (
    "image_processor_type", "processor_class", "feature_extractor_type", "_processor_class", "code_revision", "dtype",
)  # fmt: skip


class DetrHfImageProcessorKwargs(TypedDict, total=False):
    """Every option of `DetrHfImageProcessor` (transformers' `from_pretrained(..., **overrides)` reads this)."""

    do_resize: bool
    size: dict
    resample: int
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: list
    image_std: list
    do_pad: bool
    pad_size: dict
    pad_to_multiple_of: int
    do_convert_annotations: bool
    keep_crowd_annotations: bool
    category_id_to_label: dict
    label2id: dict
    format: str
    do_convert_rgb: bool


class DetrHfImageProcessor(BaseImageProcessor):
    """Resize (shortest/longest edge), rescale, normalise and pad images into one batch with a pixel mask;
    turn COCO detection annotations into DETR labels; turn model outputs into absolute boxes.

    Inputs: paths, PIL images (EXIF orientation applied), numpy HWC or torch CHW arrays (layout inferred, or
    `input_data_format`), uint8, uint16 or float (float images must already be in [0, 1]). With
    `do_convert_rgb` (default) every image becomes RGB: grey is repeated, alpha composited onto white; with
    `do_convert_rgb=False` images keep their 1-4 channels (alpha stays a channel) and `image_mean`/`image_std`
    need one value or one per channel. Integer images are rescaled by `rescale_factor` (uint8) or its 16-bit
    equivalent (uint16).

    Outputs of `__call__`: `pixel_values` float32 [B, C, H, W] (padded bottom/right with zeros), `pixel_mask`
    bool [B, H, W] (True = pixel), and with annotations `labels`: one dict per image with `class_labels` int64
    [N], `boxes` float32 [N, 4] (cx, cy, w, h) normalised by the image's OWN resized, unpadded size (never by
    the padded canvas), `area`, `iscrowd`, `orig_size` and `size` (unpadded resized (h, w)), `image_id`.

    Options it does not know (e.g. from a newer detr_hf) are kept as attributes and saved, with a warning, as
    `DetrHfConfig` does with unknown fields; unknown per-call options of `preprocess` are ignored with a warning.
    """

    model_input_names = ["pixel_values", "pixel_mask"]
    valid_kwargs = DetrHfImageProcessorKwargs

    def __init__(
        self,
        do_resize: bool = True,
        size: Mapping[str, int] | int | None = None,
        resample: int | str = 2,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] | float = IMAGENET_MEAN,
        image_std: Sequence[float] | float = IMAGENET_STD,
        do_pad: bool = True,
        pad_size: Mapping[str, int] | None = None,
        pad_to_multiple_of: int | None = None,
        do_convert_annotations: bool | None = True,
        keep_crowd_annotations: bool = False,
        category_id_to_label: Mapping[int, int] | None = None,
        label2id: Mapping[str, int] | None = None,
        format: str = "coco_detection",
        do_convert_rgb: bool | None = True,
        **kwargs: Any,
    ) -> None:
        for key in _SERVICE_KEYS:
            kwargs.pop(key, None)
        # Older DETR processor configs: `max_size` caps the long side, `pad_and_return_pixel_mask` is `do_pad`.
        max_size = kwargs.pop("max_size", None)
        if max_size is not None and (isinstance(size, int) or (isinstance(size, Mapping) and len(size) == 1)):
            size = {
                "shortest_edge": size if isinstance(size, int) else size["shortest_edge"],
                "longest_edge": max_size,
            }
        do_pad = kwargs.pop("pad_and_return_pixel_mask", do_pad)
        unknown = [k for k in kwargs if k != "auto_map" and not k.startswith("_")]
        if unknown:
            warn_unknown_options(
                unknown,
                self.valid_kwargs.__annotations__,
                "DetrHfImageProcessor",
                "is kept but not used by detr_hf",
            )
        super().__init__(**kwargs)
        self.do_resize = bool(do_resize)
        self.size = check_size(size, "size")
        self.resample = resample_code(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = per_channel(image_mean, "image_mean")
        self.image_std = per_channel(image_std, "image_std")
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"image_std must be > 0, got {self.image_std}")
        self.do_pad = bool(do_pad)
        self.pad_size = check_pad_size(pad_size)
        self.pad_to_multiple_of = check_multiple(pad_to_multiple_of)
        # An explicit None: boxes follow do_normalize, as transformers reads it; RGB conversion stays on.
        self.do_convert_annotations = bool(
            do_normalize if do_convert_annotations is None else do_convert_annotations
        )
        self.keep_crowd_annotations = bool(keep_crowd_annotations)
        self.category_id_to_label = normalize_category_mapping(category_id_to_label, "category_id_to_label")
        self.label2id = None if label2id is None else {str(k): int(v) for k, v in dict(label2id).items()}
        self.format = check_format(format)
        self.do_convert_rgb = True if do_convert_rgb is None else bool(do_convert_rgb)

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        """Build from a saved dict plus overrides. Unlike transformers' base class, which drops overrides it does
        not know, every key reaches `__init__`: known ones are used, unknown ones are kept with a warning."""
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        processor = cls(**{**image_processor_dict, **kwargs})
        if return_unused_kwargs:
            return processor, {k: v for k, v in kwargs.items() if k not in cls.valid_kwargs.__annotations__}
        return processor

    # ------------------------------------------------------------------ preprocessing
    def __call__(self, images: Any, annotations: Any = None, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, annotations, **kwargs)

    def preprocess(
        self,
        images: Any,
        annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        do_resize: bool | None = None,
        size: Mapping[str, int] | int | None = None,
        resample: int | str | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: Sequence[float] | float | None = None,
        image_std: Sequence[float] | float | None = None,
        do_pad: bool | None = None,
        pad_size: Mapping[str, int] | None = None,
        pad_to_multiple_of: int | None = None,
        do_convert_annotations: bool | None = None,
        keep_crowd_annotations: bool | None = None,
        category_id_to_label: Mapping[int, int] | None = None,
        label2id: Mapping[str, int] | None = None,
        format: str | None = None,
        do_convert_rgb: bool | None = None,
        masks_path: str | os.PathLike | None = None,
        return_segmentation_masks: bool = False,
        input_data_format: str | None = None,
        device: str | torch.device | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Images (one or a list) and optional annotations (one dict per image) → BatchFeature.

        Every option defaults to the processor's attribute of the same name. `return_tensors`: None or "pt"
        (torch) or "np". With `do_pad=False` images of different sizes cannot be stacked: they come back as a
        list (only when `return_tensors` is None). Unknown options are ignored with a warning.

        `format="coco_panoptic"`: annotations are COCO panoptic records (`file_name`, `segments_info`) whose PNGs
        are read from `masks_path`; `return_segmentation_masks`: detection objects' polygon / RLE `segmentation`
        is decoded. Either way labels get `masks` bool [N, H, W] at the padded size, boxes from the masks.
        """
        if kwargs:
            warn_unknown_options(
                kwargs, self.valid_kwargs.__annotations__, "DetrHfImageProcessor.preprocess", "is ignored"
            )
        format = self.format if format is None else check_format(format)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        do_resize = self.do_resize if do_resize is None else do_resize
        size = self.size if size is None else check_size(size, "size")
        mode = interpolation(self.resample if resample is None else resample_code(resample))
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else bool(do_convert_rgb)

        image_list = as_image_list(images)
        annotation_list = as_annotation_list(annotations, len(image_list))
        prepared = [
            prepare_image(img, i, input_data_format, convert_rgb=do_convert_rgb)
            for i, img in enumerate(image_list)
        ]
        if do_rescale:
            for i, (tensor, kind) in enumerate(prepared):
                if kind == "float":
                    check_unit_range(tensor, i)

        resized = []
        for tensor, kind in prepared:
            if device is not None:
                tensor = tensor.to(device)
            height, width = tensor.shape[-2:]
            new_size = resized_size(height, width, size) if do_resize else (height, width)
            if new_size != (height, width):
                tensor = tvF.resize(tensor, list(new_size), interpolation=mode, antialias=True)
            resized.append((tensor, kind))

        pixel_values, pixel_mask = assemble_batch(
            resized,
            channels=3 if do_convert_rgb else None,
            do_rescale=do_rescale,
            rescale_factor=self.rescale_factor if rescale_factor is None else float(rescale_factor),
            do_normalize=self.do_normalize if do_normalize is None else do_normalize,
            mean=self.image_mean if image_mean is None else per_channel(image_mean, "image_mean"),
            std=self.image_std if image_std is None else per_channel(image_std, "image_std"),
            do_pad=self.do_pad if do_pad is None else do_pad,
            pad_size=self.pad_size if pad_size is None else check_pad_size(pad_size),
            multiple=self.pad_to_multiple_of
            if pad_to_multiple_of is None
            else check_multiple(pad_to_multiple_of),
            device=device,
        )
        if isinstance(pixel_values, list) and return_tensors is not None:
            sizes = sorted({tuple(t.shape[-2:]) for t in pixel_values})
            raise ValueError(
                f"do_pad=False with images of different sizes {sizes} cannot be returned as one {return_tensors!r} "
                "tensor; pad (do_pad=True) or pass return_tensors=None to get a list"
            )
        data: dict[str, Any] = {"pixel_values": pixel_values}
        if pixel_mask is not None:
            data["pixel_mask"] = pixel_mask
        if annotation_list is not None:
            data["labels"] = self._labels(
                annotation_list,
                format,
                [tuple(tensor.shape[-2:]) for tensor, _ in prepared],
                [tuple(tensor.shape[-2:]) for tensor, _ in resized],
                masks_path=masks_path,
                return_segmentation_masks=return_segmentation_masks,
                category_id_to_label=self.category_id_to_label
                if category_id_to_label is None
                else normalize_category_mapping(category_id_to_label, "category_id_to_label"),
                label2id=self.label2id if label2id is None else label2id,
                keep_crowd=self.keep_crowd_annotations
                if keep_crowd_annotations is None
                else keep_crowd_annotations,
                normalize=self.do_convert_annotations
                if do_convert_annotations is None
                else do_convert_annotations,
            )
            for i, labels in enumerate(data["labels"]):
                pad_label_masks(labels, pixel_values[i].shape[-2:])
        if return_tensors == "np":
            data = _to_numpy(data)
        return BatchFeature(data=data)

    def _labels(
        self,
        annotation_list: list[Mapping[str, Any]],
        format: str,
        orig_sizes: list[tuple[int, int]],
        new_sizes: list[tuple[int, int]],
        *,
        masks_path: str | os.PathLike | None,
        return_segmentation_masks: bool,
        category_id_to_label: Mapping[int, int] | None,
        label2id: Mapping[str, int] | None,
        keep_crowd: bool,
        normalize: bool,
    ) -> list[dict[str, torch.Tensor]]:
        """One label dict per image from annotations in `format`, for images resized from `orig_sizes` to
        `new_sizes` ((h, w) each); `panoptic_annotations.annotation_to_labels` dispatches on the format."""
        return [
            annotation_to_labels(
                annotation,
                i,
                orig_sizes[i],
                new_sizes[i],
                format=format,
                masks_path=masks_path,
                return_segmentation_masks=return_segmentation_masks,
                category_id_to_label=category_id_to_label,
                label2id=label2id,
                keep_crowd=keep_crowd,
                normalize=normalize,
            )
            for i, annotation in enumerate(annotation_list)
        ]

    # ------------------------------------------------------------------ post-processing
    def post_process_object_detection(
        self,
        outputs: Any,
        threshold: float = 0.5,
        target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        top_k: int | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Detection outputs → `scores`, `labels`, absolute `boxes` (x0, y0, x1, y1) per image, best first, above
        `threshold`, at most `top_k`, scaled to `target_sizes`; see `detection_post_processing`."""
        return _object_detection(outputs, threshold=threshold, target_sizes=target_sizes, top_k=top_k)

    def post_process_panoptic_segmentation(
        self, outputs: Any, *args: Any, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """Segmentation outputs → panoptic segments; see `segmentation_post_processing`."""
        return _panoptic_segmentation(outputs, *args, **kwargs)

    def post_process_instance_segmentation(
        self, outputs: Any, *args: Any, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """Segmentation outputs → instance segments; see `segmentation_post_processing`."""
        return _instance_segmentation(outputs, *args, **kwargs)

    def post_process_semantic_segmentation(self, outputs: Any, *args: Any, **kwargs: Any) -> list[Any]:
        """Segmentation outputs → per-pixel class maps; see `segmentation_post_processing`."""
        return _semantic_segmentation(outputs, *args, **kwargs)


def _to_numpy(data: dict[str, Any]) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.cpu().numpy()
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return {key: convert(value) for key, value in data.items()}

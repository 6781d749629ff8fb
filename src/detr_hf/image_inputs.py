"""Image inputs of the processor: any supported image → a [C, H, W] tensor (upright, alpha handled), plus list checks."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch


def as_image_list(images: Any) -> list[Any]:
    if isinstance(images, torch.Tensor | np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, list | tuple):
        if not images:
            raise ValueError("images is an empty list")
        return list(images)
    return [images]


def as_annotation_list(annotations: Any, num_images: int) -> list[Mapping[str, Any]] | None:
    if annotations is None:
        return None
    if isinstance(annotations, Mapping):
        annotations = [annotations]
    if not isinstance(annotations, Sequence) or isinstance(annotations, str):
        raise TypeError(f"annotations must be a dict or a list of dicts, got {type(annotations).__name__}")
    if len(annotations) != num_images:
        raise ValueError(
            f"got {num_images} images but {len(annotations)} annotations; give one annotation per image"
        )
    return list(annotations)


_EXIF_ORIENTATION = 0x0112


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """The image as a viewer shows it: EXIF orientation applied (as transformers' `load_image`); idempotent,
    since the transposed copy carries no orientation tag. An untagged image is returned as it is, not copied."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) == 1:
        return image
    return PIL.ImageOps.exif_transpose(image)


def open_image(path: str | os.PathLike) -> PIL.Image.Image:
    """Open and decode an image file, upright (EXIF orientation applied), in its own mode."""
    with PIL.Image.open(path) as opened:
        opened.load()
        return upright(opened)


_PIL_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")


def _pil_to_array(image: PIL.Image.Image, convert_rgb: bool) -> np.ndarray:
    """PIL image → HWC (or HW) array. Bilevel and palette images are always expanded (their stored values are
    not intensities); other colour spaces become RGB only with `convert_rgb`, else they keep their channels."""
    mode = image.mode
    if mode == "1":
        image = image.convert("L")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode in _PIL_TO_RGB and convert_rgb:
        image = image.convert("RGB")
    elif mode in ("La", "RGBa"):
        image = image.convert(mode.upper())
    array = np.array(image)
    if image.mode == "I":
        # 32-bit integer mode is how PIL opens 16-bit PNGs.
        array = np.clip(array, 0, 65535).astype(np.uint16)
    return array


def prepare_image(
    image: Any, index: int, input_data_format: str | None, *, convert_rgb: bool = True
) -> tuple[torch.Tensor, str]:
    """Any supported image → ([C, H, W] tensor, kind); kind: "uint8" (uint8 tensor), "uint16" or "float"
    (float32 tensor holding the original values). HWC inputs stay as channels-last views: no copy here.

    With `convert_rgb` (the default) C is 1 or 3: an alpha channel is composited onto white (grey + alpha →
    grey, RGB + alpha → RGB) and other colour spaces become RGB. Without it the image keeps its 1-4 channels,
    alpha included, so that a model trained on such images gets them as they are."""
    channels_last = None
    if isinstance(image, str | os.PathLike):
        image = open_image(image)
    if isinstance(image, PIL.Image.Image):
        image = _pil_to_array(upright(image), convert_rgb)
        channels_last = True
    if isinstance(image, np.ndarray):
        if image.dtype.byteorder == ">" or not image.flags.writeable:
            image = image.astype(image.dtype.newbyteorder("="))
        if image.dtype.kind == "f" and image.dtype != np.float32:
            image = image.astype(np.float32)
        if image.dtype not in (np.uint8, np.uint16, np.float32):
            raise TypeError(f"image {index}: unsupported dtype {image.dtype} (use uint8, uint16 or float)")
        tensor = torch.from_numpy(image)
        default_last = True
    elif isinstance(image, torch.Tensor):
        tensor = image.detach()
        default_last = False
    else:
        raise TypeError(
            f"image {index}: unsupported type {type(image).__name__} (PIL image, numpy array or tensor)"
        )

    if tensor.dtype == torch.uint8:
        kind = "uint8"
    elif tensor.dtype == torch.uint16:
        kind = "uint16"
    elif tensor.is_floating_point():
        kind = "float"
        tensor = tensor.to(torch.float32)
    else:
        raise TypeError(f"image {index}: unsupported dtype {tensor.dtype} (use uint8, uint16 or float)")

    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    elif tensor.ndim == 3:
        if channels_last is None:
            channels_last = _is_channels_last(tensor.shape, default_last, input_data_format, index)
        if channels_last:
            tensor = tensor.permute(2, 0, 1)
    else:
        raise ValueError(
            f"image {index}: expected 2 or 3 dimensions (HW, HWC or CHW), got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[-1] == 0 or tensor.shape[-2] == 0:
        raise ValueError(f"image {index} is empty: shape {tuple(tensor.shape)}")
    channels = tensor.shape[0]
    if channels not in (1, 2, 3, 4):
        raise ValueError(
            f"image {index}: expected 1, 2, 3 or 4 channels, got {channels} (shape {tuple(tensor.shape)})"
        )
    if convert_rgb and channels in (2, 4):
        tensor = composite_on_white(tensor)
    if kind == "uint16":
        tensor = tensor.to(torch.float32)
    return tensor, kind


def composite_on_white(image: torch.Tensor) -> torch.Tensor:
    """[C + 1, H, W] with a trailing alpha channel → [C, H, W] over a white background, in the input's dtype
    (integers rounded). White and opaque are the dtype's maximum: 255 (uint8), 65535 (uint16), 1.0 (float).
    The one alpha compositor of detr_hf: the processor and the training transforms both use it."""
    if image.ndim != 3 or image.shape[0] < 2:
        raise ValueError(f"composite_on_white expects [C + 1, H, W] with C >= 1, got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        white = 255.0
    elif image.dtype == torch.uint16:
        white = 65535.0
    elif image.is_floating_point():
        white = 1.0
    else:
        raise TypeError(f"composite_on_white: unsupported dtype {image.dtype} (uint8, uint16 or float)")
    color, alpha = image[:-1].float(), image[-1:].float() / white
    blended = color * alpha + white * (1 - alpha)
    if image.is_floating_point():
        return blended.to(image.dtype)
    return blended.round_().to(image.dtype)


def to_rgb_uint8(image: Any, where: str = "image") -> torch.Tensor:
    """A PIL image (upright, any mode incl. 16-bit and alpha), numpy HWC or torch CHW array (uint8, uint16 or
    float in [0, 1]) → uint8 [3, H, W]: what the processor sees before resizing, quantised to 8 bits, for
    pipelines (e.g. torchvision v2 augmentation) that work on uint8 RGB. `where` names the image in errors."""
    try:
        tensor, kind = prepare_image(image, 0, None)
        if kind == "float":
            check_unit_range(tensor, 0)
    except (TypeError, ValueError) as err:
        raise type(err)(str(err).replace("image 0", where, 1)) from None
    if kind == "float":
        tensor = tensor * 255.0
    elif kind == "uint16":
        tensor = tensor * (255.0 / 65535.0)
    if kind != "uint8":
        tensor = tensor.round_().clamp_(0, 255).to(torch.uint8)
    return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor.contiguous()


def _is_channels_last(
    shape: torch.Size, default_last: bool, input_data_format: str | None, index: int
) -> bool:
    if input_data_format is not None:
        value = str(getattr(input_data_format, "value", input_data_format))
        if value not in ("channels_first", "channels_last"):
            raise ValueError(
                f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}"
            )
        return value == "channels_last"
    last_ok, first_ok = shape[-1] <= 4, shape[0] <= 4
    if last_ok and first_ok:
        return default_last
    if last_ok or first_ok:
        return last_ok
    raise ValueError(
        f"image {index}: cannot find the channel axis of shape {tuple(shape)} (1-4 channels expected)"
    )


def check_unit_range(tensor: torch.Tensor, index: int) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"image {index} contains NaN or infinite values")
    low, high = torch.aminmax(tensor)
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"image {index} is a float image with values in [{low.item():g}, {high.item():g}]; float images must be "
            "in [0, 1] (pass uint8 instead, or do_rescale=False to use the values as they are)"
        )

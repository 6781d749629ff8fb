"""Dataset images → pixel tensors for the training transforms, decoded as the image processor decodes them."""

from __future__ import annotations

import os
from typing import Any

import PIL.Image
import torch

from detr_hf.image_inputs import open_image, prepare_image, upright

__all__ = ["image_tensor"]


def image_tensor(image: Any, where: str) -> torch.Tensor:
    """A row's image (PIL image, path, HWC array or CHW tensor) → [3, H, W], upright (EXIF orientation
    applied), alpha composited on white, grey replicated to 3 channels: uint8 for 8-bit images, float32 in
    [0, 1] for 16-bit images (÷ 65535) and float images (as they are). Unsupported input → TypeError /
    ValueError naming `where`.

    A decoded HWC image comes back as a channels-last view of its array (strides (1, 3W, 3)), not copied:
    the transforms resize it first (torch's resize is fastest on that layout) and `transform_boxes` returns
    a contiguous image, so the full-size copy is never made."""
    if isinstance(image, str | os.PathLike):
        image = open_image(image)
    elif isinstance(image, PIL.Image.Image):
        image = upright(image)
    try:
        tensor, kind = prepare_image(image, 0, None)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}".replace("image 0: ", "")) from None
    if kind == "uint16":
        tensor = tensor / 65535.0
    if tensor.shape[0] == 1:
        return tensor.expand(3, -1, -1).contiguous()
    return tensor

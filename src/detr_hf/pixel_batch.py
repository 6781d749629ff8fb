"""Prepared images → one padded pixel batch + pixel mask (rescale and normalise fused into the copy)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .batch_memory import empty_batch

__all__ = ["assemble_batch"]


def assemble_batch(
    resized: list[tuple[torch.Tensor, str]],
    *,
    channels: int | None,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    mean: list[float],
    std: list[float],
    do_pad: bool,
    pad_size: Mapping[str, int] | None,
    multiple: int | None,
    device: str | torch.device | None,
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | None]:
    """Prepared, resized images ([C, H, W] each, with their kind) → (pixel_values, pixel_mask): each image is
    rescaled + normalised straight into its slot of the (padded) batch, one write per pixel.

    `channels`: the output channel count (3: grey images are repeated), or None to keep the images' own (they
    must agree). With `do_pad`: pixel_values float32 [B, C, H, W] padded bottom/right with zeros to the largest
    image (or `pad_size`), rounded up to `multiple`, and pixel_mask bool [B, H, W]. Without: a stacked tensor
    when all sizes agree, else a list of [C, h, w], and no mask."""
    sizes = [tuple(t.shape[-2:]) for t, _ in resized]
    channels = _common_channels(resized, channels, mean, std)
    device = resized[0][0].device if device is None else torch.device(device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
    # out = x * gain + bias, per channel (None = skip); gain/bias [1 or C, 1, 1] broadcast over the image.
    affine: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
    for kind in {k for _, k in resized}:
        value_scale = 1.0
        if do_rescale and kind == "uint8":
            value_scale = rescale_factor
        elif do_rescale and kind == "uint16":
            value_scale = rescale_factor * 255.0 / 65535.0
        gain = None if value_scale == 1.0 else torch.full((1, 1, 1), value_scale, device=device)
        bias = None
        if do_normalize:
            gain, bias = value_scale / std_t, -mean_t / std_t
        affine[kind] = (gain, bias)

    if not do_pad:
        outs = []
        for tensor, kind in resized:
            out = torch.empty(channels, *tensor.shape[-2:], dtype=torch.float32, device=device)
            outs.append(_write_affine(out, tensor, *affine[kind]))
        if len(set(sizes)) == 1:
            return torch.stack(outs), None
        return outs, None

    height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
    if pad_size is not None:
        for i, (h, w) in enumerate(sizes):
            if h > pad_size["height"] or w > pad_size["width"]:
                raise ValueError(
                    f"image {i} is {h}x{w} after resizing, larger than pad_size "
                    f"{pad_size['height']}x{pad_size['width']}"
                )
        height, width = pad_size["height"], pad_size["width"]
    if multiple:
        height, width = -(-height // multiple) * multiple, -(-width // multiple) * multiple

    batch = empty_batch((len(resized), channels, height, width), torch.float32, device)
    mask = empty_batch((len(resized), height, width), torch.bool, device).zero_()
    for i, ((tensor, kind), (h, w)) in enumerate(zip(resized, sizes)):
        _write_affine(batch[i, :, :h, :w], tensor, *affine[kind])
        batch[i, :, h:, :] = 0
        batch[i, :, :h, w:] = 0
        mask[i, :h, :w] = True
    return batch, mask


def _write_affine(
    out: torch.Tensor, image: torch.Tensor, gain: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """out[:] = image * gain + bias. A cast-copy then two in-place ops: measured ~4x faster on CPU than one
    mixed-dtype `torch.addcmul(..., out=)` into a strided slot."""
    out.copy_(image)
    if gain is not None:
        out.mul_(gain)
    if bias is not None:
        out.add_(bias)
    return out


def _common_channels(
    resized: list[tuple[torch.Tensor, str]], channels: int | None, mean: list[float], std: list[float]
) -> int:
    """The batch's channel count; the images must agree on it and image_mean/std must have 1 value or C."""
    if channels is None:
        channels = resized[0][0].shape[0]
        for i, (tensor, _) in enumerate(resized):
            if tensor.shape[0] != channels:
                raise ValueError(
                    f"do_convert_rgb=False: image {i} has {tensor.shape[0]} channels but image 0 has {channels}; "
                    "one batch needs one channel count"
                )
    for name, values in (("image_mean", mean), ("image_std", std)):
        if len(values) not in (1, channels):
            raise ValueError(
                f"{name} has {len(values)} values but the images have {channels} channels "
                "(give one value, or one per channel)"
            )
    return channels

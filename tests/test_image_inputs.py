"""image_inputs: EXIF orientation (real tagged JPEGs), 16-bit PNG files, alpha compositing, channel handling."""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch
from transformers import DetrImageProcessor
from transformers.image_utils import load_image

from detr_hf.image_inputs import (
    as_annotation_list,
    as_image_list,
    composite_on_white,
    open_image,
    prepare_image,
    to_rgb_uint8,
    upright,
)
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor
from helpers import EXIF_ORIENTATION, save_exif_jpeg, save_png16, textured_image

# How a viewer turns the stored pixels upright for each EXIF orientation (numpy on HWC arrays).
UPRIGHT_FROM_STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.transpose(a, (1, 0, 2)),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.transpose(a, (1, 0, 2))[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_like_transformers_load_image(tmp_path, orientation):
    stored = textured_image(360, 540, seed=orientation)  # landscape as stored: 3 of 8 tags make it portrait
    path = save_exif_jpeg(tmp_path / f"o{orientation}.jpg", stored, orientation)
    with PIL.Image.open(path) as raw:
        raw.load()
        assert raw.getexif()[EXIF_ORIENTATION] == orientation and raw.size == (540, 360)
        decoded = np.asarray(raw)
        from_pil = upright(raw)

    reference = load_image(str(path))  # transformers' own reading of the file
    opened = open_image(path)
    assert opened.size == reference.size == (360, 540)[:: 1 if orientation >= 5 else -1]
    assert np.array_equal(np.asarray(opened), np.asarray(reference))
    assert np.array_equal(np.asarray(from_pil), np.asarray(reference))
    # The geometry, checked independently of PIL: the decoded (JPEG-lossy) stored pixels, turned by hand.
    assert np.array_equal(np.asarray(opened), UPRIGHT_FROM_STORED[orientation](decoded))
    # Idempotent: the upright copy carries no orientation any more.
    assert opened.getexif().get(EXIF_ORIENTATION, 1) == 1
    assert np.array_equal(np.asarray(upright(upright(opened))), np.asarray(opened))

    # The processor reads paths and raw PIL images upright, as transformers' load_image + DetrImageProcessor.
    size = {"shortest_edge": 300, "longest_edge": 500}
    ours = DetrHfImageProcessor(size=size)
    expected = DetrImageProcessor(size=size)(reference, return_tensors="pt")
    with PIL.Image.open(path) as raw:
        from_raw = ours(raw, return_tensors="pt")
    for got in (ours(str(path)), ours(path), from_raw, ours(opened)):
        assert got["pixel_values"].shape == expected["pixel_values"].shape
        torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)


def test_untagged_images_are_not_copied():
    image = PIL.Image.fromarray(textured_image(40, 60))
    assert upright(image) is image


def test_16_bit_grey_png_file_is_scaled_not_saturated(tmp_path):
    values = (np.linspace(0, 65535, 320 * 480).reshape(320, 480)).astype(np.uint16)
    path = save_png16(tmp_path / "depth.png", values)
    with PIL.Image.open(path) as raw:
        assert raw.mode in ("I;16", "I")  # really a 16-bit file
    tensor, kind = prepare_image(str(path), 0, None)
    assert kind == "uint16" and tensor.dtype == torch.float32 and tensor.shape == (1, 320, 480)
    assert torch.equal(tensor[0], torch.from_numpy(values.astype(np.float32)))

    # Through the processor: the same as the 8-bit image that holds the top byte (within one 8-bit level).
    proc = DetrHfImageProcessor(do_resize=False, do_normalize=False)
    sixteen = proc(str(path))["pixel_values"]
    eight = proc(PIL.Image.fromarray((values / 257).round().astype(np.uint8)))["pixel_values"]
    assert 0.45 < float(sixteen.mean()) < 0.55  # not all white (the bug: 16-bit values divided by 255)
    torch.testing.assert_close(sixteen, eight, atol=0.5 / 255 + 1e-6, rtol=0)
    rgb8 = to_rgb_uint8(open_image(path))
    assert rgb8.dtype == torch.uint8 and rgb8.shape == (3, 320, 480)
    assert int((rgb8[0].int() - torch.from_numpy(values // 257).int()).abs().max()) <= 1


def test_16_bit_rgb_png_file(tmp_path):
    values = (textured_image(300, 410).astype(np.uint16) * 257 + 128).astype(np.uint16)
    path = save_png16(tmp_path / "rgb48.png", values)
    batch = DetrHfImageProcessor(do_resize=False, do_normalize=False)(str(path))["pixel_values"]
    expected = torch.from_numpy(values >> 8).permute(2, 0, 1).float() / 255  # PIL keeps the top byte
    torch.testing.assert_close(batch[0], expected, atol=1e-6, rtol=0)


def test_composite_on_white_in_every_dtype():
    color = torch.tensor([[[200, 0]], [[100, 50]], [[0, 255]]], dtype=torch.uint8)  # [3, 1, 2]
    alpha = torch.tensor([[[255, 0]]], dtype=torch.uint8)
    out = composite_on_white(torch.cat([color, alpha]))
    assert out.dtype == torch.uint8 and out.tolist() == [[[200, 255]], [[100, 255]], [[0, 255]]]
    half = composite_on_white(torch.cat([color, torch.full((1, 1, 2), 128, dtype=torch.uint8)]))
    expected = (color.float() * 128 / 255 + 255 * (1 - 128 / 255)).round()
    assert torch.equal(half.float(), expected)
    wide = composite_on_white(torch.cat([color, alpha]).to(torch.int32).mul(257).to(torch.uint16))
    assert wide.dtype == torch.uint16 and wide.int().tolist() == [
        [[51400, 65535]],
        [[25700, 65535]],
        [[0, 65535]],
    ]
    grey = composite_on_white(torch.tensor([[[0.2]], [[0.5]]]))  # grey + alpha, float
    torch.testing.assert_close(grey, torch.tensor([[[0.6]]]))
    with pytest.raises(ValueError, match=r"expects \[C \+ 1, H, W\]"):
        composite_on_white(torch.zeros(1, 4, 4))
    with pytest.raises(TypeError, match="unsupported dtype torch.int32"):
        composite_on_white(torch.zeros(4, 2, 2, dtype=torch.int32))


def test_prepare_image_composites_or_keeps_alpha():
    rgba = textured_image(30, 40, channels=4)
    rgba[..., 3] = np.linspace(0, 255, 40).astype(np.uint8)
    pil = PIL.Image.fromarray(rgba, "RGBA")
    flat, kind = prepare_image(pil, 0, None)
    assert kind == "uint8" and flat.shape == (3, 30, 40)
    reference = PIL.Image.alpha_composite(PIL.Image.new("RGBA", pil.size, "white"), pil).convert("RGB")
    assert int((flat.int() - torch.from_numpy(np.array(reference)).permute(2, 0, 1).int()).abs().max()) <= 1
    kept, _ = prepare_image(pil, 0, None, convert_rgb=False)
    assert torch.equal(kept, torch.from_numpy(rgba).permute(2, 0, 1))
    grey_alpha, _ = prepare_image(pil.convert("LA"), 0, None, convert_rgb=False)
    assert grey_alpha.shape == (2, 30, 40)
    assert prepare_image(pil.convert("LA"), 0, None)[0].shape == (1, 30, 40)
    cmyk = pil.convert("RGB").convert("CMYK")
    assert prepare_image(cmyk, 0, None)[0].shape == (3, 30, 40)
    assert prepare_image(cmyk, 0, None, convert_rgb=False)[0].shape == (4, 30, 40)
    palette = pil.convert("RGB").convert("P")
    assert prepare_image(palette, 0, None, convert_rgb=False)[0].shape == (3, 30, 40)  # indices expanded


def test_to_rgb_uint8_for_training_pipelines():
    rgb = textured_image(50, 70)
    assert torch.equal(to_rgb_uint8(PIL.Image.fromarray(rgb)), torch.from_numpy(rgb).permute(2, 0, 1))
    grey = to_rgb_uint8(PIL.Image.fromarray(rgb[..., 0]))
    assert grey.shape == (3, 50, 70) and torch.equal(grey[2], torch.from_numpy(rgb[..., 0]))
    assert torch.equal(to_rgb_uint8(rgb.astype(np.float32) / 255), to_rgb_uint8(rgb))
    with pytest.raises(ValueError, match=r"example 4 is a float image with values in \[0, 255\]"):
        to_rgb_uint8(rgb.astype(np.float32), where="example 4")
    with pytest.raises(TypeError, match="example 2: unsupported type object"):
        to_rgb_uint8(object(), where="example 2")


def test_list_helpers():
    batch = np.zeros((2, 5, 5, 3), np.uint8)
    assert len(as_image_list(batch)) == 2 and len(as_image_list([batch[0]])) == 1
    with pytest.raises(ValueError, match="images is an empty list"):
        as_image_list([])
    assert as_annotation_list(None, 3) is None
    assert as_annotation_list({"image_id": 1}, 1) == [{"image_id": 1}]
    with pytest.raises(TypeError, match="annotations must be a dict or a list of dicts, got str"):
        as_annotation_list("x", 1)
    with pytest.raises(ValueError, match="got 2 images but 1 annotations"):
        as_annotation_list([{}], 2)

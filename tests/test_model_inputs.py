"""check_model_inputs / reject_unknown_kwargs: what the models accept, and the errors for everything else."""

from __future__ import annotations

import pytest
import torch

from detr_hf.model_inputs import check_model_inputs, reject_unknown_kwargs


def _pixels(batch: int = 2, height: int = 30, width: int = 40) -> torch.Tensor:
    return torch.randn(batch, 3, height, width)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.float32, torch.float16])
def test_masks_of_any_dtype_holding_0_and_1_give_the_same_bool_mask(dtype):
    mask = torch.zeros(2, 30, 40, dtype=torch.bool)
    mask[0, :20, :35] = True
    mask[1, :, :12] = True
    got = check_model_inputs(_pixels(), mask.to(dtype), num_channels=3)
    assert got.dtype == torch.bool and torch.equal(got, mask)


def test_no_mask_means_every_pixel_is_real():
    got = check_model_inputs(_pixels(), None, num_channels=3)
    assert got.shape == (2, 30, 40) and bool(got.all())


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.full((2, 30, 40), 0.5), r"only 1 \(pixel\) and 0 \(padding\); image\(s\) \[0, 1\]"),
        (torch.full((2, 30, 40), float("nan")), r"image\(s\) \[0, 1\]"),
        (torch.zeros(2, 30, 40, dtype=torch.int64), r"no valid pixel in image\(s\) \[0, 1\]"),
        (torch.ones(2, 30, 41), "must have shape"),
    ],
)
def test_bad_masks_name_the_images(mask, message):
    with pytest.raises(ValueError, match=message):
        check_model_inputs(_pixels(), mask, num_channels=3)


def test_bad_pixels_are_clear_errors():
    with pytest.raises(ValueError, match=r"\[batch, 1, height, width\]"):
        check_model_inputs(_pixels(), None, num_channels=1)
    with pytest.raises(TypeError, match="float tensor"):
        check_model_inputs(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), None, num_channels=3)
    pixels = _pixels(3)
    pixels[2, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf in image\(s\) \[2\]"):
        check_model_inputs(pixels, None, num_channels=3)
    with pytest.raises(TypeError, match="pixel_mask must be a torch.Tensor"):
        check_model_inputs(_pixels(), [[1]], num_channels=3)


def test_only_the_trainers_keyword_is_ignored():
    reject_unknown_kwargs({"num_items_in_batch": 7})
    with pytest.raises(TypeError, match=r"\['pixel_maks'\]"):
        reject_unknown_kwargs({"pixel_maks": None})

"""Shared test helpers: tiny random-weight configs and inputs (no downloads anywhere)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_config(**overrides):
    """A DETR small enough for a unit test: timm `test_resnet`, d_model 32, 2+2 layers, 5 queries, 3 labels."""
    from detr_hf import DetrHfConfig

    kwargs = dict(
        backbone="test_resnet",
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=5,
        num_labels=3,
    )
    kwargs.update(overrides)
    return DetrHfConfig(**kwargs)


def padded_batch(sizes=((64, 96), (48, 64)), seed: int = 0):
    """Random pixel_values padded bottom/right to the largest size, with the matching pixel_mask (1 = pixel)."""
    gen = torch.Generator().manual_seed(seed)
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    pixels = torch.zeros(len(sizes), 3, height, width)
    mask = torch.zeros(len(sizes), height, width, dtype=torch.long)
    for i, (h, w) in enumerate(sizes):
        pixels[i, :, :h, :w] = torch.randn(3, h, w, generator=gen)
        mask[i, :h, :w] = 1
    return pixels, mask


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every LayerNorm non-trivial affine weights so tests can see where norms are applied."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=gen))


@pytest.fixture
def config():
    return tiny_config()

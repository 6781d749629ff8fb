"""Test helpers: transformers DETR reference models with random, non-trivial weights, saved as transformers does."""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import padded_batch, randomize_norms

BATCH_SIZES = ((128, 160), (96, 128))  # two images, the second padded

# transformers' own ResNet (`use_timm_backbone=False`) configured as the timm ResNet of the same name.
HF_RESNETS = {
    "resnet18": {"depths": [2, 2, 2, 2], "layer_type": "basic", "hidden_sizes": [64, 128, 256, 512]},
    "resnet34": {"depths": [3, 4, 6, 3], "layer_type": "basic", "hidden_sizes": [64, 128, 256, 512]},
    "resnet50": {"depths": [3, 4, 6, 3], "layer_type": "bottleneck", "hidden_sizes": [256, 512, 1024, 2048]},
}


def randomize_batch_norm_buffers(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial frozen-BN statistics and affines (stored as buffers), so a mis-mapped BN is visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if "backbone" not in name:
                continue
            if name.endswith("running_var"):
                buffer.copy_(0.75 + 0.5 * torch.rand(buffer.shape, generator=gen))
            elif name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=gen))
            elif name.endswith(".weight"):
                buffer.copy_(0.5 + 0.5 * torch.rand(buffer.shape, generator=gen))
            elif name.endswith(".bias"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=gen))


def transformers_detr(
    folder: Path | None,
    *,
    backbone: str = "resnet18",
    timm_layout: bool = True,
    num_labels: int = 2,
    dilation: bool = False,
    seed: int = 0,
):
    """A small-transformer transformers `DetrForObjectDetection` with a real ResNet backbone (random weights,
    randomised LayerNorm affines and BN statistics), saved to `folder` by transformers' `save_pretrained`."""
    from transformers import DetrConfig, DetrForObjectDetection

    if timm_layout:
        backbone_options = dict(use_timm_backbone=True, backbone=backbone, dilation=dilation)
    else:
        backbone_options = dict(
            backbone_config={"model_type": "resnet", "out_features": ["stage4"], **HF_RESNETS[backbone]}
        )
    config = DetrConfig(
        num_labels=num_labels, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=10,
        use_pretrained_backbone=False, auxiliary_loss=False, **backbone_options,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = DetrForObjectDetection(config).eval()
    randomize_norms(model, seed + 1)
    randomize_batch_norm_buffers(model, seed + 2)
    if folder is not None:
        model.save_pretrained(folder)
    return model


def detection_outputs(model, sizes=BATCH_SIZES) -> dict[str, torch.Tensor]:
    """logits and pred_boxes of `model` on a fixed padded two-image batch."""
    pixel_values, pixel_mask = padded_batch(sizes)
    with torch.no_grad():
        out = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    return {"logits": out.logits, "pred_boxes": out.pred_boxes}


def assert_outputs_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol=1e-4) -> None:
    assert got["logits"].shape == expected["logits"].shape
    for name in ("logits", "pred_boxes"):
        torch.testing.assert_close(
            got[name], expected[name], rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )

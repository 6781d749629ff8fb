"""Panoptic checkpoint import: the original `detr-r50-panoptic` layout through `python -m detr_hf.convert`, errors."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from transformers import AutoModelForImageSegmentation

from detr_hf import DetrHfConfig, DetrHfForSegmentation
from detr_hf.checkpoint_layouts import from_detr_hf
from detr_hf.convert import main as convert_main
from helpers import padded_batch, randomize_feature_norms, randomize_norms

# Every mask head key of the original panoptic checkpoint (models/segmentation.py names), without the detector.
ORIGINAL_HEAD_KEYS = {
    f"{module}.{p}"
    for module in (
        "bbox_attention.q_linear", "bbox_attention.k_linear", "mask_head.out_lay",
        *(f"mask_head.lay{k}" for k in range(1, 6)), *(f"mask_head.gn{k}" for k in range(1, 6)),
        *(f"mask_head.adapter{k}" for k in range(1, 4)),
    )
    for p in ("weight", "bias")
}  # fmt: skip


def small_panoptic_r50(**overrides) -> DetrHfForSegmentation:
    """The panoptic model's real ResNet-50 and 250 classes, a small transformer, non-trivial norms everywhere."""
    kwargs = dict(
        backbone="resnet50", d_model=64, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, num_queries=6, num_labels=250, freeze_backbone_batch_norm=True,
        backbone_frozen_stages=1,
    )  # fmt: skip
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = DetrHfForSegmentation(DetrHfConfig(**kwargs)).eval()
    randomize_norms(model, 1)
    randomize_feature_norms(model, 2)
    return model


@pytest.mark.slow
def test_original_panoptic_checkpoint_converts_exactly(tmp_path):
    source = small_panoptic_r50()
    state_dict = from_detr_hf(source.state_dict(), "original_panoptic")
    head = {k for k in state_dict if not k.startswith("detr.")}
    assert head == ORIGINAL_HEAD_KEYS
    assert state_dict["detr.class_embed.weight"].shape == (251, 64)
    assert "detr.backbone.0.body.layer3.5.conv3.weight" in state_dict
    assert state_dict["detr.transformer.decoder.layers.1.multihead_attn.in_proj_weight"].shape == (192, 64)
    assert state_dict["mask_head.lay1.weight"].shape == (72, 72, 3, 3)  # d + heads
    assert state_dict["mask_head.adapter1.weight"].shape == (32, 1024, 1, 1)  # stride-16 ResNet-50 stage
    checkpoint = tmp_path / "detr-r50-panoptic-00ce5173.pth"
    torch.save({"model": state_dict, "args": argparse.Namespace(dilation=False, nheads=8)}, checkpoint)

    convert_main(["--from", "original", str(checkpoint), str(tmp_path / "out")])
    converted = AutoModelForImageSegmentation.from_pretrained(tmp_path / "out").eval()
    assert type(converted) is DetrHfForSegmentation
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    names = {int(k): v for k, v in config["id2label"].items()}
    assert len(names) == 250 and names[1] == "person" and names[200] == "rug-merged" and names[91] == "N/A"
    assert sum(name != "N/A" for name in names.values()) == 133  # 80 things + 53 stuff
    assert "panoptic checkpoint" in (tmp_path / "out" / "README.md").read_text()

    pixel_values, pixel_mask = padded_batch(((160, 192), (130, 150)), seed=4)
    with torch.no_grad():
        expected = source(pixel_values=pixel_values, pixel_mask=pixel_mask)
        got = converted(pixel_values=pixel_values, pixel_mask=pixel_mask)
    assert expected.pred_masks.std() > 0.05
    for name in ("logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_panoptic_checkpoint_with_a_missing_head_key_is_refused(tmp_path):
    model = DetrHfForSegmentation(DetrHfConfig(backbone="resnet50", d_model=32, encoder_layers=1, decoder_layers=1,
                                               encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=3, num_labels=4,
                                               freeze_backbone_batch_norm=True))  # fmt: skip
    state_dict = from_detr_hf(model.state_dict(), "original_panoptic")
    del state_dict["mask_head.gn2.weight"]
    checkpoint = tmp_path / "panoptic.pth"
    torch.save({"model": state_dict}, checkpoint)
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["--from", "original", str(checkpoint), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "out").exists()

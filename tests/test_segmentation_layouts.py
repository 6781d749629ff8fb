"""Segmentation checkpoint layouts: both round trip exactly, name the original head keys, reject unknown keys."""

from __future__ import annotations

import pytest
import torch

from detr_hf import DetrHfConfig, DetrHfForSegmentation
from detr_hf.checkpoint_layouts import CheckpointKeyError, from_detr_hf, to_detr_hf
from detr_hf.segmentation_layouts import is_segmentation_state_dict


def test_segmentation_layouts_round_trip_and_reject_unknown_keys():
    model = DetrHfForSegmentation(DetrHfConfig(backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=1,
                                               encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=3, num_labels=4,
                                               freeze_backbone_batch_norm=True))  # fmt: skip
    ours = model.state_dict()
    for layout in ("original_panoptic", "transformers_segmentation"):
        external = from_detr_hf(ours, layout)
        assert all(k.startswith(("detr.", "bbox_attention.", "mask_head.")) for k in external), layout
        back = to_detr_hf(external, layout)
        assert back.keys() == ours.keys()
        assert all(torch.equal(back[k], ours[k]) for k in ours)
    external = from_detr_hf(ours, "transformers_segmentation")
    assert "detr.model.backbone.conv_encoder.model.layer1.0.conv1.weight" in external
    assert "mask_head.gn3.weight" in external and "bbox_attention.k_linear.bias" in external
    external["mask_head.lay6.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointKeyError, match=r"mask_head\.lay6\.weight"):
        to_detr_hf(external, "transformers_segmentation")
    assert is_segmentation_state_dict(external) and not is_segmentation_state_dict(from_detr_hf(
        {k: v for k, v in ours.items() if not k.startswith(("mask_head.", "bbox_attention."))}, "transformers"))  # fmt: skip

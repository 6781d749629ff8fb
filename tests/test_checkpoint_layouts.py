"""Key maps of external DETR layouts: transformers' own ResNet backbone renamed onto timm's ResNet."""

from __future__ import annotations

import pytest
import timm
import torch
from transformers import ResNetBackbone, ResNetConfig

from detr_hf.checkpoint_layouts import (
    CheckpointKeyError,
    check_exact_fit,
    hf_resnet_key_to_timm,
    hf_resnet_to_timm,
    to_detr_hf,
)
from detr_references import HF_RESNETS


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_every_hf_resnet_key_lands_on_the_timm_resnet_key_of_the_same_shape(name):
    with torch.device("meta"):
        theirs = ResNetBackbone(ResNetConfig(out_features=["stage4"], **HF_RESNETS[name])).state_dict()
        timm_keys = timm.create_model(name, features_only=True, out_indices=(-1,)).state_dict()
    timm_keys = {k: v for k, v in timm_keys.items() if not k.endswith("num_batches_tracked")}
    renamed = {
        hf_resnet_key_to_timm(k): v for k, v in theirs.items() if not k.endswith("num_batches_tracked")
    }
    assert None not in renamed
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {
        k: tuple(v.shape) for k, v in timm_keys.items()
    }


def test_hf_resnet_rename_examples_and_strangers():
    assert hf_resnet_key_to_timm("embedder.embedder.normalization.running_var") == "bn1.running_var"
    assert hf_resnet_key_to_timm("encoder.stages.2.layers.0.shortcut.convolution.weight") == (
        "layer3.0.downsample.0.weight"
    )
    assert (
        hf_resnet_key_to_timm("encoder.stages.3.layers.1.layer.2.normalization.bias") == "layer4.1.bn3.bias"
    )
    assert hf_resnet_key_to_timm("encoder.stages.0.layers.0.mystery.weight") is None
    prefix = "model.backbone.conv_encoder.model."
    renamed = hf_resnet_to_timm({
        f"{prefix}embedder.embedder.convolution.weight": torch.zeros(1),
        f"{prefix}layer1.0.bn1.num_batches_tracked": torch.zeros(1),
        "class_labels_classifier.weight": torch.ones(1),
    })  # fmt: skip
    assert sorted(renamed) == ["class_labels_classifier.weight", f"{prefix}conv1.weight"]
    # A backbone key of neither ResNet stays a backbone key: the exact-fit check of the model then names it.
    stranger = f"{prefix}encoder.stages.0.layers.0.mystery.weight"
    assert list(to_detr_hf({stranger: torch.zeros(1)}, "transformers")) == [
        "model.backbone.body.encoder.stages.0.layers.0.mystery.weight"
    ]
    with pytest.raises(CheckpointKeyError, match=r"unexpected keys \(1\): model\.backbone\.body\.encoder"):
        check_exact_fit({}, to_detr_hf({stranger: torch.zeros(1)}, "transformers"))

"""The config a converted checkpoint implies: ResNet depth and block type from the weights, names checked, labels."""

from __future__ import annotations

import pytest
import timm
import torch

from detr_hf.checkpoint_config import ResNetShape, label_kwargs, resolve_backbone
from detr_hf.coco_labels import coco_id2label


def backbone_weights(name: str) -> dict[str, torch.Tensor]:
    """detr_hf-named backbone weights of the timm model `name`, on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        body = timm.create_model(name, features_only=True, out_indices=(-1,))
    return {f"model.backbone.body.{k}": v for k, v in body.state_dict().items()}


@pytest.mark.parametrize(
    "name", ["resnet18", "resnet34", "resnet26", "resnet50", "resnet101", "resnet152", "wide_resnet50_2"]
)
def test_resnet_recognised_by_block_type_depths_and_width(name):
    weights = backbone_weights(name)
    assert ResNetShape.of(weights).name == name
    assert resolve_backbone(weights, None) == name
    assert resolve_backbone(weights, f"{name}.tv_in1k") == f"{name}.tv_in1k"  # a pretrained tag is kept


def test_resnet34_is_not_called_a_resnet50():
    weights = backbone_weights("resnet34")
    assert str(ResNetShape.of(weights)) == "basic blocks [3, 4, 6, 3] per stage"
    with pytest.raises(ValueError, match=r"names backbone 'resnet50' but its weights are a resnet34"):
        resolve_backbone(weights, "resnet50")


def test_unrecognised_backbone_needs_a_name():
    weights = backbone_weights("resnet50d")  # deep stem: no plain conv1
    assert ResNetShape.of(weights).name is None
    assert resolve_backbone(weights, "resnet50d") == "resnet50d"  # trusted; the exact weight load checks it
    with pytest.raises(ValueError, match=r"bottleneck blocks \[3, 4, 6, 3\].*no plain 7x7 stem.*resnet18"):
        resolve_backbone(weights, None)


def test_labels_from_head_rows_and_names():
    assert label_kwargs(92) == {"id2label": coco_id2label()}
    assert label_kwargs(3) == {"num_labels": 2}
    assert label_kwargs(3, {0: "LABEL_0", 1: "LABEL_1"}) == {"num_labels": 2}
    assert label_kwargs(3, {0: "cat", 1: "dog"}) == {"id2label": {0: "cat", 1: "dog"}}
    assert label_kwargs(4, {0: "cat", 1: "dog"}) == {"num_labels": 3}  # names that do not fit the head

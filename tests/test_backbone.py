"""timm backbone: feature shapes for several architectures, freezing, trainable BN from scratch."""

import pytest
import timm
import torch
from safetensors.torch import save_file
from torchvision.ops import FrozenBatchNorm2d

from detr_hf.backbone import DetrHfBackbone, downsample_mask


@pytest.mark.parametrize(
    ("name", "kwargs", "reduction"),
    [
        ("test_resnet", {}, 32),
        ("resnet18", {}, 32),
        ("resnet18", {"output_stride": 16}, 16),  # DC5
        ("test_efficientnet", {}, 32),
        ("test_convnext", {}, 32),
        ("resnet10t", {"out_indices": (2,)}, 8),
    ],
)
def test_feature_shapes_and_channels_from_feature_info(name, kwargs, reduction):
    backbone = DetrHfBackbone(name, kwargs)
    expected_channels = timm.create_model(name, features_only=True, **kwargs).feature_info.channels()[-1]
    assert backbone.num_channels == expected_channels and backbone.reduction == reduction
    pixels = torch.randn(2, 3, 64, 96)
    mask = torch.ones(2, 64, 96, dtype=torch.bool)
    features, feature_mask = backbone(pixels, mask)
    assert features.shape == (2, expected_channels, 64 // reduction, 96 // reduction)
    assert feature_mask.shape == (2, 64 // reduction, 96 // reduction)


def test_mask_downsampling_is_nearest():
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[:, :32, :48] = True
    small = downsample_mask(mask, (2, 2))
    assert small.tolist() == [[[True, True], [False, False]]]


def test_loaded_weights_freeze_bn_and_stem(tmp_path):
    reference = timm.create_model("test_resnet")
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    backbone = DetrHfBackbone("test_resnet", weights_path=str(path), freeze_batch_norm=True, frozen_stages=1)
    body = dict(backbone.body.named_parameters())
    torch.testing.assert_close(body["layer2.0.conv1.weight"], reference.layer2[0].conv1.weight)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    frozen = {n for n, p in body.items() if not p.requires_grad}
    assert any(n.startswith("conv1.") for n in frozen) and "layer1.0.conv1.weight" in frozen
    assert all(p.requires_grad for n, p in body.items() if n.startswith(("layer2", "layer3", "layer4")))
    stats = {n: b.clone() for n, b in backbone.named_buffers()}
    backbone.train()
    backbone(torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool))
    for name, buffer in backbone.named_buffers():
        torch.testing.assert_close(buffer, stats[name], msg=f"{name} moved in train mode")


@pytest.mark.parametrize(
    ("name", "boundary"), [("test_efficientnet", "blocks.2"), ("test_convnext", "stages_1")]
)
def test_stem_and_first_stage_freeze_for_other_architectures(name, boundary):
    backbone = DetrHfBackbone(name, frozen_stages=1)
    names = [n for n, _ in backbone.body.named_parameters()]
    first_trainable = next(n for n, p in backbone.body.named_parameters() if p.requires_grad)
    assert first_trainable.startswith(boundary + ".")
    assert backbone.frozen_parameter_names == names[: names.index(first_trainable)]
    assert len(backbone.frozen_parameter_names) > 0


def test_random_backbone_keeps_trainable_bn_and_no_dead_branch():
    backbone = DetrHfBackbone("test_resnet")
    assert all(p.requires_grad for p in backbone.parameters())
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    backbone.train()
    pixels, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    zero_gammas = [m for m in bns if not m.weight.any()]
    assert zero_gammas, "timm zero-initialises each block's last BN gamma"
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        backbone(pixels, mask)[0].square().mean().backward()
        optimizer.step()
    # After one step the zero gammas have moved, so every branch (every BN) now receives gradient.
    for module in bns:
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    assert all(m.weight.any() for m in zero_gammas)


@pytest.mark.parametrize(
    ("name", "kwargs", "modules"),
    [
        ("resnet18", {}, ["layer3", "layer2", "layer1"]),
        ("resnet18", {"output_stride": 16}, ["layer3", "layer2", "layer1"]),  # dilated layer4 is stride 16 too
        ("resnet18", {"out_indices": (3,)}, [None, "layer2", "layer1"]),  # the last map is the stride-16 level
        ("efficientnet_b0", {}, ["blocks.4", "blocks.2", "blocks.1"]),
    ],
)
def test_enable_levels_returns_the_stride_16_8_4_maps(name, kwargs, modules):
    backbone = DetrHfBackbone(name, kwargs).eval()
    info = {i["module"]: i for i in backbone.body.feature_info.info}
    channels = backbone.enable_levels((16, 8, 4))
    assert backbone._level_modules == modules
    assert channels == [backbone.num_channels if m is None else info[m]["num_chs"] for m in modules]
    pixels = torch.randn(2, 3, 100, 130)
    with torch.no_grad():
        features, _ = backbone(pixels, torch.ones(2, 100, 130, dtype=torch.bool))
        last, levels = backbone.pop_levels()
    assert last is features
    assert [tuple(t.shape) for t in levels] == [(2, c, -(-100 // s), -(-130 // s)) for c, s in zip(channels, (16, 8, 4))]
    with pytest.raises(RuntimeError, match="pop_levels"):
        backbone.pop_levels()  # forgotten after one read


def test_enable_levels_names_a_backbone_without_fine_levels():
    backbone = DetrHfBackbone("resnet18", {"out_indices": (1,)})  # stops at stride 4
    with pytest.raises(ValueError, match="no feature level at stride 16"):
        backbone.enable_levels((16, 8, 4))


def test_detection_backbone_keeps_no_levels():
    backbone = DetrHfBackbone("resnet18", {}).eval()
    with torch.no_grad():
        backbone(torch.randn(1, 3, 64, 64), torch.ones(1, 64, 64, dtype=torch.bool))
    assert backbone._last_levels is None and not backbone._captured
    assert not any(m._forward_hooks for m in backbone.modules())

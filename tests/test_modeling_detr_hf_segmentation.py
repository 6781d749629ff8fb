"""DetrHfForSegmentation: parity with transformers' DetrForSegmentation, mask losses, loading, Auto classes, backbones."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoModelForImageSegmentation

from detr_hf import DetrHfForObjectDetection, DetrHfForSegmentation
from detr_hf.convert import convert_transformers_checkpoint
from helpers import padded_batch, randomize_feature_norms, randomize_norms, tiny_config

SIZES = ((160, 192), (128, 150))


def seg_config(**overrides):
    """The tiny test config with 8 heads (d + heads = 40: the original's GroupNorm(8) layout)."""
    return tiny_config(encoder_attention_heads=8, decoder_attention_heads=8, **overrides)


def rectangle_labels(sizes, padded, num_labels, seed=0):
    """Per image: a few rectangles inside its own area; masks [N, H, W] bool at the padded size and their boxes."""
    gen = torch.Generator().manual_seed(seed)
    labels = []
    for i, (h, w) in enumerate(sizes):
        n = 3 + i
        masks = torch.zeros(n, *padded, dtype=torch.bool)
        boxes = []
        for j in range(n):
            y0 = int(torch.randint(0, h - h // 3, (1,), generator=gen))
            x0 = int(torch.randint(0, w - w // 3, (1,), generator=gen))
            y1, x1 = y0 + h // 4 + 2 * j, x0 + w // 5 + 3 * j
            masks[j, y0:y1, x0:x1] = True
            boxes.append([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
        # Non-contiguous class ids.
        class_labels = torch.randint(0, num_labels, (n,), generator=gen)
        labels.append({"class_labels": class_labels, "boxes": torch.tensor(boxes), "masks": masks})
    return labels


@pytest.mark.slow
def test_parity_with_transformers_detr_for_segmentation(tmp_path):
    from transformers import DetrConfig, DetrForSegmentation

    torch.manual_seed(0)
    # auxiliary_loss=False: transformers 5 feeds the LayerNorm-ed output to the next decoder layer when it is on,
    # unlike the original DETR (whose checkpoints detr_hf reproduces).
    reference_config = DetrConfig(
        num_labels=250, use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False, d_model=64,
        encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=7,
        encoder_attention_heads=8, decoder_attention_heads=8, dropout=0.0, auxiliary_loss=False,
    )  # fmt: skip
    reference = DetrForSegmentation(reference_config).eval()
    randomize_norms(reference, 1)
    randomize_feature_norms(reference, 2)  # frozen BN statistics and the mask head's GroupNorms
    reference.save_pretrained(tmp_path / "transformers")
    convert_transformers_checkpoint(tmp_path / "transformers", tmp_path / "detr_hf")
    ours = AutoModelForImageSegmentation.from_pretrained(tmp_path / "detr_hf").eval()
    assert type(ours) is DetrHfForSegmentation
    config = json.loads((tmp_path / "detr_hf" / "config.json").read_text())
    assert config["id2label"]["187"] == "sky-other-merged" and config["id2label"]["1"] == "person"

    pixel_values, pixel_mask = padded_batch(SIZES, seed=3)
    with torch.no_grad():
        expected = reference(pixel_values=pixel_values, pixel_mask=pixel_mask)
        got = ours(pixel_values=pixel_values, pixel_mask=pixel_mask)
    assert got.pred_masks.shape == expected.pred_masks.shape == (2, 7, 40, 48)
    assert expected.pred_masks.std() > 0.1  # non-trivial masks
    for name in ("logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")

    labels = rectangle_labels(SIZES, pixel_values.shape[-2:], 250, seed=5)
    # Converted checkpoints train with auxiliary losses (detr_hf's recipe); the reference has them off.
    assert ours.config.auxiliary_loss
    ours.config.auxiliary_loss = False
    with torch.no_grad():
        expected = reference(
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            labels=[{**t, "masks": t["masks"].float()} for t in labels],
        )
        got = ours(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
    for name in ("loss_mask", "loss_dice", "loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(
            got.loss_dict[name], expected.loss_dict[name], rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=1e-4)


def test_outputs_and_loss_on_realistic_sizes():
    torch.manual_seed(0)
    model = DetrHfForSegmentation(seg_config(mask_loss_coefficient=3.0, dice_loss_coefficient=0.5))
    # The original mask head init: zero conv biases, unit GroupNorm, xavier attention projections.
    assert (model.mask_head.output_conv.bias == 0).all() and (model.mask_head.blocks[2].norm.weight == 1).all()
    assert (model.bbox_attention.q_proj.bias == 0).all() and model.mask_head.adapters[0].weight.std() > 0
    sizes = ((333, 500), (480, 301))  # padded to 480×500
    pixel_values, pixel_mask = padded_batch(sizes, seed=1)
    labels = rectangle_labels(sizes, pixel_values.shape[-2:], 3)
    out = model.train()(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
    assert out.logits.shape == (2, 5, 4) and out.pred_boxes.shape == (2, 5, 4)
    assert out.pred_masks.shape == (2, 5, 120, 125)  # stride 4 of the padded batch
    assert {"loss_mask", "loss_dice", "loss_ce", "loss_ce_0"} <= set(out.loss_dict)
    detection = {k: v for k, v in out.loss_dict.items() if k.startswith(("loss_ce", "loss_bbox", "loss_giou"))}
    weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    expected = sum(weights[k.rstrip("_0123456789")] * v for k, v in detection.items())
    expected = expected + 3.0 * out.loss_dict["loss_mask"] + 0.5 * out.loss_dict["loss_dice"]
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    for name in ("mask_head.blocks.0.conv.weight", "mask_head.adapters.2.weight", "bbox_attention.q_proj.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_bad_mask_labels_are_named():
    model = DetrHfForSegmentation(seg_config()).eval()
    pixel_values, pixel_mask = padded_batch(((64, 96), (48, 64)))
    labels = rectangle_labels(((64, 96), (48, 64)), (64, 96), 3)
    labels[1]["masks"] = labels[1]["masks"][:, :48, :64]  # the unpadded size
    with pytest.raises(ValueError, match=r"labels\[1\]\['masks'\] has shape \[4, 48, 64\], expected \[4, 64, 96\]"):
        model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
    with pytest.raises(ValueError, match="training-only query groups"):
        DetrHfForSegmentation(seg_config(num_query_groups=2))


def test_detection_checkpoint_loads_as_segmentation_with_one_log_line(tmp_path, caplog):
    torch.manual_seed(0)
    detector = DetrHfForObjectDetection(seg_config()).eval()
    randomize_norms(detector, 1)
    detector.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="detr_hf"):
        model = DetrHfForSegmentation.from_pretrained(tmp_path).eval()
    ours = [r for r in caplog.records if r.name.startswith("detr_hf")]
    assert len(ours) == 1 and "no mask head weights" in ours[0].getMessage(), [r.getMessage() for r in ours]
    head = dict(model.named_parameters())
    assert all(torch.isfinite(p).all() for p in head.values())
    assert (head["mask_head.blocks.0.conv.bias"] == 0).all() and head["mask_head.blocks.0.conv.weight"].std() > 0
    assert (head["bbox_attention.k_proj.bias"] == 0).all() and (head["mask_head.blocks.3.norm.weight"] == 1).all()
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        expected = detector(pixel_values=pixel_values, pixel_mask=pixel_mask)
        got = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, rtol=0, atol=0)

    # A segmentation folder loads without that line.
    model.save_pretrained(tmp_path / "seg")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="detr_hf"):
        again = AutoModelForImageSegmentation.from_pretrained(tmp_path / "seg").eval()
    assert not [r for r in caplog.records if "mask head" in r.getMessage()]
    with torch.no_grad():
        torch.testing.assert_close(again(pixel_values, pixel_mask).pred_masks, model(pixel_values, pixel_mask).pred_masks)


@pytest.mark.parametrize(
    ("backbone", "backbone_kwargs", "mask_size"),
    [("convnext_atto", {}, (24, 32)), ("test_resnet", {"output_stride": 16}, (24, 32)), ("resnet10t", {"out_indices": [3]}, (24, 32))],
    ids=["convnext", "dilated-last-stage", "cut-at-stride-16"],
)  # fmt: skip
def test_any_timm_backbone_with_stride_4_8_16_levels(backbone, backbone_kwargs, mask_size):
    model = DetrHfForSegmentation(seg_config(backbone=backbone, backbone_kwargs=backbone_kwargs)).eval()
    pixel_values, pixel_mask = padded_batch(((96, 128), (64, 100)))
    with torch.no_grad():
        out = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    assert out.pred_masks.shape == (2, 5, *mask_size)
    assert torch.isfinite(out.pred_masks).all()

"""DetrHfModel / DetrHfForObjectDetection: shapes, masking, auxiliary flag, init, Auto classes, save/load."""

import pytest
import torch
from transformers import AutoModel, AutoModelForObjectDetection

from detr_hf import DetrHfForObjectDetection, DetrHfModel
from helpers import padded_batch, randomize_norms, tiny_config


def _model(**overrides):
    torch.manual_seed(0)
    return DetrHfForObjectDetection(tiny_config(**overrides)).eval()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"pre_norm": True},
        {"position_embedding_type": "learned"},
        {"backbone": "test_efficientnet"},
        {"backbone": "test_convnext", "activation_function": "gelu"},
        {"backbone": "resnet18", "backbone_kwargs": {"output_stride": 16}},
    ],
)
def test_output_shapes(overrides):
    model = _model(**overrides)
    pixels, mask = padded_batch()
    with torch.no_grad():
        out = model(pixel_values=pixels, pixel_mask=mask)
    assert out.logits.shape == (2, 5, 4)
    assert out.pred_boxes.shape == (2, 5, 4)
    assert ((out.pred_boxes > 0) & (out.pred_boxes < 1)).all()
    assert out.last_hidden_state.shape == (2, 5, 32)
    assert out.encoder_last_hidden_state.shape[0] == 2 and out.encoder_last_hidden_state.shape[-1] == 32
    assert out.auxiliary_outputs is None and out.loss is None


def test_padding_is_invisible_to_every_output():
    model = _model()
    randomize_norms(model)
    pixels, mask = padded_batch(((64, 64), (32, 32)))
    captured = {}

    def perturb_padding(module, args, output):
        features, feature_mask = output
        noise = torch.randn_like(features) * 100
        captured["mask"] = feature_mask
        return torch.where(feature_mask[:, None], features, noise), feature_mask

    with torch.no_grad():
        clean = model(pixels, mask, output_hidden_states=True)
        handle = model.model.backbone.register_forward_hook(perturb_padding)
        noisy = model(pixels, mask, output_hidden_states=True)
        handle.remove()
    assert not captured["mask"].all(), "the test needs real padding at feature resolution"
    valid = captured["mask"].flatten(1)
    for name in ("logits", "pred_boxes", "last_hidden_state"):
        torch.testing.assert_close(noisy[name], clean[name], atol=1e-6, rtol=0, msg=name)
    for a, b in zip(noisy.decoder_hidden_states, clean.decoder_hidden_states):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        noisy.encoder_last_hidden_state[valid], clean.encoder_last_hidden_state[valid], atol=1e-6, rtol=0
    )


def test_pixel_mask_none_bool_and_int_agree():
    model = _model()
    pixels, _ = padded_batch(((64, 64), (64, 64)))
    with torch.no_grad():
        none = model(pixels).logits
        ones_int = model(pixels, torch.ones(2, 64, 64, dtype=torch.long)).logits
        ones_bool = model(pixels, torch.ones(2, 64, 64, dtype=torch.bool)).logits
    torch.testing.assert_close(none, ones_int)
    torch.testing.assert_close(none, ones_bool)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8, torch.int32])
def test_padded_pixel_mask_of_any_dtype_equals_bool(dtype):
    model = _model()
    pixels, mask = padded_batch(((64, 96), (40, 64)))
    with torch.no_grad():
        expected = model(pixels, mask.bool())
        out = model(pixels, mask.to(dtype))
    torch.testing.assert_close(out.logits, expected.logits, atol=0, rtol=0)
    torch.testing.assert_close(out.pred_boxes, expected.pred_boxes, atol=0, rtol=0)


def test_auxiliary_flag_never_changes_predictions():
    on = _model(auxiliary_loss=True)
    randomize_norms(on)
    off = DetrHfForObjectDetection(tiny_config(auxiliary_loss=False)).eval()
    off.load_state_dict(on.state_dict())
    pixels, mask = padded_batch()
    labels = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    with torch.no_grad():
        a = on(pixels, mask, labels=labels)
        b = off(pixels, mask, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    torch.testing.assert_close(a.pred_boxes, b.pred_boxes, atol=0, rtol=0)
    assert len(a.auxiliary_outputs) == 1 and b.auxiliary_outputs is None
    assert "loss_ce_0" in a.loss_dict and "loss_ce_0" not in b.loss_dict


def test_original_detr_init():
    model = _model(d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128)
    queries = model.model.query_position_embeddings.weight
    assert 0.8 < queries.std().item() < 1.2  # N(0, 1), not N(0, 0.02)
    q_proj = model.model.encoder.layers[0].self_attn.q_proj.weight
    bound = (6 / (64 + 64)) ** 0.5  # xavier-uniform
    assert q_proj.abs().max() <= bound and q_proj.std() > 0.8 * bound / 3**0.5
    norm = model.model.decoder.layer_norm
    assert torch.equal(norm.weight, torch.ones(64)) and torch.equal(norm.bias, torch.zeros(64))
    # The backbone keeps timm's own init: zero-initialised last BN gamma in each residual block.
    assert torch.equal(
        model.model.backbone.body.layer1[0].bn2.weight,
        torch.zeros_like(model.model.backbone.body.layer1[0].bn2.weight),
    )


def test_auto_classes_resolve(tmp_path):
    config = tiny_config()
    assert isinstance(AutoModelForObjectDetection.from_config(config), DetrHfForObjectDetection)
    assert isinstance(AutoModel.from_config(config), DetrHfModel)


def test_save_and_load_give_identical_outputs(tmp_path):
    model = _model(num_labels=4, id2label={0: "a", 1: "b", 2: "c", 3: "d"})
    randomize_norms(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert loaded.config.id2label == model.config.id2label
    pixels, mask = padded_batch()
    with torch.no_grad():
        a, b = model(pixels, mask), loaded(pixels, mask)
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    torch.testing.assert_close(a.pred_boxes, b.pred_boxes, atol=0, rtol=0)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, DetrHfModel)


def test_loading_never_fetches_backbone_weights(tmp_path):
    config = tiny_config()
    model = DetrHfForObjectDetection(config)
    model.config.use_pretrained_backbone = True  # as a model trained from ImageNet weights records it
    model.save_pretrained(tmp_path)
    # Offline, a fetch would fail: loading must take the backbone from the checkpoint alone.
    loaded = DetrHfForObjectDetection.from_pretrained(tmp_path)
    torch.testing.assert_close(
        loaded.model.backbone.body.conv1[0].weight, model.model.backbone.body.conv1[0].weight
    )


def test_gradient_checkpointing_gives_the_same_gradients():
    pixels, mask = padded_batch()
    labels = [
        {
            "class_labels": torch.tensor([0, 2]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.4]]),
        },
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
    ]
    grads = []
    for checkpointing in (False, True):
        model = _model(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(pixels, mask, labels=labels).loss.backward()
        grads.append(model.model.encoder.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"pixel_values": torch.randn(3, 64, 64)}, ValueError, "shape"),
        ({"pixel_values": torch.zeros(1, 3, 64, 64, dtype=torch.uint8)}, TypeError, "float"),
        (
            {"pixel_values": torch.randn(1, 3, 64, 64), "pixel_mask": torch.ones(1, 32, 64)},
            ValueError,
            "pixel_mask",
        ),
        (
            {"pixel_values": torch.randn(2, 3, 64, 64), "pixel_mask": torch.tensor([1.0, 0.5])[:, None, None].expand(2, 64, 64)},
            ValueError,
            r"only 1 \(pixel\) and 0 \(padding\); image\(s\) \[1\].*0\.5",
        ),
        (
            {"pixel_values": torch.randn(1, 3, 64, 64), "pixel_mask": torch.full((1, 64, 64), 2)},
            ValueError,
            r"image\(s\) \[0\] hold other values \(e\.g\. 2\)",
        ),
        (
            {"pixel_values": torch.randn(1, 3, 64, 64), "pixel_mask": torch.full((1, 64, 64), float("nan"))},
            ValueError,
            "pixel_mask must hold only",
        ),
        (
            {"pixel_values": torch.randn(1, 3, 64, 64), "pixel_mask": [[1] * 64] * 64},
            TypeError,
            "pixel_mask must be a torch.Tensor",
        ),
        (
            {
                "pixel_values": torch.randn(2, 3, 64, 64),
                "pixel_mask": torch.cat([torch.ones(1, 64, 64), torch.zeros(1, 64, 64)]).long(),
            },
            ValueError,
            r"image\(s\) \[1\]",
        ),
    ],
)
def test_bad_inputs_get_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        _model()(**kwargs)


def test_non_finite_pixels_name_the_image():
    pixels = torch.randn(3, 3, 32, 32)
    pixels[2, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in image\(s\) \[2\]"):
        _model()(pixels)


def test_loading_keeps_the_frozen_backbone_stages(tmp_path):
    model = DetrHfForObjectDetection(tiny_config(backbone="resnet18", backbone_frozen_stages=1))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("model.backbone.body.conv1") for n in frozen)
    model.save_pretrained(tmp_path)
    loaded = DetrHfForObjectDetection.from_pretrained(tmp_path)
    assert {n for n, p in loaded.named_parameters() if not p.requires_grad} == frozen


def test_misspelled_keyword_is_an_error_not_a_silent_no_mask():
    pixels, mask = padded_batch()
    with pytest.raises(TypeError, match=r"\['pixel_masks'\]"):
        _model()(pixel_values=pixels, pixel_masks=mask)


def test_from_pretrained_leaves_the_callers_config_alone(tmp_path):
    _model().save_pretrained(tmp_path)
    config = tiny_config(use_pretrained_backbone=True)
    DetrHfForObjectDetection.from_pretrained(tmp_path, config=config)
    assert config.use_pretrained_backbone is True

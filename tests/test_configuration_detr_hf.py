"""DetrHfConfig: defaults, validation, JSON round trip, Auto registration."""

import json

import pytest
from transformers import AutoConfig

from detr_hf import DetrHfConfig
from helpers import tiny_config


def test_defaults_follow_the_r50_recipe():
    config = DetrHfConfig()
    assert config.model_type == "detr_hf"
    assert (config.backbone, config.d_model, config.encoder_layers, config.decoder_layers) == (
        "resnet50",
        256,
        6,
        6,
    )
    assert (config.num_queries, config.num_labels, config.encoder_ffn_dim) == (100, 91, 2048)
    assert config.auxiliary_loss is True
    assert (config.class_cost, config.bbox_cost, config.giou_cost) == (1.0, 5.0, 2.0)
    assert (config.bbox_loss_coefficient, config.giou_loss_coefficient, config.eos_coefficient) == (
        5.0,
        2.0,
        0.1,
    )
    # Building a model never downloads: pretrained weights are opt-in, and random BN stays trainable.
    assert config.use_pretrained_backbone is False
    assert config.freeze_backbone_batch_norm is False and config.backbone_frozen_stages == 0


def test_trained_backbone_resolves_to_frozen_bn_and_stem():
    config = DetrHfConfig(backbone="test_resnet", backbone_weights_path="/some/file.safetensors")
    assert config.freeze_backbone_batch_norm is True and config.backbone_frozen_stages == 1
    explicit = DetrHfConfig(
        backbone="test_resnet", use_pretrained_backbone=True, freeze_backbone_batch_norm=False
    )
    assert explicit.freeze_backbone_batch_norm is False and explicit.backbone_frozen_stages == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"d_model": 30, "encoder_attention_heads": 4}, "encoder_attention_heads"),
        ({"d_model": 32, "decoder_attention_heads": 5}, "decoder_attention_heads"),
        ({"backbone": "no_such_net"}, "backbone"),
        ({"num_queries": 0}, "num_queries"),
        ({"encoder_layers": -1}, "encoder_layers"),
        ({"activation_function": "swishy"}, "activation_function"),
        ({"position_embedding_type": "rope"}, "position_embedding_type"),
        ({"dropout": 1.5}, "dropout"),
        ({"eos_coefficient": -0.1}, "eos_coefficient"),
        ({"backbone_kwargs": {"features_only": False}}, "backbone_kwargs"),
        ({"backbone_frozen_stages": -1}, "backbone_frozen_stages"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_json_round_trip_is_exact(tmp_path):
    config = tiny_config(
        backbone_kwargs={"out_indices": (2,), "output_stride": 16}, pre_norm=True, num_labels=4
    )
    restored = DetrHfConfig.from_json_file(_write(tmp_path, config))
    assert restored.to_dict() == config.to_dict()
    assert restored.backbone_kwargs == {"out_indices": [2], "output_stride": 16}
    assert restored.num_labels == 4 and restored.id2label == config.id2label


def test_auto_config_resolves_saved_folder(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, DetrHfConfig)
    assert json.loads(loaded.to_json_string()) == json.loads(config.to_json_string())
    assert isinstance(AutoConfig.for_model("detr_hf", backbone="test_resnet"), DetrHfConfig)


def _write(tmp_path, config):
    path = tmp_path / "config.json"
    path.write_text(config.to_json_string())
    return path


def test_transformers_names_map_as_detr_config_and_are_assignable():
    config = tiny_config(encoder_layers=3, decoder_layers=2)
    assert config.is_encoder_decoder is True
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (3, 32, 4)
    config.num_hidden_layers = 5  # transformers' own code assigns it
    config.hidden_size = 64
    config.num_attention_heads = 8
    assert (config.encoder_layers, config.d_model, config.encoder_attention_heads) == (5, 64, 8)
    assert config.decoder_layers == 2
    assert config.get_text_config() is config
    restored = DetrHfConfig.from_dict(config.to_dict())
    assert restored.is_encoder_decoder is True and restored.num_hidden_layers == 5
    assert "num_hidden_layers" not in config.to_dict()  # stored once, as encoder_layers


def test_unknown_fields_are_kept_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="detr_hf"):
        config = tiny_config(d_modle=64)
    assert config.d_modle == 64 and config.d_model == 32
    assert any("'d_modle'" in r.getMessage() and "'d_model'" in r.getMessage() for r in caplog.records)

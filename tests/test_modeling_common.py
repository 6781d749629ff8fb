"""What transformers' generic model checks check, on tiny configs of DetrHfModel and DetrHfForObjectDetection:
loading and initialisation, outputs by argument and by config, tuple ≡ dict, checkpointing, dtype/device_map,
eager ≡ sdpa, float masks."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers.testing_utils import CaptureLogger
from transformers.utils import ModelOutput
from transformers.utils import logging as hf_logging

from detr_hf import DetrHfConfig, DetrHfForObjectDetection, DetrHfModel
from detr_hf.criterion import DetrHfLoss
from detr_hf.transformer import DecoderLayer, EncoderLayer
from helpers import padded_batch, randomize_norms, tiny_config

CLASSES = [DetrHfModel, DetrHfForObjectDetection]
# Two mixed-size images of realistic size, padded bottom/right: 10×15 and 10×11 feature cells (stride 32).
SIZES = ((320, 480), (300, 352))
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def _config(**overrides) -> DetrHfConfig:
    return tiny_config(**{**NO_DROPOUT, **overrides})


def _built(cls, seed: int = 0, **overrides):
    """A model with non-trivial LayerNorms and BatchNorm statistics, so loading mistakes show in the outputs."""
    torch.manual_seed(seed)
    model = cls(_config(**overrides)).eval()
    randomize_norms(model, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=gen))
    return model


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict((*model.named_parameters(), *model.named_buffers()))


def _assert_plausible(model: torch.nn.Module) -> None:
    """Every float tensor finite, every BN variance >= 0."""
    for name, tensor in _tensors(model).items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), f"{name} is not finite"
        if name.endswith("running_var"):
            assert (tensor >= 0).all(), f"{name} has negative variances"


def _assert_fresh_init(model: torch.nn.Module) -> None:
    """What a freshly built model holds: BN statistics 0 / 1, LayerNorm 1 / 0, timm's zero last-BN gammas."""
    _assert_plausible(model)
    tensors = _tensors(model)
    for name, tensor in tensors.items():
        if name.endswith("running_var"):
            assert torch.equal(tensor, torch.ones_like(tensor)), name
        elif name.endswith("running_mean"):
            assert torch.equal(tensor, torch.zeros_like(tensor)), name
    body = model.get_submodule("backbone.body" if isinstance(model, DetrHfModel) else "model.backbone.body")
    assert not body.layer1[0].bn2.weight.any(), "timm zero-initialises each block's last BN gamma"
    assert body.layer1[0].bn1.weight.eq(1).all()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            assert module.weight.eq(1).all() and module.bias.eq(0).all(), name
    # DETR's init, not N(0, 0.02): object queries N(0, 1).
    queries = tensors[next(n for n in tensors if n.endswith("query_position_embeddings.weight"))]
    assert 0.5 < queries.std().item() < 1.5


def _run(model, **kwargs):
    pixels, mask = padded_batch(SIZES)
    with torch.no_grad():
        return model(pixels, mask, **kwargs)


def _main_output(out) -> torch.Tensor:
    return out.logits if "logits" in out else out.last_hidden_state


@pytest.mark.parametrize("cls", CLASSES)
def test_save_and_load_keep_every_tensor_and_output(cls, tmp_path):
    model = _built(cls)
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path).eval()
    expected = _tensors(model)
    for name, tensor in _tensors(loaded).items():
        torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0, msg=name)
    torch.testing.assert_close(_main_output(_run(loaded)), _main_output(_run(model)), atol=0, rtol=0)


def test_base_and_head_checkpoints_load_into_each_other(tmp_path):
    head = _built(DetrHfForObjectDetection)
    head.save_pretrained(tmp_path / "head")
    base = DetrHfModel.from_pretrained(tmp_path / "head").eval()
    torch.testing.assert_close(
        _run(base).last_hidden_state, _run(head.model).last_hidden_state, atol=0, rtol=0
    )
    base.save_pretrained(tmp_path / "base")
    head_from_base = DetrHfForObjectDetection.from_pretrained(tmp_path / "base").eval()
    _assert_plausible(head_from_base)
    expected = _tensors(base)
    for name, tensor in _tensors(head_from_base.model).items():
        torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0, msg=name)
    out = _run(head_from_base)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.pred_boxes).all()


@pytest.mark.parametrize("cls", CLASSES)
def test_meta_device_build_then_init_weights_initialises_everything(cls):
    with torch.device("meta"):
        model = cls(_config())
    model.to_empty(device="cpu")
    # Garbage where the values will go, so an uninitialised tensor cannot pass by luck.
    with torch.no_grad():
        for tensor in _tensors(model).values():
            tensor.fill_(float("nan") if tensor.is_floating_point() else 7)
    model.init_weights()
    _assert_fresh_init(model)
    assert torch.isfinite(_main_output(_run(model.eval()))).all()


@pytest.mark.parametrize("cls", CLASSES)
def test_from_pretrained_without_weights_initialises_everything(cls):
    model = cls.from_pretrained(None, config=_config(), state_dict={}).eval()
    _assert_fresh_init(model)
    assert torch.isfinite(_main_output(_run(model))).all()


def test_checkpoint_without_backbone_is_initialised_by_timm_and_says_so_once(tmp_path, caplog):
    model = _built(DetrHfForObjectDetection)
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if ".backbone." not in k}, weights, metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING, logger="detr_hf"):
        loaded = DetrHfForObjectDetection.from_pretrained(tmp_path).eval()
    lines = [r.getMessage() for r in caplog.records if "backbone tensors" in r.getMessage()]
    assert len(lines) == 1 and "'test_resnet'" in lines[0], lines
    _assert_plausible(loaded)
    expected = _tensors(model)
    for name, tensor in _tensors(loaded).items():
        if ".backbone." in name:
            continue
        torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0, msg=f"{name} was re-initialised")
    body = loaded.model.backbone.body
    assert body.bn1.running_var.eq(1).all() and not body.layer1[0].bn2.weight.any()
    assert torch.isfinite(_run(loaded).logits).all()


def _shapes(out, config: DetrHfConfig, heads: int = 4) -> dict:
    pixels, _ = padded_batch(SIZES)
    tokens = (pixels.shape[2] // 32) * (pixels.shape[3] // 32)
    batch, q, d = 2, config.num_queries, config.d_model
    return {
        "encoder_hidden_states": [(batch, tokens, d)] * (config.encoder_layers + 1),
        "decoder_hidden_states": [(batch, q, d)] * (config.decoder_layers + 1),
        "encoder_attentions": [(batch, heads, tokens, tokens)] * config.encoder_layers,
        "decoder_attentions": [(batch, heads, q, q)] * config.decoder_layers,
        "cross_attentions": [(batch, heads, q, tokens)] * config.decoder_layers,
    }


def _assert_extras(out, config, hidden: bool, attentions: bool) -> None:
    for name, shapes in _shapes(out, config).items():
        wanted = hidden if "hidden" in name else attentions
        if wanted:
            assert [tuple(t.shape) for t in out[name]] == shapes, name
        else:
            assert getattr(out, name) is None, name


@pytest.mark.parametrize("cls", CLASSES)
def test_outputs_by_arguments_and_by_config(cls, tmp_path):
    model = _built(cls, attn_implementation="eager", encoder_layers=3)
    config = model.config
    _assert_extras(_run(model), config, hidden=False, attentions=False)
    _assert_extras(_run(model, output_hidden_states=True), config, hidden=True, attentions=False)
    _assert_extras(_run(model, output_attentions=True), config, hidden=False, attentions=True)
    model.save_pretrained(tmp_path)
    # From the config: transformers picks eager by itself for output_attentions=True.
    by_config = cls.from_pretrained(tmp_path, output_attentions=True, output_hidden_states=True).eval()
    assert by_config.config._attn_implementation == "eager"
    _assert_extras(_run(by_config), config, hidden=True, attentions=True)
    # An explicit argument beats the config.
    _assert_extras(_run(by_config, output_attentions=False, output_hidden_states=False), config, False, False)
    by_config.config.return_dict = False
    as_tuple = _run(by_config)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], _run(by_config, return_dict=True).to_tuple()[0])


def test_output_attentions_under_sdpa_warns_and_returns_none_as_transformers_models():
    model = _built(DetrHfForObjectDetection)
    assert model.config._attn_implementation == "sdpa"
    logger = hf_logging.get_logger("detr_hf.modeling_detr_hf")
    with CaptureLogger(logger) as captured:
        out = _run(model, output_attentions=True, output_hidden_states=True)
    assert "attn_implementation='eager'" in captured.out
    _assert_extras(out, model.config, hidden=True, attentions=False)


def _assert_same_structure(a, b, where: str = "output") -> None:
    """Recursive equality over tuples, lists, dicts and tensors, as transformers' output-equivalence check;
    a bool tensor anywhere is an error (generic utilities subtract and compare outputs)."""
    if isinstance(a, torch.Tensor):
        assert a.dtype != torch.bool, f"{where} is a bool tensor"
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=where)
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same_structure(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_structure(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("cls", CLASSES)
def test_tuple_and_dict_outputs_are_equivalent(cls):
    model = _built(cls, attn_implementation="eager")
    kwargs = dict(output_attentions=True, output_hidden_states=True)
    if cls is DetrHfForObjectDetection:  # loss, loss_dict and auxiliary outputs too
        kwargs["labels"] = [
            {"class_labels": torch.tensor([0, 2, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.2, 0.3, 0.1, 0.2], [0.7, 0.7, 0.2, 0.4]])},
            {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.6, 0.5, 0.5]])},
        ]  # fmt: skip
    as_dict = _run(model, return_dict=True, **kwargs)
    as_tuple = _run(model, return_dict=False, **kwargs)
    assert isinstance(as_dict, ModelOutput) and isinstance(as_tuple, tuple)
    _assert_same_structure(as_tuple, as_dict.to_tuple())
    _assert_same_structure(tuple(as_dict.values()), as_tuple)
    for i, key in enumerate(as_dict.keys()):
        _assert_same_structure(as_dict[i], as_dict[key], key)
        _assert_same_structure(getattr(as_dict, key), as_dict[key], key)


@pytest.mark.parametrize("cls", CLASSES)
def test_gradient_checkpointing_gives_the_same_gradients_everywhere(cls):
    pixels, mask = padded_batch(((160, 224), (128, 192)))
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.4]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
    ]
    grads = []
    for checkpointing in (False, True):
        model = _built(cls).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
            layers = [m for m in model.modules() if isinstance(m, (EncoderLayer, DecoderLayer))]
            assert layers and all(layer.gradient_checkpointing for layer in layers)
        if cls is DetrHfForObjectDetection:
            loss = model(pixels, mask, labels=labels).loss
        else:
            out = model(pixels, mask)
            loss = out.last_hidden_state.square().mean() + out.encoder_last_hidden_state.square().mean()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    assert any("query_position_embeddings" in n for n in grads[0])
    for name, grad in grads[0].items():
        scale = max(1.0, grad.abs().max().item())
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5 * scale, rtol=1e-4, msg=name)


@pytest.mark.parametrize("device_map", ["cpu", "auto"])
def test_dtype_and_device_map_loading(device_map, tmp_path):
    model = _built(DetrHfForObjectDetection)
    model.save_pretrained(tmp_path)
    loaded = DetrHfForObjectDetection.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map=device_map)
    assert {t.device.type for t in _tensors(loaded).values()} == {"cpu"}
    floats = [t for t in _tensors(loaded).values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.bfloat16 for t in floats)
    pixels, mask = padded_batch(SIZES)
    with torch.no_grad():
        out = loaded.eval()(pixels.bfloat16(), mask)
        reference = model(pixels, mask)
    assert out.logits.dtype == torch.bfloat16 and out.pred_boxes.dtype == torch.float32  # box sigmoid kept in fp32
    torch.testing.assert_close(out.pred_boxes.float(), reference.pred_boxes, atol=0.05, rtol=0)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("pre_norm", [False, True])
def test_eager_equals_sdpa(cls, pre_norm):
    sdpa = _built(cls, pre_norm=pre_norm)
    eager = cls(_config(pre_norm=pre_norm, attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    assert (sdpa.config._attn_implementation, eager.config._attn_implementation) == ("sdpa", "eager")
    a, b = _run(sdpa), _run(eager)
    for name in ("last_hidden_state", "encoder_last_hidden_state", "logits", "pred_boxes"):
        if name in a:
            torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=0, msg=name)


def test_flash_attention_is_refused_at_load_time_with_a_clear_error():
    with pytest.raises((ValueError, ImportError), match="(?i)flash"):
        DetrHfForObjectDetection(_config(attn_implementation="flash_attention_2"))


@pytest.mark.parametrize("cls", CLASSES)
def test_float_and_int_masks_equal_bool_masks(cls):
    model = _built(cls)
    pixels, mask = padded_batch(SIZES)
    with torch.no_grad():
        expected = _main_output(model(pixels, mask.bool()))
        for dtype in (torch.float32, torch.float64, torch.int64):
            torch.testing.assert_close(_main_output(model(pixels, mask.to(dtype))), expected, atol=0, rtol=0)


def test_transformers_facing_attributes():
    model = _built(DetrHfForObjectDetection)
    assert model.input_modalities == ("image",)
    class_names = {type(m).__name__ for m in model.modules()}
    assert model._no_split_modules and set(model._no_split_modules) <= class_names
    assert {"EncoderLayer", "DecoderLayer", "DetrHfBackbone"} <= set(model._no_split_modules)
    loss = model.loss_function
    assert isinstance(loss, DetrHfLoss), type(loss)
    assert model.supports_gradient_checkpointing and model._supports_sdpa and model._supports_flex_attn

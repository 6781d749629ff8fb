"""Every speed optimisation gives the reference computation's values (eager vs optimised, compiled vs eager)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import freeze_batch_norm_2d

from detr_hf import DetrHfForObjectDetection
from detr_hf.frozen_bn_folding import ConvFrozenBatchNorm2d, fold_frozen_batch_norm, unfold_frozen_batch_norm
from detr_hf.transformer import DecoderLayer, MultiHeadAttention
from helpers import padded_batch, randomize_norms, tiny_config

TOL = dict(atol=1e-4, rtol=1e-4)


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    """Within 1e-4 of the tensor's scale: gradients summed over many pixels reach hundreds, and fp32 sums
    taken in another order differ relative to that scale, not to each (possibly tiny) element."""
    scale = max(1.0, expected.abs().max().item())
    error = (actual - expected).abs().max().item()
    assert error <= 1e-4 * scale, f"{name}: max abs difference {error:.3g} > 1e-4 × scale {scale:.3g}"


def _frozen_body(name: str = "test_resnet", seed: int = 0) -> torch.nn.Module:
    """A timm body with frozen BN whose statistics and affine are far from identity (so folding matters)."""
    torch.manual_seed(seed)
    body = freeze_batch_norm_2d(timm.create_model(name, features_only=True, out_indices=(-1,)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in body.modules():
            if hasattr(module, "running_var"):
                n = module.weight.numel()
                module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                module.running_mean.copy_(torch.randn(n, generator=gen))
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return body


@pytest.mark.parametrize("name", ["test_resnet", "resnet18"])
def test_folded_batch_norm_equals_conv_then_bn(name):
    reference = _frozen_body(name)
    folded = copy.deepcopy(reference)
    count = fold_frozen_batch_norm(folded)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in reference.modules())
    assert count == convs  # every conv of a ResNet feeds a BN
    assert isinstance(folded.layer1[0].conv1, ConvFrozenBatchNorm2d)
    x = torch.randn(2, 3, 48, 64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = folded(x)[-1], reference(x_ref)[-1]
    torch.testing.assert_close(out, ref, **TOL)
    # Training through the folded conv: same gradients for the conv weights and the input.
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert_close_scaled(x.grad, x_ref.grad, "input")
    for (n, p), (_, p_ref) in zip(folded.named_parameters(), reference.named_parameters()):
        assert_close_scaled(p.grad, p_ref.grad, n)


def test_folding_keeps_state_dict_and_follows_loaded_weights():
    reference = _frozen_body()
    folded = copy.deepcopy(reference)
    fold_frozen_batch_norm(folded)
    ref_state, state = reference.state_dict(), folded.state_dict()
    assert list(state) == list(ref_state)
    assert all(torch.equal(state[k], ref_state[k]) for k in state)
    # New BN statistics loaded after folding are used (the scale is not cached).
    other = _frozen_body(seed=1)
    folded.load_state_dict(other.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x)[-1], other(x)[-1], **TOL)
    assert unfold_frozen_batch_norm(folded) > 0
    assert not any(isinstance(m, ConvFrozenBatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x)[-1], other(x)[-1], **TOL)


def test_non_resnet_bodies_are_left_alone():
    body = freeze_batch_norm_2d(
        timm.create_model("mobilenetv3_small_050", features_only=True, out_indices=(-1,))
    )
    assert fold_frozen_batch_norm(body) == 0


def test_channels_last_backbone_input_gives_same_features():
    body = _frozen_body().eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(
            body(x.contiguous(memory_format=torch.channels_last))[-1], body(x)[-1], **TOL
        )


def test_fused_qk_projection_equals_separate_projections():
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=32, num_heads=4, dropout=0.0, shared_query_key=True)
    reference = MultiHeadAttention(d_model=32, num_heads=4, dropout=0.0)
    reference.load_state_dict(attn.state_dict())
    x = torch.randn(2, 7, 32, requires_grad=True)
    value = torch.randn(2, 7, 32)
    mask = torch.rand(2, 1, 1, 7) > 0.3
    mask[..., 0] = True
    fused, _ = attn(x, None, value, attention_mask=mask)  # one GEMM against [Wq; Wk]
    separate, _ = reference(x, x, value, attention_mask=mask)
    torch.testing.assert_close(fused, separate, **TOL)
    grads_fused = torch.autograd.grad(fused.sum(), [x, attn.q_proj.weight, attn.k_proj.weight])
    grads_sep = torch.autograd.grad(separate.sum(), [x, reference.q_proj.weight, reference.k_proj.weight])
    for a, b in zip(grads_fused, grads_sep):
        torch.testing.assert_close(a, b, **TOL)


def test_decoder_shared_memory_key_equals_per_layer_sum():
    torch.manual_seed(0)
    layer = DecoderLayer(
        d_model=32, num_heads=4, ffn_dim=64, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        activation="relu", pre_norm=False,
    ).eval()  # fmt: skip
    hidden, query_pos = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    memory, memory_pos = torch.randn(2, 12, 32), torch.randn(2, 12, 32)
    mask = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    inputs = dict(query_position=query_pos, memory=memory, memory_mask=mask)
    a = layer(hidden, memory_position=memory_pos, **inputs)[0]
    b = layer(hidden, memory_key=memory + memory_pos, **inputs)[0]
    torch.testing.assert_close(a, b, **TOL)


def _frozen_model(**overrides) -> DetrHfForObjectDetection:
    torch.manual_seed(0)
    model = DetrHfForObjectDetection(tiny_config(freeze_backbone_batch_norm=True, **overrides))
    randomize_norms(model)
    reference = _frozen_body()
    model.model.backbone.body.load_state_dict(reference.state_dict())
    return model


def test_full_model_folded_equals_unfolded_in_eval_and_training():
    model = _frozen_model()
    assert model.model.backbone.num_folded_batch_norms > 0
    reference = copy.deepcopy(model)
    unfold_frozen_batch_norm(reference.model.backbone.body)
    pixels, mask = padded_batch()
    labels = [
        {
            "class_labels": torch.tensor([0, 2]),
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.4, 0.3]]),
        },
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.4, 0.5, 0.5]])},
    ]
    model.eval(), reference.eval()
    with torch.no_grad():
        out, ref = model(pixels, mask), reference(pixels, mask)
    torch.testing.assert_close(out.logits, ref.logits, **TOL)
    torch.testing.assert_close(out.pred_boxes, ref.pred_boxes, **TOL)
    # A training step (dropout off so both draw nothing random): loss and every gradient agree.
    for m in (model, reference):
        m.train()
        for module in m.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        m.config.dropout = m.config.attention_dropout = 0.0
        for module in m.modules():
            if isinstance(module, MultiHeadAttention):
                module.dropout = 0.0
    loss = model(pixels, mask, labels=labels).loss
    ref_loss = reference(pixels, mask, labels=labels).loss
    torch.testing.assert_close(loss, ref_loss, **TOL)
    loss.backward()
    ref_loss.backward()
    for (n, p), (_, p_ref) in zip(model.named_parameters(), reference.named_parameters()):
        if p.requires_grad:
            assert_close_scaled(p.grad, p_ref.grad, n)


@pytest.mark.slow
def test_compiled_model_equals_eager():
    model = _frozen_model().eval()
    pixels, mask = padded_batch()
    compiled = torch.compile(model, dynamic=False)
    with torch.no_grad():
        eager = model(pixels, mask)
        out = compiled(pixels, mask)
    torch.testing.assert_close(out.logits, eager.logits, **TOL)
    torch.testing.assert_close(out.pred_boxes, eager.pred_boxes, **TOL)


def test_cheap_finite_check_still_names_bad_images_and_accepts_huge_finite_values():
    model = DetrHfForObjectDetection(tiny_config()).eval()
    pixels, mask = padded_batch(((32, 32), (32, 32), (32, 32)))
    huge = pixels.clone()
    huge[1] = 3e38  # finite, but the one-pass sum overflows to inf: the exact check must find nothing
    with torch.no_grad():
        model(huge, mask)
    bad = pixels.clone()
    bad[2, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in image\(s\) \[2\]"):
        model(bad, mask)


def test_inference_cache_of_folded_weights_follows_every_change():
    reference = _frozen_body().eval()
    folded = copy.deepcopy(reference)
    fold_frozen_batch_norm(folded)
    x = torch.randn(1, 3, 64, 64)
    x_last = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for inputs in (x, x_last, x):  # cached per memory format, reused on the repeat
            torch.testing.assert_close(folded(inputs)[-1], reference(inputs)[-1], **TOL)
        # In-place updates (an optimiser step, a statistics copy) bump the version: the cache is rebuilt.
        for model in (folded, reference):
            model.layer1[0].conv1.weight.mul_(1.5)
            model.layer2[0].bn2.running_var.mul_(2.0)
        torch.testing.assert_close(folded(x)[-1], reference(x)[-1], **TOL)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x_last)[-1], reference(x_last)[-1], **TOL)
    # Autograd on: no cache, gradients reach the conv weight.
    folded(x)[-1].sum().backward()
    assert folded.layer1[0].conv1.weight.grad is not None

"""Every speed optimisation gives the reference computation's values (eager vs optimised, compiled vs eager)."""

from __future__ import annotations

import copy

import pytest
import torch

from detr_hf import DetrHfForObjectDetection
from detr_hf.attention import eager_attention, sdpa_attention
from detr_hf.backbone import DetrHfBackbone
from detr_hf.frozen_bn_folding import ConvFrozenBatchNorm2d, unfold_frozen_batch_norm
from detr_hf.transformer import DecoderLayer, FeedForward, MultiHeadAttention
from helpers import assert_close_scaled, frozen_timm_body, padded_batch, randomize_norms, tiny_config

TOL = dict(atol=1e-4, rtol=1e-4)


def test_backbone_features_are_the_same_for_channels_last_and_contiguous_input():
    """DetrHfBackbone (eval, frozen BN folded into its convs) runs its body channels-last for oneDNN: the
    features equal those of the unfolded timm body on the contiguous input, whatever the input's layout, and
    the folded weights are cached channels-last (the layout the convs really ran in)."""
    backbone = DetrHfBackbone("test_resnet", freeze_batch_norm=True).eval()
    assert backbone.num_folded_batch_norms > 0
    backbone.body.load_state_dict(frozen_timm_body().state_dict())
    reference = copy.deepcopy(backbone.body)
    unfold_frozen_batch_norm(reference)
    pixels, mask = padded_batch(((320, 480), (300, 416)))
    with torch.no_grad():
        expected = reference(pixels)[-1]
        for inputs in (pixels, pixels.contiguous(memory_format=torch.channels_last)):
            features, feature_mask = backbone(inputs, mask.bool())
            torch.testing.assert_close(features, expected, **TOL)
            assert feature_mask.shape == features.shape[:1] + features.shape[2:]
            for name, module in backbone.body.named_modules():
                if isinstance(module, ConvFrozenBatchNorm2d):
                    cached_weight = module.__dict__["_folded_cache"][1]
                    assert cached_weight.is_contiguous(memory_format=torch.channels_last), name


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
    model.model.backbone.body.load_state_dict(frozen_timm_body().state_dict())
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
    # One layer each: compiling (the cost of this test) grows with the graph; more layers add no new ops.
    model = _frozen_model(encoder_layers=1, decoder_layers=1).eval()
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


def test_lean_dropout_attention_equals_eager_attention_with_the_same_seed():
    """Training with attention dropout: the lean sdpa path (bool mask kept, dropped probabilities rebuilt in the
    backward) draws the mask as eager's F.dropout does, so values and q/k/v gradients agree."""
    gen = torch.Generator().manual_seed(0)
    # [B, H, Lq, Lk]: 2 images, 4 heads, 30 queries over 50 keys, some keys padding
    q, k, v = (torch.randn(2, 4, n, 8, generator=gen, requires_grad=True) for n in (30, 50, 50))
    key_mask = torch.rand(2, 1, 1, 50, generator=gen) > 0.3
    grad = torch.randn(2, 30, 4, 8, generator=gen)
    results = []
    for attend in (sdpa_attention, eager_attention):
        torch.manual_seed(1)
        out, _ = attend(None, q, k, v, key_mask, 8**-0.5, dropout=0.2)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    for name, lean, plain in zip(("output", "query", "key", "value"), *results):
        assert_close_scaled(lean, plain, name)
    undropped, _ = sdpa_attention(None, q, k, v, key_mask, 8**-0.5, dropout=0.0)
    assert not torch.allclose(results[0][0], undropped)  # dropout did drop something


def test_lean_relu_dropout_ffn_equals_plain_relu_then_dropout():
    """FFN in training keeps only dropout(relu(fc1 x)) for the backward; same seed, same values and gradients as
    relu → nn.Dropout."""
    ffn = FeedForward(d_model=16, ffn_dim=64, activation="relu", dropout=0.3).train()
    x = torch.randn(2, 40, 16, requires_grad=True)
    grad = torch.randn(2, 40, 16)
    results = []
    for lean in (True, False):
        ffn.activation_name = "relu" if lean else "relu (plain path)"
        torch.manual_seed(2)
        out = ffn(x)
        results.append((out, *torch.autograd.grad(out, (x, ffn.fc1.weight, ffn.fc2.weight), grad)))
    for name, lean, plain in zip(("output", "input", "fc1", "fc2"), *results):
        assert_close_scaled(lean, plain, name)

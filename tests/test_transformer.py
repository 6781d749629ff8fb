"""Transformer layers and attention: eager ≡ sdpa, masks per implementation, post- vs pre-norm wiring, stacks."""

from __future__ import annotations

import pytest
import torch

from detr_hf.attention import MultiHeadAttention, attention_mask_for, eager_attention
from detr_hf.transformer import DecoderLayer, DetrHfDecoder, DetrHfEncoder, EncoderLayer

LAYER = dict(
    d_model=32,
    num_heads=4,
    ffn_dim=64,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    activation="relu",
)


def _key_mask(batch: int, keys: int, seed: int = 0) -> torch.Tensor:
    """bool [B, 1, 1, S], True = attend; every image keeps at least its first key."""
    mask = torch.rand(batch, 1, 1, keys, generator=torch.Generator().manual_seed(seed)) > 0.4
    mask[..., 0] = True
    return mask


def _randomize_norms(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, torch.nn.LayerNorm):
                norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=gen))
                norm.bias.copy_(0.5 * torch.randn(norm.bias.shape, generator=gen))


@pytest.mark.parametrize("shared_query_key", [True, False])
def test_eager_equals_sdpa_and_returns_probabilities(shared_query_key):
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=32, num_heads=4, dropout=0.0, shared_query_key=shared_query_key)
    query, value = torch.randn(2, 7, 32), torch.randn(2, 9, 32)
    key = None if shared_query_key else torch.randn(2, 9, 32)
    if shared_query_key:
        value = torch.randn(2, 7, 32)
    mask = _key_mask(2, value.shape[1])
    sdpa, no_weights = attn(query, key, value, attention_mask=mask, attn_implementation="sdpa")
    eager, weights = attn(query, key, value, attention_mask=mask, attn_implementation="eager", output_attentions=True)
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)
    assert no_weights is None
    assert weights.shape == (2, 4, 7, value.shape[1])
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 7))
    assert (weights.masked_select(~mask) == 0).all(), "masked keys get weight 0"
    # Under sdpa the weights are never returned, even when asked for.
    assert attn(query, key, value, attention_mask=mask, output_attentions=True)[1] is None


def test_fused_query_key_is_an_explicit_flag_not_object_identity():
    torch.manual_seed(0)
    fused = MultiHeadAttention(d_model=32, num_heads=4, dropout=0.0, shared_query_key=True)
    separate = MultiHeadAttention(d_model=32, num_heads=4, dropout=0.0)
    separate.load_state_dict(fused.state_dict())
    x, value = torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    # The same tensor object as query and key no longer selects anything: the flag does.
    torch.testing.assert_close(fused(x, None, value)[0], separate(x, x, value)[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="key=None"):
        fused(x, x, value)
    with pytest.raises(ValueError, match="needs a `key`"):
        separate(x, None, value)


def test_flex_mask_is_the_additive_form_of_the_bool_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 8)
    mask = _key_mask(2, 9)
    additive = attention_mask_for(mask, "flex_attention", query_length=5, dtype=torch.float32)
    assert additive.shape == (2, 1, 5, 9) and additive.dtype == torch.float32
    assert attention_mask_for(mask, "sdpa", 5, torch.float32) is mask
    assert attention_mask_for(None, "flex_attention", 5, torch.float32) is None
    module = torch.nn.Module()
    out_bool, w_bool = eager_attention(module, q, k, v, mask, scaling=8**-0.5)
    out_add, w_add = eager_attention(module, q, k, v, additive, scaling=8**-0.5)
    torch.testing.assert_close(out_add, out_bool)
    torch.testing.assert_close(w_add, w_bool)


def _attend(attn: MultiHeadAttention, query, key, value, mask=None) -> torch.Tensor:
    """Reference multi-head attention written out with the module's projections (no fused GEMM)."""
    heads, dim = attn.num_heads, attn.head_dim
    q = attn.q_proj(query).unflatten(-1, (heads, dim)).transpose(1, 2)
    k = attn.k_proj(key).unflatten(-1, (heads, dim)).transpose(1, 2)
    v = attn.v_proj(value).unflatten(-1, (heads, dim)).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / dim**0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return attn.out_proj((scores.softmax(-1) @ v).transpose(1, 2).flatten(2))


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_layer_wiring(pre_norm):
    torch.manual_seed(0)
    layer = EncoderLayer(**LAYER, pre_norm=pre_norm).eval()
    _randomize_norms(layer)
    h, pos, mask = torch.randn(2, 6, 32), torch.randn(2, 6, 32), _key_mask(2, 6)
    norm1, norm2, ffn, attn = layer.self_attn_layer_norm, layer.final_layer_norm, layer.ffn, layer.self_attn
    if pre_norm:
        x = norm1(h)
        expected = h + _attend(attn, x + pos, x + pos, x, mask)
        expected = expected + ffn(norm2(expected))
    else:
        expected = norm1(h + _attend(attn, h + pos, h + pos, h, mask))
        expected = norm2(expected + ffn(expected))
    with torch.no_grad():
        out, weights = layer(h, position=pos, attention_mask=mask)
        torch.testing.assert_close(out, expected.detach(), atol=1e-5, rtol=0)
    assert weights is None


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_layer_wiring(pre_norm):
    torch.manual_seed(0)
    layer = DecoderLayer(**LAYER, pre_norm=pre_norm).eval()
    _randomize_norms(layer)
    h, qpos = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    memory, mpos, mask = torch.randn(2, 9, 32), torch.randn(2, 9, 32), _key_mask(2, 9)
    n1, n2, n3 = layer.self_attn_layer_norm, layer.encoder_attn_layer_norm, layer.final_layer_norm
    with torch.no_grad():
        if pre_norm:
            x = n1(h)
            expected = h + _attend(layer.self_attn, x + qpos, x + qpos, x)
            x = n2(expected)
            expected = expected + _attend(layer.encoder_attn, x + qpos, memory + mpos, memory, mask)
            expected = expected + layer.ffn(n3(expected))
        else:
            expected = n1(h + _attend(layer.self_attn, h + qpos, h + qpos, h))
            expected = n2(expected + _attend(layer.encoder_attn, expected + qpos, memory + mpos, memory, mask))
            expected = n3(expected + layer.ffn(expected))
        out, self_w, cross_w = layer(
            h, query_position=qpos, memory=memory, memory_position=mpos, memory_mask=mask,
            attn_implementation="eager", output_attentions=True,
        )  # fmt: skip
        shared = layer(h, query_position=qpos, memory=memory, memory_key=memory + mpos, memory_mask=mask)[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared, out, atol=1e-5, rtol=0)
    assert self_w.shape == (2, 4, 5, 5) and cross_w.shape == (2, 4, 5, 9)
    with pytest.raises(ValueError, match="memory_key or memory_position"):
        layer(h, query_position=qpos, memory=memory, memory_mask=mask)


def test_layers_and_stacks_take_keyword_arguments_only():
    with pytest.raises(TypeError):
        EncoderLayer(32, 4, 64, 0.0, 0.0, 0.0, "relu", False)  # type: ignore[misc]
    decoder = DetrHfDecoder(num_layers=1, pre_norm=False, **LAYER)
    x = torch.randn(1, 5, 32)
    memory, mask = torch.randn(1, 9, 32), _key_mask(1, 9)
    with pytest.raises(TypeError):
        decoder(x, x, memory, memory, mask)  # type: ignore[misc]


@pytest.mark.parametrize("pre_norm", [False, True])
def test_stacks_return_every_state_and_attention(pre_norm):
    torch.manual_seed(0)
    encoder = DetrHfEncoder(num_layers=3, pre_norm=pre_norm, **LAYER).eval()
    decoder = DetrHfDecoder(num_layers=2, pre_norm=pre_norm, **LAYER).eval()
    _randomize_norms(encoder), _randomize_norms(decoder)
    assert (encoder.layer_norm is not None) == pre_norm
    source, pos, mask = torch.randn(2, 9, 32), torch.randn(2, 9, 32), _key_mask(2, 9)
    target, qpos = torch.zeros(2, 5, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        memory, enc_states, enc_attns = encoder(
            source, position=pos, key_mask=mask, attn_implementation="eager",
            output_attentions=True, output_hidden_states=True,
        )  # fmt: skip
        decoded, dec_states, self_attns, cross_attns = decoder(
            target, query_position=qpos, memory=memory, memory_position=pos, memory_mask=mask,
            attn_implementation="eager", output_attentions=True, output_hidden_states=True,
        )  # fmt: skip
        sdpa_memory = encoder(source, position=pos, key_mask=mask)[0]
        sdpa_decoded = decoder(target, query_position=qpos, memory=memory, memory_position=pos, memory_mask=mask)[0]
    assert len(enc_states) == 4 and all(s.shape == (2, 9, 32) for s in enc_states)
    assert enc_states[0] is source and torch.equal(enc_states[-1], memory)
    assert [a.shape for a in enc_attns] == [(2, 4, 9, 9)] * 3
    assert decoded.shape == (2, 2, 5, 32) and len(dec_states) == 3
    # Every layer's output is normalised for the heads, but the un-normalised state feeds the next layer.
    torch.testing.assert_close(decoded[0], decoder.layer_norm(dec_states[1]))
    torch.testing.assert_close(decoded[-1], decoder.layer_norm(dec_states[-1]))
    assert [a.shape for a in self_attns] == [(2, 4, 5, 5)] * 2
    assert [a.shape for a in cross_attns] == [(2, 4, 5, 9)] * 2
    torch.testing.assert_close(sdpa_memory, memory, atol=1e-5, rtol=0)
    torch.testing.assert_close(sdpa_decoded, decoded, atol=1e-5, rtol=0)

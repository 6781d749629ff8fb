"""Mask head: attention maps equal a per-head reference with padding masked; the split first conv equals the plain one."""

from __future__ import annotations

import pytest
import torch

from detr_hf.mask_head import ConvBlock, MaskHead, QueryAttentionMaps


def reference_attention_maps(module: QueryAttentionMaps, queries, memory, feature_mask):
    """Loop over images, queries and heads: q·k / sqrt(d_head), padding → -inf, softmax over heads × positions."""
    batch, num_queries, _ = queries.shape
    heads, head_dim = module.num_heads, module.head_dim
    height, width = memory.shape[-2:]
    keys = memory.flatten(2).transpose(1, 2) @ module.k_proj.weight.T + module.k_proj.bias  # [B, h*w, d]
    q = queries @ module.q_proj.weight.T + module.q_proj.bias
    out = torch.empty(batch, num_queries, heads, height * width)
    for b in range(batch):
        for i in range(num_queries):
            scores = torch.empty(heads, height * width)
            for n in range(heads):
                part = slice(n * head_dim, (n + 1) * head_dim)
                scores[n] = keys[b, :, part] @ q[b, i, part] / head_dim**0.5
            scores[:, ~feature_mask[b].flatten()] = float("-inf")
            out[b, i] = scores.flatten().softmax(0).view(heads, -1)
    return out.view(batch, num_queries, heads, height, width)


def test_attention_maps_match_reference_and_ignore_padding():
    torch.manual_seed(0)
    module = QueryAttentionMaps(32, 4)
    queries, memory = torch.randn(2, 6, 32), torch.randn(2, 32, 5, 7)
    feature_mask = torch.ones(2, 5, 7, dtype=torch.bool)
    feature_mask[1, 3:, :] = False
    feature_mask[1, :, 4:] = False
    got = module(queries, memory, feature_mask)
    assert got.shape == (2, 6, 4, 5, 7)
    torch.testing.assert_close(got, reference_attention_maps(module, queries, memory, feature_mask), atol=1e-6, rtol=0)
    assert (got[1][..., ~feature_mask[1]] == 0).all()
    # One distribution per query over all heads and positions jointly.
    torch.testing.assert_close(got.flatten(2).sum(-1), torch.ones(2, 6))
    # Padding content cannot leak in.
    memory[1, :, 4:, :] = 100.0
    torch.testing.assert_close(module(queries, memory, feature_mask)[1], got[1], atol=1e-6, rtol=0)


def naive_mask_head(head: MaskHead, features, attention_maps, levels):
    """The head written as the original: every map repeated per query, one conv over the concatenation."""
    batch, num_queries = attention_maps.shape[:2]

    def per_query(x):
        return x[:, None].expand(-1, num_queries, *x.shape[1:]).flatten(0, 1)

    x = torch.cat([per_query(features), attention_maps.flatten(0, 1)], 1)
    x = head.blocks[1](head.blocks[0](x))
    for adapter, block, level in zip(head.adapters, head.blocks[2:], levels):
        fpn = per_query(adapter(level))
        x = block(fpn + torch.nn.functional.interpolate(x, size=fpn.shape[-2:], mode="nearest"))
    return head.output_conv(x).view(batch, num_queries, *levels[-1].shape[-2:])


def test_mask_head_equals_the_plain_concatenation_and_gives_stride_4_logits():
    torch.manual_seed(0)
    head = MaskHead(64, 8, [48, 24, 16])
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    # Odd sizes: 600×800 px with padding → stride-32 map 19×25 (rounded up at each stage).
    sizes = {32: (19, 25), 16: (38, 50), 8: (75, 100), 4: (150, 200)}
    features = torch.randn(2, 64, *sizes[32])
    maps = torch.rand(2, 3, 8, *sizes[32])
    levels = [torch.randn(2, c, *sizes[s]) for c, s in ((48, 16), (24, 8), (16, 4))]
    got = head(features, maps, levels)
    assert got.shape == (2, 3, 150, 200)
    torch.testing.assert_close(got, naive_mask_head(head, features, maps, levels), atol=1e-5, rtol=1e-5)


def test_group_norm_uses_8_groups_when_the_width_allows():
    assert ConvBlock(16, 264).norm.num_groups == 8
    assert ConvBlock(16, 36).norm.num_groups == 4  # 32 + 4 heads: not a multiple of 8
    assert ConvBlock(16, 2).norm.num_groups == 2


def test_bad_construction_arguments_are_named():
    with pytest.raises(ValueError, match="3 widths"):
        MaskHead(64, 8, [48, 24])
    with pytest.raises(ValueError, match="divisible by 16"):
        MaskHead(40, 8, [48, 24, 16])
    with pytest.raises(ValueError, match="divisible by num_heads"):
        QueryAttentionMaps(30, 4)

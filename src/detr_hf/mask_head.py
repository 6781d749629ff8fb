"""DETR's mask head: per-query attention maps over the encoder memory and the small FPN-style conv head."""

from __future__ import annotations

import math

import torch
from torch import nn


class XavierLinear(nn.Linear):
    """A Linear initialised as the original attention-map projections: xavier-uniform weight, zero bias."""

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)


class KaimingConv2d(nn.Conv2d):
    """A Conv2d initialised as the original mask head: kaiming-uniform (a=1) weight, zero bias."""

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=1)
        nn.init.zeros_(self.bias)


class QueryAttentionMaps(nn.Module):
    """Attention weights (no values) of each decoder query over the encoder memory, per head.

    The softmax runs over all heads and positions of a query jointly, as the original DETR's `MHAttentionMap`;
    padding positions get no weight.

    Args:
        d_model: width of the queries and of the memory.
        num_heads: attention heads; d_model must be divisible by it.
    """

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = XavierLinear(d_model, d_model)
        self.k_proj = XavierLinear(d_model, d_model)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
        """queries [B, Q, d]; memory [B, d, h, w]; feature_mask [B, h, w] bool (True = real pixels)
        → attention maps [B, Q, heads, h, w]."""
        batch, num_queries, _ = queries.shape
        height, width = memory.shape[-2:]
        # [B, Q, d] -> [B, Q, heads, d/heads], scaled before the product.
        q = (self.q_proj(queries) * self.head_dim**-0.5).view(batch, num_queries, self.num_heads, self.head_dim)
        # The key projection is a 1×1 convolution over the map: [B, d, h, w] -> [B, heads, d/heads, h*w].
        k = nn.functional.conv2d(memory, self.k_proj.weight[:, :, None, None], self.k_proj.bias)
        k = k.reshape(batch, self.num_heads, self.head_dim, height * width)
        scores = torch.einsum("bqnc,bncp->bqnp", q, k)  # [B, Q, heads, h*w]
        padding = ~feature_mask.reshape(batch, 1, 1, height * width)
        scores = scores.masked_fill(padding, float("-inf"))
        weights = scores.flatten(2).softmax(-1)  # joint softmax over heads × positions
        return weights.view(batch, num_queries, self.num_heads, height, width)


class ConvBlock(nn.Module):
    """3×3 convolution → GroupNorm → ReLU. GroupNorm has 8 groups as the original whenever the width allows
    (a multiple of 8), else the largest divisor of 8 that divides the width (narrow or odd-sized heads)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = KaimingConv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(math.gcd(8, out_channels), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x)))


class MaskHead(nn.Module):
    """FPN-style convolution head: one mask logit map per query at the finest level's resolution (stride 4).

    Input: the projected feature map (one per image) next to each query's attention maps; two conv blocks,
    then three steps that add a 1×1-adapted backbone level (strides 16, 8, 4) to the nearest-upsampled map,
    each followed by a conv block; a final 3×3 convolution gives one channel. Widths: d + heads, d/2, d/4,
    d/8, d/16. The first convolution is split into its feature and attention parts so the feature part runs
    once per image instead of once per query; the adapters also run per image.

    Args:
        d_model: width of the projected feature map (d).
        num_heads: attention maps per query.
        level_channels: channels of the backbone levels at strides 16, 8, 4 (in that order).
    """

    def __init__(self, d_model: int, num_heads: int, level_channels: list[int]) -> None:
        super().__init__()
        if len(level_channels) != 3:
            raise ValueError(f"level_channels must hold 3 widths (strides 16, 8, 4), got {level_channels}")
        if d_model % 16:
            raise ValueError(f"the mask head needs d_model divisible by 16, got {d_model}")
        widths = [d_model + num_heads, d_model // 2, d_model // 4, d_model // 8, d_model // 16]
        self.d_model = d_model
        self.blocks = nn.ModuleList(
            [ConvBlock(widths[0], widths[0])]
            + [ConvBlock(widths[i], widths[i + 1]) for i in range(4)]
        )
        self.adapters = nn.ModuleList(
            KaimingConv2d(channels, widths[i + 1], kernel_size=1) for i, channels in enumerate(level_channels)
        )
        self.output_conv = KaimingConv2d(widths[-1], 1, kernel_size=3, padding=1)

    def forward(
        self, features: torch.Tensor, attention_maps: torch.Tensor, levels: list[torch.Tensor]
    ) -> torch.Tensor:
        """features [B, d, h, w]; attention_maps [B, Q, heads, h, w]; levels: backbone maps at strides 16, 8, 4
        ([B, C_i, h_i, w_i]) → mask logits [B, Q, h_4, w_4]."""
        batch, num_queries = attention_maps.shape[:2]
        first = self.blocks[0].conv
        # conv(cat(features, maps)) = conv_features(features) + conv_maps(maps): the first per image.
        image_part = nn.functional.conv2d(features, first.weight[:, : self.d_model], first.bias, padding=1)
        query_part = nn.functional.conv2d(
            attention_maps.flatten(0, 1), first.weight[:, self.d_model :], None, padding=1
        )
        # [B, C, h, w] + [B*Q, C, h, w] -> [B, Q, C, h, w] -> [B*Q, C, h, w]
        x = (image_part[:, None] + query_part.unflatten(0, (batch, num_queries))).flatten(0, 1)
        x = torch.relu(self.blocks[0].norm(x))
        x = self.blocks[1](x)
        for adapter, block, level in zip(self.adapters, self.blocks[2:], levels):
            adapted = adapter(level)  # [B, C, h_i, w_i], once per image
            upsampled = nn.functional.interpolate(x, size=adapted.shape[-2:], mode="nearest")
            # [B*Q, C, h_i, w_i] + per-image adapter output broadcast over the queries.
            x = (upsampled.unflatten(0, (batch, num_queries)) + adapted[:, None]).flatten(0, 1)
            x = block(x)
        masks = self.output_conv(x)  # [B*Q, 1, h_4, w_4]
        return masks.view(batch, num_queries, *masks.shape[-2:])

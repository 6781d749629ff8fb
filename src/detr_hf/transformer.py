"""DETR's transformer: encoder over image features, decoder over object queries, SDPA attention."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer


class TransformerLinear(nn.Linear):
    """A projection inside the transformer; DETR initialises these xavier-uniform (see `_init_weights`)."""


class MultiHeadAttention(nn.Module):
    """Multi-head attention on batch-first tensors through `scaled_dot_product_attention`."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.q_proj = TransformerLinear(d_model, d_model)
        self.k_proj = TransformerLinear(d_model, d_model)
        self.v_proj = TransformerLinear(d_model, d_model)
        self.out_proj = TransformerLinear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [B, L, d] -> [B, heads, L, d / heads]
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query [B, Lq, d], key/value [B, Lk, d]; attn_mask bool broadcastable to [B, heads, Lq, Lk], True = attend.

        Passing the same tensor object as `query` and `key` takes the fused q/k projection.
        """
        if key is query:
            # Self-attention with q = k = x + pos: one GEMM against the stacked [Wq; Wk] instead of two.
            weight = torch.cat((self.q_proj.weight, self.k_proj.weight))
            bias = torch.cat((self.q_proj.bias, self.k_proj.bias))
            q, k = F.linear(query, weight, bias).chunk(2, dim=-1)
            q, k = self._heads(q), self._heads(k)
        else:
            q = self._heads(self.q_proj(query))
            k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        dropout = self.dropout if self.training else 0.0
        weights = None
        if output_attentions:
            scores = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = scores.softmax(-1)
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        # [B, heads, Lq, d / heads] -> [B, Lq, d]
        out = out.transpose(1, 2).flatten(2)
        return self.out_proj(out), weights


class FeedForward(nn.Module):
    """Two linear layers with the configured activation; dropout between them."""

    def __init__(self, d_model: int, ffn_dim: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.fc1 = TransformerLinear(d_model, ffn_dim)
        self.fc2 = TransformerLinear(ffn_dim, d_model)
        self.activation = ACT2FN[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))


class _ResidualLayer(GradientCheckpointingLayer):
    """Shared parts: self-attention and FFN sub-layers, and the residual wiring, post-norm
    `norm(h + drop(f(h)))` or pre-norm `h + drop(f(norm(h)))`."""

    def __init__(self, config, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        d = config.d_model
        self.pre_norm = config.pre_norm
        self.self_attn = MultiHeadAttention(d, num_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn_dim, config.activation_function, config.activation_dropout)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)

    def _residual(
        self, hidden: torch.Tensor, norm: nn.LayerNorm, block
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = norm(hidden) if self.pre_norm else hidden
        out, weights = block(x)
        hidden = hidden + self.dropout(out)
        return (hidden if self.pre_norm else norm(hidden)), weights

    def _self_attention(self, x: torch.Tensor, pos: torch.Tensor, attn_mask, output_attentions: bool):
        # q and k are the same tensor, which lets the attention run one fused q/k projection.
        query_key = x + pos
        return self.self_attn(query_key, query_key, x, attn_mask, output_attentions)


class EncoderLayer(_ResidualLayer):
    """Self-attention (positions added to q and k) then FFN, each with residual and LayerNorm."""

    def __init__(self, config) -> None:
        super().__init__(config, config.encoder_attention_heads, config.encoder_ffn_dim)

    def forward(
        self, hidden: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden, pos [B, S, d]; key_mask [B, 1, 1, S] bool (True = real pixel)."""
        hidden, weights = self._residual(
            hidden,
            self.self_attn_layer_norm,
            lambda x: self._self_attention(x, pos, key_mask, output_attentions),
        )
        hidden, _ = self._residual(hidden, self.final_layer_norm, lambda x: (self.ffn(x), None))
        return hidden, weights


class DecoderLayer(_ResidualLayer):
    """Query self-attention, cross-attention to the encoder memory, FFN; query positions in q (and k)."""

    def __init__(self, config) -> None:
        super().__init__(config, config.decoder_attention_heads, config.decoder_ffn_dim)
        heads = config.decoder_attention_heads
        self.encoder_attn = MultiHeadAttention(config.d_model, heads, config.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        hidden: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_mask: torch.Tensor,
        self_attn_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        memory_key: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """hidden, query_pos [B, Q, d]; memory, memory_pos [B, S, d]; memory_mask [B, 1, 1, S]; self_attn_mask [Q, Q].

        memory_key: `memory + memory_pos` when the caller already has it (it is the same for every layer).
        """
        if memory_key is None:
            memory_key = memory + memory_pos
        hidden, self_weights = self._residual(
            hidden,
            self.self_attn_layer_norm,
            lambda x: self._self_attention(x, query_pos, self_attn_mask, output_attentions),
        )
        hidden, cross_weights = self._residual(
            hidden,
            self.encoder_attn_layer_norm,
            lambda x: self.encoder_attn(x + query_pos, memory_key, memory, memory_mask, output_attentions),
        )
        hidden, _ = self._residual(hidden, self.final_layer_norm, lambda x: (self.ffn(x), None))
        return hidden, self_weights, cross_weights


class DetrHfEncoder(nn.Module):
    """Stack of encoder layers; pre-norm adds a final LayerNorm, as the original."""

    def __init__(self, config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model) if config.pre_norm else None

    def forward(
        self, hidden: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor, output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple, tuple]:  # fmt: skip
        """hidden, pos [B, S, d] → memory [B, S, d], per-layer hidden states, per-layer attentions."""
        states, attentions = (), ()
        for layer in self.layers:
            if output_hidden_states:
                states += (hidden,)
            hidden, weights = layer(hidden, pos, key_mask, output_attentions)
            if output_attentions:
                attentions += (weights,)
        if self.layer_norm is not None:
            hidden = self.layer_norm(hidden)
        if output_hidden_states:
            states += (hidden,)
        return hidden, states, attentions


class DetrHfDecoder(nn.Module):
    """Stack of decoder layers; one shared final LayerNorm is applied to every layer's output for the
    heads, but the un-normalised state is what feeds the next layer."""

    def __init__(self, config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        target: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_mask: torch.Tensor,
        self_attn_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple, tuple, tuple]:
        """target, query_pos [B, Q, d] → normalised outputs of every layer [L, B, Q, d], hidden states, attentions."""
        hidden = target
        memory_key = memory + memory_pos  # the cross-attention keys' input, shared by every layer
        outputs, states, self_attns, cross_attns = [], (), (), ()
        for layer in self.layers:
            if output_hidden_states:
                states += (hidden,)
            hidden, self_w, cross_w = layer(
                hidden,
                query_pos,
                memory,
                memory_pos,
                memory_mask,
                self_attn_mask,
                output_attentions,
                memory_key,
            )
            outputs.append(self.layer_norm(hidden))
            if output_attentions:
                self_attns += (self_w,)
                cross_attns += (cross_w,)
        if output_hidden_states:
            states += (hidden,)
        return torch.stack(outputs), states, self_attns, cross_attns

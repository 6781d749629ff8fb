"""DETR's transformer: encoder over image features, decoder over object queries (post- or pre-norm layers)."""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from typing_extensions import Unpack  # typing.Unpack needs Python 3.11; torch depends on typing_extensions

from .attention import MultiHeadAttention, TransformerLinear, attention_mask_for
from .tracing import is_tracing

__all__ = [
    "DecoderLayer",
    "DetrHfDecoder",
    "DetrHfEncoder",
    "EncoderLayer",
    "FeedForward",
    "LayerArguments",
    "MultiHeadAttention",
    "TransformerLinear",
]


class FeedForward(nn.Module):
    """Two linear layers with the given activation; dropout between them."""

    def __init__(self, *, d_model: int, ffn_dim: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.fc1 = TransformerLinear(d_model, ffn_dim)
        self.fc2 = TransformerLinear(ffn_dim, d_model)
        self.activation = ACT2FN[activation]
        self.activation_name = activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        p = self.dropout.p
        lean = self.activation_name == "relu" and 0 < p < 1 and self.training
        if lean and torch.is_grad_enabled() and not is_tracing():
            return self.fc2(_ReluDropout.apply(hidden, p))
        return self.fc2(self.dropout(self.activation(hidden)))


class _ReluDropout(torch.autograd.Function):
    """dropout(relu(x)) keeping only its output for the backward: the output is > 0 exactly where both the
    ReLU and the dropout mask pass the gradient, so neither the ReLU output nor the float dropout mask is kept
    (fc2 keeps the output anyway). The mask is drawn as `nn.Dropout` draws it on CPU, so a seeded run matches.

    x [..., F] → [..., F]; gradient grad · [out > 0] / (1 − p).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)
        out = torch.relu(x).mul_(keep)
        ctx.keep_scale = 1 / (1 - p)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (out,) = ctx.saved_tensors
        return grad_out * (out > 0) * ctx.keep_scale, None


class LayerArguments(TypedDict):
    """The keyword arguments of every encoder / decoder layer (and, with `num_layers`, of the stacks)."""

    d_model: int
    num_heads: int
    ffn_dim: int
    dropout: float
    attention_dropout: float
    activation_dropout: float
    activation: str
    pre_norm: bool


class _SelfAttentionLayer(GradientCheckpointingLayer):
    """The parts encoder and decoder layers share: self-attention and FFN sub-layers with their LayerNorms.

    Args:
        d_model: width; num_heads: attention heads; ffn_dim: FFN hidden width.
        dropout: on each residual branch; attention_dropout: on attention probabilities;
        activation_dropout: inside the FFN; activation: an `ACT2FN` name;
        pre_norm: `h = h + drop(f(norm(h)))` instead of the DETR default (post-norm) `h = norm(h + drop(f(h)))`.
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        activation: str,
        pre_norm: bool,
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.self_attn = MultiHeadAttention(
            d_model=d_model, num_heads=num_heads, dropout=attention_dropout, shared_query_key=True
        )
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model=d_model, ffn_dim=ffn_dim, activation=activation, dropout=activation_dropout)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)


class EncoderLayer(_SelfAttentionLayer):
    """Self-attention (positions added to q and k) then FFN, each with a residual and a LayerNorm
    (keyword arguments: `LayerArguments`)."""

    def forward(
        self,
        hidden: torch.Tensor,
        *,
        position: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_implementation: str = "sdpa",
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden, position [B, S, d]; attention_mask over the keys (see `attention_mask_for`) → hidden [B, S, d],
        attention weights [B, heads, S, S] or None."""
        attention = dict(attn_implementation=attn_implementation, output_attentions=output_attentions)
        if self.pre_norm:
            x = self.self_attn_layer_norm(hidden)
            out, weights = self.self_attn(x + position, None, x, attention_mask=attention_mask, **attention)
            hidden = hidden + self.dropout(out)
            hidden = hidden + self.dropout(self.ffn(self.final_layer_norm(hidden)))
        else:
            out, weights = self.self_attn(hidden + position, None, hidden, attention_mask=attention_mask, **attention)
            hidden = self.self_attn_layer_norm(hidden + self.dropout(out))
            hidden = self.final_layer_norm(hidden + self.dropout(self.ffn(hidden)))
        return hidden, weights


class DecoderLayer(_SelfAttentionLayer):
    """Query self-attention, cross-attention to the encoder memory, FFN; query positions in q (and k).

    Keyword arguments and residual wiring as `EncoderLayer`, with a third (cross-attention) sub-layer.
    """

    def __init__(self, **layer: Unpack[LayerArguments]) -> None:
        super().__init__(**layer)
        d_model = layer["d_model"]
        self.encoder_attn = MultiHeadAttention(
            d_model=d_model, num_heads=layer["num_heads"], dropout=layer["attention_dropout"]
        )
        self.encoder_attn_layer_norm = nn.LayerNorm(d_model)

    def forward(
        self,
        hidden: torch.Tensor,
        *,
        query_position: torch.Tensor,
        memory: torch.Tensor,
        memory_position: torch.Tensor | None = None,
        memory_key: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None,
        self_attn_mask: torch.Tensor | None = None,
        attn_implementation: str = "sdpa",
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """hidden, query_position [B, Q, d]; memory [B, S, d]; memory_key = memory + memory_position (give either;
        the decoder passes the sum it computed once for all layers); memory_mask over the S keys, self_attn_mask
        over the Q keys (see `attention_mask_for`) → hidden [B, Q, d], self- and cross-attention weights or None."""
        if memory_key is None:
            if memory_position is None:
                raise ValueError("DecoderLayer needs memory_key or memory_position")
            memory_key = memory + memory_position
        attention = dict(attn_implementation=attn_implementation, output_attentions=output_attentions)
        if self.pre_norm:
            x = self.self_attn_layer_norm(hidden)
            out, self_weights = self.self_attn(x + query_position, None, x, attention_mask=self_attn_mask, **attention)
            hidden = hidden + self.dropout(out)
            x = self.encoder_attn_layer_norm(hidden)
            out, cross_weights = self.encoder_attn(
                x + query_position, memory_key, memory, attention_mask=memory_mask, **attention
            )
            hidden = hidden + self.dropout(out)
            hidden = hidden + self.dropout(self.ffn(self.final_layer_norm(hidden)))
        else:
            out, self_weights = self.self_attn(
                hidden + query_position, None, hidden, attention_mask=self_attn_mask, **attention
            )
            hidden = self.self_attn_layer_norm(hidden + self.dropout(out))
            out, cross_weights = self.encoder_attn(
                hidden + query_position, memory_key, memory, attention_mask=memory_mask, **attention
            )
            hidden = self.encoder_attn_layer_norm(hidden + self.dropout(out))
            hidden = self.final_layer_norm(hidden + self.dropout(self.ffn(hidden)))
        return hidden, self_weights, cross_weights


class DetrHfEncoder(nn.Module):
    """Stack of `num_layers` encoder layers (other keyword arguments: `LayerArguments`); pre-norm adds a final
    LayerNorm, as the original."""

    def __init__(self, *, num_layers: int, **layer: Unpack[LayerArguments]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(**layer) for _ in range(num_layers))
        self.layer_norm = nn.LayerNorm(layer["d_model"]) if layer["pre_norm"] else None

    def forward(
        self,
        hidden: torch.Tensor,
        *,
        position: torch.Tensor,
        key_mask: torch.Tensor,
        attn_implementation: str = "sdpa",
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple, tuple]:
        """hidden, position [B, S, d]; key_mask [B, 1, 1, S] bool (True = real pixel) → memory [B, S, d],
        hidden states (input + every layer's output), attention weights per layer [B, heads, S, S]."""
        mask = attention_mask_for(key_mask, attn_implementation, hidden.shape[1], hidden.dtype)
        states, attentions = (), ()
        for layer in self.layers:
            if output_hidden_states:
                states += (hidden,)
            hidden, weights = layer(
                hidden,
                position=position,
                attention_mask=mask,
                attn_implementation=attn_implementation,
                output_attentions=output_attentions,
            )
            if output_attentions:
                attentions += (weights,)
        if self.layer_norm is not None:
            hidden = self.layer_norm(hidden)
        if output_hidden_states:
            states += (hidden,)
        return hidden, states, attentions


class DetrHfDecoder(nn.Module):
    """Stack of `num_layers` decoder layers (other keyword arguments: `LayerArguments`); one shared final
    LayerNorm is applied to every layer's output for the heads, but the un-normalised state is what feeds the
    next layer."""

    def __init__(self, *, num_layers: int, **layer: Unpack[LayerArguments]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(**layer) for _ in range(num_layers))
        self.layer_norm = nn.LayerNorm(layer["d_model"])

    def forward(
        self,
        target: torch.Tensor,
        *,
        query_position: torch.Tensor,
        memory: torch.Tensor,
        memory_position: torch.Tensor,
        memory_mask: torch.Tensor,
        self_attn_mask: torch.Tensor | None = None,
        attn_implementation: str = "sdpa",
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple, tuple, tuple]:
        """target, query_position [B, Q, d]; memory, memory_position [B, S, d]; memory_mask [B, 1, 1, S] bool;
        self_attn_mask bool broadcastable to [B, 1, Q, Q] or None → normalised outputs of every layer [L, B, Q, d],
        hidden states (input + every layer's un-normalised output), self- and cross-attention weights per layer."""
        num_queries, dtype = target.shape[1], target.dtype
        cross_mask = attention_mask_for(memory_mask, attn_implementation, num_queries, dtype)
        self_mask = attention_mask_for(self_attn_mask, attn_implementation, num_queries, dtype)
        hidden = target
        memory_key = memory + memory_position  # the cross-attention keys' input, shared by every layer
        outputs, states, self_attns, cross_attns = [], (), (), ()
        for layer in self.layers:
            if output_hidden_states:
                states += (hidden,)
            hidden, self_weights, cross_weights = layer(
                hidden,
                query_position=query_position,
                memory=memory,
                memory_key=memory_key,
                memory_mask=cross_mask,
                self_attn_mask=self_mask,
                attn_implementation=attn_implementation,
                output_attentions=output_attentions,
            )
            outputs.append(self.layer_norm(hidden))
            if output_attentions:
                self_attns += (self_weights,)
                cross_attns += (cross_weights,)
        if output_hidden_states:
            states += (hidden,)
        return torch.stack(outputs), states, self_attns, cross_attns

"""Multi-head attention in transformers' attention-function interface (eager, sdpa, flex, registered ones)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .tracing import is_tracing

# The implementation whose attention weights are real probabilities and returned for `output_attentions`.
EAGER = "eager"
# transformers' flex_attention adds the mask to every score: it takes an additive float mask [B, 1, Lq, Lk].
_ADDITIVE_MASK_IMPLEMENTATIONS = frozenset({"flex_attention"})


class TransformerLinear(nn.Linear):
    """A projection inside the transformer; DETR initialises these xavier-uniform (see `_init_weights`)."""


def eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain matmul → softmax → matmul, in transformers' attention-function signature.

    query [B, H, Lq, D], key/value [B, H, Lk, D]; attention_mask broadcastable to [B, H, Lq, Lk], bool
    (True = attend) or additive float → output [B, Lq, H, D], weights [B, H, Lq, Lk] (before dropout).
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    elif attention_mask is not None:
        scores = scores + attention_mask
    weights = scores.softmax(dim=-1)
    dropped = F.dropout(weights, p=dropout) if dropout > 0 else weights
    return torch.matmul(dropped, value).transpose(1, 2), weights


def sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """`scaled_dot_product_attention` in the same signature and layouts as `eager_attention` (no weights).

    detr_hf's own rather than transformers' registered "sdpa": that one bakes the query length into a reshape,
    which breaks ONNX export with dynamic image sizes.
    """
    if dropout > 0 and query.device.type == "cpu" and torch.is_grad_enabled() and not is_tracing():
        # Training with attention dropout on CPU: sdpa takes its math path and keeps scores, mask and dropped
        # probabilities as floats; the lean function keeps the probabilities and a bool mask only. (GPUs keep
        # sdpa: its fused kernels draw the dropout inside and keep far less.)
        out = _LeanDropoutAttention.apply(query, key, value, attention_mask, scaling, dropout)
        return out.transpose(1, 2), None
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2), None


class _LeanDropoutAttention(torch.autograd.Function):
    """softmax(q kᵀ · scaling, masked) → dropout → · v, keeping q, k, v, the probabilities and a bool dropout
    mask for the backward (the dropped probabilities are rebuilt there). The mask is drawn as `F.dropout` draws
    it on CPU, so a seeded run equals `eager_attention` exactly.

    query [B, H, Lq, D], key/value [B, H, Lk, D], attention_mask bool or additive float broadcastable to
    [B, H, Lq, Lk] or None → [B, H, Lq, D].
    """

    @staticmethod
    def forward(ctx, query, key, value, attention_mask, scaling: float, p: float):
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # [B, H, Lq, Lk]
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        elif attention_mask is not None:
            scores = scores + attention_mask
        probs = scores.softmax(dim=-1)
        del scores
        keep = torch.empty_like(probs).bernoulli_(1 - p)
        dropped = probs * keep.div_(1 - p)
        ctx.save_for_backward(query, key, value, probs, keep.to(torch.bool))
        ctx.scaling, ctx.keep_scale = scaling, 1 / (1 - p)
        return torch.matmul(dropped, value)

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, probs, keep = ctx.saved_tensors
        keep_scale = ctx.keep_scale
        dropped = probs * keep * keep_scale
        grad_value = torch.matmul(dropped.transpose(-1, -2), grad_out)
        del dropped
        grad_probs = torch.matmul(grad_out, value.transpose(-1, -2)) * keep * keep_scale
        # softmax backward: p · (g − Σ p g)
        grad_scores = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True)) * ctx.scaling
        grad_query = torch.matmul(grad_scores, key)
        grad_key = torch.matmul(grad_scores.transpose(-1, -2), query)
        return grad_query, grad_key, grad_value, None, None, None


# The implementations detr_hf runs itself; any other name resolves through transformers' ALL_ATTENTION_FUNCTIONS.
_OWN_IMPLEMENTATIONS = {EAGER: eager_attention, "sdpa": sdpa_attention}


def attention_mask_for(
    mask: torch.Tensor | None, attn_implementation: str, query_length: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """A bool mask broadcastable to [B, 1, Lq, Lk] (True = attend) in the form `attn_implementation` takes.

    eager, sdpa (and functions registered by users) take it as it is; flex attention takes an additive float
    mask [B, 1, Lq, Lk]. Called once per encoder / decoder, not once per layer.
    """
    if mask is None or attn_implementation not in _ADDITIVE_MASK_IMPLEMENTATIONS:
        return mask
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return additive.expand(-1, -1, query_length, -1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention on batch-first tensors; the attention itself is `eager_attention` for "eager",
    `sdpa_attention` for "sdpa", else the function transformers registers under `attn_implementation`
    (e.g. "flex_attention").

    Args:
        d_model: model width (divisible by `num_heads`).
        num_heads: attention heads.
        dropout: dropout on the attention probabilities (training only).
        shared_query_key: queries and keys are projected from the same input (DETR's self-attention:
            x + pos). The two projections then run as one GEMM against the stacked [Wq; Wk], and
            `forward` takes `key=None`.
    """

    is_causal = False  # read by transformers' attention functions

    def __init__(self, *, d_model: int, num_heads: int, dropout: float, shared_query_key: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.shared_query_key = shared_query_key
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
        key: torch.Tensor | None,
        value: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        attn_implementation: str = "sdpa",
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query [B, Lq, d]; key [B, Lk, d] (None with `shared_query_key`); value [B, Lk, d];
        attention_mask as `attention_mask_for` returns it → output [B, Lq, d], weights [B, heads, Lq, Lk]
        (only under "eager" with `output_attentions`, else None)."""
        if self.shared_query_key:
            if key is not None:
                raise ValueError("MultiHeadAttention(shared_query_key=True) projects keys from `query`: pass key=None")
            weight = torch.cat((self.q_proj.weight, self.k_proj.weight))
            bias = torch.cat((self.q_proj.bias, self.k_proj.bias))
            q, k = F.linear(query, weight, bias).chunk(2, dim=-1)
        elif key is None:
            raise ValueError("MultiHeadAttention(shared_query_key=False) needs a `key` tensor")
        else:
            q, k = self.q_proj(query), self.k_proj(key)
        attention = _OWN_IMPLEMENTATIONS.get(attn_implementation) or ALL_ATTENTION_FUNCTIONS.get_interface(
            attn_implementation, eager_attention
        )
        out, weights = attention(
            self,
            self._heads(q),
            self._heads(k),
            self._heads(self.v_proj(value)),
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            output_attentions=output_attentions,
        )
        # [B, Lq, heads, d / heads] -> [B, Lq, d]
        out = self.out_proj(out.flatten(2))
        return out, (weights if output_attentions and attn_implementation == EAGER else None)

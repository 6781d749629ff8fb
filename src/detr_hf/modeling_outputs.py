"""Output dataclasses of the detr_hf models (plain data between the model and its users)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .extra_queries import ExtraQueryStates

__all__ = ["DetrHfModelOutput", "DetrHfObjectDetectionOutput"]


@dataclass
class DetrHfModelOutput(ModelOutput):
    """Outputs of `DetrHfModel`.

    last_hidden_state: [B, Q, d] final decoder output (after the decoder LayerNorm).
    intermediate_hidden_states: [L, B, Q, d] every decoder layer's normalised output.
    encoder_last_hidden_state: [B, h*w, d] encoder memory.
    encoder_hidden_states: with `output_hidden_states`, encoder_layers + 1 tensors [B, h*w, d] (the input, then
        every layer's output). decoder_hidden_states: decoder_layers + 1 tensors [B, Q, d] (the zero input, then
        every layer's output before the shared decoder LayerNorm).
    encoder_attentions [B, heads, h*w, h*w], decoder_attentions [B, heads, Q, Q], cross_attentions
        [B, heads, Q, h*w]: with `output_attentions` under attn_implementation="eager", one per layer.
    training_queries: in training with labels and extra queries on (see extra_queries.py), their layout and
        decoder outputs; the fields above then still hold only the inference queries.
    """

    last_hidden_state: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    training_queries: ExtraQueryStates | None = None


@dataclass
class DetrHfObjectDetectionOutput(ModelOutput):
    """Outputs of `DetrHfForObjectDetection`.

    loss: scalar total loss (when `labels` were given); loss_dict: its unweighted terms and logging metrics.
    logits: [B, Q, num_labels + 1] (last = no object); pred_boxes: [B, Q, 4] normalised (cx, cy, w, h).
    auxiliary_outputs: one dict {"logits", "pred_boxes"} per earlier decoder layer when `auxiliary_loss`.
    training_query_outputs: training-only extra queries' predictions {"logits", "pred_boxes"} [L, B, T - Q, ...]
        (other query groups, then denoising queries; see extra_queries.py), never in the fields above.
    """

    loss: torch.Tensor | None = None
    loss_dict: dict | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    auxiliary_outputs: list[dict] | None = None
    last_hidden_state: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    training_query_outputs: dict | None = None

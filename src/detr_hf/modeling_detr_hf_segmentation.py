"""DetrHfForSegmentation: the detection model plus DETR's mask head (`pred_masks`) and the mask losses."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .backbone import downsample_mask
from .configuration_detr_hf import DetrHfConfig
from .criterion import DetrHfLoss, global_normalizers
from .mask_head import KaimingConv2d, MaskHead, QueryAttentionMaps, XavierLinear
from .mask_loss import MaskLoss, check_mask_targets
from .modeling_detr_hf import BoxHead, DetrHfModel, DetrHfPreTrainedModel, _reject_unknown_kwargs
from .training_queries import TrainingQueries

logger = logging.getLogger(__name__)

# Strides of the backbone levels the mask head refines with, coarsest first.
MASK_HEAD_STRIDES = (16, 8, 4)
MASK_HEAD_PREFIXES = ("bbox_attention.", "mask_head.")


@dataclass
class DetrHfSegmentationOutput(ModelOutput):
    """Outputs of `DetrHfForSegmentation`.

    loss: scalar total loss (when `labels` were given); loss_dict: its unweighted terms (detection terms as
        `DetrHfForObjectDetection`, plus `loss_mask` (focal) and `loss_dice` for the last decoder layer).
    logits: [B, Q, num_labels + 1] (last = no object); pred_boxes: [B, Q, 4] normalised (cx, cy, w, h).
    pred_masks: [B, Q, h_4, w_4] mask logits at the backbone's stride-4 resolution of the padded batch.
    auxiliary_outputs: one dict {"logits", "pred_boxes"} per earlier decoder layer when `auxiliary_loss`.
    """

    loss: torch.Tensor | None = None
    loss_dict: dict | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    pred_masks: torch.Tensor | None = None
    auxiliary_outputs: list[dict] | None = None
    last_hidden_state: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


class DetrHfForSegmentation(DetrHfPreTrainedModel):
    """DETR for panoptic / instance segmentation: class logits, boxes and one mask per object query.

    The detector's parameters carry the same names as `DetrHfForObjectDetection`'s (`model.*`,
    `class_labels_classifier.*`, `bbox_predictor.*`), so a detection checkpoint loads into it directly and
    only the mask head (`bbox_attention.*`, `mask_head.*`) starts from its initialisation.
    """

    def __init__(self, config: DetrHfConfig) -> None:
        super().__init__(config)
        if TrainingQueries.enabled(config):
            raise ValueError(
                "DetrHfForSegmentation does not support training-only query groups or denoising queries "
                f"(num_query_groups={config.num_query_groups}, num_denoising_groups={config.num_denoising_groups})"
            )
        self.model = DetrHfModel(config)
        self.class_labels_classifier = nn.Linear(config.d_model, config.num_labels + 1)
        self.bbox_predictor = BoxHead(config.d_model)
        level_channels = self.model.backbone.enable_levels(MASK_HEAD_STRIDES)
        heads = config.encoder_attention_heads
        self.bbox_attention = QueryAttentionMaps(config.d_model, heads)
        self.mask_head = MaskHead(config.d_model, heads, level_channels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Leaf modules only: transformers skips parents without parameters of their own in remote code.
        if isinstance(module, XavierLinear):
            init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, KaimingConv2d):
            init.kaiming_uniform_(module.weight, a=1)
            init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`DetrHfPreTrainedModel.from_pretrained`; a detection checkpoint (no mask head weights) loads too, its
        mask head initialised, with one log line saying so."""
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = set(info.get("missing_keys", ()))
        head_missing = {key for key in missing if key.startswith(MASK_HEAD_PREFIXES)}
        if head_missing and head_missing == missing:
            source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            logger.warning(
                "%s holds no mask head weights (a detection checkpoint?): bbox_attention and mask_head "
                "(%d tensors) are freshly initialised; train them before use",
                source, len(head_missing),
            )  # fmt: skip
        return (model, info) if wants_info else model

    def build_criterion(self) -> DetrHfLoss:
        """The detection loss module for the current config (the mask losses are `build_mask_loss`)."""
        return DetrHfLoss.from_config(self.config)

    def build_mask_loss(self) -> MaskLoss:
        """The mask loss module for the current config (focal and dice weights)."""
        return MaskLoss(
            mask_loss_coefficient=self.config.mask_loss_coefficient,
            dice_loss_coefficient=self.config.dice_loss_coefficient,
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DetrHfSegmentationOutput | tuple:
        """pixel_values [B, C, H, W]; pixel_mask [B, H, W] (1 = pixel); labels: one dict per image with
        `class_labels` [N], `boxes` [N, 4] normalised (cx, cy, w, h) and `masks` [N, H, W] bool at the padded size."""
        _reject_unknown_kwargs(kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.model(pixel_values, pixel_mask, output_attentions, output_hidden_states, return_dict=True)
        features, levels = self.model.backbone.pop_levels()
        hidden = out.intermediate_hidden_states
        logits = self.class_labels_classifier(hidden[-1])
        pred_boxes = self.bbox_predictor(hidden[-1])
        auxiliary_outputs = None
        if self.config.auxiliary_loss and (labels is not None or self.training) and len(hidden) > 1:
            # Heads shared by the earlier layers: [L-1, B, Q, d] -> [L-1, B, Q, C+1] and [L-1, B, Q, 4].
            aux_logits = self.class_labels_classifier(hidden[:-1])
            aux_boxes = self.bbox_predictor(hidden[:-1])
            auxiliary_outputs = [{"logits": lg, "pred_boxes": bx} for lg, bx in zip(aux_logits, aux_boxes)]

        # The encoder's input map again (the same op on the same tensor as inside the model): [B, d, h, w].
        projected = self.model.input_projection(features)
        batch, d_model, height, width = projected.shape
        valid = self._pixel_validity(pixel_values, pixel_mask)
        feature_mask = downsample_mask(valid, (height, width))
        # Encoder memory [B, h*w, d] -> [B, d, h, w].
        memory = out.encoder_last_hidden_state.transpose(1, 2).reshape(batch, d_model, height, width)
        attention_maps = self.bbox_attention(hidden[-1], memory, feature_mask)
        pred_masks = self.mask_head(projected, attention_maps, levels)

        loss = loss_dict = None
        if labels is not None:
            loss, loss_dict = self.build_criterion().to(logits.device)(
                logits, pred_boxes, labels, auxiliary_outputs
            )
            mask_total, mask_terms = self._mask_loss(logits, pred_boxes, pred_masks, labels, pixel_values.shape[-2:])
            loss = loss + mask_total
            loss_dict.update(mask_terms)
        output = DetrHfSegmentationOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            pred_masks=pred_masks,
            auxiliary_outputs=auxiliary_outputs,
            last_hidden_state=out.last_hidden_state,
            encoder_last_hidden_state=out.encoder_last_hidden_state,
            encoder_hidden_states=out.encoder_hidden_states,
            decoder_hidden_states=out.decoder_hidden_states,
            encoder_attentions=out.encoder_attentions,
            decoder_attentions=out.decoder_attentions,
            cross_attentions=out.cross_attentions,
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _pixel_validity(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, H, W] bool, True = real pixel (the model has validated pixel_mask already)."""
        if pixel_mask is None:
            batch, _, height, width = pixel_values.shape
            return torch.ones((batch, height, width), dtype=torch.bool, device=pixel_values.device)
        return pixel_mask.to(torch.bool)

    def _mask_loss(self, logits, pred_boxes, pred_masks, labels, padded_size):
        """Focal + dice losses on the last layer's matching; invalid masks raise on every process at once."""
        error = None
        try:
            check_mask_targets(labels, tuple(padded_size))
        except (TypeError, ValueError) as exc:
            error = exc
        count = sum(int(target["class_labels"].shape[0]) for target in labels)
        num_boxes = global_normalizers(count, 1.0, logits.device, error)[0].to(pred_masks.dtype)
        indices = self.build_criterion().matcher(logits.detach(), pred_boxes.detach(), labels)
        return self.build_mask_loss()(pred_masks, labels, indices, num_boxes)

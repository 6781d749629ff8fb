"""DetrHfForSegmentation: the detection model plus DETR's mask head (`pred_masks`) and the mask losses."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES

from .backbone import downsample_mask
from .configuration_detr_hf import DetrHfConfig
from .criterion import global_normalizers
from .extra_queries import ExtraQueries
from .mask_head import KaimingConv2d, MaskHead, QueryAttentionMaps, XavierLinear
from .mask_loss import MaskLoss, check_mask_targets
from .modeling_detr_hf import DetrHfForObjectDetection, DetrHfObjectDetectionOutput

logger = logging.getLogger(__name__)

# Strides of the backbone levels the mask head refines with, coarsest first.
MASK_HEAD_STRIDES = (16, 8, 4)
MASK_HEAD_PREFIXES = ("bbox_attention.", "mask_head.")


@dataclass
class DetrHfSegmentationOutput(DetrHfObjectDetectionOutput):
    """Outputs of `DetrHfForSegmentation`: those of `DetrHfObjectDetectionOutput`, plus

    pred_masks: [B, Q, h_4, w_4] mask logits at the backbone's stride-4 resolution of the padded batch.
    loss / loss_dict then also hold `loss_mask` (focal) and `loss_dice` of the last decoder layer.
    """

    pred_masks: torch.Tensor | None = None


class DetrHfForSegmentation(DetrHfForObjectDetection):
    """DETR for panoptic / instance segmentation: class logits, boxes and one mask per object query.

    The detector is `DetrHfForObjectDetection` itself (same parameter names: `model.*`,
    `class_labels_classifier.*`, `bbox_predictor.*`), so a detection checkpoint loads into it directly and only
    the mask head (`bbox_attention.*`, `mask_head.*`) starts from its initialisation.
    """

    def __init__(self, config: DetrHfConfig) -> None:
        if ExtraQueries.enabled(config):
            raise ValueError(
                "DetrHfForSegmentation does not support training-only query groups or denoising queries "
                f"(num_query_groups={config.num_query_groups}, num_denoising_groups={config.num_denoising_groups})"
            )
        super().__init__(config)
        level_channels = self.model.backbone.enable_levels(MASK_HEAD_STRIDES)
        heads = config.encoder_attention_heads
        self.bbox_attention = QueryAttentionMaps(config.d_model, heads)
        self.mask_head = MaskHead(config.d_model, heads, level_channels)
        self.post_init()  # initialises the mask head (the detector is marked initialised already)

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
        with _HeldRecords(logging.getLogger("transformers.modeling_utils")) as held:
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = set(info.get("missing_keys", ()))
        head_missing = {key for key in missing if key.startswith(MASK_HEAD_PREFIXES)}
        problems = [info.get(name) for name in ("unexpected_keys", "mismatched_keys", "error_msgs")]
        only_head_missing = bool(head_missing) and head_missing == missing and not any(problems)
        # transformers' load report would list every tensor of the head: the one line below says it instead.
        held.release(drop=(lambda record: "LOAD REPORT" in record.getMessage()) if only_head_missing else None)
        if only_head_missing:
            source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            logger.warning(
                "%s holds no mask head weights (a detection checkpoint?): bbox_attention and mask_head "
                "(%d tensors) are freshly initialised; train them before use",
                source, len(head_missing),
            )  # fmt: skip
        return (model, info) if wants_info else model

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
        return_dict = self.config.return_dict if return_dict is None else return_dict
        detected = super().forward(
            pixel_values, pixel_mask, labels, output_attentions, output_hidden_states, return_dict=True, **kwargs
        )
        features, levels = self.model.backbone.pop_levels()
        # The encoder's input map again (the same op on the same tensor as inside the model): [B, d, h, w].
        projected = self.model.input_projection(features)
        batch, d_model, height, width = projected.shape
        feature_mask = downsample_mask(self._pixel_validity(pixel_values, pixel_mask), (height, width))
        # Encoder memory [B, h*w, d] -> [B, d, h, w].
        memory = detected.encoder_last_hidden_state.transpose(1, 2).reshape(batch, d_model, height, width)
        attention_maps = self.bbox_attention(detected.last_hidden_state, memory, feature_mask)
        output = DetrHfSegmentationOutput(**detected, pred_masks=self.mask_head(projected, attention_maps, levels))
        if labels is not None:
            mask_total, mask_terms = self._mask_loss(output, labels, pixel_values.shape[-2:])
            output.loss = output.loss + mask_total
            output.loss_dict.update(mask_terms)
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _pixel_validity(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, H, W] bool, True = real pixel (the model has validated pixel_mask already)."""
        if pixel_mask is None:
            batch, _, height, width = pixel_values.shape
            return torch.ones((batch, height, width), dtype=torch.bool, device=pixel_values.device)
        return pixel_mask.to(torch.bool)

    def _mask_loss(self, output: DetrHfSegmentationOutput, labels, padded_size):
        """Focal + dice losses on the last layer's matching; invalid masks raise on every process at once."""
        logits, pred_boxes, pred_masks = output.logits, output.pred_boxes, output.pred_masks
        error = None
        try:
            check_mask_targets(labels, tuple(padded_size))
        except (TypeError, ValueError) as exc:
            error = exc
        count = sum(int(target["class_labels"].shape[0]) for target in labels)
        num_boxes = global_normalizers(count, 1.0, logits.device, error)[0]  # float32, as the mask loss
        indices = self.build_criterion().matcher(logits.detach(), pred_boxes.detach(), labels)
        return self.build_mask_loss()(pred_masks, labels, indices, num_boxes)


class _HeldRecords(logging.Filter):
    """Within `with`, hold back the records of `logger`; `release` then passes them on, except those `drop` picks."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def __enter__(self) -> _HeldRecords:
        self.logger.addFilter(self)
        return self

    def __exit__(self, *exc_info) -> None:
        self.logger.removeFilter(self)
        if exc_info[0] is not None:  # loading failed: show everything that was said
            self.release()

    def release(self, drop=None) -> None:
        records, self.records = self.records, []
        for record in records:
            if drop is None or not drop(record):
                self.logger.handle(record)


# pipeline("image-segmentation") checks a model against transformers' own name table (see modeling_detr_hf.py).
MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES.setdefault(DetrHfConfig.model_type, DetrHfForSegmentation.__name__)

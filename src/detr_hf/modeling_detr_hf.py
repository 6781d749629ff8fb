"""DetrHfModel (backbone + transformer) and DetrHfForObjectDetection (class and box heads, loss)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES
from transformers.utils import logging

from .backbone import DetrHfBackbone
from .box_head import BoxHead
from .configuration_detr_hf import DetrHfConfig
from .criterion import DetrHfLoss
from .extra_queries import ExtraQueries
from .extra_query_loss import extra_query_loss
from .hub_io import load_pretrained, push_to_hub, save_pretrained
from .model_inputs import check_model_inputs, reject_unknown_kwargs
from .modeling_outputs import DetrHfModelOutput, DetrHfObjectDetectionOutput
from .position_encoding import LearnedPositionEncoding, build_position_encoding
from .precision import warn_if_slow_bf16
from .targets import PackedTargets, pack_targets_or_keep
from .transformer import DetrHfDecoder, DetrHfEncoder, TransformerLinear

logger = logging.get_logger(__name__)


class DetrHfPreTrainedModel(PreTrainedModel):
    """Weight init as the original DETR, and loading that never fetches backbone weights."""

    config_class = DetrHfConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # device_map="auto" keeps each of these on one device.
    _no_split_modules = ["DetrHfBackbone", "EncoderLayer", "DecoderLayer"]
    supports_gradient_checkpointing = True
    # Attention through transformers' interface (attention.py): eager, sdpa (default) and flex attention.
    # Flash attention is refused at load time: its padding path cannot mask the padded keys of a cross-attention.
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = False

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        # transformers' shortcut for remote code marks every module owning no tensor itself (the backbone
        # wrapper among them) as initialised. Not needed here: `_init_weights` only uses `init.*`, which skip
        # loaded tensors one by one.
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only tensors not already loaded are written: `init.*` skip tensors flagged `_is_hf_initialized`.
        if getattr(module, "_timm_module", False):
            return  # inside the timm body: initialised by DetrHfBackbone below, with timm's own init
        if isinstance(module, DetrHfBackbone):
            module.initialize_missing()
        elif isinstance(module, TransformerLinear):
            init.xavier_uniform_(module.weight, gain=self.config.init_xavier_std)
            init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, LearnedPositionEncoding):
            init.uniform_(module.row_embeddings.weight)
            init.uniform_(module.column_embeddings.weight)
        elif isinstance(module, nn.Embedding) and module.weight.shape[-1] == self.config.d_model:
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            _torch_default_init(module)

    # Loading, saving and publishing policy: hub_io.py.
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`: weights only from safetensors, the backbone's from the checkpoint
        (never timm's source), the caller's config untouched, frozen stages kept frozen, a transformers DETR converted
        while loading (see hub_io.py)."""
        return load_pretrained(cls, super().from_pretrained, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, model_card: dict | None = None, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the code of all four auto classes (`auto_map`) and a generated
        README.md (`model_card`: keyword arguments of `detr_hf.modelcard.build_model_card`); see hub_io.py."""
        return save_pretrained(super().save_pretrained, self, save_directory, *args, model_card=model_card, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """`PreTrainedModel.push_to_hub` that uploads the generated model card (see `save_pretrained`)."""
        return push_to_hub(super().push_to_hub, self, repo_id, **kwargs)


def _torch_default_init(module: nn.Module) -> None:
    """PyTorch's own Linear/Conv init (kaiming-uniform weight, fan-in uniform bias), as the original DETR keeps."""
    init.kaiming_uniform_(module.weight, a=5**0.5)
    if module.bias is not None:
        fan_in = module.weight[0].numel()
        bound = 1 / fan_in**0.5
        init.uniform_(module.bias, -bound, bound)


class DetrHfModel(DetrHfPreTrainedModel):
    """Backbone → 1×1 projection → position encoding → encoder → decoder over learned object queries."""

    def __init__(self, config: DetrHfConfig) -> None:
        super().__init__(config)
        self.backbone = DetrHfBackbone(
            config.backbone,
            config.backbone_kwargs,
            num_channels=config.num_channels,
            pretrained=config.use_pretrained_backbone,
            weights_path=config.backbone_weights_path,
            freeze_batch_norm=config.freeze_backbone_batch_norm,
            frozen_stages=config.backbone_frozen_stages,
        )
        self.input_projection = nn.Conv2d(self.backbone.num_channels, config.d_model, kernel_size=1)
        self.position_encoding = build_position_encoding(
            config.position_embedding_type,
            config.d_model,
            config.max_position_embeddings,
            config.position_temperature,
        )
        self.query_position_embeddings = nn.Embedding(config.num_queries, config.d_model)
        layers = dict(
            d_model=config.d_model,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation_dropout=config.activation_dropout,
            activation=config.activation_function,
            pre_norm=config.pre_norm,
        )
        self.encoder = DetrHfEncoder(
            num_layers=config.encoder_layers,
            num_heads=config.encoder_attention_heads,
            ffn_dim=config.encoder_ffn_dim,
            **layers,
        )
        self.decoder = DetrHfDecoder(
            num_layers=config.decoder_layers,
            num_heads=config.decoder_attention_heads,
            ffn_dim=config.decoder_ffn_dim,
            **layers,
        )
        # Training-only extra queries (query groups, denoising queries): separate parameters, unused at inference.
        # The attribute keeps its 0.1.0 name: it is the checkpoints' key prefix.
        self.training_queries = ExtraQueries.from_config(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        **kwargs,
    ) -> DetrHfModelOutput | tuple:
        """pixel_values [B, C, H, W] float; pixel_mask [B, H, W] of any dtype holding 1 = pixel, 0 = padding
        (None = all valid). labels: only read in training with extra queries on (denoising queries are built
        from them); label dicts or already `PackedTargets`. `output_attentions` / `output_hidden_states` /
        `return_dict` default to the config's; attention weights exist only under attn_implementation="eager"
        (else a warning, and None, as transformers' own models)."""
        reject_unknown_kwargs(kwargs)
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        attn_implementation = config._attn_implementation or "sdpa"
        if output_attentions and attn_implementation != "eager":
            logger.warning_once(
                f"DetrHfModel: attn_implementation={attn_implementation!r} computes no attention weights, so "
                "output_attentions=True returns none; load the model with attn_implementation='eager' to get them."
            )
            output_attentions = False
        pixel_mask = check_model_inputs(pixel_values, pixel_mask, num_channels=self.config.num_channels)
        # A bf16 model (from_pretrained(..., dtype=torch.bfloat16)) takes the processor's float32 pixels as they are.
        weight_dtype = self.input_projection.weight.dtype
        pixel_values = pixel_values.to(weight_dtype)
        warn_if_slow_bf16(pixel_values.device, weight_dtype)

        features, mask = self.backbone(pixel_values, pixel_mask)
        pos = self.position_encoding(mask, features.dtype)
        source = self.input_projection(features)
        batch = source.shape[0]
        # [B, d, h, w] -> [B, h*w, d]: one token per feature-map cell (a view for channels-last maps).
        source = source.permute(0, 2, 3, 1).flatten(1, 2)
        pos = pos.permute(0, 2, 3, 1).flatten(1, 2)
        key_mask = mask.flatten(1)[:, None, None, :]  # [B, 1, 1, h*w], True = real pixel
        attention = dict(attn_implementation=attn_implementation, output_attentions=output_attentions)
        memory, enc_states, enc_attns = self.encoder(
            source, position=pos, key_mask=key_mask, output_hidden_states=output_hidden_states, **attention
        )
        query_pos = self.query_position_embeddings.weight[None].expand(batch, -1, -1)
        target = torch.zeros_like(query_pos)
        self_attn_mask = layout = extra = None
        if self.training_queries is not None and self.training and labels is not None:  # extra_queries.py
            target, query_pos, self_attn_mask, layout = self.training_queries(target, query_pos, labels)
        decoded, dec_states, self_attns, cross_attns = self.decoder(
            target,
            query_position=query_pos,
            memory=memory,
            memory_position=pos,
            memory_mask=key_mask,
            self_attn_mask=self_attn_mask,
            output_hidden_states=output_hidden_states,
            **attention,
        )
        if layout is not None:  # [L, B, T, d] -> inference queries [L, B, Q, d] + extra queries' states
            decoded, extra = layout.split(decoded)
        output = DetrHfModelOutput(
            last_hidden_state=decoded[-1],
            intermediate_hidden_states=decoded,
            encoder_last_hidden_state=memory,
            encoder_hidden_states=enc_states or None,
            decoder_hidden_states=dec_states or None,
            encoder_attentions=enc_attns or None,
            decoder_attentions=self_attns or None,
            cross_attentions=cross_attns or None,
            training_queries=extra,
        )
        return output if return_dict else output.to_tuple()


class DetrHfForObjectDetection(DetrHfPreTrainedModel):
    """DETR for object detection: class logits (num_labels + 1) and boxes for every object query."""

    def __init__(self, config: DetrHfConfig) -> None:
        super().__init__(config)
        self.model = DetrHfModel(config)
        self.class_labels_classifier = nn.Linear(config.d_model, config.num_labels + 1)
        self.bbox_predictor = BoxHead(config.d_model)
        # (config values, loss) of `criterion`: a tuple, so not a submodule and never in the state_dict.
        self._criterion_cache: tuple[tuple, DetrHfLoss] | None = None
        self.post_init()

    def build_criterion(self) -> DetrHfLoss:
        """A new loss module for the current config (`criterion` caches it)."""
        return DetrHfLoss.from_config(self.config)

    @property
    def criterion(self) -> DetrHfLoss:
        """The loss module: built once, rebuilt only when a config field it reads (`config_fields`) changes."""
        values = DetrHfLoss.config_values(self.config)
        if self._criterion_cache is None or self._criterion_cache[0] != values:
            self._criterion_cache = (values, self.build_criterion())
        return self._criterion_cache[1]

    @property
    def loss_function(self) -> DetrHfLoss:
        """detr_hf's set-prediction loss (transformers' name lookup would give its own ForObjectDetectionLoss)."""
        return self.criterion

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DetrHfObjectDetectionOutput | tuple:
        """labels: one dict per image with `class_labels` [N] int64 and `boxes` [N, 4] normalised (cx, cy, w, h)."""
        reject_unknown_kwargs(kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        # Labels are validated and packed once for the step (loss and extra queries share them); invalid ones
        # stay as given, and the criterion raises their error on every process together.
        targets = pack_targets_or_keep(labels, pixel_values, self.config.num_labels, self.dtype)
        out = self.model(
            pixel_values,
            pixel_mask,
            output_attentions,
            output_hidden_states,
            return_dict=True,
            labels=targets if isinstance(targets, PackedTargets) else None,
        )
        hidden = out.intermediate_hidden_states  # [L, B, Q, d]
        # The last layer goes through the heads on its own, so the aux flag cannot change even the
        # rounding of the predictions (a GEMM over more rows may block differently).
        logits, pred_boxes = self._predict(hidden[-1])
        # Supervised layers, first layer first: [L', B, Q, C+1] and [L', B, Q, 4] (L' = 1 without aux outputs).
        all_logits, all_boxes = logits[None], pred_boxes[None]
        auxiliary_outputs = None
        if self.config.auxiliary_loss and (labels is not None or self.training) and len(hidden) > 1:
            aux_logits, aux_boxes = self._predict(hidden[:-1])
            all_logits, all_boxes = torch.cat((aux_logits, all_logits)), torch.cat((aux_boxes, all_boxes))
            auxiliary_outputs = [{"logits": lg, "pred_boxes": bx} for lg, bx in zip(aux_logits, aux_boxes)]

        loss = loss_dict = extra_outputs = None
        criterion = self.criterion.to(logits.device) if labels is not None else None
        if criterion is not None and out.training_queries is not None:  # extra_query_loss.py
            extra_logits, extra_boxes = self._predict(out.training_queries.hidden_states[-len(all_logits) :])
            extra_outputs = {"logits": extra_logits, "pred_boxes": extra_boxes}
            loss, loss_dict = extra_query_loss(
                criterion, all_logits, all_boxes, extra_logits, extra_boxes, out.training_queries.layout, targets
            )
        elif criterion is not None:
            loss, loss_dict = criterion.stacked(all_logits, all_boxes, targets)
        output = DetrHfObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            auxiliary_outputs=auxiliary_outputs,
            last_hidden_state=out.last_hidden_state,
            encoder_last_hidden_state=out.encoder_last_hidden_state,
            encoder_hidden_states=out.encoder_hidden_states,
            decoder_hidden_states=out.decoder_hidden_states,
            encoder_attentions=out.encoder_attentions,
            decoder_attentions=out.decoder_attentions,
            cross_attentions=out.cross_attentions,
            training_query_outputs=extra_outputs,
        )
        return output if return_dict else output.to_tuple()

    def _predict(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared heads: hidden [..., Q, d] -> logits [..., Q, num_labels + 1] and boxes [..., Q, 4]."""
        return self.class_labels_classifier(hidden), self.bbox_predictor(hidden)


# pipeline("object-detection") checks a model against transformers' own name table, not the Auto registry; this
# module runs on import, also as a saved folder's remote code, so the pipeline knows the class there too.
MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES.setdefault(DetrHfConfig.model_type, DetrHfForObjectDetection.__name__)

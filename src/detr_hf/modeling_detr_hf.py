"""DetrHfModel (backbone + transformer) and DetrHfForObjectDetection (class and box heads, loss)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .backbone import DetrHfBackbone
from .configuration_detr_hf import DetrHfConfig
from .criterion import DetrHfLoss
from .position_encoding import LearnedPositionEncoding, build_position_encoding
from .sharing import push_with_card, save_with_code_and_card
from .tracing import is_tracing
from .training_queries import TrainingQueries, TrainingQueryLayout
from .training_query_loss import training_query_loss
from .transformer import DetrHfDecoder, DetrHfEncoder, TransformerLinear
from .transformers_checkpoint import load_converted


@dataclass
class DetrHfModelOutput(ModelOutput):
    """Outputs of `DetrHfModel`.

    last_hidden_state: [B, Q, d] final decoder output (after the decoder LayerNorm).
    intermediate_hidden_states: [L, B, Q, d] every decoder layer's normalised output.
    encoder_last_hidden_state: [B, h*w, d] encoder memory.
    feature_mask: [B, h, w] bool, True where the feature map covers real pixels.
    training_queries: in training with labels and extra queries on (see training_queries.py), their layout and
        decoder outputs; the fields above then still hold only the inference queries.
    """

    last_hidden_state: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    feature_mask: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    training_queries: TrainingQueryLayout | None = None


@dataclass
class DetrHfObjectDetectionOutput(ModelOutput):
    """Outputs of `DetrHfForObjectDetection`.

    loss: scalar total loss (when `labels` were given); loss_dict: its unweighted terms and logging metrics.
    logits: [B, Q, num_labels + 1] (last = no object); pred_boxes: [B, Q, 4] normalised (cx, cy, w, h).
    auxiliary_outputs: one dict {"logits", "pred_boxes"} per earlier decoder layer when `auxiliary_loss`.
    training_query_outputs: training-only extra queries' predictions {"logits", "pred_boxes"} [L, B, T - Q, ...]
        (other query groups, then denoising queries; see training_queries.py), never in the fields above.
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


class DetrHfPreTrainedModel(PreTrainedModel):
    """Weight init as the original DETR, and loading that never fetches backbone weights."""

    config_class = DetrHfConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The timm backbone is marked initialised (see DetrHfBackbone): it keeps timm's init or its weights.
        if isinstance(module, TransformerLinear):
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

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; the backbone's weights come from the checkpoint, never timm's source."""
        config = kwargs.get("config")
        # Not `DetrHfConfig`: under trust_remote_code the config class may come from another module copy.
        if isinstance(config, PretrainedConfig):
            config = kwargs["config"] = copy.deepcopy(config)  # never change the caller's object
            config.use_pretrained_backbone = False
            config.backbone_weights_path = None
        else:
            kwargs.setdefault("use_pretrained_backbone", False)
            kwargs.setdefault("backbone_weights_path", None)
        # Weights only from safetensors: a pytorch_model.bin is a pickle. `use_safetensors=False` opts in.
        safetensors_only = kwargs.setdefault("use_safetensors", True)
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        # A transformers DETR (config.json model_type "detr", folder or Hub id) is converted while loading.
        model = load_converted(cls, super().from_pretrained, source, args[1:], kwargs)
        try:
            if model is None:
                model = super().from_pretrained(*args, **kwargs)
        except SafetensorError as error:
            raise OSError(
                f"unreadable safetensors file {_unreadable_safetensors(source)}: {error}"
            ) from error
        except OSError as error:
            if safetensors_only and source is not None and (Path(source) / "pytorch_model.bin").is_file():
                raise OSError(
                    f"{source} has pytorch_model.bin but no model.safetensors; detr_hf loads weights only from "
                    "safetensors (a .bin file is a pickle). Re-save it with save_pretrained, or pass "
                    "use_safetensors=False if you trust the file."
                ) from error
            raise
        # transformers rebuilds loaded parameters as trainable: restore the config's frozen backbone stages.
        loaded = model[0] if isinstance(model, tuple) else model
        for module in loaded.modules():
            if isinstance(module, DetrHfBackbone):
                module.apply_freezing()
        return model

    def save_pretrained(self, save_directory, *args, model_card: dict | None = None, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the code of all four auto classes (`auto_map`) and a generated
        README.md (`model_card`: keyword arguments of `detr_hf.modelcard.build_model_card`)."""
        return save_with_code_and_card(
            super().save_pretrained, self.config, save_directory, args, kwargs, model_card
        )

    def push_to_hub(self, repo_id: str, **kwargs):
        """`PreTrainedModel.push_to_hub` that uploads the generated model card (see `save_pretrained`)."""
        tags = list(dict.fromkeys([*(self.model_tags or []), *(kwargs.pop("tags", None) or [])]))
        return push_with_card(self.save_pretrained, repo_id, tags=tags or None, **kwargs)


# Keywords transformers' Trainer may pass to any model's forward; everything else unknown is a caller's typo.
_IGNORED_FORWARD_KWARGS = frozenset({"num_items_in_batch"})


def _reject_unknown_kwargs(kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - _IGNORED_FORWARD_KWARGS)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown} (inputs are pixel_values, pixel_mask, labels)")


def _unreadable_safetensors(source) -> str:
    """The first .safetensors file in a local folder whose header does not parse (else `source` itself)."""
    folder = Path(str(source))
    for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(file, "pt"):
                pass
        except SafetensorError:
            return str(file)
    return str(source)


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
        self.encoder = DetrHfEncoder(config)
        self.decoder = DetrHfDecoder(config)
        # Training-only query groups / denoising queries: separate parameters, unused at inference.
        self.training_queries = TrainingQueries(config) if TrainingQueries.enabled(config) else None
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
        """pixel_values [B, C, H, W] float; pixel_mask [B, H, W] (1 = pixel, 0 = padding; None = all valid).
        labels: only read in training with extra queries on (denoising queries are built from them)."""
        _reject_unknown_kwargs(kwargs)
        output_attentions = bool(output_attentions)
        output_hidden_states = bool(output_hidden_states)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        pixel_mask = self._check_inputs(pixel_values, pixel_mask)

        features, mask = self.backbone(pixel_values, pixel_mask)
        pos = self.position_encoding(mask, features.dtype)
        source = self.input_projection(features)
        batch = source.shape[0]
        # [B, d, h, w] -> [B, h*w, d]: one token per feature-map cell (a view for channels-last maps).
        source = source.permute(0, 2, 3, 1).flatten(1, 2)
        pos = pos.permute(0, 2, 3, 1).flatten(1, 2)
        key_mask = mask.flatten(1)[:, None, None, :]
        memory, enc_states, enc_attns = self.encoder(
            source, pos, key_mask, output_attentions, output_hidden_states
        )
        query_pos = self.query_position_embeddings.weight[None].expand(batch, -1, -1)
        target = torch.zeros_like(query_pos)
        self_attn_mask = extra = None
        if self.training_queries is not None and self.training and labels is not None:  # training_queries.py
            target, query_pos, self_attn_mask, extra = self.training_queries(target, query_pos, labels)
        decoded, dec_states, self_attns, cross_attns = self.decoder(
            target, query_pos, memory, pos, key_mask, self_attn_mask, output_attentions, output_hidden_states
        )
        if extra is not None:
            # [L, B, T, d] -> inference queries [L, B, Q, d] + extra queries [L, B, T - Q, d]
            extra.hidden_states = decoded[:, :, self.config.num_queries :]
            decoded = decoded[:, :, : self.config.num_queries]
        output = DetrHfModelOutput(
            last_hidden_state=decoded[-1],
            intermediate_hidden_states=decoded,
            encoder_last_hidden_state=memory,
            feature_mask=mask,
            encoder_hidden_states=enc_states or None,
            decoder_hidden_states=dec_states or None,
            encoder_attentions=enc_attns or None,
            decoder_attentions=self_attns or None,
            cross_attentions=cross_attns or None,
            training_queries=extra,
        )
        return output if return_dict else output.to_tuple()

    def _check_inputs(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
        """Validate shapes and dtypes; return the mask as bool [B, H, W] (True = pixel)."""
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape [batch, {self.config.num_channels}, height, width], "
                f"got {tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values must be a float tensor (normalised by the image processor), got {pixel_values.dtype}"
            )
        # One reduction instead of a full boolean copy: any NaN/inf makes the sum non-finite (a finite
        # overflow only sends us to the exact per-image check, which then finds nothing).
        if not is_tracing() and not torch.isfinite(pixel_values.sum()):
            bad = (~torch.isfinite(pixel_values)).flatten(1).any(1).nonzero().flatten().tolist()
            if bad:
                raise ValueError(f"pixel_values contain NaN or inf in image(s) {bad}")
        batch, _, height, width = pixel_values.shape
        if pixel_mask is None:
            return torch.ones((batch, height, width), dtype=torch.bool, device=pixel_values.device)
        if pixel_mask.shape != (batch, height, width):
            raise ValueError(
                f"pixel_mask must have shape {(batch, height, width)} to match pixel_values, got {tuple(pixel_mask.shape)}"
            )
        if pixel_mask.is_floating_point() or pixel_mask.is_complex():
            raise TypeError(
                f"pixel_mask must be an int or bool tensor (1 = pixel, 0 = padding), got {pixel_mask.dtype}"
            )
        mask = pixel_mask.to(torch.bool)
        if not is_tracing() and not mask.flatten(1).any(1).all():
            empty = (~mask.flatten(1).any(1)).nonzero().flatten().tolist()
            raise ValueError(f"pixel_mask has no valid pixel in image(s) {empty}")
        return mask


class BoxHead(nn.Module):
    """3-layer MLP (d → d → d → 4) with ReLU, then sigmoid: normalised (cx, cy, w, h)."""

    def __init__(self, d_model: int, num_layers: int = 3) -> None:
        super().__init__()
        dims = [d_model] * num_layers + [4]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x.sigmoid()


class DetrHfForObjectDetection(DetrHfPreTrainedModel):
    """DETR for object detection: class logits (num_labels + 1) and boxes for every object query."""

    def __init__(self, config: DetrHfConfig) -> None:
        super().__init__(config)
        self.model = DetrHfModel(config)
        self.class_labels_classifier = nn.Linear(config.d_model, config.num_labels + 1)
        self.bbox_predictor = BoxHead(config.d_model)
        self.post_init()

    def build_criterion(self) -> DetrHfLoss:
        """The loss module for the current config (rebuilt when the config changes)."""
        return DetrHfLoss.from_config(self.config)

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
        _reject_unknown_kwargs(kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.model(
            pixel_values, pixel_mask, output_attentions, output_hidden_states, return_dict=True, labels=labels
        )
        hidden = out.intermediate_hidden_states
        # The last layer goes through the heads on its own, so the aux flag cannot change even the
        # rounding of the predictions (a GEMM over more rows may block differently).
        logits = self.class_labels_classifier(hidden[-1])
        pred_boxes = self.bbox_predictor(hidden[-1])
        auxiliary_outputs = None
        if self.config.auxiliary_loss and (labels is not None or self.training) and len(hidden) > 1:
            # Heads shared by the earlier layers: [L-1, B, Q, d] -> [L-1, B, Q, C+1] and [L-1, B, Q, 4].
            aux_logits = self.class_labels_classifier(hidden[:-1])
            aux_boxes = self.bbox_predictor(hidden[:-1])
            auxiliary_outputs = [{"logits": lg, "pred_boxes": bx} for lg, bx in zip(aux_logits, aux_boxes)]

        loss = loss_dict = extra_outputs = None
        if labels is not None and out.training_queries is not None:  # training_query_loss.py
            loss, loss_dict, extra_outputs = self._training_query_loss(
                out.training_queries, labels, auxiliary_outputs, logits, pred_boxes
            )
        elif labels is not None:
            loss, loss_dict = self.build_criterion().to(logits.device)(
                logits, pred_boxes, labels, auxiliary_outputs
            )
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

    def _training_query_loss(self, layout, labels, auxiliary_outputs, logits, pred_boxes):
        """Loss with the training-only extra queries; their predictions [L, B, T - Q, ...] as a dict."""
        layers = 1 + len(auxiliary_outputs or [])
        extra_hidden = layout.hidden_states[-layers:]
        extra = {
            "logits": self.class_labels_classifier(extra_hidden),
            "pred_boxes": self.bbox_predictor(extra_hidden),
        }
        # Supervised layers of the inference queries, first layer first: [L, B, Q, C+1] and [L, B, Q, 4].
        all_logits = torch.stack([aux["logits"] for aux in auxiliary_outputs or []] + [logits])
        all_boxes = torch.stack([aux["pred_boxes"] for aux in auxiliary_outputs or []] + [pred_boxes])
        criterion = self.build_criterion().to(logits.device)
        loss, loss_dict = training_query_loss(
            criterion, all_logits, all_boxes, extra["logits"], extra["pred_boxes"], layout, labels
        )
        return loss, loss_dict, extra

"""DetrHfConfig: every hyper-parameter of a DETR model, its loss and its backbone."""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from typing import Any

from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

_ACTIVATIONS = ("relu", "gelu", "silu", "gelu_new", "quick_gelu")
_POSITION_TYPES = ("sine", "learned")


class DetrHfConfig(PretrainedConfig):
    """Configuration of `DetrHfModel` / `DetrHfForObjectDetection`.

    Field names follow transformers' `DetrConfig` where the concept is the same; defaults follow the
    DETR-R50 recipe (auxiliary decoder losses on, dropout 0.1 everywhere as in the original).

    Backbone fields beyond `DetrConfig`:
        backbone: any timm model name, built with `features_only=True`; the last feature level is used.
        backbone_kwargs: extra `timm.create_model` arguments, e.g. `{"output_stride": 16}` (DC5) or
            `{"out_indices": (2,)}` to cut a small backbone early.
        use_pretrained_backbone: fetch timm's pretrained weights when the model is *built from a config*
            (never when loading a saved detr_hf model, whose weights come from its own file).
        backbone_weights_path: a local timm weights file used instead of timm's own source.
        freeze_backbone_batch_norm: replace BatchNorm by frozen BatchNorm. `None` resolves to True
            when the backbone starts from trained weights and False from random weights (frozen random
            BN keeps zero-initialised gammas at zero and kills residual branches).
        backbone_frozen_stages: how many leading stages get `requires_grad=False`, counted as
            mmdetection does: 0 = none, 1 = stem + the stride-4 stage (the paper's choice), 2 = also the
            stride-8 stage, ... Works for any timm model through its `feature_info`. `None` resolves
            to 1 with trained weights and 0 otherwise.

    Segmentation fields (read by `DetrHfForSegmentation` only): `mask_loss_coefficient` (sigmoid focal loss)
    and `dice_loss_coefficient` (dice loss) weight the mask losses, 1 and 1 as the original DETR.

    `init_std` is kept for `DetrConfig` compatibility (checkpoint conversion copies it); detr_hf's weight
    init follows the original DETR and does not read it.
    """

    model_type = "detr_hf"
    # As transformers' DetrConfig: generic code reads (and may assign) these names.
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

    def __init__(
        self,
        backbone: str = "resnet50",
        backbone_kwargs: dict[str, Any] | None = None,
        use_pretrained_backbone: bool = False,
        backbone_weights_path: str | None = None,
        freeze_backbone_batch_norm: bool | None = None,
        backbone_frozen_stages: int | None = None,
        num_channels: int = 3,
        d_model: int = 256,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        encoder_attention_heads: int = 8,
        decoder_attention_heads: int = 8,
        encoder_ffn_dim: int = 2048,
        decoder_ffn_dim: int = 2048,
        num_queries: int = 100,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.1,
        activation_function: str = "relu",
        pre_norm: bool = False,
        position_embedding_type: str = "sine",
        max_position_embeddings: int = 50,
        position_temperature: float = 10000.0,
        init_std: float = 0.02,
        init_xavier_std: float = 1.0,
        auxiliary_loss: bool = True,
        class_cost: float = 1.0,
        bbox_cost: float = 5.0,
        giou_cost: float = 2.0,
        bbox_loss_coefficient: float = 5.0,
        giou_loss_coefficient: float = 2.0,
        eos_coefficient: float = 0.1,
        num_query_groups: int = 1,
        num_denoising_groups: int = 0,
        denoising_box_noise_scale: float = 0.4,
        denoising_label_noise_ratio: float = 0.2,
        # --- segmentation (DetrHfForSegmentation): mask loss weights, as the original DETR ---
        mask_loss_coefficient: float = 1.0,
        dice_loss_coefficient: float = 1.0,
        **kwargs: Any,
    ) -> None:
        _warn_unknown_fields(kwargs)
        kwargs.setdefault("is_encoder_decoder", True)  # as DetrConfig: outputs carry encoder_* / decoder_* fields
        if "num_labels" not in kwargs and "id2label" not in kwargs:
            kwargs["num_labels"] = 91  # COCO, as the recipe
        trained_backbone = bool(use_pretrained_backbone or backbone_weights_path)
        if freeze_backbone_batch_norm is None:
            freeze_backbone_batch_norm = trained_backbone
        if backbone_frozen_stages is None:
            backbone_frozen_stages = 1 if trained_backbone else 0

        self.backbone = backbone
        # Tuples become lists so the JSON round trip is exact.
        self.backbone_kwargs = {
            k: list(v) if isinstance(v, tuple) else v for k, v in dict(backbone_kwargs or {}).items()
        }
        self.use_pretrained_backbone = use_pretrained_backbone
        self.backbone_weights_path = backbone_weights_path
        self.freeze_backbone_batch_norm = freeze_backbone_batch_norm
        self.backbone_frozen_stages = backbone_frozen_stages
        self.num_channels = num_channels
        self.d_model = d_model
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.encoder_attention_heads = encoder_attention_heads
        self.decoder_attention_heads = decoder_attention_heads
        self.encoder_ffn_dim = encoder_ffn_dim
        self.decoder_ffn_dim = decoder_ffn_dim
        self.num_queries = num_queries
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.activation_function = activation_function
        self.pre_norm = pre_norm
        self.position_embedding_type = position_embedding_type
        self.max_position_embeddings = max_position_embeddings
        self.position_temperature = position_temperature
        self.init_std = init_std
        self.init_xavier_std = init_xavier_std
        self.auxiliary_loss = auxiliary_loss
        self.class_cost = class_cost
        self.bbox_cost = bbox_cost
        self.giou_cost = giou_cost
        self.bbox_loss_coefficient = bbox_loss_coefficient
        self.giou_loss_coefficient = giou_loss_coefficient
        self.eos_coefficient = eos_coefficient
        self.num_query_groups = num_query_groups
        self.num_denoising_groups = num_denoising_groups
        self.denoising_box_noise_scale = denoising_box_noise_scale
        self.denoising_label_noise_ratio = denoising_label_noise_ratio
        # --- segmentation fields ---
        self.mask_loss_coefficient = mask_loss_coefficient
        self.dice_loss_coefficient = dice_loss_coefficient
        super().__init__(**kwargs)
        self.validate_fields()

    def to_diff_dict(self) -> dict[str, Any]:
        """`PretrainedConfig.to_diff_dict` that always writes the labels: transformers leaves out a 2-label
        placeholder `id2label` as its default, but detr_hf's default is COCO's 91 labels."""
        diff = super().to_diff_dict()
        diff["id2label"] = {str(k): v for k, v in self.id2label.items()}
        if self.label2id is not None:
            diff["label2id"] = dict(self.label2id)
        return diff

    def validate_fields(self) -> None:
        """Raise `ValueError` naming the first invalid field."""
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"DetrHfConfig.backbone must be a timm model name, got {self.backbone!r}")
        _check_backbone_name(self.backbone)
        positive_ints = (
            "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
            "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "num_queries",
            "num_channels", "max_position_embeddings", "num_query_groups",
        )  # fmt: skip
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DetrHfConfig.{name} must be an integer >= 1, got {value!r}")
        if self.num_labels < 1:
            raise ValueError(f"DetrHfConfig.num_labels must be >= 1 (id2label has {self.num_labels} entries)")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, name):
                raise ValueError(
                    f"DetrHfConfig.d_model ({self.d_model}) must be divisible by {name} ({getattr(self, name)})"
                )
        if self.d_model % 2:
            raise ValueError(
                f"DetrHfConfig.d_model must be even for the 2-D position encoding, got {self.d_model}"
            )
        value = self.num_denoising_groups
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"DetrHfConfig.num_denoising_groups must be an integer >= 0, got {value!r}")
        if not self.backbone_frozen_stages >= 0:
            raise ValueError(
                f"DetrHfConfig.backbone_frozen_stages must be >= 0, got {self.backbone_frozen_stages}"
            )
        for name in ("dropout", "attention_dropout", "activation_dropout", "denoising_label_noise_ratio"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"DetrHfConfig.{name} must be in [0, 1], got {value!r}")
        for name in (
            "class_cost", "bbox_cost", "giou_cost", "bbox_loss_coefficient", "giou_loss_coefficient",
            "eos_coefficient", "init_std", "init_xavier_std", "denoising_box_noise_scale",
        ):  # fmt: skip
            value = getattr(self, name)
            if not _is_number(value) or not value >= 0:  # `not >=` also rejects NaN
                raise ValueError(f"DetrHfConfig.{name} must be a number >= 0, got {value!r}")
        if self.activation_function not in _ACTIVATIONS:
            raise ValueError(
                f"DetrHfConfig.activation_function must be one of {_ACTIVATIONS}, got {self.activation_function!r}"
            )
        if self.position_embedding_type not in _POSITION_TYPES:
            raise ValueError(
                f"DetrHfConfig.position_embedding_type must be one of {_POSITION_TYPES}, "
                f"got {self.position_embedding_type!r}"
            )
        if not isinstance(self.backbone_kwargs, dict):
            raise ValueError(
                f"DetrHfConfig.backbone_kwargs must be a dict, got {type(self.backbone_kwargs).__name__}"
            )
        if "features_only" in self.backbone_kwargs or "pretrained" in self.backbone_kwargs:
            raise ValueError(
                "DetrHfConfig.backbone_kwargs must not set 'features_only' or 'pretrained'; "
                "use use_pretrained_backbone / backbone_weights_path"
            )
        # --- segmentation fields ---
        for name in ("mask_loss_coefficient", "dice_loss_coefficient"):
            value = getattr(self, name)
            if not _is_number(value) or not value >= 0:
                raise ValueError(f"DetrHfConfig.{name} (segmentation) must be a number >= 0, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@functools.cache
def _known_fields() -> frozenset[str]:
    own = set(inspect.signature(DetrHfConfig.__init__).parameters) - {"self", "kwargs"}
    base = set(PretrainedConfig().to_dict()) | set(inspect.signature(PretrainedConfig.__init__).parameters)
    # Keys transformers itself reads from kwargs or writes to config.json.
    extra = {"num_labels", "torch_dtype", "name_or_path", "_commit_hash", "attn_implementation", "auto_map"}
    return frozenset(own | base | extra | {"experts_implementation", "per_layer_config"})


def _warn_unknown_fields(kwargs: dict[str, Any]) -> None:
    """Unknown fields are kept (a config from a newer detr_hf still loads) but named, with the closest known field."""
    known = _known_fields()
    for name in sorted(set(kwargs) - known):
        if name.startswith("_"):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        logger.warning("DetrHfConfig: unknown field %r is kept but not used by detr_hf%s", name, hint)


def _check_backbone_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        raise ValueError(
            f"DetrHfConfig.backbone={name!r} is not a timm model name "
            f"(see timm.list_models(); close matches: {timm.list_models(f'*{name[:6]}*')[:5]})"
        )

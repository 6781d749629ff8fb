"""The timm backbone: last feature map (plus finer levels on request), frozen parts, and the padding mask."""

from __future__ import annotations

import functools
import logging

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn

from .frozen_bn_folding import fold_frozen_batch_norm

logger = logging.getLogger(__name__)


class DetrHfBackbone(nn.Module):
    """Runs a timm `features_only` model and returns its last feature level with a matching mask.

    Args:
        name: timm model name.
        num_channels: input channels (timm's `in_chans`).
        backbone_kwargs: extra `timm.create_model` arguments (`out_indices`, `output_stride`, ...).
        pretrained: load timm's pretrained weights from timm's own source.
        weights_path: load weights from this local file instead (timm's `pretrained_cfg_overlay`).
        freeze_batch_norm: turn every BatchNorm into a frozen one (fixed affine from running stats).
        frozen_stages: 0 = train everything; k >= 1 = freeze stem and the stages up to stride 2**(k+1).
    """

    def __init__(
        self,
        name: str,
        backbone_kwargs: dict | None = None,
        num_channels: int = 3,
        pretrained: bool = False,
        weights_path: str | None = None,
        freeze_batch_norm: bool = False,
        frozen_stages: int = 0,
    ) -> None:
        super().__init__()
        self.timm_name = name
        kwargs = dict(backbone_kwargs or {})
        kwargs.setdefault("out_indices", (-1,))
        kwargs.setdefault("in_chans", num_channels)
        if isinstance(kwargs["out_indices"], list):
            kwargs["out_indices"] = tuple(kwargs["out_indices"])
        # Weights are never fetched while a saved model is being rebuilt on the meta device.
        on_meta = torch.empty(0).device.type == "meta"
        load = (pretrained or weights_path is not None) and not on_meta
        if load and weights_path is not None:
            kwargs["pretrained_cfg_overlay"] = dict(file=str(weights_path))
        try:
            self.body = timm.create_model(name, pretrained=load, features_only=True, **kwargs)
        except (TypeError, IndexError) as error:
            # timm reports a bad keyword or out_indices without saying where it came from.
            raise ValueError(
                f"timm.create_model({name!r}) rejected DetrHfConfig.backbone_kwargs {backbone_kwargs}: {error!r}"
            ) from error
        self.name = name
        # Finer feature levels, off unless `enable_levels` is called (the segmentation model does).
        self._level_modules: list[str | None] = []
        self._captured: dict[str, torch.Tensor] = {}
        self._last_levels: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        self.num_channels: int = self.body.feature_info.channels()[-1]
        self.reduction: int = self.body.feature_info.reduction()[-1]
        self.num_folded_batch_norms = 0
        if freeze_batch_norm:
            self.body = freeze_batch_norm_2d(self.body)
            # Frozen BN is a fixed affine: applied through the conv weights it costs no pass over activations.
            self.num_folded_batch_norms = fold_frozen_batch_norm(self.body)
        self.frozen_parameter_names = self._freeze_stages(frozen_stages)
        self._timm_kwargs = {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}
        for module in self.body.modules():
            # transformers' generic init must not touch timm's modules: `initialize_missing` does, with timm's init.
            module._timm_module = True
        if not on_meta:
            # Real values (timm's init or pretrained weights): transformers' `init.*` leaves flagged tensors alone.
            for tensor in (*self.body.parameters(), *self.body.buffers()):
                tensor._is_hf_initialized = True

    @torch.no_grad()
    def initialize_missing(self) -> int:
        """Give every body tensor not flagged `_is_hf_initialized` (not loaded from a checkpoint, or built on the
        meta device) the value timm's own init gives it (BN statistics 0 / 1, zero last-BN gammas, ...); return
        how many were initialised. A fresh timm model of the same architecture is built once as the source."""
        missing = [
            (name, tensor)
            for name, tensor in (*self.body.named_parameters(), *self.body.named_buffers())
            if not getattr(tensor, "_is_hf_initialized", False)
        ]
        if not missing:
            return 0
        with torch.device("cpu"):
            fresh = timm.create_model(self.timm_name, pretrained=False, features_only=True, **self._timm_kwargs)
        source = dict((*fresh.named_parameters(), *fresh.named_buffers()))
        unknown = [name for name, _ in missing if name not in source]
        if unknown:
            raise RuntimeError(f"backbone tensors {unknown[:5]} have no counterpart in timm's {self.timm_name!r}")
        for name, tensor in missing:
            tensor.copy_(source[name])
            tensor._is_hf_initialized = True
        total = len(list(self.body.parameters())) + len(list(self.body.buffers()))
        logger.warning(
            "detr_hf: %d of %d backbone tensors had no loaded value (e.g. the checkpoint lacks the backbone); "
            "initialised them with timm's own random init for %r",
            len(missing), total, self.timm_name,
        )  # fmt: skip
        return len(missing)

    def apply_freezing(self) -> None:
        """Re-apply `requires_grad=False` to the frozen stages (loading may rebuild parameters as trainable)."""
        frozen = set(self.frozen_parameter_names)
        for name, param in self.body.named_parameters():
            if name in frozen:
                param.requires_grad_(False)

    def _freeze_stages(self, frozen_stages: int) -> list[str]:
        """Set `requires_grad=False` on every parameter registered before the first unfrozen stage."""
        if frozen_stages <= 0:
            return []
        min_reduction = 2 ** (frozen_stages + 2)
        boundary = next((i for i in self.body.feature_info.info if i["reduction"] >= min_reduction), None)
        prefixes = (
            () if boundary is None else (boundary["module"] + ".", boundary["module"].replace(".", "_") + ".")
        )
        frozen = []
        for param_name, param in self.body.named_parameters():
            if prefixes and param_name.startswith(prefixes):
                break
            param.requires_grad_(False)
            frozen.append(param_name)
        return frozen

    def forward(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [B, C, H, W], pixel_mask [B, H, W] bool (True = pixel) → features [B, C', h, w], mask [B, h, w].

        After `enable_levels`, `pop_levels()` returns this call's feature maps at the requested strides.
        """
        # oneDNN's convolutions run faster on channels-last activations; the values are the same.
        features = self.body(pixel_values.contiguous(memory_format=torch.channels_last))[-1]
        mask = downsample_mask(pixel_mask, features.shape[-2:])
        if self._level_modules:
            # The last level may itself be one of the requested strides (a backbone cut early).
            levels = [features if name is None else self._captured.pop(name) for name in self._level_modules]
            self._last_levels = (features, levels)
        return features, mask

    def pop_levels(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(last feature map, the `enable_levels` maps in the requested order) of the latest forward, then
        forgotten, so no activation outlives its step."""
        if self._last_levels is None:
            raise RuntimeError("pop_levels() needs enable_levels() and a forward pass first")
        levels, self._last_levels = self._last_levels, None
        return levels

    def enable_levels(self, reductions: tuple[int, ...]) -> list[int]:
        """Also keep the feature maps at these strides (e.g. (16, 8, 4) for a mask head); returns their channels.

        Each level is the output of a timm module `feature_info` names for that stride (a forward hook records
        it), so any timm backbone works. The detection path never calls this and stays as it is.
        """
        info = self.body.feature_info.info
        last_index = self.body.feature_info.out_indices[-1] % len(info)
        names: list[str | None] = []
        channels = []
        for reduction in reductions:
            # The deepest level with this stride computed before the last map (for a dilated last stage, the
            # stage before it), else the last map itself.
            earlier = [i for i in info[:last_index] if i["reduction"] == reduction]
            if not earlier and info[last_index]["reduction"] != reduction:
                raise ValueError(
                    f"backbone {self.name!r} has no feature level at stride {reduction} up to its last map (its "
                    f"levels: {[i['reduction'] for i in info[: last_index + 1]]}); the mask head needs strides "
                    f"{list(reductions)}"
                )
            level = earlier[-1] if earlier else info[last_index]
            channels.append(level["num_chs"])
            if not earlier:
                names.append(None)
                continue
            names.append(level["module"])
            self._submodule(level["module"]).register_forward_hook(functools.partial(self._record, level["module"]))
        self._level_modules = names
        return channels

    def _submodule(self, name: str) -> nn.Module:
        """The module `feature_info` names: as is, flattened ("stages.0" → "stages_0"), or under `.model`."""
        for candidate in (name, name.replace(".", "_"), f"model.{name}"):
            try:
                return self.body.get_submodule(candidate)
            except AttributeError:
                continue
        raise ValueError(f"backbone {self.name!r}: feature module {name!r} not found in the timm model")

    def _record(self, name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        """Forward hook of a requested level's module: keep its output for this call."""
        self._captured[name] = output


def downsample_mask(pixel_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a [B, H, W] bool mask to `size`, as the original DETR does."""
    resized = nn.functional.interpolate(
        pixel_mask[:, None].to(torch.float32), size=tuple(size), mode="nearest"
    )
    return resized[:, 0].to(torch.bool)

"""Fold frozen BatchNorm into the preceding convolution of timm ResNets, keeping every state-dict key."""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .tracing import is_tracing


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen BN whose affine the preceding `ConvFrozenBatchNorm2d` applies; it keeps its buffers (so the
    state dict is unchanged) and passes its input through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ConvFrozenBatchNorm2d(nn.Conv2d):
    """Conv2d followed by a frozen BN computed as one conv: conv(x, W·s) + (b·s + β − μ·s), s = γ / √(σ² + ε).

    With autograd on, the scaled weight is rebuilt every call (cheap next to the activations) and again in the
    backward (`_FoldedConv`: it is not kept in memory), so training the conv behaves exactly as conv → BN.
    Without autograd (inference) it is cached, in the input's memory format, and rebuilt whenever a weight or
    statistic changes (new tensor or in-place version bump), so loading new weights or an optimiser step is
    always seen. The BN pass over the activation is gone.
    """

    folded_norm: FoldedFrozenBatchNorm2d

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self._scale_shift()
        return self.weight * scale[:, None, None, None], shift

    def _cached_folded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        norm = self.folded_norm
        sources = (self.weight, self.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
        memory_format = (
            torch.channels_last
            if x.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        key = (memory_format,) + tuple((t.data_ptr(), t._version) for t in sources if t is not None)
        cache = self.__dict__.get("_folded_cache")
        if cache is None or cache[0] != key:
            weight, shift = self._folded()
            # Stored in the layout oneDNN will use, so it is not reordered on every call.
            cache = (key, weight.contiguous(memory_format=memory_format), shift)
            self.__dict__["_folded_cache"] = cache
        return cache[1], cache[2]

    def _scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-output-channel s = γ / √(σ² + ε) and shift b·s + β − μ·s (the BN's affine after the conv)."""
        norm = self.folded_norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias * scale
        return scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_tracing() or (torch.is_grad_enabled() and not _lean_backward_applies(self)):
            weight, shift = self._folded()
        elif torch.is_grad_enabled():
            scale, shift = self._scale_shift()
            return _FoldedConv.apply(x, self.weight, scale, shift, self)
        else:
            weight, shift = self._cached_folded(x)
        return self._conv_forward(x, weight, shift)


def _lean_backward_applies(conv: nn.Conv2d) -> bool:
    """`_FoldedConv` covers zero-padded convs with numeric padding (every timm ResNet conv)."""
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


class _FoldedConv(torch.autograd.Function):
    """conv(x, W·s) + shift whose backward rebuilds W·s instead of keeping it: autograd would save the scaled
    weight of every trainable conv (a second copy of the backbone's weights) until the backward.

    x [B, C, H, W], weight [O, C/g, k, k], scale and shift [O] → [B, O, H', W']. Saved: x, weight, scale.
    """

    @staticmethod
    def forward(ctx, x, weight, scale, shift, conv):
        folded = weight * scale[:, None, None, None]
        ctx.save_for_backward(x, weight, scale)
        ctx.conv = (conv.stride, conv.padding, conv.dilation, conv.groups)
        return torch.nn.functional.conv2d(x, folded, shift, *ctx.conv)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, scale = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        needs_x, needs_weight, needs_scale, needs_shift = ctx.needs_input_grad[:4]
        folded = weight * scale[:, None, None, None]
        grad_x, grad_folded, _ = torch.ops.aten.convolution_backward(
            grad_out, x, folded, None, stride, padding, dilation, False, [0, 0], groups,
            [needs_x, needs_weight or needs_scale, False],
        )  # fmt: skip
        grad_weight = grad_folded * scale[:, None, None, None] if needs_weight else None
        grad_scale = (grad_folded * weight).sum((1, 2, 3)) if needs_scale else None
        grad_shift = grad_out.sum((0, 2, 3)) if needs_shift else None
        return grad_x, grad_weight, grad_scale, grad_shift, None


def _fold(conv: nn.Module, norm: nn.Module) -> bool:
    if (
        type(conv) is not nn.Conv2d
        or type(norm) is not FrozenBatchNorm2d
        or conv.out_channels != norm.weight.numel()
    ):
        return False
    # Class swap in place: parameters, buffers and names stay exactly where they were.
    conv.__class__ = ConvFrozenBatchNorm2d
    norm.__class__ = FoldedFrozenBatchNorm2d
    # A plain attribute, not a submodule: the BN stays registered (and saved) only under its own name.
    object.__setattr__(conv, "folded_norm", norm)
    return True


def _last_conv(module: nn.Module) -> nn.Module:
    """A conv itself, or the last layer of a Sequential stem (timm's deep stems end in a conv)."""
    return module[-1] if isinstance(module, nn.Sequential) and len(module) else module


def fold_frozen_batch_norm(body: nn.Module) -> int:
    """Fold every frozen BN of a timm ResNet(-D) body into the conv that feeds it; return how many were folded.

    Only pairs whose data flow is known are folded: `convN → bnN` inside ResNet blocks and the stem, and
    consecutive (conv, BN) layers of Sequentials (downsample paths, deep stems). Anything else is left alone.
    """
    if not any(isinstance(m, (BasicBlock, Bottleneck)) for m in body.modules()):
        return 0
    folded = 0
    for module in body.modules():
        if isinstance(module, nn.Sequential):
            layers = list(module)
            folded += sum(_fold(a, b) for a, b in zip(layers[:-1], layers[1:]))
        if isinstance(module, (BasicBlock, Bottleneck)) or module is body:
            for index in (1, 2, 3):
                conv, norm = getattr(module, f"conv{index}", None), getattr(module, f"bn{index}", None)
                if conv is not None and norm is not None:
                    folded += _fold(_last_conv(conv), norm)
    return folded


def unfold_frozen_batch_norm(body: nn.Module) -> int:
    """Undo `fold_frozen_batch_norm` (conv and BN run separately again); return how many pairs were restored."""
    restored = 0
    for module in body.modules():
        if isinstance(module, ConvFrozenBatchNorm2d):
            module.folded_norm.__class__ = FrozenBatchNorm2d
            del module.__dict__["folded_norm"]
            module.__dict__.pop("_folded_cache", None)
            module.__class__ = nn.Conv2d
            restored += 1
    return restored

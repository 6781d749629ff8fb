"""Fold frozen BatchNorm into the preceding convolution of timm ResNets, keeping every state-dict key."""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen BN whose affine the preceding `ConvFrozenBatchNorm2d` applies; it keeps its buffers (so the
    state dict is unchanged) and passes its input through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ConvFrozenBatchNorm2d(nn.Conv2d):
    """Conv2d followed by a frozen BN computed as one conv: conv(x, W·s) + (b·s + β − μ·s), s = γ / √(σ² + ε).

    The scaled weight is rebuilt every call (cheap next to the activations), so loading new weights or
    statistics, and training the conv, behave exactly as conv → BN; the BN pass over the activation is gone.
    """

    folded_norm: FoldedFrozenBatchNorm2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.folded_norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias * scale
        return self._conv_forward(x, self.weight * scale[:, None, None, None], shift)


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
            module.__class__ = nn.Conv2d
            restored += 1
    return restored

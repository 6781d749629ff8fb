"""Training-only extra decoder queries: more query groups (Group DETR) and noised ground-truth queries (DN-DETR)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .position_encoding import SinePositionEncoding
from .targets import PackedTargets, pack_targets

if TYPE_CHECKING:
    from .configuration_detr_hf import DetrHfConfig

__all__ = ["ExtraQueries", "ExtraQueryLayout", "ExtraQueryStates", "extra_query_mask", "noise_boxes", "noise_labels"]


@dataclass(frozen=True)
class ExtraQueryLayout:
    """Where the extra queries sit in the decoder's query axis, and what the denoising queries must reconstruct.

    The decoder sees T = num_groups · num_queries + num_denoising_groups · denoising_size queries:
    [group 0 (the inference queries) | groups 1.. | denoising group 0 | denoising group 1 | ...].
    denoising_classes [B, P] int64 and denoising_boxes [B, P, 4] (cx, cy, w, h) are the clean targets of
    each image (P = denoising_size, right-padded); denoising_valid [B, P] is False on padding.
    """

    num_queries: int
    num_groups: int
    num_denoising_groups: int
    denoising_size: int = 0
    denoising_classes: torch.Tensor | None = None
    denoising_boxes: torch.Tensor | None = None
    denoising_valid: torch.Tensor | None = None

    @property
    def num_group_queries(self) -> int:
        """Queries of groups 1.. (the extra matching groups), first among the extra queries."""
        return (self.num_groups - 1) * self.num_queries

    def split(self, decoded: torch.Tensor) -> tuple[torch.Tensor, ExtraQueryStates]:
        """Decoder outputs [L, B, T, d] → the inference queries' [L, B, Q, d] and the extra queries' states."""
        return decoded[:, :, : self.num_queries], ExtraQueryStates(self, decoded[:, :, self.num_queries :])


@dataclass(frozen=True)
class ExtraQueryStates:
    """The extra queries of one training step after the decoder: their layout and hidden_states
    [L, B, T - num_queries, d] (groups 1.., then the denoising groups)."""

    layout: ExtraQueryLayout
    hidden_states: torch.Tensor


def noise_boxes(boxes: torch.Tensor, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """DN-DETR box noise on (cx, cy, w, h) [..., 4]: the centre moves by up to scale · (w/2, h/2) (so it stays
    inside the box for scale <= 1) and the size changes by up to ± scale · (w, h); clamped to [0, 1]."""
    spread = torch.cat((boxes[..., 2:] / 2, boxes[..., 2:]), dim=-1)
    uniform = torch.rand(boxes.shape, generator=generator, device=boxes.device, dtype=boxes.dtype) * 2 - 1
    return (boxes + uniform * spread * scale).clamp(0.0, 1.0)


def noise_labels(
    labels: torch.Tensor, ratio: float, num_labels: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each class id by a uniformly random one with probability `ratio`."""
    flip = torch.rand(labels.shape, generator=generator, device=labels.device) < ratio
    random = torch.randint(0, num_labels, labels.shape, generator=generator, device=labels.device)
    return torch.where(flip, random, labels)


def extra_query_mask(layout: ExtraQueryLayout, device: torch.device) -> torch.Tensor:
    """Decoder self-attention mask [B, 1, T, T] bool (True = may attend) for `layout`.

    Each matching group sees only itself, so group 0 computes exactly what it computes alone; denoising
    queries see their own group's real (non-padding) queries and group 0, never another denoising group;
    every query sees itself (a row with no visible key would turn the softmax into NaN).
    """
    q, groups, dn_groups, size = (
        layout.num_queries, layout.num_groups, layout.num_denoising_groups, layout.denoising_size,
    )  # fmt: skip
    block = torch.cat((
        torch.arange(groups, device=device).repeat_interleave(q),
        groups + torch.arange(dn_groups, device=device).repeat_interleave(size),
    ))  # fmt: skip
    allowed = block[:, None] == block[None, :]  # [T, T]
    allowed[groups * q :, :q] = True
    if layout.denoising_valid is None:
        return allowed[None, None]
    batch = layout.denoising_valid.shape[0]
    # Keys that are real per image: all matching queries, the non-padding denoising ones. [B, T]
    key_real = torch.cat(
        (
            torch.ones(batch, groups * q, dtype=torch.bool, device=device),
            layout.denoising_valid.repeat(1, dn_groups),
        ),
        dim=1,
    )
    eye = torch.eye(len(block), dtype=torch.bool, device=device)
    return ((allowed[None] & key_real[:, None, :]) | eye)[:, None]



class ExtraQueries(nn.Module):
    """Builds the extra decoder queries of a training step; never used at inference.

    Group queries: `num_groups - 1` more sets of learned query positions (zero content, like group 0).
    Denoising queries: per denoising group, one query per ground-truth box, content = a learned embedding of
    the (label-noised) class, position = a small MLP of the sine encoding of the (box-noised) box.
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_queries: int,
        num_labels: int,
        num_groups: int,
        num_denoising_groups: int,
        box_noise_scale: float,
        label_noise_ratio: float,
        position_temperature: float,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.num_groups = num_groups
        self.num_denoising_groups = num_denoising_groups
        self.num_labels = num_labels
        self.box_noise_scale = box_noise_scale
        self.label_noise_ratio = label_noise_ratio
        self.group_query_embeddings = (
            nn.Embedding((num_groups - 1) * num_queries, d_model) if num_groups > 1 else None
        )
        if num_denoising_groups:
            self.denoising_label_embeddings = nn.Embedding(num_labels, d_model)
            # The same sine frequencies as the image features' encoding: 4 coordinates × d/2 features.
            self.box_encoding = SinePositionEncoding(d_model // 2, temperature=position_temperature)
            self.denoising_box_projection = nn.Sequential(
                nn.Linear(2 * d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model)
            )

    @staticmethod
    def enabled(config: DetrHfConfig) -> bool:
        """Whether `config` asks for any extra queries (more than one group, or denoising groups)."""
        return config.num_query_groups > 1 or config.num_denoising_groups > 0

    @classmethod
    def from_config(cls, config: DetrHfConfig) -> ExtraQueries | None:
        """The extra queries `config` asks for, or None when it asks for none."""
        if not cls.enabled(config):
            return None
        return cls(
            d_model=config.d_model,
            num_queries=config.num_queries,
            num_labels=config.num_labels,
            num_groups=config.num_query_groups,
            num_denoising_groups=config.num_denoising_groups,
            box_noise_scale=config.denoising_box_noise_scale,
            label_noise_ratio=config.denoising_label_noise_ratio,
            position_temperature=config.position_temperature,
        )

    def forward(
        self,
        target: torch.Tensor,
        query_pos: torch.Tensor,
        labels: PackedTargets | Sequence[Mapping[str, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ExtraQueryLayout]:
        """target, query_pos [B, Q, d] (group 0) → target, query_pos [B, T, d], self-attention mask [B, 1, T, T]
        and the layout. `labels`: packed by `pack_targets`, or label dicts as the model takes them (packed here)."""
        batch, device = query_pos.shape[0], query_pos.device
        if self.num_denoising_groups:
            if not isinstance(labels, PackedTargets):
                labels = pack_targets(labels, batch, self.num_labels, device, torch.float32)
            layout = self._denoising_layout(labels, device)
        else:
            layout = ExtraQueryLayout(self.num_queries, self.num_groups, num_denoising_groups=0)
        targets_list, positions_list = [target], [query_pos]
        if self.group_query_embeddings is not None:
            extra = self.group_query_embeddings.weight[None].expand(batch, -1, -1)
            positions_list.append(extra)
            targets_list.append(torch.zeros_like(extra))
        if self.num_denoising_groups:
            content, position = self._denoising_queries(layout)
            targets_list.append(content.to(target.dtype))
            positions_list.append(position.to(query_pos.dtype))
        mask = extra_query_mask(layout, device)
        return torch.cat(targets_list, 1), torch.cat(positions_list, 1), mask, layout

    def _denoising_layout(self, targets: PackedTargets, device: torch.device) -> ExtraQueryLayout:
        """The layout with the denoising groups' clean targets [B, P] (P = the most targets in one image)."""
        batch = targets.batch_size
        # At least one (padding) query per group keeps the extra parameters in every step's graph, which
        # DDP needs on a process whose images have no targets.
        size = max(1, max(targets.counts, default=0))
        classes = torch.zeros(batch, size, dtype=torch.int64, device=device)
        boxes = torch.full((batch, size, 4), 0.5, device=device)
        classes[:, : targets.padded_labels.shape[1]] = targets.padded_labels
        boxes[:, : targets.padded_boxes.shape[1]] = targets.padded_boxes
        valid = torch.arange(size, device=device)[None] < torch.tensor(targets.counts, device=device)[:, None]
        return ExtraQueryLayout(
            self.num_queries, self.num_groups, self.num_denoising_groups, size, classes, boxes, valid
        )

    def _denoising_queries(self, layout: ExtraQueryLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """Content and position [B, G_dn · P, d] of the denoising queries of `layout`."""
        # [B, G_dn, P, ...]: an independent noise draw per denoising group.
        groups = self.num_denoising_groups
        noisy_classes = noise_labels(
            layout.denoising_classes[:, None].expand(-1, groups, -1), self.label_noise_ratio, self.num_labels
        )
        noisy_boxes = noise_boxes(layout.denoising_boxes[:, None].expand(-1, groups, -1, -1), self.box_noise_scale)
        content = self.denoising_label_embeddings(noisy_classes).flatten(1, 2)
        # The sine features are float32; a bf16 model projects them in bf16.
        encoded = self.box_encoding.encode_coordinates(noisy_boxes).to(self.denoising_box_projection[0].weight.dtype)
        position = self.denoising_box_projection(encoded)
        return content, position.flatten(1, 2)

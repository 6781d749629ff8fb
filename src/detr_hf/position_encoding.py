"""2-D position encodings of the feature map: sine (normalised over the valid area) and learned."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinePositionEncoding(nn.Module):
    """Fixed sine/cosine encoding; y channels first, then x, sin/cos interleaved per frequency.

    Coordinates are cumulative counts of valid pixels divided by the image's valid extent, so an image's
    encoding spans its own visible area and does not depend on how much padding surrounds it.
    """

    def __init__(self, num_features: int, temperature: float = 10000.0, scale: float = 2 * math.pi) -> None:
        super().__init__()
        self.num_features = num_features
        self.temperature = temperature
        self.scale = scale

    def forward(self, mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """mask [B, h, w] bool (True = valid) → encoding [B, 2 * num_features, h, w]."""
        valid = mask.to(torch.float32)
        y = valid.cumsum(1)
        x = valid.cumsum(2)
        eps = 1e-6
        y = y / (y[:, -1:, :] + eps) * self.scale
        x = x / (x[:, :, -1:] + eps) * self.scale
        # [B, h, w, F] each
        pos_y, pos_x = self._sine(y), self._sine(x)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(dtype)

    def encode_coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [..., K] normalised to [0, 1] (e.g. boxes (cx, cy, w, h)) → [..., K * num_features], the
        same sine features a feature-map cell at that relative position gets."""
        return self._sine(coords.to(torch.float32) * self.scale).flatten(-2)

    def _sine(self, values: torch.Tensor) -> torch.Tensor:
        """values [...] (already scaled) → [..., F]: even channels take sin, odd channels cos of one frequency."""
        exponent = 2 * torch.div(
            torch.arange(self.num_features, device=values.device), 2, rounding_mode="floor"
        )
        inv_freq = self.temperature ** (-exponent.to(torch.float32) / self.num_features)
        angles = values[..., None] * inv_freq
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


class LearnedPositionEncoding(nn.Module):
    """Learned row and column embeddings for feature maps up to `max_size` × `max_size`; x channels first."""

    def __init__(self, num_features: int, max_size: int = 50) -> None:
        super().__init__()
        self.max_size = max_size
        self.row_embeddings = nn.Embedding(max_size, num_features)
        self.column_embeddings = nn.Embedding(max_size, num_features)

    def forward(self, mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """mask [B, h, w] → encoding [B, 2 * num_features, h, w] (the same for every image)."""
        batch, height, width = mask.shape
        if height > self.max_size or width > self.max_size:
            raise ValueError(
                f"feature map of {height}x{width} exceeds the learned position embedding size "
                f"{self.max_size}x{self.max_size}; raise DetrHfConfig.max_position_embeddings or use "
                "position_embedding_type='sine'"
            )
        x = self.column_embeddings.weight[:width]  # [w, F]
        y = self.row_embeddings.weight[:height]  # [h, F]
        pos = torch.cat((x[None].expand(height, -1, -1), y[:, None].expand(-1, width, -1)), dim=-1)
        return pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1).to(dtype)


def build_position_encoding(kind: str, d_model: int, max_size: int, temperature: float) -> nn.Module:
    """The encoding named by `DetrHfConfig.position_embedding_type`."""
    if kind == "sine":
        return SinePositionEncoding(d_model // 2, temperature=temperature)
    if kind == "learned":
        return LearnedPositionEncoding(d_model // 2, max_size=max_size)
    raise ValueError(f"position_embedding_type must be 'sine' or 'learned', got {kind!r}")

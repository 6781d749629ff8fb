"""Sine and learned position encodings."""

import pytest
import torch

from detr_hf.position_encoding import LearnedPositionEncoding, SinePositionEncoding


def test_sine_encoding_spans_the_valid_area_whatever_the_padding():
    encoding = SinePositionEncoding(16)
    alone = torch.ones(1, 6, 8, dtype=torch.bool)
    padded = torch.zeros(1, 10, 15, dtype=torch.bool)
    padded[:, :6, :8] = True
    a = encoding(alone)
    b = encoding(padded)
    assert a.shape == (1, 32, 6, 8) and b.shape == (1, 32, 10, 15)
    torch.testing.assert_close(b[..., :6, :8], a, atol=1e-6, rtol=0)


def test_sine_encoding_channel_layout_y_then_x_interleaved():
    encoding = SinePositionEncoding(4, temperature=10000.0)
    pos = encoding(torch.ones(1, 2, 4, dtype=torch.bool))
    # x varies along width only, so the x half (last 4 channels) is constant along height.
    torch.testing.assert_close(pos[0, 4:, 0], pos[0, 4:, 1])
    assert not torch.allclose(pos[0, 4:, :, 0], pos[0, 4:, :, 1])
    # channel 0 is sin, channel 1 cos of the same frequency: sin² + cos² = 1.
    torch.testing.assert_close(pos[0, 0] ** 2 + pos[0, 1] ** 2, torch.ones(2, 4))


def test_learned_encoding_shape_and_size_limit():
    encoding = LearnedPositionEncoding(8, max_size=12)
    pos = encoding(torch.ones(2, 12, 5, dtype=torch.bool))
    assert pos.shape == (2, 16, 12, 5)
    torch.testing.assert_close(pos[0, :8, 3, :], encoding.column_embeddings.weight[:5].T)
    with pytest.raises(ValueError, match="13x5 exceeds the learned position embedding size 12x12"):
        encoding(torch.ones(1, 13, 5, dtype=torch.bool))

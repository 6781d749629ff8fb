"""The weight EMA (detr_hf/training/ema.py): decay warm-up, the averaged values, frozen BN buffers, bad flags."""

from __future__ import annotations

import argparse

import pytest
import torch

from detr_hf import DetrHfForObjectDetection
from detr_hf.training.ema import WeightEma, build_ema
from helpers import padded_batch, tiny_config


def test_decay_warms_up_then_stays_at_the_flag():
    model = torch.nn.Linear(2, 2)
    ema = WeightEma(model, decay=0.999, warmup_power=0.75)
    assert ema.decay_at(1) == 0.0  # the first update copies the weights
    assert ema.decay_at(2) == pytest.approx(1 - 2**-0.75)
    assert ema.decay_at(500) == pytest.approx(1 - 500**-0.75)
    assert ema.decay_at(1_000_000) == 0.999
    assert all(ema.decay_at(t) <= ema.decay_at(t + 1) for t in range(1, 2000))


def test_average_follows_the_formula_and_leaves_frozen_batch_norm_alone():
    torch.manual_seed(0)
    model = DetrHfForObjectDetection(tiny_config(freeze_backbone_batch_norm=True))
    model.train()
    ema = WeightEma(model, decay=0.9, warmup_power=1.0)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    pixels, mask = padded_batch(((32, 32),))
    labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])}]
    expected = None
    for step in range(1, 5):
        model(pixel_values=pixels, pixel_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        weight = model.class_labels_classifier.weight.detach()
        decay = ema.decay_at(step)
        expected = weight.clone() if expected is None else decay * expected + (1 - decay) * weight
        ema.update(model, step)
    averaged = ema.module.class_labels_classifier.weight
    torch.testing.assert_close(averaged, expected)
    assert not torch.equal(averaged, model.class_labels_classifier.weight), "the average is not the last weights"
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    for name, buffer in ema.module.named_buffers():  # frozen BN statistics: exactly the model's, unchanged
        assert torch.equal(buffer, buffers[name]) and torch.equal(buffer, dict(model.named_buffers())[name]), name


def test_state_round_trip_and_flag_validation():
    model = torch.nn.Linear(3, 1)
    ema = WeightEma(model, decay=0.99, warmup_power=0.75)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, 1)
    copy = WeightEma(torch.nn.Linear(3, 1), decay=0.99, warmup_power=0.75)
    copy.load_state_dict(ema.state_dict())
    assert torch.equal(copy.module.weight, model.weight)
    assert build_ema(argparse.Namespace(ema_decay=None, ema_warmup_power=0.75), model) is None
    assert build_ema(argparse.Namespace(ema_decay=0.0, ema_warmup_power=0.75), model) is None
    with pytest.raises(ValueError, match="--ema_decay"):
        build_ema(argparse.Namespace(ema_decay=1.5, ema_warmup_power=0.75), model)
    with pytest.raises(ValueError, match="--ema_warmup_power"):
        WeightEma(model, decay=0.9, warmup_power=0.0)

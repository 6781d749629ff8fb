"""Training-only query groups and denoising queries: off = plain DETR, eval = plain DETR, masks, losses, gradients."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from detr_hf import DetrHfConfig, DetrHfForObjectDetection
from detr_hf.criterion import DetrHfLoss
from detr_hf.extra_queries import noise_boxes, noise_labels
from helpers import padded_batch, tiny_config
from script_helpers import ROOT, TINY_MODEL_ARGS, load_script

NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
GROUPS, DN_GROUPS, QUERIES = 3, 2, 5


def _labels(empty: bool = False) -> list[dict[str, torch.Tensor]]:
    if empty:
        return [
            {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)} for _ in range(2)
        ]
    return [
        {
            "class_labels": torch.tensor([0, 2, 1]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4], [0.8, 0.2, 0.1, 0.3]]),
        },
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.6]])},
    ]


def _models(groups: int = GROUPS, dn_groups: int = DN_GROUPS, **overrides):
    """(model with extra queries, plain model with the same shared weights)."""
    torch.manual_seed(0)
    extra = DetrHfForObjectDetection(
        tiny_config(num_query_groups=groups, num_denoising_groups=dn_groups, **NO_DROPOUT, **overrides)
    )
    plain = DetrHfForObjectDetection(tiny_config(**NO_DROPOUT, **overrides))
    missing, unexpected = plain.load_state_dict(extra.state_dict(), strict=False)
    assert not missing and unexpected and all(".training_queries." in k for k in unexpected)
    return extra, plain


def _run(model, labels, seed: int = 1):
    torch.manual_seed(seed)  # the denoising noise draw
    pixels, mask = padded_batch()
    return model(pixels, mask, labels=labels)


def test_off_adds_no_parameters_and_keeps_plain_outputs_and_loss():
    off = DetrHfForObjectDetection(tiny_config(num_query_groups=1, num_denoising_groups=0, **NO_DROPOUT))
    assert off.model.training_queries is None
    assert not any("training_queries" in k for k in off.state_dict())
    off.train()
    out = _run(off, _labels())
    assert out.training_query_outputs is None
    # The loss is the plain DETR criterion on the returned predictions, bit for bit.
    loss, terms = DetrHfLoss.from_config(off.config)(
        out.logits, out.pred_boxes, _labels(), out.auxiliary_outputs
    )
    assert torch.equal(out.loss, loss)
    assert terms.keys() == out.loss_dict.keys()


@pytest.mark.parametrize("mode", ["eval_with_labels", "train_without_labels"])
def test_extra_queries_never_leak_outside_training(mode):
    extra, plain = _models()
    labels = _labels() if mode == "eval_with_labels" else None
    for model in (extra, plain):
        model.train(mode != "eval_with_labels")
    got, want = _run(extra, labels), _run(plain, labels)
    assert got.training_query_outputs is None
    assert torch.equal(got.logits, want.logits) and torch.equal(got.pred_boxes, want.pred_boxes)
    for a, b in zip(got.auxiliary_outputs, want.auxiliary_outputs):
        assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])
    if labels is not None:
        assert torch.equal(got.loss, want.loss)


def test_training_keeps_extra_predictions_out_of_the_inference_fields():
    extra, plain = _models()
    extra.train(), plain.train()
    got, want = _run(extra, _labels()), _run(plain, _labels())
    assert got.logits.shape == want.logits.shape == (2, QUERIES, 4)
    assert len(got.auxiliary_outputs) == 1 and got.auxiliary_outputs[0]["logits"].shape == (2, QUERIES, 4)
    # [L, B, (G-1)·Q + G_dn·P, C+1]; P = 3, the most targets in one image.
    assert got.training_query_outputs["logits"].shape == (2, 2, (GROUPS - 1) * QUERIES + DN_GROUPS * 3, 4)
    # Group 0 is masked off from everything else, so it computes what the plain model computes.
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pred_boxes, want.pred_boxes, atol=1e-5, rtol=1e-5)


def _perturbed_run(model, start: int, stop: int, image: int | None = None):
    """Run with the decoder inputs (content and position) of queries start:stop (of one image, or all) shifted."""
    images = slice(None) if image is None else slice(image, image + 1)

    def hook(module, args, output):
        target, query_pos, mask, layout = output
        target, query_pos = target.clone(), query_pos.clone()
        target[images, start:stop] += 3 * torch.randn_like(target[images, start:stop])
        query_pos[images, start:stop] += 3 * torch.randn_like(query_pos[images, start:stop])
        return target, query_pos, mask, layout

    handle = model.model.training_queries.register_forward_hook(hook)
    try:
        return _run(model, _labels())
    finally:
        handle.remove()


def test_attention_masks_block_what_they_must():
    model, _ = _models()
    model.train()
    base = _run(model, _labels())
    q, size = QUERIES, 3
    # Decoder query axis: [group 0 | group 1 | group 2 | dn group 0 (3) | dn group 1 (3)]; extras drop group 0.
    blocks = {"group1": (q, 2 * q), "group2": (2 * q, 3 * q)}
    blocks.update({f"dn{k}": (3 * q + k * size, 3 * q + (k + 1) * size) for k in range(DN_GROUPS)})
    for name, (start, stop) in blocks.items():
        out = _perturbed_run(model, start, stop)
        # The inference queries never see any extra query.
        assert torch.equal(out.logits, base.logits) and torch.equal(out.pred_boxes, base.pred_boxes), name
        for other, (o_start, o_stop) in blocks.items():
            got = out.training_query_outputs["pred_boxes"][:, :, o_start - q : o_stop - q]
            want = base.training_query_outputs["pred_boxes"][:, :, o_start - q : o_stop - q]
            assert torch.equal(got, want) != (other == name), f"perturbing {name} vs {other}"


def test_denoising_queries_see_group_zero_but_not_padding():
    model, _ = _models(groups=1, dn_groups=1)
    model.train()
    base = _run(model, _labels())
    # Image 1 has one target: dn queries 1 and 2 of image 1 are padding, invisible to its real query.
    padded = _perturbed_run(model, QUERIES + 1, QUERIES + 3, image=1)
    real_boxes = lambda out: out.training_query_outputs["pred_boxes"][:, 1, 0]  # noqa: E731
    assert torch.equal(real_boxes(padded), real_boxes(base))
    # Denoising queries do attend to the inference queries (DN-DETR's one-way visibility).
    moved = _perturbed_run(model, 0, QUERIES)
    assert not torch.equal(
        moved.training_query_outputs["pred_boxes"], base.training_query_outputs["pred_boxes"]
    )


def test_group_loss_is_the_mean_of_per_group_detr_losses():
    model, _ = _models(groups=2, dn_groups=0)
    model.train()
    out = _run(model, _labels())
    criterion = DetrHfLoss.from_config(model.config)
    extra = out.training_query_outputs
    group1 = criterion(extra["logits"][-1], extra["pred_boxes"][-1], _labels(), [
        {"logits": extra["logits"][0], "pred_boxes": extra["pred_boxes"][0]}
    ])[0]  # fmt: skip
    group0 = criterion(out.logits, out.pred_boxes, _labels(), out.auxiliary_outputs)[0]
    torch.testing.assert_close(out.loss, (group0 + group1) / 2)


def test_denoising_loss_uses_the_known_assignment():
    model, _ = _models(groups=1, dn_groups=2)
    model.train()
    out = _run(model, _labels())
    boxes = out.training_query_outputs["pred_boxes"][-1]  # [B, 2 groups × 3, 4], after group 0's Q queries
    l1 = 0.0
    for k in range(2):
        for image, target in enumerate(_labels()):
            n = len(target["boxes"])
            l1 = l1 + (boxes[image, 3 * k : 3 * k + n] - target["boxes"]).abs().sum()
    torch.testing.assert_close(out.loss_dict["loss_bbox_dn"], l1 / (2 * 4))  # 4 targets × 2 groups
    assert {
        "loss_ce_dn",
        "loss_giou_dn",
        "loss_ce_dn_0",
        "loss_bbox_dn_0",
        "loss_giou_dn_0",
    } <= out.loss_dict.keys()


@pytest.mark.parametrize("empty", [False, True])
def test_loss_finite_and_gradients_reach_every_extra_parameter(empty):
    model, _ = _models()
    model.train()
    out = _run(model, _labels(empty=empty))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    extra = dict(model.model.training_queries.named_parameters())
    assert extra
    for name, param in extra.items():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        if not empty:
            assert param.grad.abs().sum() > 0, name
    if empty:
        assert out.loss_dict["loss_bbox_dn"] == 0


def test_without_auxiliary_loss_only_the_last_layer_is_supervised():
    model, _ = _models(auxiliary_loss=False)
    model.train()
    out = _run(model, _labels())
    assert out.training_query_outputs["logits"].shape[0] == 1
    assert "loss_ce_dn_0" not in out.loss_dict and torch.isfinite(out.loss)


def test_checkpoint_without_extra_parameters_loads_with_them_fresh(tmp_path):
    torch.manual_seed(0)
    plain = DetrHfForObjectDetection(tiny_config())
    plain.save_pretrained(tmp_path)
    loaded = DetrHfForObjectDetection.from_pretrained(tmp_path, num_query_groups=2, num_denoising_groups=1)
    for name, value in plain.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    fresh = dict(loaded.model.training_queries.named_parameters())
    assert fresh and all(torch.isfinite(p).all() and p.abs().sum() > 0 for p in fresh.values())


def test_noise_functions():
    gen = torch.Generator().manual_seed(0)
    boxes = torch.rand(1000, 4, generator=gen) * 0.4 + 0.3
    noisy = noise_boxes(boxes, 0.4, gen)
    assert ((noisy[:, :2] - boxes[:, :2]).abs() <= 0.4 * boxes[:, 2:] / 2 + 1e-6).all()
    assert ((noisy[:, 2:] - boxes[:, 2:]).abs() <= 0.4 * boxes[:, 2:] + 1e-6).all()
    assert (noisy != boxes).any() and torch.equal(noise_boxes(boxes, 0.0, gen), boxes)
    labels = torch.randint(0, 7, (1000,), generator=gen)
    assert torch.equal(noise_labels(labels, 0.0, 7, gen), labels)
    flipped = noise_labels(labels, 1.0, 7, gen)
    assert flipped.min() >= 0 and flipped.max() < 7 and (flipped != labels).float().mean() > 0.7


@pytest.mark.parametrize(
    "field, value",
    [("num_query_groups", 0), ("num_query_groups", 1.5), ("num_denoising_groups", -1),
     ("num_denoising_groups", 2.0), ("denoising_label_noise_ratio", 1.5), ("denoising_box_noise_scale", -0.1)],
)  # fmt: skip
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        DetrHfConfig(backbone="test_resnet", **{field: value})


EXTRA_QUERY_ARGS = ["--num_query_groups", "2", "--num_denoising_groups", "2"]


def _check_saved_model(folder) -> None:
    saved = DetrHfForObjectDetection.from_pretrained(folder)
    assert (saved.config.num_query_groups, saved.config.num_denoising_groups) == (2, 2)
    assert saved.model.training_queries is not None
    # The trained weights load as plain DETR: the extra parameters are simply not used.
    plain = DetrHfForObjectDetection.from_pretrained(
        folder, num_query_groups=1, num_denoising_groups=0
    ).eval()
    pixels, mask = padded_batch()
    with torch.no_grad():
        assert torch.equal(saved.eval()(pixels, mask).logits, plain(pixels, mask).logits)


@pytest.mark.slow
def test_accelerate_script_trains_with_extra_queries(tmp_path):
    metrics = load_script("train").main(
        [
            *TINY_MODEL_ARGS, *EXTRA_QUERY_ARGS, "--output_dir", str(tmp_path), "--synthetic_train_size", "12",
            "--synthetic_val_size", "4", "--per_device_train_batch_size", "4", "--max_train_steps", "3",
            "--checkpointing_steps", "no", "--eval_every_epochs", "0",
        ]
    )  # fmt: skip
    assert np.isfinite(metrics["AP"]), metrics
    _check_saved_model(tmp_path)


@pytest.mark.slow
def test_trainer_script_trains_with_extra_queries(tmp_path):
    tiny = [a for a in TINY_MODEL_ARGS if a != "--no_progress_bar"]
    metrics = load_script("train_trainer").main(
        [
            *tiny, *EXTRA_QUERY_ARGS, "--output_dir", str(tmp_path), "--synthetic_train_size", "12",
            "--synthetic_val_size", "4", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
            "--max_steps", "3", "--use_cpu", "--save_strategy", "no", "--eval_strategy", "no",
        ]
    )  # fmt: skip
    assert np.isfinite(metrics["eval_loss"])
    _check_saved_model(tmp_path)


@pytest.mark.slow
def test_two_process_accelerate_run_with_extra_queries(tmp_path):
    """DDP needs every extra parameter in every step's graph and the synced normalisers on both processes."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(ROOT / "examples" / "train.py"), *TINY_MODEL_ARGS, *EXTRA_QUERY_ARGS, "--output_dir", str(tmp_path),
        "--synthetic_train_size", "16", "--synthetic_val_size", "4", "--per_device_train_batch_size", "4",
        "--max_train_steps", "3", "--checkpointing_steps", "no", "--eval_every_epochs", "0",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_saved_model(tmp_path)


def test_labels_are_validated_once_per_step_with_groups_and_denoising(monkeypatch):
    import detr_hf.targets as targets_module

    model, _ = _models()
    model.train()
    calls = []
    original = targets_module.check_label_structure
    monkeypatch.setattr(targets_module, "check_label_structure", lambda *a: calls.append(a) or original(*a))
    out = _run(model, _labels())
    assert len(calls) == 1 and torch.isfinite(out.loss)


def test_layout_is_immutable_and_the_states_split_off_the_inference_queries():
    import dataclasses

    model, _ = _models()
    model.train()
    torch.manual_seed(1)
    pixels, mask = padded_batch()
    out = model.model(pixels, mask, labels=_labels())
    states = out.training_queries
    assert out.intermediate_hidden_states.shape[2] == QUERIES
    assert states.hidden_states.shape[2] == (GROUPS - 1) * QUERIES + DN_GROUPS * 3
    assert states.layout.denoising_size == 3 and int(states.layout.denoising_valid.sum()) == 4  # 3 + 1 targets
    with pytest.raises(dataclasses.FrozenInstanceError):
        states.layout.denoising_size = 5

"""Reduced precision: bf16 inference within a stated tolerance of float32; matching and loss in float32 under
bf16/fp16 autocast (same assignments, same loss, no fp16 overflow); --mixed_precision in the training scripts."""

from __future__ import annotations

import argparse
import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from detr_hf import DetrHfForObjectDetection
from detr_hf.criterion import DetrHfLoss
from detr_hf.frozen_bn_folding import ConvFrozenBatchNorm2d
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor
from detr_hf.matcher import HungarianMatcher
from detr_hf.targets import pack_targets
from detr_hf.training.precision import accelerator_options, check_precision, trainer_options
from helpers import frozen_timm_body, padded_batch, randomize_norms, realistic_detection_batch, tiny_config
from script_helpers import TINY_MODEL_ARGS, load_script

# bf16 keeps 8 bits of mantissa: the stated tolerance of bf16 inference against float32 on the tiny model.
BF16_LOGITS_ATOL = 0.05
BF16_BOXES_ATOL = 0.003  # normalised; the box sigmoid runs in float32
BF16_PIXELS_ATOL = 4.0  # post-processed boxes, in original-image pixels (up to 1333 px)


@pytest.fixture(scope="module")
def fp32_folder(tmp_path_factory):
    """A tiny model with frozen (folded) backbone BN, non-trivial norms and a processor, saved in float32."""
    torch.manual_seed(0)
    model = DetrHfForObjectDetection(tiny_config(freeze_backbone_batch_norm=True, num_queries=12))
    randomize_norms(model)
    model.model.backbone.body.load_state_dict(frozen_timm_body().state_dict())
    folder = tmp_path_factory.mktemp("fp32_model")
    model.save_pretrained(folder)
    DetrHfImageProcessor(size={"shortest_edge": 320, "longest_edge": 480}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_batch():
    """Three real-sized images (300-900 px, one without objects) processed into a padded batch with its mask."""
    images, _ = realistic_detection_batch(3, seed=5, max_side=900)
    return images


def _post_process(processor, outputs, images):
    sizes = [(image.height, image.width) for image in images]
    return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes, top_k=3)


@pytest.mark.parametrize("path", ["autocast", "bf16_weights"])
def test_bf16_inference_is_within_tolerance_of_float32(fp32_folder, image_batch, path):
    processor = DetrHfImageProcessor.from_pretrained(fp32_folder)
    inputs = processor(image_batch, return_tensors="pt")
    assert not inputs["pixel_mask"].bool().all()  # padded
    model = DetrHfForObjectDetection.from_pretrained(fp32_folder).eval()
    with torch.no_grad():
        expected = model(**inputs)
        if path == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = model(**inputs)
        else:
            model = DetrHfForObjectDetection.from_pretrained(fp32_folder, dtype=torch.bfloat16).eval()
            assert model.dtype == torch.bfloat16
            got = model(**inputs)  # float32 pixels from the processor, as the pipeline may pass them
            folded = [m for m in model.modules() if isinstance(m, ConvFrozenBatchNorm2d)]
            assert folded and all(m.__dict__["_folded_cache"][1].dtype == torch.bfloat16 for m in folded)
    assert got.logits.dtype == torch.bfloat16
    assert got.pred_boxes.dtype == torch.float32  # the box sigmoid stays float32
    torch.testing.assert_close(got.logits.float(), expected.logits, atol=BF16_LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, atol=BF16_BOXES_ATOL, rtol=0)
    for ours, reference in zip(
        _post_process(processor, got, image_batch), _post_process(processor, expected, image_batch)
    ):
        assert ours["labels"].tolist() == reference["labels"].tolist()
        torch.testing.assert_close(ours["scores"], reference["scores"], atol=0.01, rtol=0)
        torch.testing.assert_close(ours["boxes"], reference["boxes"], atol=BF16_PIXELS_ATOL, rtol=0)


def test_pipeline_runs_a_bf16_model(fp32_folder, image_batch):
    import transformers

    processor = DetrHfImageProcessor.from_pretrained(fp32_folder)
    detections = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = DetrHfForObjectDetection.from_pretrained(fp32_folder, dtype=dtype).eval()
        pipe = transformers.pipeline("object-detection", model=model, image_processor=processor)
        detections[dtype] = pipe(image_batch[0], threshold=0.0)
    assert len(detections[torch.bfloat16]) == len(detections[torch.float32]) == 12
    top_bf16, top_fp32 = detections[torch.bfloat16][0], detections[torch.float32][0]
    assert top_bf16["label"] == top_fp32["label"]
    assert top_bf16["score"] == pytest.approx(top_fp32["score"], abs=0.01)
    for key, value in top_fp32["box"].items():
        assert abs(top_bf16["box"][key] - value) <= BF16_PIXELS_ATOL + 1, key  # + 1: the pipeline's int()


def _realistic_predictions(
    dtype: torch.dtype, layers: int = 3, batch: int = 4, queries: int = 50, classes: int = 91
):
    """Stacked predictions [L, B, Q, ...] already representable in `dtype` (so float32 sees the same values),
    and labels with 0-30 objects per image (the last image has none)."""
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(layers, batch, queries, classes + 1, generator=gen)).to(dtype)
    boxes = torch.cat(
        [0.2 + 0.6 * torch.rand(layers, batch, queries, 2, generator=gen),
         0.05 + 0.3 * torch.rand(layers, batch, queries, 2, generator=gen)], -1,
    ).to(dtype)  # fmt: skip
    labels = []
    for image in range(batch):
        count = 0 if image == batch - 1 else int(torch.randint(1, 31, (1,), generator=gen))
        centers = 0.2 + 0.6 * torch.rand(count, 2, generator=gen)
        sizes = 0.02 + 0.3 * torch.rand(count, 2, generator=gen)
        labels.append(
            {
                "class_labels": torch.randint(0, classes, (count,), generator=gen),
                "boxes": torch.cat([centers, sizes], 1),
            }
        )
    return logits, boxes, labels


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matching_and_loss_under_autocast_equal_float32(dtype):
    """The matcher and the loss get bf16/fp16 predictions under autocast and compute exactly what float32 does on
    the same values: same assignment, same loss terms, gradients back in the predictions' dtype."""
    logits, boxes, labels = _realistic_predictions(dtype)
    criterion = DetrHfLoss(91, HungarianMatcher(1.0, 5.0, 2.0))
    loss_fp32, terms_fp32 = criterion.stacked(logits.float(), boxes.float(), labels)
    indices_fp32 = criterion.matcher(logits[-1].float(), boxes[-1].float(), labels)
    logits.requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        loss, terms = criterion.stacked(logits, boxes, labels)
        indices = criterion.matcher(logits[-1].detach(), boxes[-1], labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_fp32, atol=1e-6, rtol=1e-6)
    for name, value in terms_fp32.items():
        torch.testing.assert_close(terms[name], value, atol=1e-6, rtol=1e-6, msg=name)
    for (query, target), (query_ref, target_ref) in zip(indices, indices_fp32):
        assert query.tolist() == query_ref.tolist() and target.tolist() == target_ref.tolist()
    loss.backward()
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad).all()


def test_fp16_sums_and_costs_that_overflow_stay_finite():
    """fp16 predictions whose loss sum or matching cost passes fp16's maximum (65504): float32 inside keeps
    both finite and equal to float32's."""
    logits, boxes, labels = _realistic_predictions(torch.float16)
    targets = pack_targets(labels, logits.shape[1], 91, logits.device, torch.float32)
    # A diverging model: every query puts a logit of 3e4 on a wrong class (finite in fp16).
    wrong = (targets.padded_labels[:, :1] + 1) % 91
    logits = logits.scatter(-1, wrong[None, :, :, None].expand(3, -1, 50, 1), 3e4)
    criterion = DetrHfLoss(91, HungarianMatcher(1.0, 5.0, 2.0))
    nll = logits.logsumexp(-1) - logits[..., 0]  # fp16: each term finite...
    assert torch.isfinite(nll).all() and not torch.isfinite(nll.sum())  # ...their sum is not
    with torch.autocast("cpu", dtype=torch.float16):
        loss, _ = criterion.stacked(logits, boxes, labels)
    assert torch.isfinite(loss)
    torch.testing.assert_close(
        loss, criterion.stacked(logits.float(), boxes.float(), labels)[0], rtol=1e-6, atol=0
    )

    # Costs weighted by 1e5: L1 distances above 0.66 give costs past fp16's range.
    matcher = HungarianMatcher(class_cost=1.0, bbox_cost=1e5, giou_cost=1e5)
    l1_fp16 = (boxes[-1][:, :, None] - targets.padded_boxes.half()[:, None]).abs().sum(-1)  # [B, Q, N]
    assert not torch.isfinite(l1_fp16 * 1e5).all()
    with torch.autocast("cpu", dtype=torch.float16):
        cost = matcher.cost_blocks(logits, boxes, targets)
        indices = matcher(logits[-1], boxes[-1], labels)
    assert cost.dtype == torch.float32 and torch.isfinite(cost).all()
    for (query, target), (query_ref, target_ref) in zip(
        indices, matcher(logits[-1].float(), boxes[-1].float(), labels)
    ):
        assert query.tolist() == query_ref.tolist() and target.tolist() == target_ref.tolist()


def test_training_step_under_bf16_autocast_has_float32_weights_loss_and_gradients(config):
    torch.manual_seed(0)
    model = DetrHfForObjectDetection(config).train()
    images, _ = realistic_detection_batch(2, seed=1, max_side=600)
    batch = DetrHfImageProcessor(size={"shortest_edge": 256, "longest_edge": 384})(
        images, return_tensors="pt"
    )
    _, _, labels = _realistic_predictions(torch.float32, classes=config.num_labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch, labels=labels[2:])  # 1-30 objects and none
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_a_bf16_model_trains_with_query_groups_and_denoising_queries():
    torch.manual_seed(0)
    config = tiny_config(num_query_groups=2, num_denoising_groups=2)
    model = DetrHfForObjectDetection(config).to(torch.bfloat16)
    _, _, labels = _realistic_predictions(torch.float32, batch=2, classes=3)
    out = model.train()(*padded_batch(), labels=labels)  # float32 pixels, float32 box encodings of the labels
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert any(name.endswith("_dn") for name in out.loss_dict)
    out.loss.backward()
    grad = model.model.training_queries.denoising_box_projection[0].weight.grad
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()


def test_bf16_on_a_cpu_without_bf16_instructions_warns_and_works(monkeypatch, caplog, config):
    import detr_hf.precision as precision

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr("detr_hf.training.precision.cpu_has_fast_bf16", lambda: False)
    precision.logger.warning_once.cache_clear()
    model = DetrHfForObjectDetection(config).eval()
    with caplog.at_level(logging.WARNING), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out.logits).all()
    assert "no bf16 instructions" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_precision("bf16", "cpu")
    assert "slower than float32" in caplog.text


def test_precision_flags_map_to_accelerate_and_the_trainer():
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        check_precision("fp16", "cpu")
    check_precision("fp16", "cuda")  # the GPU case: no complaint
    args = argparse.Namespace(mixed_precision="bf16", torch_compile=True, use_cpu=False)
    assert accelerator_options(args) == {"mixed_precision": "bf16", "dynamo_backend": "inductor"}
    options = trainer_options(args)
    assert options["bf16"] and not options["fp16"] and options["torch_compile"]
    assert options["use_cpu"] == (not torch.cuda.is_available())
    plain = argparse.Namespace(mixed_precision=None, torch_compile=False, use_cpu=False)
    assert accelerator_options(plain) == {"mixed_precision": None}
    assert trainer_options(plain) == {"bf16": False, "fp16": False, "use_cpu": False, "torch_compile": False}


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_train_script_with_bf16_mixed_precision_trains_and_saves_float32(tmp_path, monkeypatch):
    train = load_script("train")
    seen = []
    predict = DetrHfForObjectDetection._predict

    def recording_predict(self, hidden):
        logits, boxes = predict(self, hidden)
        seen.append(logits.dtype)
        return logits, boxes

    monkeypatch.setattr(DetrHfForObjectDetection, "_predict", recording_predict)
    out = tmp_path / "bf16"
    common = [*TINY_MODEL_ARGS, "--synthetic_train_size", "8", "--synthetic_val_size", "4",
              "--per_device_train_batch_size", "4", "--max_train_steps", "3", "--logging_steps", "1",
              "--checkpointing_steps", "no", "--eval_every_epochs", "0", "--output_dir", str(out)]  # fmt: skip
    metrics = train.main([*common, "--mixed_precision", "bf16"])
    assert torch.bfloat16 in seen  # the training forward really ran under bf16 autocast
    assert 0.0 <= metrics["AP"] <= 1.0
    history = json.loads((out / "loss_history.json").read_text())
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(loss)) for _, loss in history)
    weights = load_file(out / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()} == {torch.float32}


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_both_scripts_refuse_fp16_on_the_cpu(tmp_path):
    """accelerate and the Trainer do not autocast fp16 on the CPU: the run would silently be float32."""
    argv = [*TINY_MODEL_ARGS[:-1], "--synthetic_train_size", "4", "--synthetic_val_size", "2",
            "--mixed_precision", "fp16", "--output_dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        load_script("train").main([*argv, "--no_progress_bar"])
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        load_script("train_trainer").main([*argv, "--use_cpu"])

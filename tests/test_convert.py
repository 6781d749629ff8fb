"""Checkpoint import: transformers DETR parity, original-layout round trip and coverage, errors, fine-tuning start."""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import json
import re
import subprocess
import sys
import threading

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from transformers import AutoModelForObjectDetection

from detr_hf import DetrHfConfig, DetrHfForObjectDetection
from detr_hf.checkpoint_layouts import CheckpointKeyError, from_detr_hf, to_detr_hf
from detr_hf.coco_labels import coco_id2label
from detr_hf.convert import convert_original_checkpoint, convert_transformers_checkpoint
from detr_references import (
    BATCH_SIZES,
    assert_outputs_close,
    detection_outputs,
    randomize_batch_norm_buffers,
    transformers_detr,
)
from helpers import padded_batch, randomize_norms


def small_resnet50_detr(**overrides) -> DetrHfForObjectDetection:
    """A DETR with the real ResNet-50 backbone (what the original layout holds) but a small transformer."""
    kwargs = dict(
        backbone="resnet50", d_model=64, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=128,
        decoder_ffn_dim=128, num_queries=10, num_labels=91, freeze_backbone_batch_norm=True,
        backbone_frozen_stages=1,
    )  # fmt: skip
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = DetrHfForObjectDetection(DetrHfConfig(**kwargs)).eval()
    randomize_norms(model, 1)
    randomize_batch_norm_buffers(model, 2)
    return model


def outputs(model, sizes=BATCH_SIZES):
    pixel_values, pixel_mask = padded_batch(sizes)
    with torch.no_grad():
        return model(pixel_values=pixel_values, pixel_mask=pixel_mask)


# ---------------------------------------------------------------- transformers parity


@pytest.mark.slow
@pytest.mark.parametrize("dilation", [False, True], ids=["r50", "r50-dc5"])
def test_transformers_detr_parity(tmp_path, dilation):
    from transformers import DetrConfig, DetrForObjectDetection

    torch.manual_seed(0)
    reference_config = DetrConfig(
        num_labels=91, use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False,
        auxiliary_loss=False, dilation=dilation,
    )  # fmt: skip
    reference = DetrForObjectDetection(reference_config).eval()
    randomize_norms(reference, 1)
    randomize_batch_norm_buffers(reference, 2)
    reference.save_pretrained(tmp_path / "transformers")

    convert_transformers_checkpoint(tmp_path / "transformers", tmp_path / "detr_hf")
    ours = AutoModelForObjectDetection.from_pretrained(tmp_path / "detr_hf").eval()

    assert type(ours) is DetrHfForObjectDetection
    assert ours.model.backbone.reduction == (16 if dilation else 32)
    expected, got = outputs(reference), outputs(ours)
    assert expected.logits.shape == got.logits.shape == (2, 100, 92)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, rtol=0, atol=1e-4)

    config = json.loads((tmp_path / "detr_hf" / "config.json").read_text())
    assert config["backbone"] == "resnet50"
    assert config["backbone_kwargs"] == ({"output_stride": 16} if dilation else {})
    assert config["freeze_backbone_batch_norm"] is True and config["backbone_frozen_stages"] == 1
    # The reference had placeholder names and a 92-row head: COCO names by raw category id.
    assert {int(k): v for k, v in config["id2label"].items()} == coco_id2label()
    assert (tmp_path / "detr_hf" / "preprocessor_config.json").is_file()
    assert (
        "weights converted from: transformers DETR folder" in (tmp_path / "detr_hf" / "README.md").read_text()
    )
    norms = [m for m in ours.model.backbone.modules() if hasattr(m, "running_var")]
    assert len(norms) == 53 and all(m.eps == 1e-5 for m in norms)  # every ResNet-50 BN, frozen, eps 1e-5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in norms)


# ---------------------------------------------------------------- original layout


def reference_original_r50_keys() -> dict[str, tuple[int, ...]]:
    """Every key and shape of an original DETR-R50 checkpoint, assembled from the layout's description."""
    keys = {
        f"backbone.0.body.{k}": tuple(v.shape)
        for k, v in torchvision.models.resnet50().state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    keys.update(
        {"input_proj.weight": (256, 2048, 1, 1), "input_proj.bias": (256,), "query_embed.weight": (100, 256)}
    )
    attention = {
        "in_proj_weight": (768, 256),
        "in_proj_bias": (768,),
        "out_proj.weight": (256, 256),
        "out_proj.bias": (256,),
    }
    ffn = {
        "linear1.weight": (2048, 256),
        "linear1.bias": (2048,),
        "linear2.weight": (256, 2048),
        "linear2.bias": (256,),
    }
    norm = {"weight": (256,), "bias": (256,)}
    for i in range(6):
        enc, dec = f"transformer.encoder.layers.{i}", f"transformer.decoder.layers.{i}"
        keys.update({f"{enc}.self_attn.{k}": s for k, s in attention.items()})
        keys.update(
            {f"{dec}.{m}.{k}": s for m in ("self_attn", "multihead_attn") for k, s in attention.items()}
        )
        keys.update({f"{layer}.{k}": s for layer in (enc, dec) for k, s in ffn.items()})
        keys.update({f"{enc}.norm{n}.{k}": s for n in (1, 2) for k, s in norm.items()})
        keys.update({f"{dec}.norm{n}.{k}": s for n in (1, 2, 3) for k, s in norm.items()})
    keys.update({f"transformer.decoder.norm.{k}": s for k, s in norm.items()})
    keys.update({"class_embed.weight": (92, 256), "class_embed.bias": (92,)})
    for i, (out, inp) in enumerate(((256, 256), (256, 256), (4, 256))):
        keys.update({f"bbox_embed.layers.{i}.weight": (out, inp), f"bbox_embed.layers.{i}.bias": (out,)})
    return keys


def test_original_map_covers_every_key_of_detr_r50():
    reference = reference_original_r50_keys()
    assert len(reference) == 458
    with torch.device("meta"):
        ours = DetrHfForObjectDetection(DetrHfConfig(freeze_backbone_batch_norm=True)).state_dict()
    exported = from_detr_hf(ours, "original")
    assert {k: tuple(v.shape) for k, v in exported.items()} == reference

    imported = to_detr_hf({k: torch.zeros(s, device="meta") for k, s in reference.items()}, "original")
    assert {k: tuple(v.shape) for k, v in imported.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_in_proj_rows_split_into_q_k_v():
    stacked = torch.arange(12.0).reshape(6, 2)
    converted = to_detr_hf({"transformer.encoder.layers.3.self_attn.in_proj_weight": stacked}, "original")
    prefix = "model.encoder.layers.3.self_attn"
    assert torch.equal(converted[f"{prefix}.q_proj.weight"], stacked[0:2])
    assert torch.equal(converted[f"{prefix}.k_proj.weight"], stacked[2:4])
    assert torch.equal(converted[f"{prefix}.v_proj.weight"], stacked[4:6])
    assert torch.equal(
        from_detr_hf(converted, "original")["transformer.encoder.layers.3.self_attn.in_proj_weight"], stacked
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [{}, {"pre_norm": True}, {"backbone_kwargs": {"output_stride": 16}}],
    ids=["post-norm", "pre-norm", "dc5"],
)
def test_original_checkpoint_round_trip(tmp_path, overrides):
    model = small_resnet50_detr(**overrides)
    dilation = "output_stride" in overrides.get("backbone_kwargs", {})
    checkpoint = {"model": from_detr_hf(model.state_dict(), "original")}
    if dilation:  # as the original training script saves it: the run's arguments tell DC5
        checkpoint["args"] = argparse.Namespace(dilation=True, nheads=8, backbone="resnet50")
    assert ("transformer.encoder.norm.weight" in checkpoint["model"]) == bool(overrides.get("pre_norm"))
    torch.save(checkpoint, tmp_path / "detr.pth")

    convert_original_checkpoint(tmp_path / "detr.pth", tmp_path / "converted")
    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path / "converted").eval()

    assert loaded.config.pre_norm == bool(overrides.get("pre_norm"))
    assert loaded.config.backbone_kwargs == ({"output_stride": 16} if dilation else {})
    assert loaded.config.freeze_backbone_batch_norm and loaded.config.backbone_frozen_stages == 1
    assert loaded.config.id2label[1] == "person" and loaded.config.id2label[12] == "N/A"
    expected, got = outputs(model, ((96, 128), (64, 96))), outputs(loaded, ((96, 128), (64, 96)))
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, rtol=0, atol=0)


def test_dc5_from_file_name_and_flag(tmp_path):
    model = small_resnet50_detr()
    torch.save(
        {"model": from_detr_hf(model.state_dict(), "original")}, tmp_path / "detr-r50-dc5-f0fb7ef5.pth"
    )
    by_name = convert_original_checkpoint(tmp_path / "detr-r50-dc5-f0fb7ef5.pth")
    assert by_name.config.backbone_kwargs == {"output_stride": 16}
    by_flag = convert_original_checkpoint(tmp_path / "detr-r50-dc5-f0fb7ef5.pth", dilation=False)
    assert by_flag.config.backbone_kwargs == {}


def test_unknown_and_missing_keys_are_listed(tmp_path):
    state = from_detr_hf(small_resnet50_detr().state_dict(), "original")
    extra = dict(
        state, **{"transformer.encoder.layers.0.extra.weight": torch.zeros(1), "mystery": torch.zeros(1)}
    )
    with pytest.raises(CheckpointKeyError, match=r"(?s)2\).*mystery.*extra\.weight"):
        to_detr_hf(extra, "original")

    missing = {k: v for k, v in state.items() if not k.startswith("bbox_embed.layers.2")}
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(
        CheckpointKeyError,
        match=r"missing keys \(2\): bbox_predictor\.layers\.2\.bias, bbox_predictor\.layers\.2\.weight",
    ):
        convert_original_checkpoint(tmp_path / "missing.pth")

    torch.save({"state_dict": state}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="expected a dict with a 'model' state dict.*state_dict"):
        convert_original_checkpoint(tmp_path / "wrong.pth")


@pytest.mark.slow
def test_cli_converts_and_reports_errors(tmp_path):
    model = small_resnet50_detr()
    torch.save({"model": from_detr_hf(model.state_dict(), "original")}, tmp_path / "detr.pth")
    command = [sys.executable, "-m", "detr_hf.convert", "--from", "original", str(tmp_path / "detr.pth")]
    done = subprocess.run([*command, str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(weights["class_labels_classifier.weight"], model.class_labels_classifier.weight)
    assert (tmp_path / "out" / "README.md").is_file() and (tmp_path / "out" / "modeling_detr_hf.py").is_file()

    torch.save({"model": {"mystery.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    bad = [
        sys.executable,
        "-m",
        "detr_hf.convert",
        "--from",
        "original",
        str(tmp_path / "bad.pth"),
        str(tmp_path / "x"),
    ]
    failed = subprocess.run(bad, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2
    assert "mystery.weight" in failed.stderr and "Traceback" not in failed.stderr


def test_transformers_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert_transformers_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "yolos"}))
    with pytest.raises(ValueError, match="model_type='yolos'"):
        convert_transformers_checkpoint(tmp_path)


def test_default_transformers_detr_converts_with_its_2_labels_and_processor(tmp_path):
    from transformers import DetrImageProcessor

    reference = transformers_detr(tmp_path / "transformers", num_labels=2)
    DetrImageProcessor(
        size={"shortest_edge": 480, "longest_edge": 640}, image_mean=[0.5, 0.4, 0.3]
    ).save_pretrained(tmp_path / "transformers")
    assert "id2label" not in json.loads((tmp_path / "transformers" / "config.json").read_text())
    convert_transformers_checkpoint(tmp_path / "transformers", tmp_path / "detr_hf")

    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path / "detr_hf").eval()
    assert type(loaded) is DetrHfForObjectDetection and loaded.config.num_labels == 2
    assert_outputs_close(detection_outputs(loaded), detection_outputs(reference))
    processor = json.loads((tmp_path / "detr_hf" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 480, "longest_edge": 640}
    assert processor["image_mean"] == [0.5, 0.4, 0.3] and processor["image_std"] == [0.229, 0.224, 0.225]


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        self.server.requests.append(self.path)


@pytest.fixture
def file_server(tmp_path):
    """An http server on 127.0.0.1 serving tmp_path/served; `.requests` lists the paths asked for."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Files, directory=str(served))
    )
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_url_checkpoint_is_downloaded_once_to_the_torch_hub_cache(tmp_path, monkeypatch, file_server):
    server, served, base = file_server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    torch.manual_seed(0)
    model = DetrHfForObjectDetection(DetrHfConfig(
        backbone="resnet18", d_model=64, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=128,
        decoder_ffn_dim=128, num_queries=10, num_labels=91, freeze_backbone_batch_norm=True,
    )).eval()  # fmt: skip
    randomize_norms(model, 1)
    randomize_batch_norm_buffers(model, 2)
    torch.save({"model": from_detr_hf(model.state_dict(), "original")}, served / "detr.pth")
    digest = hashlib.sha256((served / "detr.pth").read_bytes()).hexdigest()
    (served / "detr.pth").rename(served / f"detr-r18-{digest[:8]}.pth")
    url = f"{base}/detr-r18-{digest[:8]}.pth"

    converted = convert_original_checkpoint(url, tmp_path / "out")
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / f"detr-r18-{digest[:8]}.pth"
    assert cached.is_file() and converted.config.backbone == "resnet18"
    expected, got = (
        outputs(model),
        outputs(AutoModelForObjectDetection.from_pretrained(tmp_path / "out").eval()),
    )
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, rtol=0, atol=0)
    convert_original_checkpoint(url)
    assert server.requests == [f"/detr-r18-{digest[:8]}.pth"]  # the second call read the cache

    (served / "detr-r18-deadbeef.pth").write_bytes(cached.read_bytes())
    with pytest.raises(ValueError, match=r"detr-r18-deadbeef\.pth.*hash"):
        convert_original_checkpoint(f"{base}/detr-r18-deadbeef.pth")
    with pytest.raises(FileNotFoundError, match="could not download"):
        convert_original_checkpoint(f"{base}/missing.pth")


# ---------------------------------------------------------------- fine-tuning start


def test_new_num_labels_reinitialises_only_the_class_head(tmp_path, caplog):
    model = small_resnet50_detr()
    torch.save({"model": from_detr_hf(model.state_dict(), "original")}, tmp_path / "detr.pth")
    convert_original_checkpoint(tmp_path / "detr.pth", tmp_path / "coco")
    caplog.clear()

    labels = {0: "helmet", 1: "mask", 2: "gloves"}
    tuned = AutoModelForObjectDetection.from_pretrained(
        tmp_path / "coco", id2label=labels, ignore_mismatched_sizes=True
    )

    log = caplog.text
    reported = sorted(set(re.findall(r"^(\S+)\s*\|\s*MISMATCH", log, flags=re.MULTILINE)))
    assert reported == ["class_labels_classifier.bias", "class_labels_classifier.weight"], log
    source = model.state_dict()
    changed = sorted(
        k
        for k, v in tuned.state_dict().items()
        if v.shape != source[k].shape or not torch.equal(v, source[k])
    )
    assert changed == ["class_labels_classifier.bias", "class_labels_classifier.weight"]
    head = tuned.class_labels_classifier
    assert head.weight.shape == (4, 64) and tuned.config.id2label == labels
    bound = 1 / 64**0.5  # PyTorch's Linear init, as DETR uses for its heads
    assert (
        head.bias.abs().max() <= bound and head.weight.abs().max() <= bound and head.weight.std() > bound / 4
    )

    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForObjectDetection.from_pretrained(tmp_path / "coco", id2label=labels)

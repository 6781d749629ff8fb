"""from_pretrained of transformers DETR checkpoints (folders and the loopback Hub): parity, labels, errors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from detr_hf import DetrHfForObjectDetection, DetrHfModel
from detr_hf.coco_labels import coco_id2label
from detr_hf.transformers_checkpoint import processor_kwargs, read_transformers_detr
from detr_references import assert_outputs_close, detection_outputs, transformers_detr
from hub_server import LoopbackHub, Repo

HUB_CHILD = Path(__file__).with_name("transformers_hub_child.py")

CASES = [
    pytest.param("resnet18", True, 2, id="timm-r18-2labels"),
    pytest.param("resnet34", True, 91, id="timm-r34-91labels"),
    pytest.param("resnet18", False, 2, id="hf-resnet-r18-2labels"),
    pytest.param("resnet50", True, 91, id="timm-r50-91labels", marks=pytest.mark.slow),
    pytest.param("resnet101", True, 2, id="timm-r101-2labels", marks=pytest.mark.slow),
    pytest.param("resnet50", False, 91, id="hf-resnet-r50-91labels", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("backbone", "timm_layout", "num_labels"), CASES)
def test_from_pretrained_converts_transformers_detr(tmp_path, caplog, backbone, timm_layout, num_labels):
    reference = transformers_detr(
        tmp_path / "transformers", backbone=backbone, timm_layout=timm_layout, num_labels=num_labels
    )
    expected = detection_outputs(reference)
    with caplog.at_level(logging.INFO, logger="detr_hf"):
        ours = DetrHfForObjectDetection.from_pretrained(tmp_path / "transformers").eval()

    notes = [r.getMessage() for r in caplog.records if "converted transformers DETR" in r.getMessage()]
    assert len(notes) == 1 and f"{backbone} backbone, {num_labels} labels" in notes[0], notes
    assert ours.config.backbone == backbone and ours.config.num_labels == num_labels
    assert ours.config.name_or_path == str(tmp_path / "transformers")
    assert (
        ours.config.auxiliary_loss is True
    )  # training settings follow detr_hf's recipe, not transformers' False
    if num_labels == 91:
        assert ours.config.id2label == coco_id2label()
    assert_outputs_close(detection_outputs(ours), expected)

    # Labels survive save -> load, the 2 unnamed ones included (transformers leaves them out of config.json).
    ours.save_pretrained(tmp_path / "detr_hf")
    assert len(json.loads((tmp_path / "detr_hf" / "config.json").read_text())["id2label"]) == num_labels
    reloaded = DetrHfForObjectDetection.from_pretrained(tmp_path / "detr_hf").eval()
    assert reloaded.config.num_labels == num_labels and reloaded.config.id2label == ours.config.id2label
    assert_outputs_close(detection_outputs(reloaded), expected)


def test_dc5_timm_layout_and_base_model(tmp_path):
    reference = transformers_detr(tmp_path / "dc5", backbone="resnet18", dilation=True)
    ours = DetrHfForObjectDetection.from_pretrained(tmp_path / "dc5").eval()
    assert ours.config.backbone_kwargs == {"output_stride": 16} and ours.model.backbone.reduction == 16
    assert_outputs_close(detection_outputs(ours), detection_outputs(reference))

    base = DetrHfModel.from_pretrained(tmp_path / "dc5").eval()
    torch.testing.assert_close(
        base.query_position_embeddings.weight,
        reference.model.query_position_embeddings.weight,
        rtol=0,
        atol=0,
    )


def test_fine_tuning_start_keeps_everything_but_the_class_head(tmp_path):
    """What train.py --model_name_or_path does with a transformers folder: new labels, mismatched head."""
    reference = transformers_detr(tmp_path / "transformers", num_labels=91)
    labels = {0: "helmet", 1: "mask", 2: "gloves"}
    tuned = DetrHfForObjectDetection.from_pretrained(
        tmp_path / "transformers", num_labels=3, id2label=labels, ignore_mismatched_sizes=True
    )
    assert tuned.class_labels_classifier.weight.shape == (4, 64) and tuned.config.id2label == labels
    torch.testing.assert_close(
        tuned.bbox_predictor.layers[2].weight, reference.bbox_predictor.layers[2].weight
    )
    frozen = [n for n, p in tuned.model.backbone.body.named_parameters() if not p.requires_grad]
    assert frozen and all(not n.startswith(("layer2", "layer3", "layer4")) for n in frozen)


def test_pytorch_model_bin_is_read_only_when_asked(tmp_path):
    reference = transformers_detr(tmp_path)
    state_dict = load_file(tmp_path / "model.safetensors")
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin is read only with use_safetensors=False"):
        DetrHfForObjectDetection.from_pretrained(tmp_path)
    ours = DetrHfForObjectDetection.from_pretrained(tmp_path, use_safetensors=False).eval()
    assert_outputs_close(detection_outputs(ours), detection_outputs(reference))


def test_not_a_detr_folder_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "yolos", "architectures": ["Yolos"]}))
    with pytest.raises(ValueError, match=r"is not a DETR checkpoint.*model_type='yolos'"):
        DetrHfForObjectDetection.from_pretrained(tmp_path)


def test_config_names_a_backbone_the_weights_contradict(tmp_path):
    transformers_detr(tmp_path, backbone="resnet34")
    config = json.loads((tmp_path / "config.json").read_text())
    config["backbone_config"]["backbone"] = "resnet50"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"names backbone 'resnet50' but its weights are a resnet34 \(basic"):
        read_transformers_detr(tmp_path)


def test_processor_options_follow_the_source(tmp_path):
    assert processor_kwargs(tmp_path) == {}
    legacy = {"feature_extractor_type": "DetrFeatureExtractor", "size": 640, "max_size": 1000, "format": "coco_detection",
              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "do_normalize": True}  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    assert processor_kwargs(tmp_path) == {
        "size": {"shortest_edge": 640, "longest_edge": 1000},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
        "do_normalize": True,
    }


@pytest.mark.slow
def test_loopback_hub_ids_load_and_convert(tmp_path):
    """Hub ids (timm layout at main, HF-ResNet layout at revision no_timm): from_pretrained and the CLI."""
    repos = {
        "facebook/detr-tiny": transformers_detr(tmp_path / "timm", backbone="resnet18", num_labels=91),
        "facebook/detr-tiny-no-timm": transformers_detr(
            tmp_path / "hf", backbone="resnet18", timm_layout=False
        ),
    }
    expected = {repo: detection_outputs(model) for repo, model in repos.items()}
    from transformers import DetrImageProcessor

    DetrImageProcessor(size={"shortest_edge": 512, "longest_edge": 864}).save_pretrained(tmp_path / "hf")
    with LoopbackHub() as hub:
        for (repo, _), folder in zip(repos.items(), ("timm", "hf")):
            files = {p.name: p.read_bytes() for p in (tmp_path / folder).iterdir()}
            hub.state.repos[repo] = Repo(files=files, commits=[f"{len(hub.state.repos) + 1:040x}"])
        hub.state.repos["user/yolos"] = Repo(
            files={"config.json": b'{"model_type": "yolos"}'}, commits=["f" * 40]
        )
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
               "HF_HOME": str(tmp_path / "hf_home"), "TRANSFORMERS_OFFLINE": "0"}  # fmt: skip
        done = subprocess.run(
            [sys.executable, str(HUB_CHILD), str(tmp_path / "out")], env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        requests = list(hub.state.requests)
    assert done.returncode == 0, done.stderr[-4000:]
    got = torch.load(tmp_path / "out" / "outputs.pt", weights_only=True)
    assert_outputs_close(got["facebook/detr-tiny"], expected["facebook/detr-tiny"])
    for name in ("facebook/detr-tiny-no-timm", "cli"):
        assert_outputs_close(got[name], expected["facebook/detr-tiny-no-timm"])
    assert "GET /facebook/detr-tiny-no-timm/resolve/no_timm/model.safetensors" in requests
    processor = json.loads((tmp_path / "out" / "cli" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 512, "longest_edge": 864}
    assert processor["image_processor_type"] == "DetrHfImageProcessor"
    error = (tmp_path / "out" / "error.txt").read_text()
    assert "user/yolos" in error and "is not a DETR checkpoint" in error and "model_type='yolos'" in error
    assert "has no config.json" not in done.stderr
